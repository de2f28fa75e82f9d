//! `writers [W] [N] [--shared PCT] [--rounds R] [--explain]`: `W` writers
//! (default 8), each on its own connection, each streaming `N` generated
//! rows (default 2,000,000) through one call of the library's stream API
//! (`run_stream`), `PCT`% of them (default 30) on keys that every writer
//! offers, in a different order; against `W` parallel raw binary COPYs of
//! the same new rows (each distinct key once, the shared keys split between
//! them) into a table made `LIKE` the call's, `INCLUDING ALL`. `R` rounds
//! (default 1) alternate which side goes first. Prints the aggregate rows/s
//! of each side, their ratio, the errors, the counts (checked exact), and
//! the CPU time of the writers' backends (read from `/proc/<pid>/stat`, on
//! the same machine) and of this process. `--explain` adds the plan
//! (`EXPLAIN (ANALYZE, BUFFERS)`, from `auto_explain`) of the call's insert
//! of a sample batch into the filled table.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulk_runtime::BulkCreateNew;
use futures_util::{StreamExt, stream};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::{connect, median};

/// The retweeter model on a table of its own.
#[derive(BulkCreateNew, Clone, Copy, Debug)]
#[bulk(table = "bench_writers", unique(tweet, retweeter))]
struct Written {
    tweet: i64,
    #[bulk(index)]
    retweeter: i64,
    #[bulk(index)]
    original_author: i64,
}

const TABLE: &str = "bench_writers";
const RAW: &str = "bench_writers_raw";
const COLS: &str = "(tweet, retweeter, original_author)";

/// The size of the `--explain` sample batch.
const SAMPLE: u64 = 100_000;

struct Options {
    writers: u64,
    rows: u64,
    shared_pct: u64,
    rounds: usize,
    explain: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options { writers: 8, rows: 2_000_000, shared_pct: 30, rounds: 1, explain: false };
    let mut positional = 0;
    let mut args = args.iter();
    let number = |v: Option<&String>, what: &str| -> Result<u64, String> {
        v.and_then(|v| v.replace('_', "").parse().ok()).ok_or(format!("writers: {what} needs a number"))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--shared" => o.shared_pct = number(args.next(), a)?.min(100),
            "--rounds" => o.rounds = number(args.next(), a)?.max(1) as usize,
            "--explain" => o.explain = true,
            n if !n.starts_with("--") && positional < 2 => {
                let n = number(Some(a), "W and N")?.max(1);
                if positional == 0 {
                    o.writers = n
                } else {
                    o.rows = n
                }
                positional += 1;
            }
            other => return Err(format!("writers: unknown option {other}")),
        }
    }
    Ok(o)
}

/// splitmix64's finalizer: a bijection of `u64`, so distinct ids give
/// distinct `retweeter`s, hence distinct keys.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The row of key `id`, as writer `w` offers it.
fn row(id: u64, w: u64) -> Written {
    Written { tweet: (mix(id ^ 0x5555_5555) % 1_000_000) as i64, retweeter: mix(id) as i64, original_author: w as i64 }
}

/// Which keys the writers offer: writer `w`'s row `j` is on a shared key
/// (one of `shared()`, which every writer offers once, starting at a
/// different place) or on a key of its own.
#[derive(Clone, Copy)]
struct Keys {
    writers: u64,
    rows: u64,
    pct: u64,
}

impl Keys {
    fn shared(self) -> u64 {
        self.rows * self.pct / 100
    }
    fn distinct(self) -> u64 {
        self.writers * (self.rows - self.shared()) + self.shared()
    }
    /// Row `j` of writer `w`: its key id, and the shared key's index if shared.
    fn id(self, w: u64, j: u64) -> (u64, Option<u64>) {
        let before = j * self.pct / 100; // shared rows before row j
        if (j + 1) * self.pct / 100 > before {
            let s = self.shared();
            (((before + w * s / self.writers) % s), Some(before))
        } else {
            (self.shared() + w * (self.rows - self.shared()) + (j - before), None)
        }
    }
    /// Writer `w`'s rows for the call: all `rows` of them.
    fn offered(self, w: u64) -> impl Iterator<Item = Written> + Send {
        (0..self.rows).map(move |j| row(self.id(w, j).0, w))
    }
    /// Writer `w`'s rows for the raw COPY: its own keys and its share of the
    /// shared ones, each once.
    fn new_rows(self, w: u64) -> impl Iterator<Item = Written> + Send {
        (0..self.rows).filter_map(move |j| match self.id(w, j) {
            (id, Some(_)) if id % self.writers != w => None,
            (id, _) => Some(row(id, w)),
        })
    }
}

/// User plus system CPU time of a process, from `/proc/<pid>/stat`
/// (USER_HZ = 100 on Linux).
fn cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses: utime is the 14th field.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

async fn backend_pid(client: &Client) -> String {
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    pid.to_string()
}

/// One writer's part of a phase.
struct Part {
    /// Rows inserted (the call's count, or the COPY's).
    rows: u64,
    error: Option<String>,
    /// CPU time of the writer's backend during its part.
    backend_cpu: Duration,
    /// Time until the last row was sent (the call), and in all.
    streaming: Duration,
    total: Duration,
}

/// A phase: every writer's part, and the wall and client CPU time.
struct Phase {
    parts: Vec<Part>,
    wall: Duration,
    client_cpu: Duration,
}

impl Phase {
    fn rows(&self) -> u64 {
        self.parts.iter().map(|p| p.rows).sum()
    }
    fn errors(&self) -> Vec<&str> {
        self.parts.iter().filter_map(|p| p.error.as_deref()).collect()
    }
    fn backend_cpu(&self) -> Duration {
        self.parts.iter().map(|p| p.backend_cpu).sum()
    }
}

async fn connections(n: u64) -> Vec<(Client, String)> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let client = connect().await;
        let pid = backend_pid(&client).await;
        clients.push((client, pid));
    }
    clients
}

/// The call: each writer streams its rows through one `run_stream` call.
async fn call_phase(admin: &Client, keys: Keys) -> Phase {
    admin.batch_execute(&format!("TRUNCATE {TABLE}; CHECKPOINT")).await.unwrap();
    let clients = connections(keys.writers).await;
    let client_cpu = cpu("self");
    let start = Instant::now();
    let mut handles = Vec::new();
    for (w, (mut client, pid)) in clients.into_iter().enumerate() {
        handles.push(tokio::spawn(async move {
            let cpu_before = cpu(&pid);
            let begin = Instant::now();
            let mut sent_all = None;
            let rows = keys.rows;
            let result = Written::bulk(&mut client)
                .on_progress(|p| {
                    if p.sent == rows && sent_all.is_none() {
                        sent_all = Some(Instant::now());
                    }
                })
                .run_stream(stream::iter(keys.offered(w as u64)))
                .await;
            let end = Instant::now();
            let (rows, error) = match result {
                Ok(report) => (report.inserted, None),
                Err(e) => (0, Some(format!("{e}: {e:?}"))),
            };
            Part {
                rows,
                error,
                backend_cpu: cpu(&pid).saturating_sub(cpu_before),
                streaming: sent_all.unwrap_or(end) - begin,
                total: end - begin,
            }
        }));
    }
    let mut parts = Vec::new();
    for h in handles {
        parts.push(h.await.unwrap());
    }
    Phase { parts, wall: start.elapsed(), client_cpu: cpu("self").saturating_sub(client_cpu) }
}

/// The raw COPYs: each writer copies its share of the new rows.
async fn raw_phase(admin: &Client, keys: Keys) -> Phase {
    admin.batch_execute(&format!("TRUNCATE {RAW}; CHECKPOINT")).await.unwrap();
    let clients = connections(keys.writers).await;
    let client_cpu = cpu("self");
    let start = Instant::now();
    let mut handles = Vec::new();
    for (w, (client, pid)) in clients.into_iter().enumerate() {
        handles.push(tokio::spawn(async move {
            let cpu_before = cpu(&pid);
            let begin = Instant::now();
            let copy = async {
                let sink = client.copy_in(&format!("COPY {RAW} {COLS} FROM STDIN (FORMAT binary)")).await?;
                let mut writer = Box::pin(BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8, Type::INT8]));
                for r in keys.new_rows(w as u64) {
                    writer.as_mut().write(&[&r.tweet, &r.retweeter, &r.original_author]).await?;
                }
                writer.as_mut().finish().await
            };
            let result: Result<u64, tokio_postgres::Error> = copy.await;
            let end = Instant::now();
            let (rows, error) = match result {
                Ok(n) => (n, None),
                Err(e) => (0, Some(format!("{e:?}"))),
            };
            Part {
                rows,
                error,
                backend_cpu: cpu(&pid).saturating_sub(cpu_before),
                streaming: end - begin,
                total: end - begin,
            }
        }));
    }
    let mut parts = Vec::new();
    for h in handles {
        parts.push(h.await.unwrap());
    }
    Phase { parts, wall: start.elapsed(), client_cpu: cpu("self").saturating_sub(client_cpu) }
}

async fn count(admin: &Client, table: &str) -> u64 {
    let n: i64 = admin.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
    n as u64
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A connection whose notices (here: `auto_explain`'s plans) are kept.
async fn connect_with_notices() -> (Client, Arc<Mutex<Vec<String>>>) {
    let config: tokio_postgres::Config = super::db_url().parse().expect("BULK_BENCH_DATABASE_URL");
    let (client, mut conn) = config.connect(NoTls).await.expect("connect");
    let notices = Arc::new(Mutex::new(Vec::new()));
    let kept = notices.clone();
    tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notice(notice) = message {
                kept.lock().unwrap().push(notice.message().to_owned());
            }
        }
    });
    (client, notices)
}

/// The plan of the call's insert on a sample batch (`SAMPLE` rows, `PCT`%
/// of them on keys already stored) against the filled table: the real
/// call, on a connection where `auto_explain` (loaded for this session
/// only) sends each statement's `EXPLAIN (ANALYZE, BUFFERS)` as a notice;
/// then a raw COPY of the sample's new rows into the filled raw table.
async fn explain(keys: Keys) {
    let (mut client, notices) = connect_with_notices().await;
    client
        .batch_execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_analyze = on; \
             SET auto_explain.log_buffers = on; SET auto_explain.log_level = notice",
        )
        .await
        .expect("auto_explain (a contrib module, loaded by a superuser for this session)");
    let stored = SAMPLE * keys.pct / 100;
    let sample = (0..SAMPLE).map(move |i| {
        let id = if i < stored { i * keys.shared().max(1) / stored.max(1) } else { keys.distinct() + i };
        row(id, 99)
    });
    let rows_before = count(&client, TABLE).await;
    let t = Instant::now();
    let report = Written::bulk_create_new(&mut client, sample.clone()).await.unwrap();
    let call = t.elapsed();
    println!(
        "\nA sample batch of {SAMPLE} rows, {stored} of them on keys stored, offered to the filled `{TABLE}` \
         ({rows_before} rows) in one call: {report} in {:.0} ms. The insert's plan (auto_explain):\n\n```",
        call.as_secs_f64() * 1e3
    );
    for notice in notices.lock().unwrap().iter().filter(|n| n.contains("Insert on")) {
        for line in notice.lines() {
            match line.strip_prefix("Query Text: ") {
                Some(text) => println!("Query Text: {}...", &text[..text.len().min(160)]),
                None => println!("{line}"),
            }
        }
    }
    client.batch_execute("SET auto_explain.log_min_duration = -1").await.unwrap();
    let t = Instant::now();
    let sink = client.copy_in(&format!("COPY {RAW} {COLS} FROM STDIN (FORMAT binary)")).await.unwrap();
    let mut w = Box::pin(BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8, Type::INT8]));
    for r in sample.skip(stored as usize) {
        w.as_mut().write(&[&r.tweet, &r.retweeter, &r.original_author]).await.unwrap();
    }
    let n = w.as_mut().finish().await.unwrap();
    println!(
        "```\n\nRaw COPY of the sample's {n} new rows into the filled `{RAW}`: {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
}

/// Runs the mode; see the module's docs.
pub(crate) async fn run(args: &[String]) {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let keys = Keys { writers: o.writers, rows: o.rows, pct: o.shared_pct };
    let admin = connect().await;
    admin.batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}; DROP TABLE IF EXISTS {RAW}")).await.unwrap();
    admin.batch_execute(&Written::model().migration_sql()).await.unwrap();
    admin.batch_execute(&format!("CREATE TABLE {RAW} (LIKE {TABLE} INCLUDING ALL)")).await.unwrap();
    println!(
        "writers: {} writers × {} rows, {}% on {} shared keys; {} distinct keys, {} rows offered to the call; \
         {} round(s)\n",
        o.writers,
        o.rows,
        o.shared_pct,
        keys.shared(),
        keys.distinct(),
        o.writers * o.rows,
        o.rounds
    );
    println!(
        "| round | side | wall s | rows stored | stored rows/s | rows offered/s | errors | writers' backends CPU s | \
         backend CPU µs/row stored | client CPU s | mean s streaming / after the last row |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let (mut call_walls, mut raw_walls, mut errors) = (Vec::new(), Vec::new(), 0);
    for round in 0..o.rounds {
        let call_first = round % 2 == 0;
        let (mut call, mut raw) = (None, None);
        for side in if call_first { [true, false] } else { [false, true] } {
            if side {
                call = Some(call_phase(&admin, keys).await);
            } else {
                raw = Some(raw_phase(&admin, keys).await);
            }
        }
        let (call, raw) = (call.unwrap(), raw.unwrap());
        for (name, phase, offered) in [("call", &call, o.writers * o.rows), ("raw COPY", &raw, keys.distinct())] {
            let n = phase.parts.len() as f64;
            let streaming: f64 = phase.parts.iter().map(|p| secs(p.streaming)).sum::<f64>() / n;
            let total: f64 = phase.parts.iter().map(|p| secs(p.total)).sum::<f64>() / n;
            println!(
                "| {} | {name} | {:.1} | {} | {:.0} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} |",
                round + 1,
                secs(phase.wall),
                phase.rows(),
                phase.rows() as f64 / secs(phase.wall),
                offered as f64 / secs(phase.wall),
                phase.errors().len(),
                secs(phase.backend_cpu()),
                secs(phase.backend_cpu()) * 1e6 / phase.rows().max(1) as f64,
                secs(phase.client_cpu),
                streaming,
                total - streaming,
            );
            for e in phase.errors().iter().take(3) {
                println!("  error: {e}");
            }
        }
        errors += call.errors().len() + raw.errors().len();
        // Exact counts: the sum of the calls' counts is what the table holds,
        // which is every distinct key once; the same for the raw COPYs.
        let (stored, raw_stored) = (count(&admin, TABLE).await, count(&admin, RAW).await);
        assert_eq!(call.rows(), stored, "sum of the calls' inserted counts equals the rows stored");
        assert_eq!(stored, keys.distinct(), "every distinct key stored once by the calls");
        assert_eq!(raw.rows(), raw_stored, "the raw COPYs' counts");
        assert_eq!(raw_stored, keys.distinct(), "the raw COPYs store every distinct key once");
        call_walls.push(call.wall);
        raw_walls.push(raw.wall);
    }
    let differ: i64 = admin
        .query_one(
            &format!(
                "SELECT count(*) FROM {TABLE} a FULL JOIN {RAW} b USING (tweet, retweeter) \
                 WHERE a.tweet IS NULL OR b.tweet IS NULL"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (call, raw) = (median(&call_walls), median(&raw_walls));
    println!(
        "\nMedian over {} round(s): call {:.0} stored rows/s ({:.0} offered rows/s), raw COPYs {:.0} rows/s: \
         call ÷ raw COPY throughput {:.2} (target ≥ 0.8); {errors} errors; counts exact \
         (sum of inserted = rows stored = {} distinct keys); keys stored by the calls and not by the COPYs \
         or the other way: {differ}",
        o.rounds,
        keys.distinct() as f64 / secs(call),
        (o.writers * o.rows) as f64 / secs(call),
        keys.distinct() as f64 / secs(raw),
        secs(raw) / secs(call),
        keys.distinct(),
    );
    assert_eq!(differ, 0, "the calls and the COPYs store the same keys");
    if o.explain {
        explain(keys).await;
    }
    admin.batch_execute(&format!("DROP TABLE {TABLE}; DROP TABLE {RAW}")).await.unwrap();
}
