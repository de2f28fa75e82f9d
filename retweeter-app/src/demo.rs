//! `demo`: the whole story on the embedded defaults, starting from nothing
//! and leaving nothing behind.

use std::process::ExitCode;
use std::sync::Arc;

use crate::cli::DemoArgs;
use crate::db::{self, Database, Purpose};
use crate::poll::poll_once;
use crate::report;
use crate::sim::Simulator;
use crate::source::Source;
use crate::ui;

/// The watched tweets; the n-th joins the watch list at the n-th poll. With
/// the default seed, two authors have two tweets each.
const TWEETS: [i64; 5] = [
    1_600_000_000_000_000_001,
    1_600_000_000_000_000_002,
    1_600_000_000_000_000_004,
    1_600_000_000_000_000_005,
    1_600_000_000_000_000_006,
];

/// Runs the demo.
///
/// # Errors
/// No database, or a database error along the way.
pub async fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    // Names the database on stderr; on a server it does not own, the demo
    // works in a schema of its own, which `close` drops.
    let db = Database::open(&args.db, Purpose::Throwaway).await?;
    let result = story(&db, args).await;
    db.close().await;
    result
}

async fn story(db: &Database, args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let mut client = db.connect().await?;
    db::migrate(&mut client, db.schema()).await?;
    ui::out("migrate: created table retweet, unique on (tweet, retweeter)");
    let source = Source::Sim(Arc::new(Simulator::new(args.seed, 1)));
    let joining = match args.polls.min(TWEETS.len() as u64) {
        1 => "one tweet is watched".to_owned(),
        n => format!("a new tweet joins the watch list at each of the first {n} polls"),
    };
    ui::out(format!(
        "polling the simulator {}; each poll fetches the latest 100 retweets of each watched tweet, {joining}",
        ui::count(args.polls, "time", "times"),
    ));
    for poll in 1..=args.polls {
        let watched = &TWEETS[..(poll as usize).min(TWEETS.len())];
        ui::out(format!("poll {poll}: {}", ui::count(watched.len() as u64, "tweet", "tweets")));
        let result = poll_once(&mut client, &source, watched, 100).await?;
        result.print("  ");
    }
    let m = report::matrix(&client, Some(report::DEFAULT_TABLE_LIMIT)).await?;
    ui::out("report:");
    ui::out(report::render_table(&m).trim_end_matches('\n'));
    Ok(ExitCode::SUCCESS)
}
