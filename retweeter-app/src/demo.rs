//! `demo`: the whole story on the embedded defaults, starting from nothing
//! and leaving nothing behind.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use bulk_runtime::{BulkCreateNew, quote_ident};
use tokio_postgres::Client;

use crate::cli::DemoArgs;
use crate::db::{self, Database, Purpose};
use crate::model::Retweet;
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
/// No database, a schema named with `--schema` whose table already holds
/// retweets, or a database error along the way.
pub async fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    // Names the database on stderr; on a server it does not own, the demo
    // works in a schema (or a database) of its own, which `close` drops,
    // also after Ctrl-C or SIGTERM.
    Database::run(&args.db, Purpose::Throwaway, async |db| in_place(db, args).await).await
}

/// What a schema named with `--schema` held before the demo, and so what the
/// demo removes from it at the end.
#[derive(Debug, Clone, Copy)]
enum Found {
    /// No such schema: the demo's migration creates it; dropped.
    NoSchema,
    /// The schema, without the table: the table is dropped.
    NoTable,
    /// The table, empty (`migrate` ran): its rows are deleted.
    EmptyTable,
}

/// The demo, then (in a schema the user named, which `close` leaves) the
/// removal of what it wrote there: it starts from nothing and leaves nothing
/// behind there too.
async fn in_place(db: &Database, args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let mut client = db.connect().await?;
    let named = db.schema().filter(|_| db.keeps_schema());
    let found = match named {
        Some(schema) => Some(survey(&client, schema).await?),
        None => None,
    };
    let result = story(&mut client, db.schema(), args).await;
    let (Some(schema), Some(found)) = (named, found) else { return result };
    let table = format!("{}.{}", quote_ident(schema), quote_ident(Retweet::model().table()));
    let sql = match found {
        Found::NoSchema => format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema)),
        Found::NoTable => format!("DROP TABLE IF EXISTS {table}"),
        Found::EmptyTable => format!("DELETE FROM {table}"),
    };
    let cleaned = client.batch_execute(&sql).await.with_context(|| format!("could not remove the demo's data ({sql})"));
    result.and_then(|code| cleaned.map(|()| code))
}

/// What the schema the user named holds; an error when its table already
/// holds retweets (the demo's story starts from an empty table).
async fn survey(client: &Client, schema: &str) -> anyhow::Result<Found> {
    let table = format!("{}.{}", quote_ident(schema), quote_ident(Retweet::model().table()));
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1), \
                    pg_catalog.to_regclass($2) IS NOT NULL",
            &[&schema, &table],
        )
        .await
        .context("could not look at the schema the demo is to use")?;
    let (schema_exists, table_exists): (bool, bool) = (row.get(0), row.get(1));
    if !schema_exists {
        return Ok(Found::NoSchema);
    }
    if !table_exists {
        return Ok(Found::NoTable);
    }
    let rows = client
        .query_opt(&format!("SELECT 1 FROM {table} LIMIT 1"), &[])
        .await
        .with_context(|| format!("could not read {table}"))?;
    match rows {
        None => Ok(Found::EmptyTable),
        Some(_) => bail!(
            "schema {schema} already holds retweets (table {table}); the demo starts from nothing and leaves \
             nothing behind: name a new or empty schema, or leave out --schema (the demo then works in a \
             throwaway schema of its own)"
        ),
    }
}

async fn story(client: &mut Client, schema: Option<&str>, args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let table = Retweet::model().table();
    if db::migrate(client, schema).await? {
        ui::out(format!("migrate: created table {table}, unique on (tweet, retweeter)"));
    } else {
        ui::out(format!("migrate: table {table} is there and empty, unique on (tweet, retweeter)"));
    }
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
        let result = poll_once(client, &source, watched, 100).await?;
        result.print("  ");
    }
    let m = report::matrix(client, Some(report::DEFAULT_TABLE_LIMIT)).await?;
    ui::out("report:");
    ui::out(report::render_table(&m).trim_end_matches('\n'));
    Ok(ExitCode::SUCCESS)
}
