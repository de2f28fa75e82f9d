//! The app on a Citus cluster: `migrate`, `migrations`, `poll`, `watch`,
//! `report` and `demo` against a `--database-url` that names the
//! coordinator, each test in a schema of its own there.
//!
//! Not part of `cargo test -p retweeter-app`: it needs a Citus cluster named
//! by `BULK_CITUS_URL`, and runs with
//! `BULK_CITUS_URL=... cargo test -p retweeter-app --features citus --test citus`.
//! It fails, never skips, when the cluster is missing.

mod common;

use std::collections::HashMap;

use common::{TempDir, TestSchema, outcomes, run};
use tokio_postgres::NoTls;

const CITUS_URL_VAR: &str = "BULK_CITUS_URL";

const HOW_TO_START: &str = concat!(
    "the app's Citus tests need a Citus cluster (a coordinator with workers) and BULK_CITUS_URL naming its ",
    "coordinator. On this machine, from the repository's root:\n",
    "    sudo ../shared/citus/install.sh                         # builds and installs Citus 13.2 (once; a few minutes)\n",
    "    ../shared/citus/cluster.sh start /tmp/bulk-citus 9700   # coordinator on 9700, workers on 9701 and 9702\n",
    "    export BULK_CITUS_URL=\"host=127.0.0.1 port=9700 user=postgres dbname=postgres\"\n",
    "    cargo test -p retweeter-app --features citus --test citus\n",
    "    ../shared/citus/cluster.sh stop /tmp/bulk-citus\n",
    "(`cluster.sh start` prints the connection string on its last line.)"
);

/// The coordinator's connection string, checked to be a Citus coordinator
/// with at least one worker; fails the test with how to start one.
fn coordinator_url() -> String {
    let url = std::env::var(CITUS_URL_VAR).unwrap_or_else(|_| panic!("{CITUS_URL_VAR} is not set.\n\n{HOW_TO_START}"));
    let config: tokio_postgres::Config =
        url.parse().unwrap_or_else(|e| panic!("{CITUS_URL_VAR}={url:?}: {e}\n\n{HOW_TO_START}"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(async {
        let (client, connection) = config.connect(NoTls).await.unwrap_or_else(|e| {
            panic!("cannot connect to the Citus coordinator named by {CITUS_URL_VAR}: {e:?}\n\n{HOW_TO_START}")
        });
        tokio::spawn(connection);
        let workers = client
            .query_one("SELECT count(*) FROM pg_catalog.citus_get_active_worker_nodes()", &[])
            .await
            .unwrap_or_else(|e| {
                panic!("the server named by {CITUS_URL_VAR} is not a Citus coordinator: {e:?}\n\n{HOW_TO_START}")
            })
            .get::<_, i64>(0);
        assert!(workers >= 1, "the Citus coordinator named by {CITUS_URL_VAR} has no active worker\n\n{HOW_TO_START}");
    });
    url
}

fn args(schema: &TestSchema, rest: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
    all.extend(schema.args());
    all
}

/// How Citus placed the schema's `retweet`: its type and distribution column.
fn placement(schema: &TestSchema) -> (String, String) {
    let rows = schema.query(
        "SELECT citus_table_type, distribution_column FROM public.citus_tables
          WHERE table_name = pg_catalog.to_regclass('retweet')",
    );
    assert_eq!(rows.len(), 1, "retweet is not a Citus table");
    (rows[0].get(0), rows[0].get(1))
}

/// Rows stored per tweet.
fn per_tweet(schema: &TestSchema) -> HashMap<i64, i64> {
    let mut out = HashMap::new();
    for (tweet, _, _) in schema.rows() {
        *out.entry(tweet).or_insert(0) += 1;
    }
    out
}

#[test]
fn migrate_distributes_the_table_by_tweet_and_runs_again() {
    let url = coordinator_url();
    let schema = TestSchema::in_database(&url, "citus_migrate");
    let first = run(args(&schema, &["migrate"]));
    assert!(first.ok().contains("created table retweet"), "{}", first.stdout);
    assert_eq!(placement(&schema), ("distributed".to_owned(), "tweet".to_owned()));
    let second = run(args(&schema, &["migrate"]));
    assert!(second.ok().contains("up to date"), "{}", second.stdout);

    // The migration file a tool would apply, applied by hand on the cluster.
    let dir = TempDir::new("citus_migrations");
    run(["migrations", "--out", dir.path().to_str().expect("utf-8 path")]).ok();
    let up = std::fs::read_to_string(dir.path().join("0001_create_retweet.up.sql")).expect("up file");
    let applied = TestSchema::in_database(&url, "citus_migrate_files");
    applied.execute(&up);
    assert_eq!(placement(&applied), ("distributed".to_owned(), "tweet".to_owned()));
    let again = run(args(&applied, &["migrate"]));
    assert!(again.ok().contains("up to date"), "the app accepts the tool-applied table: {}", again.stdout);
    let polled = run(args(&applied, &["poll", "1", "2"]));
    assert_eq!(outcomes(polled.ok(), "total"), [(2, 2)]);
}

#[test]
fn poll_and_watch_count_exactly_per_tweet() {
    let schema = TestSchema::in_database(&coordinator_url(), "citus_poll");
    run(args(&schema, &["migrate"])).ok();
    // Each poll sees the tweets' latest retweets: new ones and the ones
    // stored before. The counts per tweet add up to what is stored.
    let mut added: HashMap<i64, u64> = HashMap::new();
    let mut offered: HashMap<i64, Vec<u64>> = HashMap::new();
    // The simulator's tweet 1600000000000000001 as in the demo: 1 of 1, 1 of 2, 2 of 4.
    let demo_tweet = "1600000000000000001";
    let out = run(args(&schema, &["watch", "--every", "50ms", "--ticks", "3", demo_tweet]));
    assert_eq!(outcomes(out.ok(), &format!("tweet {demo_tweet}:")), [(1, 1), (1, 2), (2, 4)], "{}", out.stdout);
    for _ in 0..3 {
        let out = run(args(&schema, &["poll", "31", "32", "33"]));
        let stdout = out.ok();
        for tweet in [31, 32, 33] {
            let seen = outcomes(stdout, &format!("tweet {tweet}:"));
            assert_eq!(seen.len(), 1, "{stdout}");
            *added.entry(tweet).or_default() += seen[0].0;
            offered.entry(tweet).or_default().push(seen[0].1);
        }
    }
    let watch = run(args(&schema, &["watch", "--every", "50ms", "--ticks", "3", "34"]));
    let stdout = watch.ok();
    let ticks = outcomes(stdout, "tweet 34:");
    assert_eq!(ticks.len(), 3, "{stdout}");
    added.insert(34, ticks.iter().map(|&(n, _)| n).sum());
    let stored = per_tweet(&schema);
    for tweet in [31, 32, 33, 34] {
        assert_eq!(stored[&tweet] as u64, added[&tweet], "tweet {tweet}: what the polls added is what is stored");
    }
    // Later polls saw stored retweets again, and skipped them.
    let seen: u64 = offered.values().flatten().sum();
    let new: u64 = [31, 32, 33].iter().map(|t| added[t]).sum();
    assert!(new < seen, "polls saw {seen} retweets, {new} new: {offered:?}");
    assert_eq!(placement(&schema).0, "distributed");
}

#[test]
fn report_agrees_with_counts_computed_here() {
    let schema = TestSchema::in_database(&coordinator_url(), "citus_report");
    run(args(&schema, &["migrate"])).ok();
    let tweets = ["11", "12", "13", "14", "15", "16", "17", "18", "19", "20", "21", "22"];
    let mut inserted = 0;
    for start in ["5", "9"] {
        let mut poll = vec!["poll", "--sim-start", start];
        poll.extend(tweets);
        let out = run(args(&schema, &poll));
        inserted += outcomes(out.ok(), "total").iter().map(|&(added, _)| added).sum::<u64>();
    }
    let counts = schema.counts();
    let total: i64 = counts.values().sum();
    assert_eq!(total, inserted as i64, "the polls' counts are what is stored");
    assert!(total > 300, "enough data for a top-K table: {total}");
    let common::Totals { retweeter: retweeter_totals, author: author_totals, retweeters, authors } =
        common::Totals::of(&counts);

    // CSV: every cell.
    let csv = run(args(&schema, &["report", "--format", "csv"]));
    let lines: Vec<Vec<String>> = csv.ok().lines().map(|l| l.split(',').map(str::to_owned).collect()).collect();
    let header: Vec<String> = std::iter::once("retweeter".to_owned())
        .chain(authors.iter().map(i64::to_string))
        .chain(std::iter::once("total".to_owned()))
        .collect();
    assert_eq!(lines[0], header);
    assert_eq!(lines.len(), retweeters.len() + 2);
    for (line, &r) in lines[1..].iter().zip(&retweeters) {
        let mut expected = vec![r.to_string()];
        expected.extend(authors.iter().map(|&a| counts.get(&(r, a)).copied().unwrap_or(0).to_string()));
        expected.push(retweeter_totals[&r].to_string());
        assert_eq!(line, &expected);
    }
    let mut expected_total = vec!["total".to_owned()];
    expected_total.extend(authors.iter().map(|a| author_totals[a].to_string()));
    expected_total.push(total.to_string());
    assert_eq!(lines.last(), Some(&expected_total));

    // JSON with a limit: top 3, the rest folded, totals over everything.
    let json = run(args(&schema, &["report", "--format", "json", "--limit", "3"]));
    let v: serde_json::Value = serde_json::from_str(json.ok()).expect("JSON report");
    assert_eq!(v["totals"]["total"], total);
    assert_eq!(v["retweeters"], retweeters.len() as i64);
    assert_eq!(v["other_authors"], (authors.len() - 3) as i64);
    assert_eq!(v["other_retweeters"], (retweeters.len() - 3) as i64);
}

#[test]
fn demo_tells_the_story_on_the_cluster() {
    // In a schema `migrate` prepared (the table distributed by tweet): the
    // demo uses the empty table and empties it again at the end.
    let schema = TestSchema::in_database(&coordinator_url(), "citus_demo");
    run(args(&schema, &["migrate"])).ok();
    let out = run(args(&schema, &["demo"]));
    let stdout = out.ok();
    assert!(stdout.starts_with("migrate: table retweet is there and empty"), "{stdout}");
    let first = outcomes(stdout, "tweet 1600000000000000001");
    assert_eq!(first[..3], [(1, 1), (1, 2), (2, 4)], "{stdout}");
    assert!(stdout.contains("report:") && stdout.contains("retweeter \\ author"), "{stdout}");
    let added: u64 = outcomes(stdout, "total:").iter().map(|&(added, _)| added).sum();
    assert!(
        stdout.contains(&format!(": {added} retweets,")),
        "the report covers what the polls added ({added})\n{stdout}"
    );
    assert!(schema.counts().is_empty(), "the demo left rows behind");
    assert_eq!(placement(&schema), ("distributed".to_owned(), "tweet".to_owned()));
    // A second demo tells the same story.
    assert_eq!(run(args(&schema, &["demo"])).ok(), stdout);
}
