//! `stream-marks N [--calls C] [--every M] [--sample S] [--keep]`: the
//! streaming COPY path over `N` generated rows (never held in memory), in
//! `C` calls of `N / C` rows each (default: one call per million rows), with
//! a mark every `M` rows (default 1,000,000): rows/s since the last mark,
//! the client's resident memory, and, read on a second connection every `S`
//! marks (default 1), the target's heap and index sizes and the blocks its
//! backends read from outside shared_buffers versus found in them. The
//! table is dropped at the end unless `--keep`.

use std::time::{Duration, Instant};

use bulk_runtime::BulkCreateNew;
use futures_util::stream;
use tokio_postgres::Client;

use super::{Rng, connect, current_rss, peak_rss};

/// The retweeter model on a table of its own, so that other modes'
/// setups (which drop `bench_retweeter`) cannot touch a long run.
#[derive(BulkCreateNew, Clone, Copy, Debug)]
#[bulk(table = "bench_stream_marks", unique(tweet, retweeter))]
struct Marked {
    tweet: i64,
    #[bulk(index)]
    retweeter: i64,
    #[bulk(index)]
    original_author: i64,
}

const TABLE: &str = "bench_stream_marks";

/// The mode's options.
struct Options {
    rows: u64,
    calls: u64,
    every: u64,
    sample: u64,
    keep: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut args = args.iter();
    let number = |v: Option<&String>, what: &str| -> Result<u64, String> {
        v.and_then(|v| v.replace('_', "").parse().ok())
            .filter(|&n| n > 0)
            .ok_or(format!("{what} needs a positive number"))
    };
    let rows = number(args.next(), "stream-marks")?;
    let mut o = Options { rows, calls: rows.div_ceil(1_000_000), every: 1_000_000, sample: 1, keep: false };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--calls" => o.calls = number(args.next(), a)?,
            "--every" => o.every = number(args.next(), a)?,
            "--sample" => o.sample = number(args.next(), a)?,
            "--keep" => o.keep = true,
            other => return Err(format!("stream-marks: unknown option {other}")),
        }
    }
    o.calls = o.calls.min(o.rows);
    Ok(o)
}

/// What the second connection reads at a mark.
#[derive(Clone, Copy, Default)]
struct Server {
    heap: i64,
    indexes: i64,
    heap_read: i64,
    heap_hit: i64,
    idx_read: i64,
    idx_hit: i64,
}

async fn read_server(sampler: &Client) -> Server {
    // Counters of the writing backend reach the shared statistics at its
    // commits; sizes are the files' current sizes.
    let row = sampler
        .query_one(
            "SELECT pg_relation_size(s.relid), pg_indexes_size(s.relid), \
             coalesce(s.heap_blks_read, 0), coalesce(s.heap_blks_hit, 0), \
             coalesce(s.idx_blks_read, 0), coalesce(s.idx_blks_hit, 0) \
             FROM pg_statio_user_tables s WHERE s.relid = $1::text::regclass",
            &[&TABLE],
        )
        .await
        .expect("read sizes and block counters");
    Server {
        heap: row.get(0),
        indexes: row.get(1),
        heap_read: row.get(2),
        heap_hit: row.get(3),
        idx_read: row.get(4),
        idx_hit: row.get(5),
    }
}

/// The marks printed so far, and what the next one is measured against.
struct Marks<'a> {
    sampler: &'a Client,
    every: u64,
    sample: u64,
    printed: u64,
    last_rows: u64,
    last_at: Instant,
    /// Time spent reading the server at marks, left out of the rates.
    sampling: Duration,
    start: Instant,
    committed: u64,
    server: Server,
}

impl Marks<'_> {
    async fn mark(&mut self, rows: u64) {
        let now = Instant::now();
        let interval = (now - self.last_at).saturating_sub(self.sampling);
        let total = (now - self.start).as_secs_f64();
        self.printed += 1;
        let mb = |b: i64| b as f64 / 1e6;
        let sampled = if self.printed.is_multiple_of(self.sample) {
            let t = Instant::now();
            let s = read_server(self.sampler).await;
            let p = self.server;
            self.server = s;
            self.sampling += t.elapsed();
            let ratio = |read: i64, hit: i64| {
                if read + hit == 0 {
                    "–".to_owned()
                } else {
                    format!("{:.1}%", 100.0 * read as f64 / (read + hit) as f64)
                }
            };
            format!(
                "{:.0} | {:.0} | {} / {} ({}) | {} / {} ({})",
                mb(s.heap),
                mb(s.indexes),
                s.heap_read - p.heap_read,
                s.heap_hit - p.heap_hit,
                ratio(s.heap_read - p.heap_read, s.heap_hit - p.heap_hit),
                s.idx_read - p.idx_read,
                s.idx_hit - p.idx_hit,
                ratio(s.idx_read - p.idx_read, s.idx_hit - p.idx_hit),
            )
        } else {
            "– | – | – | –".to_owned()
        };
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.0} | {:.1} | {sampled} |",
            rows,
            self.committed,
            total,
            (rows - self.last_rows) as f64 / interval.as_secs_f64(),
            rows as f64 / total,
            current_rss() as f64 / 1e6,
        );
        self.last_rows = rows;
        self.last_at = Instant::now();
        self.sampling = Duration::ZERO;
    }
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
    let mut client = connect().await;
    let sampler = connect().await;
    client.batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}")).await.unwrap();
    client.batch_execute(&Marked::model().migration_sql()).await.unwrap();
    let buffers: String = sampler.query_one("SHOW shared_buffers", &[]).await.unwrap().get(0);
    let per_call = o.rows.div_ceil(o.calls);
    println!(
        "stream-marks: {} rows in {} calls of up to {per_call} rows, a mark every {} rows; \
         shared_buffers {buffers}; client RSS at start {:.1} MB\n",
        o.rows,
        o.calls,
        o.every,
        current_rss() as f64 / 1e6
    );
    println!(
        "| rows sent | rows committed | s | rows/s since last mark | rows/s overall | client RSS MB | \
         heap MB | indexes MB | heap blocks read / hit (read %) | index blocks read / hit (read %) |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let start = Instant::now();
    let mut marks = Marks {
        sampler: &sampler,
        every: o.every,
        sample: o.sample,
        printed: 0,
        last_rows: 0,
        last_at: start,
        sampling: Duration::ZERO,
        start,
        committed: 0,
        server: read_server(&sampler).await,
    };
    let mut rng = Rng(2024);
    let (mut sent, mut offered) = (0u64, 0u64);
    for call in 0..o.calls {
        let rows = per_call.min(o.rows - sent);
        if rows == 0 {
            break;
        }
        // The rows are drawn as the COPY asks for them; a mark due before a
        // row is taken first (at a call's first row: after the previous call
        // committed).
        let generated = stream::unfold((&mut rng, sent, sent + rows, &mut marks), |(rng, at, end, marks)| async move {
            if at == end {
                return None;
            }
            if at > 0 && at.is_multiple_of(marks.every) {
                marks.mark(at).await;
            }
            let row =
                Marked { tweet: rng.key() % 1_000_000, retweeter: rng.key(), original_author: rng.key() % 10_000 };
            Some((row, (rng, at + 1, end, marks)))
        });
        let report = Marked::bulk(&mut client)
            .run_stream(Box::pin(generated))
            .await
            .unwrap_or_else(|e| panic!("call {call} of {}: {e}", o.calls));
        sent += rows;
        offered += report.offered;
        marks.committed += report.inserted;
    }
    marks.mark(sent).await;
    let stored: i64 = sampler.query_one(&format!("SELECT count(*) FROM {TABLE}"), &[]).await.unwrap().get(0);
    println!(
        "\n{offered} rows offered, {} inserted, {stored} stored, in {:.0} s ({:.0} rows/s); \
         client peak RSS {:.1} MB",
        marks.committed,
        start.elapsed().as_secs_f64(),
        offered as f64 / start.elapsed().as_secs_f64(),
        peak_rss() as f64 / 1e6
    );
    assert_eq!(offered, o.rows, "rows offered");
    assert_eq!(marks.committed, stored as u64, "rows inserted equal rows stored");
    if !o.keep {
        client.batch_execute(&format!("DROP TABLE {TABLE}")).await.unwrap();
    }
}
