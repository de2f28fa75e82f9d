//! Side-by-side benchmark of conflict-skipping bulk insert strategies against
//! the real PostgreSQL. See `BENCHMARKS.md` for recorded runs.
//!
//! ```sh
//! cargo bench -p bulk-runtime --bench strategies -- --quick   # sizes 10..10k
//! cargo bench -p bulk-runtime --bench strategies              # sizes 10..1M
//! cargo bench -p bulk-runtime --bench strategies -- --sizes 100000,1000000
//! cargo bench -p bulk-runtime --bench strategies -- --sizes 100000 --mixes fresh --strategies 1,3 --reps 21
//! cargo bench -p bulk-runtime --bench strategies -- warm [ROWS] # per-call cost, 10 (or ROWS) existing rows
//! cargo bench -p bulk-runtime --bench strategies -- concurrent
//! cargo bench -p bulk-runtime --bench strategies -- explain 100000 stored50
//! cargo bench -p bulk-runtime --bench strategies -- models    # other models' scratch tables in the session
//! cargo bench -p bulk-runtime --bench strategies -- fresh [REPS]  # each call on a new connection
//! cargo bench -p bulk-runtime --bench strategies -- fresh-cpu [REPS] [SIZES]  # the same, the server's CPU time
//! cargo bench -p bulk-runtime --bench strategies -- first-parts [REPS] [SIZES]  # each piece of a first call, the same way
//! BULK_BENCH_CITUS_URL=... cargo bench -p bulk-runtime --bench strategies -- citus  # on a Citus cluster
//! /usr/bin/time -v target/release/deps/strategies-* stream 10000000 [--collect]
//! cargo bench -p bulk-runtime --bench strategies -- writers [W] [N] [--shared PCT] [--rounds R] [--explain]
//! cargo bench -p bulk-runtime --bench strategies -- stream-marks 100000000 [--calls C] [--every M] [--sample S] [--keep]
//! ```
//!
//! The server is `BULK_BENCH_DATABASE_URL` (default
//! `host=127.0.0.1 user=postgres dbname=bulk_bench`; the database is created
//! if missing).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bulk_runtime::BulkCreateNew;

#[path = "modes/first_parts.rs"]
mod first_parts;
#[path = "modes/fresh_cpu.rs"]
mod fresh_cpu;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

#[path = "modes/citus.rs"]
mod citus;
#[path = "modes/stream_marks.rs"]
mod stream_marks;
#[path = "modes/writers.rs"]
mod writers;

/// The retweeter model of the original use case.
#[derive(BulkCreateNew, Clone, Copy, Debug)]
#[bulk(table = "bench_retweeter", unique(tweet, retweeter))]
struct Retweet {
    tweet: i64,
    #[bulk(index)]
    retweeter: i64,
    #[bulk(index)]
    original_author: i64,
}

const TABLE: &str = "bench_retweeter";
const STAGING: &str = "bench_staging";
const UPSERT_COLS: &str = "(tweet, retweeter, original_author)";

/// splitmix64: deterministic keys without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn key(&mut self) -> i64 {
        (self.next() >> 1) as i64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mix {
    /// Every key new and distinct.
    Fresh,
    /// Half of the batch's keys already stored.
    Stored50,
    /// 10% of the rows repeat a key offered earlier in the batch.
    InBatch10,
}

impl Mix {
    fn name(self) -> &'static str {
        match self {
            Mix::Fresh => "no duplicates",
            Mix::Stored50 => "50% already stored",
            Mix::InBatch10 => "10% repeated in batch",
        }
    }
    fn parse(s: &str) -> Option<Mix> {
        match s {
            "fresh" => Some(Mix::Fresh),
            "stored50" => Some(Mix::Stored50),
            "inbatch10" => Some(Mix::InBatch10),
            _ => None,
        }
    }
}

/// One benchmark case: the batch, the rows stored before it, the rows it must add.
struct Case {
    batch: Vec<Retweet>,
    prestored: Vec<Retweet>,
    new_rows: Vec<Retweet>,
}

fn make_case(size: usize, mix: Mix, seed: u64) -> Case {
    let mut rng = Rng(seed);
    let row = |rng: &mut Rng| Retweet {
        tweet: rng.key() % 1_000_000,
        retweeter: rng.key(),
        original_author: rng.key() % 10_000,
    };
    let (batch, prestored) = match mix {
        Mix::Fresh => ((0..size).map(|_| row(&mut rng)).collect::<Vec<_>>(), Vec::new()),
        Mix::Stored50 => {
            let batch: Vec<_> = (0..size).map(|_| row(&mut rng)).collect();
            let prestored = batch.iter().step_by(2).copied().collect();
            (batch, prestored)
        }
        Mix::InBatch10 => {
            let distinct = size - size / 10;
            let mut batch: Vec<_> = (0..distinct).map(|_| row(&mut rng)).collect();
            for _ in distinct..size {
                let mut dup = batch[rng.below(distinct)];
                dup.original_author = -1; // a later copy must lose to the first
                batch.push(dup);
            }
            // Shuffle, then make sure the first occurrence of each key is an original.
            rng.shuffle(&mut batch);
            let mut seen = HashMap::new();
            for (i, r) in batch.iter().enumerate() {
                seen.entry((r.tweet, r.retweeter)).or_insert(i);
            }
            for (i, r) in batch.clone().iter().enumerate() {
                let first = seen[&(r.tweet, r.retweeter)];
                if first == i && r.original_author == -1 {
                    // swap with a later original copy of the same key, if any
                    if let Some(j) = (i + 1..size).find(|&j| {
                        (batch[j].tweet, batch[j].retweeter) == (r.tweet, r.retweeter) && batch[j].original_author != -1
                    }) {
                        batch.swap(i, j);
                    }
                }
            }
            (batch, Vec::new())
        }
    };
    let stored: HashSet<(i64, i64)> = prestored.iter().map(|r| (r.tweet, r.retweeter)).collect();
    let mut seen = HashSet::new();
    let new_rows = batch
        .iter()
        .filter(|r| !stored.contains(&(r.tweet, r.retweeter)) && seen.insert((r.tweet, r.retweeter)))
        .copied()
        .collect();
    Case { batch, prestored, new_rows }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Strategy {
    Bulk,
    Ceiling,
    Unnest,
    Values,
    PerRow,
    Classic,
    UnnestSorted,
}

const STRATEGIES: [Strategy; 7] = [
    Strategy::Bulk,
    Strategy::Ceiling,
    Strategy::Unnest,
    Strategy::Values,
    Strategy::PerRow,
    Strategy::Classic,
    Strategy::UnnestSorted,
];

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::Bulk => "1 bulk_create_new",
            Strategy::Ceiling => "2 COPY new rows only (ceiling)",
            Strategy::Unnest => "3 INSERT unnest ON CONFLICT",
            Strategy::Values => "4 INSERT VALUES ON CONFLICT (chunked)",
            Strategy::PerRow => "5 per-row INSERT ON CONFLICT",
            Strategy::Classic => "6 LOCK + staging + NOT EXISTS",
            Strategy::UnnestSorted => "7 (reference) 3 with the rows sorted by key",
        }
    }
    fn is_peer(self) -> bool {
        matches!(self, Strategy::Unnest | Strategy::Values | Strategy::PerRow | Strategy::Classic)
    }
}

fn db_url() -> String {
    std::env::var("BULK_BENCH_DATABASE_URL").unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=bulk_bench".into())
}

async fn connect() -> Client {
    let url = db_url();
    let config: tokio_postgres::Config = url.parse().expect("BULK_BENCH_DATABASE_URL");
    let attempt = config.connect(NoTls).await;
    let (client, conn) = match attempt {
        Ok(c) => c,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => {
            let mut admin_config = config.clone();
            admin_config.dbname("postgres");
            let (admin, conn) = admin_config.connect(NoTls).await.expect("connect to postgres");
            tokio::spawn(conn);
            let name = config.get_dbname().unwrap_or("bulk_bench");
            admin
                .batch_execute(&format!("CREATE DATABASE {}", bulk_runtime::quote_ident(name)))
                .await
                .expect("create db");
            config.connect(NoTls).await.expect("connect after create")
        }
        Err(e) => panic!(
            "the benchmark needs PostgreSQL ({url}); start it with \
             `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`: {e}"
        ),
    };
    tokio::spawn(conn);
    client
}

async fn setup(client: &Client) {
    client.batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}; DROP TABLE IF EXISTS {STAGING}")).await.unwrap();
    client.batch_execute("DISCARD ALL").await.unwrap();
    client.batch_execute(&Retweet::model().migration_sql()).await.unwrap();
    client
        .batch_execute(&format!("CREATE TABLE {STAGING} (tweet bigint, retweeter bigint, original_author bigint)"))
        .await
        .unwrap();
}

async fn copy_rows(client: &Client, table: &str, rows: &[Retweet]) -> u64 {
    let sink =
        client.copy_in(&format!("COPY {table} {UPSERT_COLS} FROM STDIN (FORMAT binary)")).await.expect("copy_in");
    let mut w = Box::pin(BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8, Type::INT8]));
    for r in rows {
        w.as_mut().write(&[&r.tweet, &r.retweeter, &r.original_author]).await.unwrap();
    }
    w.as_mut().finish().await.unwrap()
}

/// Resets the target to the case's starting state, outside the timing.
async fn reset(client: &Client, case: &Case) {
    client.batch_execute(&format!("TRUNCATE {TABLE}; TRUNCATE {STAGING}")).await.unwrap();
    copy_rows(client, TABLE, &case.prestored).await;
    client.batch_execute(&format!("VACUUM ANALYZE {TABLE}")).await.unwrap();
}

/// Prepared statements the peers reuse (their best case: warm, prepared once).
struct Prepared {
    unnest: Statement,
    per_row: Statement,
    values: HashMap<usize, Statement>,
}

const VALUES_CHUNK: usize = 65_535 / 3;

/// Strategy 6 gets this long per run before it is reported as a timeout.
const CLASSIC_TIMEOUT_S: u64 = 60;

async fn prepare(client: &Client) -> Prepared {
    let unnest = client
        .prepare(&format!(
            "INSERT INTO {TABLE} {UPSERT_COLS} SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) \
             ON CONFLICT (tweet, retweeter) DO NOTHING"
        ))
        .await
        .unwrap();
    let per_row = client
        .prepare(&format!(
            "INSERT INTO {TABLE} {UPSERT_COLS} VALUES ($1, $2, $3) ON CONFLICT (tweet, retweeter) DO NOTHING"
        ))
        .await
        .unwrap();
    Prepared { unnest, per_row, values: HashMap::new() }
}

fn values_sql(rows: usize) -> String {
    let mut sql = format!("INSERT INTO {TABLE} {UPSERT_COLS} VALUES ");
    for i in 0..rows {
        let p = i * 3;
        let _ = write!(sql, "{}(${}, ${}, ${})", if i == 0 { "" } else { ", " }, p + 1, p + 2, p + 3);
    }
    sql.push_str(" ON CONFLICT (tweet, retweeter) DO NOTHING");
    sql
}

/// The rows' three columns, as `unnest`'s array parameters.
fn columns<'r>(rows: impl Iterator<Item = &'r Retweet> + Clone) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    (
        rows.clone().map(|r| r.tweet).collect(),
        rows.clone().map(|r| r.retweeter).collect(),
        rows.map(|r| r.original_author).collect(),
    )
}

/// The call, or the ceiling (a COPY of the new rows), which need no
/// prepared statement of the benchmark's.
async fn run_unprepared(strategy: Strategy, client: &mut Client, case: &Case) -> Result<u64, String> {
    if strategy == Strategy::Ceiling {
        return Ok(copy_rows(client, TABLE, &case.new_rows).await);
    }
    Retweet::bulk_create_new(client, &case.batch).await.map(|o| o.inserted).map_err(|e| e.to_string())
}

/// Runs one strategy; returns rows inserted, or the error text.
async fn run(strategy: Strategy, client: &mut Client, prepared: &mut Prepared, case: &Case) -> Result<u64, String> {
    let err = |e: tokio_postgres::Error| format!("{e:?}");
    match strategy {
        Strategy::Bulk | Strategy::Ceiling => run_unprepared(strategy, client, case).await,
        Strategy::Unnest => {
            let (a, b, c) = columns(case.batch.iter());
            client.execute(&prepared.unnest, &[&a, &b, &c]).await.map_err(err)
        }
        Strategy::UnnestSorted => {
            // Strategy 3 made deadlock-free: the rows in key order (a stable
            // sort, so a repeated key's first row goes in first). Not a peer:
            // it shows what the key order alone costs on the short path.
            let mut rows: Vec<&Retweet> = case.batch.iter().collect();
            rows.sort_by_key(|r| (r.tweet, r.retweeter));
            let (a, b, c) = columns(rows.iter().copied());
            client.execute(&prepared.unnest, &[&a, &b, &c]).await.map_err(err)
        }
        Strategy::Values => {
            let tx = client.transaction().await.map_err(err)?;
            let mut inserted = 0;
            for chunk in case.batch.chunks(VALUES_CHUNK) {
                if let std::collections::hash_map::Entry::Vacant(slot) = prepared.values.entry(chunk.len()) {
                    slot.insert(tx.prepare(&values_sql(chunk.len())).await.map_err(err)?);
                }
                let params: Vec<&(dyn ToSql + Sync)> =
                    chunk.iter().flat_map(|r| [&r.tweet as _, &r.retweeter as _, &r.original_author as _]).collect();
                inserted += tx.execute(&prepared.values[&chunk.len()], &params).await.map_err(err)?;
            }
            tx.commit().await.map_err(err)?;
            Ok(inserted)
        }
        Strategy::PerRow => {
            let tx = client.transaction().await.map_err(err)?;
            let mut inserted = 0;
            for r in &case.batch {
                inserted +=
                    tx.execute(&prepared.per_row, &[&r.tweet, &r.retweeter, &r.original_author]).await.map_err(err)?;
            }
            tx.commit().await.map_err(err)?;
            Ok(inserted)
        }
        Strategy::Classic => {
            let tx = client.transaction().await.map_err(err)?;
            // Bounded: on a freshly emptied target the planner may pick a
            // nested loop over a sequential scan for NOT EXISTS (quadratic).
            tx.batch_execute(&format!(
                "SET LOCAL statement_timeout = '{CLASSIC_TIMEOUT_S}s'; \
                 LOCK TABLE {TABLE}, {STAGING} IN EXCLUSIVE MODE; DELETE FROM {STAGING}"
            ))
            .await
            .map_err(err)?;
            copy_rows(tx.client(), STAGING, &case.batch).await;
            let inserted = tx
                .execute(
                    &format!(
                        "INSERT INTO {TABLE} {UPSERT_COLS} SELECT s.tweet, s.retweeter, s.original_author \
                         FROM {STAGING} s WHERE NOT EXISTS (SELECT 1 FROM {TABLE} t \
                         WHERE t.tweet = s.tweet AND t.retweeter = s.retweeter)"
                    ),
                    &[],
                )
                .await
                .map_err(|e| match e.code() {
                    Some(c) if *c == tokio_postgres::error::SqlState::QUERY_CANCELED => {
                        format!("timeout (> {CLASSIC_TIMEOUT_S} s)")
                    }
                    Some(c) => format!("fails (SQLSTATE {})", c.code()),
                    None => format!("fails ({e})"),
                })?;
            tx.batch_execute(&format!("DELETE FROM {STAGING}")).await.map_err(err)?;
            tx.commit().await.map_err(err)?;
            Ok(inserted)
        }
    }
}

/// Peak resident memory since the last reset, in bytes (Linux `VmHWM`).
fn peak_rss() -> u64 {
    status_kb("VmHWM:") * 1024
}
fn current_rss() -> u64 {
    status_kb("VmRSS:") * 1024
}
fn status_kb(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
/// Resets `VmHWM` to the current RSS (Linux `clear_refs` value 5).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[derive(Default)]
struct Samples {
    times: Vec<Duration>,
    peak: u64,
    error: Option<String>,
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// What a table run measures: `--quick`, `--sizes N,N`, `--mixes fresh,stored50,inbatch10`,
/// `--strategies 1,2,3` (the ceiling, 2, always runs: the ratios need it), `--reps N`.
#[derive(Debug, Default)]
struct TableOptions {
    quick: bool,
    sizes: Option<Vec<usize>>,
    mixes: Option<Vec<Mix>>,
    strategies: Option<Vec<Strategy>>,
    reps: Option<usize>,
}

impl TableOptions {
    fn parse(args: &[String]) -> Result<TableOptions, String> {
        let mut o = TableOptions::default();
        let mut args = args.iter();
        let list = |v: Option<&String>, flag: &str| -> Result<Vec<String>, String> {
            let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
            Ok(v.split(',').map(str::to_owned).collect())
        };
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--sizes" => {
                    let sizes: Result<Vec<usize>, _> = list(args.next(), a)?.iter().map(|n| n.parse()).collect();
                    o.sizes = Some(sizes.map_err(|e| format!("--sizes: {e}"))?);
                }
                "--mixes" => {
                    let mixes: Option<Vec<Mix>> = list(args.next(), a)?.iter().map(|m| Mix::parse(m)).collect();
                    o.mixes = Some(mixes.ok_or("--mixes: expected fresh, stored50, inbatch10")?);
                }
                "--strategies" => {
                    let picked: Option<Vec<Strategy>> = list(args.next(), a)?
                        .iter()
                        .map(|n| n.parse::<usize>().ok().and_then(|n| STRATEGIES.get(n.wrapping_sub(1)).copied()))
                        .collect();
                    let mut picked = picked.ok_or("--strategies: expected numbers from 1 to 7")?;
                    if !picked.contains(&Strategy::Ceiling) {
                        picked.push(Strategy::Ceiling);
                    }
                    o.strategies = Some(picked);
                }
                "--reps" => {
                    let n = args.next().and_then(|n| n.parse().ok()).ok_or("--reps needs a number")?;
                    o.reps = Some(n);
                }
                other => return Err(format!("unknown option {other}")),
            }
        }
        Ok(o)
    }
}

/// Repetitions of one case: many for short batches, whose times are a
/// fraction of a millisecond and noisy, fewer for long ones.
fn repetitions(size: usize) -> usize {
    match size {
        s if s >= 1_000_000 => 5,
        s if s >= 100_000 => 9,
        s if s >= 10_000 => 15,
        _ => 41,
    }
}

async fn table_run(options: TableOptions) {
    let mut client = connect().await;
    setup(&client).await;
    let mut prepared = prepare(&client).await;
    let sizes: &[usize] =
        if options.quick { &[10, 100, 1_000, 10_000] } else { &[10, 100, 1_000, 10_000, 100_000, 1_000_000] };
    let sizes: &[usize] = options.sizes.as_deref().unwrap_or(sizes);
    let mixes: &[Mix] = options.mixes.as_deref().unwrap_or(&[Mix::Fresh, Mix::Stored50, Mix::InBatch10]);
    let strategies: &[Strategy] = options.strategies.as_deref().unwrap_or(&STRATEGIES);
    let mut shuffle_rng = Rng(42);
    let mut summary = String::new();
    for &mix in mixes {
        for &size in sizes {
            let reps = options.reps.unwrap_or_else(|| repetitions(size));
            let case = make_case(size, mix, size as u64 * 31 + mix as u64);
            let expected = case.new_rows.len() as u64;
            let mut samples: HashMap<&'static str, Samples> = HashMap::new();
            for _ in 0..reps {
                let mut order = strategies.to_vec();
                shuffle_rng.shuffle(&mut order);
                for strategy in order {
                    if strategy == Strategy::PerRow && size > 10_000 {
                        continue;
                    }
                    // A strategy that failed (or timed out) once is not rerun.
                    if samples.get(strategy.name()).is_some_and(|s| s.error.is_some()) {
                        continue;
                    }
                    reset(&client, &case).await;
                    let before = current_rss();
                    reset_peak();
                    let start = Instant::now();
                    let result = run(strategy, &mut client, &mut prepared, &case).await;
                    let elapsed = start.elapsed();
                    let peak = peak_rss().saturating_sub(before);
                    let s = samples.entry(strategy.name()).or_default();
                    match result {
                        Ok(n) => {
                            let stored: i64 =
                                client.query_one(&format!("SELECT count(*) FROM {TABLE}"), &[]).await.unwrap().get(0);
                            assert_eq!(n, expected, "{strategy:?} {mix:?} {size}: inserted count");
                            assert_eq!(
                                stored as u64,
                                case.prestored.len() as u64 + expected,
                                "{strategy:?} {mix:?} {size}: rows in table"
                            );
                            s.times.push(elapsed);
                            s.peak = s.peak.max(peak);
                        }
                        Err(e) => s.error = Some(e),
                    }
                }
            }
            let ceiling = median(&samples[Strategy::Ceiling.name()].times);
            let best_peer = STRATEGIES
                .iter()
                .filter(|s| s.is_peer())
                .filter_map(|s| samples.get(s.name()))
                .filter(|s| s.error.is_none() && !s.times.is_empty())
                .map(|s| median(&s.times))
                .min();
            println!("\n### {} rows, {} (expected new rows: {expected}, {reps} repetitions)\n", size, mix.name());
            println!("| strategy | median ms | min–max ms | rows/s | × ceiling | × best peer | client peak MB |");
            println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
            for strategy in STRATEGIES {
                let Some(s) = samples.get(strategy.name()) else {
                    println!("| {} | — | | | | | |", strategy.name());
                    continue;
                };
                if let Some(e) = &s.error {
                    println!("| {} | {} | | | | | |", strategy.name(), e.lines().next().unwrap_or(""));
                    continue;
                }
                let m = median(&s.times);
                let (lo, hi) = (s.times.iter().min().unwrap(), s.times.iter().max().unwrap());
                let rate = size as f64 / m.as_secs_f64();
                let vs_best = best_peer.map_or("".into(), |b| format!("{:.2}", m.as_secs_f64() / b.as_secs_f64()));
                println!(
                    "| {} | {} | {}–{} | {:.0} | {:.2} | {} | {:.1} |",
                    strategy.name(),
                    ms(m),
                    ms(*lo),
                    ms(*hi),
                    rate,
                    m.as_secs_f64() / ceiling.as_secs_f64(),
                    vs_best,
                    s.peak as f64 / 1e6
                );
                if strategy == Strategy::Bulk {
                    let _ = writeln!(
                        summary,
                        "| {} | {} | {:.2} | {} |",
                        size,
                        mix.name(),
                        m.as_secs_f64() / ceiling.as_secs_f64(),
                        vs_best
                    );
                }
            }
        }
    }
    println!("\n### Summary: bulk_create_new against the ceiling and the best peer (3–6)\n");
    println!("| rows | mix | × ceiling | × best peer |\n| ---: | --- | ---: | ---: |");
    print!("{summary}");
}

/// `rows` rows whose keys are all stored (10 unless given: `warm 100`),
/// 1,000 calls per strategy on one connection, taking turns.
async fn warm_run(rows: usize) {
    let mut client = connect().await;
    setup(&client).await;
    let mut prepared = prepare(&client).await;
    let case = make_case(rows, Mix::Fresh, 7);
    let all_stored = Case { batch: case.batch.clone(), prestored: case.batch.clone(), new_rows: Vec::new() };
    reset(&client, &all_stored).await;
    println!("| strategy | calls | median µs/call | mean µs/call |\n| --- | ---: | ---: | ---: |");
    let strategies = [
        Strategy::Bulk,
        Strategy::Unnest,
        Strategy::Values,
        Strategy::PerRow,
        Strategy::Classic,
        Strategy::UnnestSorted,
    ];
    // Warm up: the first call creates the scratch table and runs the schema check.
    for strategy in strategies {
        for _ in 0..20 {
            run(strategy, &mut client, &mut prepared, &all_stored).await.unwrap();
        }
    }
    // Interleaved: each round runs every strategy once, in a new random order.
    let calls = 1000;
    let mut times: HashMap<&'static str, Vec<Duration>> = HashMap::new();
    let mut rng = Rng(11);
    for _ in 0..calls {
        let mut order = strategies.to_vec();
        rng.shuffle(&mut order);
        for strategy in order {
            let t = Instant::now();
            let n = run(strategy, &mut client, &mut prepared, &all_stored).await.unwrap();
            times.entry(strategy.name()).or_default().push(t.elapsed());
            assert_eq!(n, 0);
        }
    }
    for strategy in strategies {
        let times = &times[strategy.name()];
        let total: Duration = times.iter().sum();
        println!(
            "| {} | {calls} | {:.0} | {:.0} |",
            strategy.name(),
            median(times).as_secs_f64() * 1e6,
            total.as_secs_f64() * 1e6 / calls as f64
        );
    }
}

/// Streams `n` rows through the bulk call, from an iterator or a collected Vec.
async fn stream_run(n: usize, collect: bool) {
    let mut client = connect().await;
    setup(&client).await;
    let baseline = current_rss();
    reset_peak();
    let mut rng = Rng(99);
    let rows = (0..n).map(move |_| Retweet { tweet: rng.key(), retweeter: rng.key(), original_author: 1 });
    let start = Instant::now();
    let outcome = if collect {
        let v: Vec<Retweet> = rows.collect();
        Retweet::bulk_create_new(&mut client, &v).await.unwrap()
    } else {
        Retweet::bulk_create_new(&mut client, rows).await.unwrap()
    };
    assert_eq!(outcome.offered, n as u64);
    println!(
        "{} rows from {}: {outcome} in {:.1} s; baseline RSS {:.1} MB, peak RSS {:.1} MB, peak above baseline {:.1} MB",
        n,
        if collect { "a collected Vec" } else { "an iterator" },
        start.elapsed().as_secs_f64(),
        baseline as f64 / 1e6,
        peak_rss() as f64 / 1e6,
        peak_rss().saturating_sub(baseline) as f64 / 1e6
    );
}

/// 8 writers, separate connections, overlapping keys in different orders.
async fn concurrent_run() {
    let writers: usize = 8;
    let rounds: i64 = 5;
    let batch = 20_000;
    let key_space = 60_000u64;
    println!(
        "| strategy | writers | rounds | rows offered | distinct keys | inserted | errors | total s | rows offered/s |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for strategy in [Strategy::Bulk, Strategy::Classic] {
        let admin = connect().await;
        setup(&admin).await;
        let start = Instant::now();
        let mut handles = Vec::new();
        for w in 0..writers {
            handles.push(tokio::spawn(async move {
                let mut client = connect().await;
                let mut prepared = prepare(&client).await;
                let mut rng = Rng(1000 + w as u64);
                let (mut inserted, mut errors, mut keys) = (0u64, Vec::new(), HashSet::new());
                for round in 0..rounds {
                    // every writer draws from the same key space: heavy overlap
                    // distinct keys within a batch (strategy 6 cannot take repeats),
                    // in a different random order for every writer
                    let mut space: Vec<i64> = (0..key_space as i64).collect();
                    rng.shuffle(&mut space);
                    let rows: Vec<Retweet> = space[..batch]
                        .iter()
                        .map(|&k| Retweet { tweet: round, retweeter: k, original_author: w as i64 })
                        .collect();
                    keys.extend(rows.iter().map(|r| (r.tweet, r.retweeter)));
                    let case = Case { batch: rows, prestored: Vec::new(), new_rows: Vec::new() };
                    match run(strategy, &mut client, &mut prepared, &case).await {
                        Ok(n) => inserted += n,
                        Err(e) => errors.push(e),
                    }
                }
                (inserted, errors, keys)
            }));
        }
        let (mut inserted, mut errors, mut keys) = (0, Vec::new(), HashSet::new());
        for h in handles {
            let (i, e, k) = h.await.unwrap();
            inserted += i;
            errors.extend(e);
            keys.extend(k);
        }
        let total = start.elapsed();
        let stored: i64 = admin.query_one(&format!("SELECT count(*) FROM {TABLE}"), &[]).await.unwrap().get(0);
        let offered = writers * rounds as usize * batch;
        println!(
            "| {} | {writers} | {rounds} | {offered} | {} | {inserted} (table: {stored}) | {} | {:.2} | {:.0} |",
            strategy.name(),
            keys.len(),
            errors.len(),
            total.as_secs_f64(),
            offered as f64 / total.as_secs_f64()
        );
        for e in errors.iter().take(3) {
            println!("  error: {e}");
        }
        if strategy == Strategy::Bulk {
            assert_eq!(inserted, stored as u64, "sum of inserted counts equals the rows stored");
            assert_eq!(stored as usize, keys.len(), "every distinct key stored once");
        }
    }
}

async fn explain_run(size: usize, mix: Mix) {
    let client = connect().await;
    setup(&client).await;
    let case = make_case(size, mix, 5);
    let sql = bulk_runtime::__test_hooks::protocol_sql(Retweet::model());
    // The plain form the call runs (with DISTINCT ON only if a key repeats),
    // and the ON CONFLICT form it falls back to, each from the same table
    // state and scratch rows, in a transaction rolled back afterwards.
    let plain = if mix == Mix::InBatch10 { sql.insert_plain } else { sql.insert_plain_distinct_keys };
    for (form, insert) in [("plain form", plain), ("ON CONFLICT form", sql.insert_on_conflict)] {
        reset(&client, &case).await;
        client.batch_execute("BEGIN").await.unwrap();
        client.batch_execute("SET LOCAL work_mem = '64MB'").await.unwrap();
        client.batch_execute(sql.create_scratch).await.unwrap();
        let t = Instant::now();
        let sink = client.copy_in(sql.copy).await.unwrap();
        let mut w = Box::pin(BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8, Type::INT8, Type::INT8]));
        for (i, r) in case.batch.iter().enumerate() {
            w.as_mut().write(&[&(i as i64), &r.tweet, &r.retweeter, &r.original_author]).await.unwrap();
        }
        w.as_mut().finish().await.unwrap();
        println!("{form}: COPY into the scratch table {:.1} ms\n\n{insert}\n", t.elapsed().as_secs_f64() * 1e3);
        for row in client.query(&format!("EXPLAIN (ANALYZE, BUFFERS) {insert}"), &[]).await.unwrap() {
            println!("{}", row.get::<_, String>(0));
        }
        println!();
        client.batch_execute("ROLLBACK").await.unwrap();
    }
}

/// The cost of other models' scratch tables in one session: PostgreSQL
/// truncates every `ON COMMIT DELETE ROWS` table of a session at the commit
/// of each transaction that touched a temporary table. With `k` such tables
/// besides the call's own (made like the call's, one per simulated model),
/// times a COPY-path call (5,100 new rows) and an application's own small
/// transaction on a temporary table.
async fn models_run() {
    let mut client = connect().await;
    setup(&client).await;
    client.batch_execute("CREATE TEMP TABLE IF NOT EXISTS bench_mine (a int)").await.unwrap();
    let mut rng = Rng(5);
    println!(
        "| other scratch tables in the session | COPY call of 5,100 rows, median ms | its ratio to 0 | \
         own temp-table transaction, median ms | its ratio to 0 |\n| ---: | ---: | ---: | ---: | ---: |"
    );
    let mut base: Option<(Duration, Duration)> = None;
    let mut made = 0;
    for k in [0usize, 8, 100] {
        while made < k {
            client
                .batch_execute(&format!(
                    "CREATE TEMP TABLE bench_other_{made} (o bigint, tweet bigint, retweeter bigint, \
                     original_author bigint) ON COMMIT DELETE ROWS"
                ))
                .await
                .unwrap();
            made += 1;
        }
        let mut calls = Vec::new();
        let mut own = Vec::new();
        for round in 0..41 {
            let rows: Vec<Retweet> = (0..5100)
                .map(|_| Retweet { tweet: rng.key(), retweeter: rng.key(), original_author: rng.key() })
                .collect();
            let t = Instant::now();
            let outcome = Retweet::bulk_create_new(&mut client, &rows).await.unwrap();
            calls.push(t.elapsed());
            assert_eq!(outcome.inserted, 5100);
            for _ in 0..5 {
                let t = Instant::now();
                client.batch_execute("BEGIN; INSERT INTO bench_mine VALUES (1); COMMIT").await.unwrap();
                own.push(t.elapsed());
            }
            if round % 10 == 0 {
                client.batch_execute("TRUNCATE bench_mine").await.unwrap();
            }
        }
        let (call, mine) = (median(&calls), median(&own));
        let (call0, mine0) = *base.get_or_insert((call, mine));
        println!(
            "| {k} | {} | {:.2} | {} | {:.2} |",
            ms(call),
            call.as_secs_f64() / call0.as_secs_f64(),
            ms(mine),
            mine.as_secs_f64() / mine0.as_secs_f64()
        );
    }
}

/// One strategy on a connection opened for it (a cron job or queue worker
/// that connects per batch), the way the libraries send it: the call;
/// a raw COPY of the new rows; Diesel's and SeaORM's chunked multi-row
/// `VALUES ... ON CONFLICT DO NOTHING` (prepared on first use, in a
/// transaction); Django's `unnest` statement (unprepared). Returns rows
/// inserted.
async fn run_fresh(strategy: Strategy, client: &mut Client, case: &Case) -> Result<u64, String> {
    let err = |e: tokio_postgres::Error| format!("{e:?}");
    match strategy {
        Strategy::Bulk | Strategy::Ceiling => run_unprepared(strategy, client, case).await,
        Strategy::Unnest => {
            let (a, b, c) = columns(case.batch.iter());
            let sql = format!(
                "INSERT INTO {TABLE} {UPSERT_COLS} SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) \
                 ON CONFLICT (tweet, retweeter) DO NOTHING"
            );
            client
                .execute_typed(&sql, &[(&a, Type::INT8_ARRAY), (&b, Type::INT8_ARRAY), (&c, Type::INT8_ARRAY)])
                .await
                .map_err(err)
        }
        Strategy::Values => {
            let tx = client.transaction().await.map_err(err)?;
            let mut inserted = 0;
            for chunk in case.batch.chunks(VALUES_CHUNK) {
                let statement = tx.prepare(&values_sql(chunk.len())).await.map_err(err)?;
                let params: Vec<&(dyn ToSql + Sync)> =
                    chunk.iter().flat_map(|r| [&r.tweet as _, &r.retweeter as _, &r.original_author as _]).collect();
                inserted += tx.execute(&statement, &params).await.map_err(err)?;
            }
            tx.commit().await.map_err(err)?;
            Ok(inserted)
        }
        other => Err(format!("{} is not run on fresh connections", other.name())),
    }
}

/// Every strategy of [`run_fresh`] on a connection of its own, interleaved
/// in a new random order each round; times connect-to-commit (connect, one
/// warm-up `SELECT 1`, the call and its commit) and call-to-commit apart.
async fn fresh_run(reps: usize) {
    let admin = connect().await;
    setup(&admin).await;
    let strategies = [Strategy::Bulk, Strategy::Ceiling, Strategy::Values, Strategy::Unnest];
    let mut rng = Rng(17);
    println!(
        "| rows | mix | strategy | connect-to-commit median ms | call-to-commit median ms | call min–max ms | \
         call ÷ best of VALUES/unnest | connect-to-commit ÷ best |\n| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for mix in [Mix::Fresh, Mix::Stored50, Mix::InBatch10] {
        for size in [10usize, 100, 1_000, 10_000] {
            let case = make_case(size, mix, size as u64 * 7 + mix as u64);
            let mut whole: HashMap<&'static str, Vec<Duration>> = HashMap::new();
            let mut call: HashMap<&'static str, Vec<Duration>> = HashMap::new();
            for _ in 0..reps {
                let mut order = strategies.to_vec();
                rng.shuffle(&mut order);
                for strategy in order {
                    reset(&admin, &case).await;
                    let start = Instant::now();
                    let mut client = connect().await;
                    client.batch_execute("SELECT 1").await.unwrap();
                    let called = Instant::now();
                    let inserted = run_fresh(strategy, &mut client, &case).await.unwrap();
                    let done = Instant::now();
                    assert_eq!(inserted, case.new_rows.len() as u64, "{}", strategy.name());
                    whole.entry(strategy.name()).or_default().push(done - start);
                    call.entry(strategy.name()).or_default().push(done - called);
                }
            }
            let best = |m: &HashMap<&'static str, Vec<Duration>>| {
                [Strategy::Values, Strategy::Unnest].iter().map(|s| median(&m[s.name()])).min().unwrap()
            };
            let (best_call, best_whole) = (best(&call), best(&whole));
            for strategy in strategies {
                let (c, w) = (&call[strategy.name()], &whole[strategy.name()]);
                let (min, max) = (c.iter().min().unwrap(), c.iter().max().unwrap());
                println!(
                    "| {size} | {} | {} | {} | {} | {}–{} | {:.2} | {:.2} |",
                    mix.name(),
                    strategy.name(),
                    ms(median(w)),
                    ms(median(c)),
                    ms(*min),
                    ms(*max),
                    median(c).as_secs_f64() / best_call.as_secs_f64(),
                    median(w).as_secs_f64() / best_whole.as_secs_f64(),
                );
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    match args.first().map(String::as_str) {
        Some("warm") => warm_run(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10)).await,
        Some("concurrent") => concurrent_run().await,
        Some("citus") => citus::citus_run(&args[1..]).await,
        Some("models") => models_run().await,
        Some("writers") => writers::run(&args[1..]).await,
        Some("stream-marks") => stream_marks::run(&args[1..]).await,
        Some("fresh") => fresh_run(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(15)).await,
        Some("fresh-cpu") => {
            let reps = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(15);
            let sizes: Vec<usize> = args.get(2).map_or_else(
                || vec![10, 100, 1_000, 10_000],
                |s| s.split(',').map(|n| n.parse().expect("sizes: N,N,...")).collect(),
            );
            fresh_cpu::run(reps, &sizes).await
        }
        Some("first-parts") => {
            let reps = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(15);
            let sizes: Vec<usize> = args
                .get(2)
                .map_or_else(|| vec![10, 100], |s| s.split(',').map(|n| n.parse().expect("sizes: N,N,...")).collect());
            first_parts::parts(reps, &sizes).await
        }
        Some("stream") => {
            let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
            stream_run(n, args.iter().any(|a| a == "--collect")).await
        }
        Some("explain") => {
            let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
            let mix = args.get(2).and_then(|s| Mix::parse(s)).unwrap_or(Mix::Fresh);
            explain_run(n, mix).await
        }
        Some(other) if !other.starts_with("--") => {
            eprintln!(
                "unknown mode {other}; expected warm [ROWS], concurrent, citus [OPTIONS], models, fresh [REPS], fresh-cpu [REPS] [SIZES], first-parts [REPS] [SIZES], stream N [--collect], \
                 writers [W] [N] [--shared PCT] [--rounds R] [--explain], \
                 stream-marks N [--calls C] [--every M] [--sample S] [--keep], explain N MIX, \
                 or table options (--quick, --sizes N,N, --mixes M,M, --strategies 1,2,3, --reps N)"
            );
            std::process::exit(2);
        }
        _ => match TableOptions::parse(&args) {
            Ok(options) => table_run(options).await,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        },
    }
}
