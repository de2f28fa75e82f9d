//! The `citus` mode: the same retweeter table, distributed by Citus on
//! `tweet` (`create_distributed_table`), and the strategies a user has
//! there: the call; a raw binary COPY of only the new rows (the ceiling);
//! `INSERT ... SELECT * FROM unnest(...) ON CONFLICT DO NOTHING`; multi-row
//! `INSERT ... VALUES ... ON CONFLICT DO NOTHING`, chunked as Diesel does.
//!
//! ```sh
//! BULK_BENCH_CITUS_URL="host=127.0.0.1 port=9700 user=postgres dbname=postgres" \
//!   cargo bench -p bulk-runtime --bench strategies -- citus [--sizes 1000,10000] [--mixes fresh] [--reps N] \
//!   [--strategies 1,2] [--stage as-left]
//! ```
//!
//! `--strategies` runs only the strategies named by their numbers (for
//! more repetitions of the call against the ceiling in the same time); a
//! ratio to a strategy that did not run prints as `–`.
//!
//! Before each run the target is emptied, given the case's stored rows and
//! vacuumed, and the call's staging table is vacuumed too, so every run
//! starts from the same state: the rows a call deleted from the staging
//! table (a million at 1,000,000 rows) are gone, as autovacuum clears them
//! between the calls of a job that has time between batches.
//! `--stage as-left` skips that vacuum: a run then meets the dead rows of
//! the runs before it (and autovacuum at work on them), as back-to-back
//! large calls do; the order of the strategies is shuffled, so which runs
//! pay for them varies.
//!
//! The cluster is `BULK_BENCH_CITUS_URL` (no default: the mode fails when
//! it is unset). Each case runs every strategy once per repetition, in a new
//! random order each time, from the same table state; the table's rows are
//! counted after every run. Citus's command tag of an `INSERT ... SELECT`
//! counts the rows attempted, not inserted: the `unnest` strategy's own
//! count is not checked, only the rows stored.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bulk_runtime::BulkCreateNew;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

use super::{Case, Mix, Retweet, Rng, TABLE, UPSERT_COLS, VALUES_CHUNK, columns, copy_rows, make_case, median, ms};

/// The strategies of the mode, in the order of its tables.
const STRATEGIES: [&str; 4] = [
    "1 bulk_create_new",
    "2 COPY new rows only (ceiling)",
    "3 INSERT unnest ON CONFLICT",
    "4 INSERT VALUES ON CONFLICT (chunked)",
];

/// What a `citus` run measures: `--sizes N,N`, `--mixes fresh,stored50`,
/// `--reps N`, `--strategies 1,2` (numbers as in [`STRATEGIES`]),
/// `--stage vacuumed|as-left`.
struct Options {
    sizes: Vec<usize>,
    mixes: Vec<Mix>,
    reps: Option<usize>,
    strategies: Vec<usize>,
    /// Whether each run starts with the staging table vacuumed.
    vacuum_stage: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            sizes: vec![1_000, 10_000, 100_000, 1_000_000],
            mixes: vec![Mix::Fresh, Mix::Stored50],
            reps: None,
            strategies: (0..STRATEGIES.len()).collect(),
            vacuum_stage: true,
        };
        let mut args = args.iter();
        while let Some(a) = args.next() {
            let value = args.next().ok_or_else(|| format!("{a} needs a value"))?;
            match a.as_str() {
                "--sizes" => {
                    o.sizes = value
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("--sizes: {e}"))?
                }
                "--mixes" => {
                    o.mixes = value
                        .split(',')
                        .map(Mix::parse)
                        .collect::<Option<_>>()
                        .ok_or("--mixes: expected fresh, stored50, inbatch10")?
                }
                "--reps" => o.reps = Some(value.parse().map_err(|e| format!("--reps: {e}"))?),
                "--strategies" => {
                    o.strategies = value
                        .split(',')
                        .map(|n| n.parse::<usize>().ok().filter(|n| (1..=STRATEGIES.len()).contains(n)).map(|n| n - 1))
                        .collect::<Option<_>>()
                        .ok_or_else(|| format!("--strategies: numbers from 1 to {}", STRATEGIES.len()))?
                }
                "--stage" => {
                    o.vacuum_stage = match value.as_str() {
                        "vacuumed" => true,
                        "as-left" => false,
                        _ => return Err("--stage: expected vacuumed or as-left".to_owned()),
                    }
                }
                other => return Err(format!("citus: unknown option {other}")),
            }
        }
        Ok(o)
    }
}

/// Repetitions of one case on the cluster.
fn repetitions(size: usize) -> usize {
    match size {
        s if s >= 1_000_000 => 3,
        s if s >= 100_000 => 5,
        s if s >= 10_000 => 9,
        _ => 21,
    }
}

async fn connect() -> Client {
    let Ok(url) = std::env::var("BULK_BENCH_CITUS_URL") else {
        eprintln!(
            "the citus mode needs a Citus cluster named by BULK_BENCH_CITUS_URL, e.g. \
             BULK_BENCH_CITUS_URL=\"host=127.0.0.1 port=9700 user=postgres dbname=postgres\" \
             (start one with `bash ../shared/citus/cluster.sh start /tmp/citus 9700`)"
        );
        std::process::exit(2);
    };
    let config: tokio_postgres::Config = url.parse().expect("BULK_BENCH_CITUS_URL");
    let (client, conn) = config
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the Citus cluster at BULK_BENCH_CITUS_URL ({url}): {e}"));
    tokio::spawn(conn);
    client
}

/// The benchmark's table, distributed on its first key column: the
/// columns and indexes of `migration_sql()`, whose `id` primary key Citus
/// refuses (a unique key must hold the distribution column), so `id` is an
/// identity column without a key of its own; and its co-located staging
/// table (`Model::citus_staging_sql`).
async fn setup(client: &Client) {
    let stage = bulk_runtime::quote_ident(&Retweet::model().citus_staging_table());
    client.batch_execute(&format!("DROP TABLE IF EXISTS {stage}; DROP TABLE IF EXISTS {TABLE}")).await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE {TABLE} (id bigint GENERATED BY DEFAULT AS IDENTITY, tweet bigint NOT NULL, \
             retweeter bigint NOT NULL, original_author bigint NOT NULL, UNIQUE (tweet, retweeter)); \
             CREATE INDEX ON {TABLE} (retweeter); CREATE INDEX ON {TABLE} (original_author)"
        ))
        .await
        .unwrap();
    client.batch_execute(&format!("SELECT create_distributed_table('{TABLE}', 'tweet')")).await.unwrap();
    // Its staging table, as `migration_sql()` makes it for a `distribute_by` model.
    client.batch_execute(&Retweet::model().citus_staging_sql()).await.unwrap();
    let shards: i64 = client
        .query_one(&format!("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = '{TABLE}'::regclass"), &[])
        .await
        .unwrap()
        .get(0);
    let workers: i64 =
        client.query_one("SELECT count(*) FROM citus_get_active_worker_nodes()", &[]).await.unwrap().get(0);
    println!("{TABLE}: distributed by tweet, {shards} shards on {workers} workers");
}

async fn reset(client: &Client, case: &Case, vacuum_stage: bool) {
    client.batch_execute(&format!("TRUNCATE {TABLE}")).await.unwrap();
    copy_rows(client, TABLE, &case.prestored).await;
    client.batch_execute(&format!("VACUUM ANALYZE {TABLE}")).await.unwrap();
    if vacuum_stage {
        let stage = bulk_runtime::quote_ident(&Retweet::model().citus_staging_table());
        client.batch_execute(&format!("VACUUM {stage}")).await.unwrap();
    }
}

/// The peers' statements, prepared once (their best case).
struct Prepared {
    unnest: Statement,
    values: HashMap<usize, Statement>,
}

/// Runs strategy `s` (an index into [`STRATEGIES`]); returns the count it reports.
async fn run(s: usize, client: &mut Client, prepared: &mut Prepared, case: &Case) -> u64 {
    match s {
        0 => Retweet::bulk_create_new(client, &case.batch).await.unwrap().inserted,
        1 => copy_rows(client, TABLE, &case.new_rows).await,
        2 => {
            let (a, b, c) = columns(case.batch.iter());
            client.execute(&prepared.unnest, &[&a, &b, &c]).await.unwrap()
        }
        _ => {
            let tx = client.transaction().await.unwrap();
            let mut inserted = 0;
            for chunk in case.batch.chunks(VALUES_CHUNK) {
                if let std::collections::hash_map::Entry::Vacant(slot) = prepared.values.entry(chunk.len()) {
                    slot.insert(tx.prepare(&super::values_sql(chunk.len())).await.unwrap());
                }
                let params: Vec<&(dyn ToSql + Sync)> =
                    chunk.iter().flat_map(|r| [&r.tweet as _, &r.retweeter as _, &r.original_author as _]).collect();
                inserted += tx.execute(&prepared.values[&chunk.len()], &params).await.unwrap();
            }
            tx.commit().await.unwrap();
            inserted
        }
    }
}

/// The `citus` mode (see the module's documentation).
pub(crate) async fn citus_run(args: &[String]) {
    let options = match Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut client = connect().await;
    setup(&client).await;
    println!(
        "staging table before each run: {}",
        if options.vacuum_stage { "vacuumed" } else { "as the runs before left it (--stage as-left)" }
    );
    let unnest = client
        .prepare(&format!(
            "INSERT INTO {TABLE} {UPSERT_COLS} SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) \
             ON CONFLICT (tweet, retweeter) DO NOTHING"
        ))
        .await
        .unwrap();
    let mut prepared = Prepared { unnest, values: HashMap::new() };
    // The connection's first call checks the table (and finds it distributed).
    let warm = Retweet { tweet: -1, retweeter: -1, original_author: 0 };
    Retweet::bulk_create_new(&mut client, [warm]).await.unwrap();
    let mut rng = Rng(4242);
    let mut summary = String::new();
    for &mix in &options.mixes {
        for &size in &options.sizes {
            let reps = options.reps.unwrap_or_else(|| repetitions(size));
            let case = make_case(size, mix, size as u64 * 31 + mix as u64);
            let expected = case.new_rows.len() as u64;
            let mut times: Vec<Vec<Duration>> = vec![Vec::new(); STRATEGIES.len()];
            for _ in 0..reps {
                let mut order = options.strategies.clone();
                rng.shuffle(&mut order);
                for s in order {
                    reset(&client, &case, options.vacuum_stage).await;
                    let start = Instant::now();
                    let reported = run(s, &mut client, &mut prepared, &case).await;
                    times[s].push(start.elapsed());
                    let stored: i64 =
                        client.query_one(&format!("SELECT count(*) FROM {TABLE}"), &[]).await.unwrap().get(0);
                    assert_eq!(stored as u64, case.prestored.len() as u64 + expected, "{}: rows stored", STRATEGIES[s]);
                    if s != 2 {
                        assert_eq!(reported, expected, "{}: rows reported inserted", STRATEGIES[s]);
                    }
                }
            }
            // A strategy that did not run has no median; a ratio to it is NaN, printed as `–`.
            let medians: Vec<f64> =
                times.iter().map(|t| if t.is_empty() { f64::NAN } else { median(t).as_secs_f64() }).collect();
            let ceiling = medians[1];
            let best_other = [medians[2], medians[3]].into_iter().filter(|m| !m.is_nan()).reduce(f64::min);
            let best_other = best_other.unwrap_or(f64::NAN);
            let ratio = |r: f64| if r.is_nan() { "–".to_owned() } else { format!("{r:.2}") };
            println!("\n### {size} rows, {} (new rows: {expected}, {reps} repetitions)\n", mix.name());
            println!("| strategy | median ms | min–max ms | rows/s | × ceiling | × best of 3, 4 |");
            println!("| --- | ---: | ---: | ---: | ---: | ---: |");
            for (s, name) in STRATEGIES.iter().enumerate() {
                let (Some(lo), Some(hi)) = (times[s].iter().min(), times[s].iter().max()) else { continue };
                let m = medians[s];
                println!(
                    "| {name} | {} | {}–{} | {:.0} | {} | {} |",
                    ms(median(&times[s])),
                    ms(*lo),
                    ms(*hi),
                    size as f64 / m,
                    ratio(m / ceiling),
                    ratio(m / best_other)
                );
            }
            summary.push_str(&format!(
                "| {size} | {} | {} | {} |\n",
                mix.name(),
                ratio(medians[0] / ceiling),
                ratio(medians[0] / best_other)
            ));
        }
    }
    println!("\n### Summary: bulk_create_new ÷ the ceiling (2) and ÷ the best other strategy (3, 4)\n");
    println!("| rows | mix | call ÷ ceiling | call ÷ best other |\n| ---: | --- | ---: | ---: |");
    print!("{summary}");
}
