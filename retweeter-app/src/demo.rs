//! `demo`: the whole story on the embedded defaults, starting from nothing
//! and leaving nothing behind.

use std::process::ExitCode;
use std::sync::Arc;

use bulk_runtime::quote_ident;

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
    let mut db = Database::open(&args.db, Purpose::Throwaway).await?;
    // On a server the demo does not own, it works in a schema of its own and drops it at the end.
    let own_schema = (!db.is_throwaway() && db.schema().is_none()).then(|| {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        format!("retweeter_demo_{}_{nanos:x}", std::process::id())
    });
    if own_schema.is_some() {
        db.set_schema(own_schema.clone());
    }
    let place = db.schema().map(|s| format!(", schema {s}")).unwrap_or_default();
    ui::out(format!("database: {}{place}", db.describe()));
    let result = story(&db, args).await;
    if let Some(schema) = own_schema {
        match db.connect_plain().await {
            Ok(client) => {
                if let Err(e) =
                    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(&schema))).await
                {
                    tracing::warn!("could not drop the demo schema {schema}: {e}");
                }
            }
            Err(e) => tracing::warn!("could not drop the demo schema {schema}: {}", ui::one_line(&e)),
        }
    }
    db.close().await;
    result
}

async fn story(db: &Database, args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let mut client = db.connect().await?;
    db::migrate(&mut client, db.schema()).await?;
    ui::out("migrate: created table retweet, unique on (tweet, retweeter)");
    let source = Source::Sim(Arc::new(Simulator::new(args.seed, 1)));
    ui::out(format!(
        "polling the simulator {} times; each poll fetches the latest 100 retweets of each watched tweet, \
         a new tweet joins the watch list at each of the first {} polls",
        args.polls,
        TWEETS.len()
    ));
    for poll in 1..=args.polls {
        let watched = &TWEETS[..(poll as usize).min(TWEETS.len())];
        let plural = if watched.len() == 1 { "" } else { "s" };
        ui::out(format!("poll {poll}: {} tweet{plural}", watched.len()));
        let result = poll_once(&mut client, &source, watched, 100).await?;
        result.print("  ");
    }
    let m = report::matrix(&client, Some(report::DEFAULT_TABLE_LIMIT)).await?;
    ui::out("report:");
    ui::out(report::render_table(&m).trim_end_matches('\n'));
    Ok(ExitCode::SUCCESS)
}
