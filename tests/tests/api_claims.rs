//! Regression tests of the public API: streams and progress (failing,
//! panicking, stalled and slow streams, dropped calls, progress reports), and
//! the behaviours README.md asserts ("What one call does", "Beyond the plain
//! call", "Attributes", "Supported field types"): path thresholds, counts and
//! `Display`, client-side refusals, batch ids, upsert, returning, key
//! equality, tables named like the statements' CTEs and aliases, keyword and
//! quoted names, index names of two models that coincide, two models on one
//! table, borrowed rows, savepoints, lazy iteration, scratch tables and ids.
//!
//! Each test works in a schema of its own (`TestDb`) and drops it at the end.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulk_runtime::__test_hooks::{SMALL_BATCH, SMALL_BATCH_ARRAY_ELEMENTS, connection_process_id};
use bulk_runtime::{BulkCreateNew, Error, Keep, Ledger, Progress, Upsert};
use bulk_tests::{COPY_BATCH, TestDb, count, in_transaction};
use futures_util::{StreamExt, stream};
use tokio_postgres::Client;

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "line", unique(file, n), id = false)]
pub struct Line {
    pub file: String,
    pub n: i64,
    pub text: String,
}

/// Polls `f` inside `catch_unwind`: a panic while polling ends the future
/// with `Err` (what a task's `JoinError` would report), keeping the borrow.
async fn catch_unwind<F: std::future::Future>(f: F) -> Result<F::Output, Box<dyn std::any::Any + Send>> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(move |cx| match std::panic::catch_unwind(AssertUnwindSafe(|| f.as_mut().poll(cx))) {
        Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
        Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
        Err(e) => std::task::Poll::Ready(Err(e)),
    })
    .await
}

fn line(file: &str, n: i64) -> Line {
    Line { file: file.to_owned(), n, text: format!("line {n} of {file}") }
}

async fn setup(name: &str) -> (TestDb, Client) {
    let db = TestDb::new(name).await;
    let client = db.connect().await;
    client.batch_execute(&Line::model().migration_sql()).await.unwrap();
    (db, client)
}

/// A stream of `n` lines that returns `Pending` once before every `every`th row.
fn hesitant(file: &'static str, n: i64, every: i64) -> impl futures_util::Stream<Item = Line> + Send {
    stream::iter(0..n).then(move |i| async move {
        if i % every == 0 {
            tokio::task::yield_now().await;
        }
        line(file, i)
    })
}

/// Checks the invariants of a call's progress reports against its report:
/// exactly one `finished`, the last; `sent` never goes down; inserted and
/// updated are 0 until the end; the final counts are the report's.
fn check_progress(reports: &[Progress], offered: u64, inserted: u64, updated: u64) {
    assert!(!reports.is_empty(), "no progress report at all");
    assert_eq!(reports.iter().filter(|p| p.finished).count(), 1, "{reports:?}");
    let last = reports.last().unwrap();
    assert!(last.finished, "the last report is the finished one");
    assert_eq!((last.sent, last.inserted, last.updated), (offered, inserted, updated), "{reports:?}");
    assert!(reports.windows(2).all(|w| w[0].sent <= w[1].sent), "sent never goes down: {reports:?}");
    for p in &reports[..reports.len() - 1] {
        assert_eq!((p.inserted, p.updated), (0, 0), "counts only at the end: {p:?}");
        assert!(p.sent <= offered);
    }
}

// ---------------------------------------------------------------- streams

#[tokio::test]
async fn an_empty_stream_reports_zero_and_finishes_once() {
    let (db, mut client) = setup("api_empty_stream").await;
    client.batch_execute(&Ledger::of::<Line>().migration_sql()).await.unwrap();
    let mut reports = Vec::new();
    let report = Line::bulk(&mut client)
        .on_progress(|p| reports.push(p))
        .batch_id("empty")
        .run_stream(stream::empty::<Line>())
        .await
        .unwrap();
    assert_eq!((report.offered, report.inserted, report.skipped, report.replayed), (0, 0, 0, false));
    assert_eq!(report.to_string(), "0 of 0 records added");
    check_progress(&reports, 0, 0, 0);
    assert_eq!(reports.len(), 1);
    // The empty batch leaves its id free and is not recorded.
    assert_eq!(count(&client, "bulk_batches").await, 0);
    let report = Line::bulk(&mut client).batch_id("empty").run([line("a", 1)]).await.unwrap();
    assert_eq!((report.inserted, report.replayed), (1, false));
    let report = Line::bulk(&mut client).try_run_stream(stream::empty::<Result<Line, std::io::Error>>()).await.unwrap();
    assert_eq!(report.offered, 0);
    db.drop().await;
}

/// The stream fails at row `at` (0-based): `Error::Stream` with that row,
/// nothing written, no transaction left open, the connection usable.
async fn stream_fails_at(name: &str, at: usize, total: usize, in_tx: bool) {
    let (db, mut client) = setup(name).await;
    let admin = db.connect().await;
    let pid = connection_process_id(&client);
    let rows = stream::iter(0..total as i64).map(move |i| {
        if i == at as i64 { Err(std::io::Error::other(format!("broken at {i}"))) } else { Ok(line("f", i)) }
    });
    let err = if in_tx {
        let mut tx = client.transaction().await.unwrap();
        Line::bulk_create_new(&mut tx, [line("kept", 0)]).await.unwrap();
        let err = Line::bulk(&mut tx).try_run_stream(rows).await.unwrap_err();
        // The caller's transaction is intact: its own row is still there and it commits.
        tx.batch_execute("SELECT 1").await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(count(&client, "line").await, 1, "the caller's own row survived");
        err
    } else {
        let err = Line::bulk(&mut client).try_run_stream(rows).await.unwrap_err();
        assert_eq!(count(&client, "line").await, 0, "nothing written");
        err
    };
    match &err {
        Error::Stream { row, source } => {
            assert_eq!(*row, at, "{err}");
            assert_eq!(source.to_string(), format!("broken at {at}"));
        }
        other => panic!("expected Error::Stream, got {other:?}"),
    }
    assert_eq!(err.row(), Some(at));
    assert!(!in_transaction(&admin, pid).await, "no transaction left open after a failed stream");
    let report = Line::bulk_create_new(&mut client, (0..10).map(|i| line("g", i))).await.unwrap();
    assert_eq!(report.inserted, 10);
    db.drop().await;
}

#[tokio::test]
async fn a_stream_failing_at_its_first_row() {
    stream_fails_at("api_fail_first", 0, 10, false).await;
}

#[tokio::test]
async fn a_stream_failing_at_the_last_row_of_the_read_ahead() {
    stream_fails_at("api_fail_head_end", SMALL_BATCH - 1, SMALL_BATCH + 50, false).await;
}

#[tokio::test]
async fn a_stream_failing_right_after_the_read_ahead() {
    stream_fails_at("api_fail_after_head", SMALL_BATCH, SMALL_BATCH + 50, false).await;
}

#[tokio::test]
async fn a_stream_failing_mid_copy_inside_a_caller_transaction() {
    stream_fails_at("api_fail_copy_tx", 3 * SMALL_BATCH + 17, 4 * SMALL_BATCH, true).await;
}

#[tokio::test]
async fn a_stream_failing_in_the_short_path_inside_a_caller_transaction() {
    stream_fails_at("api_fail_short_tx", 7, 20, true).await;
}

/// A stream that panics at row `at`: the panic reaches the caller, nothing
/// is written, no transaction stays open and the connection takes the next
/// batch (a panic is a dropped call).
async fn stream_panics_at(name: &str, at: i64, in_tx: bool) {
    let (db, mut client) = setup(name).await;
    let admin = db.connect().await;
    let pid = connection_process_id(&client);
    let rows = stream::iter(0..at + 100).map(move |i| {
        if i == at {
            panic!("test: the stream panics at row {i}");
        }
        line("p", i)
    });
    if in_tx {
        let mut tx = client.transaction().await.unwrap();
        Line::bulk_create_new(&mut tx, [line("kept", 0)]).await.unwrap();
        let caught = catch_unwind(Line::bulk(&mut tx).run_stream(rows)).await;
        assert!(caught.is_err(), "the panic reaches the caller");
        let report = Line::bulk_create_new(&mut tx, [line("kept", 1)]).await.unwrap();
        assert_eq!(report.inserted, 1);
        tx.commit().await.unwrap();
        assert_eq!(count(&client, "line").await, 2, "only the caller's own rows");
    } else {
        let caught = catch_unwind(Line::bulk(&mut client).run_stream(rows)).await;
        assert!(caught.is_err(), "the panic reaches the caller");
        assert_eq!(count(&client, "line").await, 0, "nothing written");
    }
    assert!(!in_transaction(&admin, pid).await, "no transaction left open after a panic");
    let report = Line::bulk_create_new(&mut client, (0..COPY_BATCH as i64).map(|i| line("q", i))).await.unwrap();
    assert_eq!(report.inserted, COPY_BATCH as u64);
    db.drop().await;
}

#[tokio::test]
async fn a_stream_panicking_in_the_read_ahead() {
    stream_panics_at("api_panic_head", 10, false).await;
}

#[tokio::test]
async fn a_stream_panicking_mid_copy() {
    stream_panics_at("api_panic_copy", 2 * SMALL_BATCH as i64 + 3, false).await;
}

#[tokio::test]
async fn a_stream_panicking_mid_copy_inside_a_caller_transaction() {
    stream_panics_at("api_panic_copy_tx", 2 * SMALL_BATCH as i64 + 3, true).await;
}

#[tokio::test]
async fn a_progress_callback_panicking_mid_copy_writes_nothing() {
    let (db, mut client) = setup("api_panic_progress").await;
    let admin = db.connect().await;
    let pid = connection_process_id(&client);
    let caught = catch_unwind(
        Line::bulk(&mut client)
            .on_progress(|p| {
                if !p.finished && p.sent > 0 {
                    panic!("test: progress callback panics");
                }
            })
            .run((0..3 * SMALL_BATCH as i64).map(|i| line("cb", i))),
    )
    .await;
    assert!(caught.is_err());
    assert_eq!(count(&client, "line").await, 0);
    assert!(!in_transaction(&admin, pid).await);
    let report = Line::bulk_create_new(&mut client, [line("cb", 1)]).await.unwrap();
    assert_eq!(report.inserted, 1);
    db.drop().await;
}

/// A stream of `first` rows that then never yields again.
fn stalls_after(first: i64) -> impl futures_util::Stream<Item = Line> + Send {
    stream::iter(0..first).map(|i| line("s", i)).chain(stream::pending())
}

#[tokio::test]
async fn a_call_dropped_while_its_stream_stalls_writes_nothing() {
    for first in [10, SMALL_BATCH as i64 + 10, 3 * SMALL_BATCH as i64] {
        let (db, mut client) = setup(&format!("api_drop_stall_{first}")).await;
        let admin = db.connect().await;
        let pid = connection_process_id(&client);
        let timed_out =
            tokio::time::timeout(Duration::from_millis(700), Line::bulk(&mut client).run_stream(stalls_after(first)))
                .await;
        assert!(timed_out.is_err(), "the stream never ends");
        // Next request on the connection: the dropped call's transaction is
        // rolled back before it.
        assert_eq!(count(&client, "line").await, 0, "{first}: nothing written");
        assert!(!in_transaction(&admin, pid).await, "{first}: no transaction open");
        let report = Line::bulk_create_new(&mut client, (0..first).map(|i| line("s", i))).await.unwrap();
        assert_eq!(report.inserted, first as u64);
        db.drop().await;
    }
}

#[tokio::test]
async fn a_call_dropped_mid_stream_in_a_caller_transaction_leaves_it_as_it_was() {
    let (db, mut client) = setup("api_drop_stall_tx").await;
    let mut tx = client.transaction().await.unwrap();
    Line::bulk_create_new(&mut tx, [line("kept", 0)]).await.unwrap();
    let timed_out =
        tokio::time::timeout(Duration::from_millis(700), Line::bulk(&mut tx).run_stream(stalls_after(12_000))).await;
    assert!(timed_out.is_err());
    let rows: i64 = tx.query_one("SELECT count(*) FROM line", &[]).await.unwrap().get(0);
    assert_eq!(rows, 1, "only the caller's row is in its transaction");
    let report = Line::bulk_create_new(&mut tx, (0..100).map(|i| line("s", i))).await.unwrap();
    assert_eq!(report.inserted, 100);
    tx.commit().await.unwrap();
    assert_eq!(count(&client, "line").await, 101);
    db.drop().await;
}

/// README: "The call's transaction stays open while the stream runs." and
/// "what is buffered is sent ... whenever the stream has no row ready".
#[tokio::test]
async fn a_slow_stream_flushes_what_it_has_while_it_waits() {
    let (db, mut client) = setup("api_slow_stream").await;
    let admin = db.connect().await;
    let pid = connection_process_id(&client);
    let first = COPY_BATCH as i64 + 333;
    let reports: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let (tx, rx) = tokio::sync::mpsc::channel::<Line>(64);
    let seen = reports.clone();
    let producer = tokio::spawn(async move {
        for i in 0..first {
            tx.send(line("slow", i)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let during = seen.lock().unwrap().last().copied();
        let open = in_transaction(&admin, pid).await;
        for i in first..first + 500 {
            tx.send(line("slow", i)).await.unwrap();
        }
        (during, open)
    });
    let rows = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let sink = reports.clone();
    let report =
        Line::bulk(&mut client).on_progress(move |p| sink.lock().unwrap().push(p)).run_stream(rows).await.unwrap();
    let (during, open) = producer.await.unwrap();
    assert_eq!(report.inserted, first as u64 + 500);
    assert!(open, "README: the call's transaction stays open while the stream runs");
    let during = during.expect("a progress report while the stream waited");
    assert_eq!(during.sent, first as u64, "everything buffered is sent while the stream has no row ready");
    check_progress(&reports.lock().unwrap(), first as u64 + 500, first as u64 + 500, 0);
    db.drop().await;
}

#[tokio::test]
async fn progress_is_exact_and_monotone_around_the_path_threshold() {
    let (db, mut client) = setup("api_progress_threshold").await;
    // Some keys stored already, and repeats inside each batch.
    Line::bulk_create_new(&mut client, (0..50).map(|i| line("t", i * 3))).await.unwrap();
    for n in [SMALL_BATCH as i64 - 1, SMALL_BATCH as i64, SMALL_BATCH as i64 + 1, 2 * SMALL_BATCH as i64 + 7] {
        let mut reports = Vec::new();
        let rows = hesitant("t", n, 997).chain(stream::iter([line("t", 0), line("t", 1)]));
        let report = Line::bulk(&mut client).on_progress(|p| reports.push(p)).run_stream(rows).await.unwrap();
        let offered = n as u64 + 2;
        assert_eq!(report.offered, offered);
        assert_eq!(report.offered, report.inserted + report.skipped + report.updated + report.unchanged);
        check_progress(&reports, offered, report.inserted, 0);
        if (offered as usize) < SMALL_BATCH {
            assert_eq!(reports.len(), 1, "{n}: the short path reports once: {reports:?}");
        } else {
            assert!(reports.len() >= 2, "{n}: the COPY path reports its chunks: {reports:?}");
        }
        client.batch_execute("DELETE FROM line WHERE n >= 150 OR n % 3 <> 0").await.unwrap();
    }
    db.drop().await;
}

#[tokio::test]
async fn progress_of_an_upsert_stream_on_the_copy_path() {
    let (db, mut client) = setup("api_progress_upsert").await;
    Line::bulk_create_new(&mut client, (0..100).map(|i| line("u", i))).await.unwrap();
    let mut reports = Vec::new();
    let n = COPY_BATCH as i64 + 1000;
    let rows = hesitant("u", n, 1500).map(|mut l| {
        l.text = format!("changed {}", l.n);
        l
    });
    let report = Line::bulk(&mut client)
        .upsert(Upsert::columns(["text"]).only_if_changed())
        .on_progress(|p| reports.push(p))
        .run_stream(rows)
        .await
        .unwrap();
    assert_eq!((report.inserted, report.updated), (n as u64 - 100, 100));
    check_progress(&reports, n as u64, n as u64 - 100, 100);
    db.drop().await;
}

#[tokio::test]
async fn progress_inside_a_caller_transaction() {
    let (db, mut client) = setup("api_progress_tx").await;
    let mut tx = client.transaction().await.unwrap();
    let mut reports = Vec::new();
    let n = COPY_BATCH as u64;
    let report =
        Line::bulk(&mut tx).on_progress(|p| reports.push(p)).run((0..n as i64).map(|i| line("x", i))).await.unwrap();
    check_progress(&reports, n, report.inserted, 0);
    tx.rollback().await.unwrap();
    assert_eq!(count(&client, "line").await, 0);
    db.drop().await;
}

// ----------------------------------------------------- arrays and paths

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "tagged", unique(k))]
pub struct Tagged {
    pub k: i64,
    pub tags: Option<Vec<Option<i64>>>,
}

/// README: "a short batch whose arrays hold 20,000 elements or more in all
/// takes COPY like a long one". The path shows in the progress reports.
#[tokio::test]
async fn the_array_element_threshold_picks_the_path() {
    let db = TestDb::new("api_array_threshold").await;
    let mut client = db.connect().await;
    client.batch_execute(&Tagged::model().migration_sql()).await.unwrap();
    let per_row = SMALL_BATCH_ARRAY_ELEMENTS / 10;
    for (base, elements) in [(0, per_row - 1), (100, per_row)] {
        let rows: Vec<Tagged> = (0..10)
            .map(|i| Tagged { k: base + i, tags: Some((0..elements as i64).map(Some).collect()) })
            .chain([
                Tagged { k: base + 50, tags: None },
                Tagged { k: base + 51, tags: Some(vec![]) },
                Tagged { k: base + 52, tags: Some(vec![None, Some(-1), None]) },
            ])
            .collect();
        let mut reports = Vec::new();
        let report = Tagged::bulk(&mut client).on_progress(|p| reports.push(p)).run(&rows).await.unwrap();
        assert_eq!(report.inserted, 13);
        if elements * 10 < SMALL_BATCH_ARRAY_ELEMENTS {
            assert_eq!(reports.len(), 1, "short path");
        } else {
            assert!(reports.len() >= 2, "COPY path: {reports:?}");
        }
        for r in &rows[10..] {
            let got: Option<Vec<Option<i64>>> =
                client.query_one("SELECT tags FROM tagged WHERE k = $1", &[&r.k]).await.unwrap().get(0);
            assert_eq!(got, r.tags, "arrays come back as offered");
        }
    }
    db.drop().await;
}

// ----------------------------------------------------- README claims

#[tokio::test]
async fn display_counts_and_singular() {
    let (db, mut client) = setup("api_display").await;
    let r = Line::bulk_create_new(&mut client, [line("d", 1)]).await.unwrap();
    assert_eq!(r.to_string(), "1 of 1 record added");
    let r = Line::bulk_create_new(&mut client, [line("d", 1), line("d", 2), line("d", 2), line("d", 3)]).await.unwrap();
    assert_eq!(r.to_string(), "2 of 4 records added");
    assert_eq!((r.offered, r.inserted, r.skipped), (4, 2, 2));
    db.drop().await;
}

/// README: a value refused on the client is reported before anything of its
/// row is sent, both paths refuse the same values, and the short path also
/// checks the rows it leaves out as repeats of a key, naming the first
/// offered bad row, as the COPY path does.
#[tokio::test]
async fn a_nul_byte_is_refused_with_the_same_row_on_both_paths() {
    let (db, mut client) = setup("api_nul").await;
    for pad in [0usize, COPY_BATCH] {
        let mut rows: Vec<Line> = (0..pad as i64).map(|i| line("pad", i)).collect();
        rows.push(line("nul", 1));
        // A repeat of the key above (would be skipped), with a NUL byte.
        rows.push(Line { file: "nul".into(), n: 1, text: "bad\0text".into() });
        rows.push(Line { file: "nul".into(), n: 2, text: "bad\0again".into() });
        let err = Line::bulk_create_new(&mut client, &rows).await.unwrap_err();
        assert_eq!(err.row(), Some(pad + 1), "{pad}: {err}");
        assert_eq!(err.field(), Some("text"), "{err}");
        assert!(err.connection_usable());
        assert!(!err.is_retryable());
        assert_eq!(count(&client, "line").await, 0);
    }
    db.drop().await;
}

#[tokio::test]
async fn batch_ids_are_checked_before_anything_is_sent() {
    let (db, mut client) = setup("api_batch_ids").await;
    client.batch_execute(&Ledger::of::<Line>().migration_sql()).await.unwrap();
    for bad in [String::new(), "a\0b".to_owned(), "x".repeat(513)] {
        let err = Line::bulk(&mut client).batch_id(bad.clone()).run([line("b", 1)]).await.unwrap_err();
        assert!(matches!(err, Error::Usage { .. }), "{bad:?}: {err:?}");
    }
    let ok = "é".repeat(256); // 512 bytes
    let report = Line::bulk(&mut client).batch_id(ok.clone()).run([line("b", 1)]).await.unwrap();
    assert_eq!(report.inserted, 1);
    let report = Line::bulk(&mut client).batch_id(ok).run([line("b", 1)]).await.unwrap();
    assert!(report.replayed);
    assert_eq!(report.to_string(), "1 of 1 record added (recorded earlier)");
    assert_eq!(count(&client, "line").await, 1);
    db.drop().await;
}

#[tokio::test]
async fn upsert_keeps_the_last_row_by_default_and_refuses_bad_columns() {
    let (db, mut client) = setup("api_upsert").await;
    Line::bulk_create_new(&mut client, [line("k", 1)]).await.unwrap();
    let v = |n, t: &str| Line { file: "k".into(), n, text: t.into() };
    for pad in [0i64, COPY_BATCH as i64] {
        let mut rows: Vec<Line> = (1000..1000 + pad).map(|i| line("pad", i)).collect();
        rows.extend([v(1, "first"), v(1, "last"), v(2, "first"), v(2, "last")]);
        let report = Line::bulk(&mut client).upsert(Upsert::columns(["text"])).run(&rows).await.unwrap();
        assert_eq!(report.offered, report.inserted + report.updated + report.unchanged + report.skipped);
        let texts: Vec<String> = client
            .query("SELECT text FROM line WHERE file = 'k' ORDER BY n", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(texts, ["last", "last"], "{pad}: Keep::Last is the default");
        let report = Line::bulk(&mut client)
            .upsert(Upsert::columns(["text"]).keep(Keep::First).only_if_changed())
            .run(&rows)
            .await
            .unwrap();
        assert_eq!(report.updated, 2, "{pad}: {report:?}");
    }
    for bad in ["nope", "n", "file"] {
        let err = Line::bulk(&mut client).upsert(Upsert::columns([bad])).run([v(9, "x")]).await.unwrap_err();
        assert!(matches!(err, Error::Usage { .. }), "{bad}: {err:?}");
    }
    assert_eq!(count(&client, "line").await, 2 + COPY_BATCH as i64);
    db.drop().await;
}

#[tokio::test]
async fn returning_skipped_and_keys_on_both_paths() {
    let (db, mut client) = setup("api_returning").await;
    Line::bulk_create_new(&mut client, [line("r", 1)]).await.unwrap();
    for pad in [0i64, COPY_BATCH as i64] {
        let mut rows = vec![line("r", 1), line("r", 2), line("r", 2), line("r", 3)];
        rows.extend((100..100 + pad).map(|i| line(&format!("pad{pad}"), i)));
        rows.push(line("r", 3));
        let report = Line::bulk(&mut client).returning_skipped().run(&rows).await.unwrap();
        assert_eq!(report.returned, vec![0, 2, rows.len() - 1], "{pad}");
        client.batch_execute("DELETE FROM line WHERE n > 1").await.unwrap();
        let report = Line::bulk(&mut client).returning_keys().run(&rows).await.unwrap();
        let got: Vec<(usize, (String, i64))> = report.returned.into_iter().take(2).map(|r| (r.index, r.key)).collect();
        assert_eq!(got, vec![(1, ("r".to_owned(), 2)), (3, ("r".to_owned(), 3))], "{pad}");
        client.batch_execute("DELETE FROM line WHERE n > 1").await.unwrap();
    }
    db.drop().await;
}

// ---------------------------------------------------------- key types

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "measure", unique(x))]
pub struct Measure {
    pub x: f64,
    pub pad: i64,
}

/// README: float keys compare as PostgreSQL compares them: -0.0 equals 0.0,
/// NaN equals NaN: one row per key, the first offered.
#[tokio::test]
async fn float_keys_compare_as_the_server_does() {
    let db = TestDb::new("api_float_keys").await;
    let mut client = db.connect().await;
    client.batch_execute(&Measure::model().migration_sql()).await.unwrap();
    for pad in [0i64, COPY_BATCH as i64] {
        let mut rows = vec![
            Measure { x: -0.0, pad: 1 },
            Measure { x: 0.0, pad: 2 },
            Measure { x: f64::NAN, pad: 3 },
            Measure { x: f64::NAN, pad: 4 },
            Measure { x: f64::INFINITY, pad: 5 },
            Measure { x: f64::NEG_INFINITY, pad: 6 },
        ];
        rows.extend((0..pad).map(|i| Measure { x: 1.0 + i as f64, pad: 0 }));
        let report = Measure::bulk_create_new(&mut client, &rows).await.unwrap();
        assert_eq!((report.inserted, report.skipped), (4 + pad as u64, 2), "{pad}");
        let kept: Vec<i64> = client
            .query("SELECT pad FROM measure WHERE pad > 0 ORDER BY pad", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(kept, [1, 3, 5, 6], "{pad}: the first offered row of each key");
        let again = Measure::bulk_create_new(&mut client, &rows).await.unwrap();
        assert_eq!(again.inserted, 0);
        client.batch_execute("TRUNCATE measure").await.unwrap();
    }
    db.drop().await;
}

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "maybe", unique(a, b), nulls_not_distinct)]
pub struct Maybe {
    pub a: Option<i64>,
    pub b: Option<String>,
    pub v: i32,
}

#[tokio::test]
async fn nullable_keys_with_nulls_not_distinct_on_both_paths() {
    let db = TestDb::new("api_nullable_keys").await;
    let mut client = db.connect().await;
    client.batch_execute(&Maybe::model().migration_sql()).await.unwrap();
    for pad in [0i64, COPY_BATCH as i64] {
        let mut rows = vec![
            Maybe { a: None, b: None, v: 1 },
            Maybe { a: None, b: None, v: 2 },
            Maybe { a: Some(1), b: None, v: 3 },
            Maybe { a: None, b: Some("x".into()), v: 4 },
            Maybe { a: Some(1), b: None, v: 5 },
        ];
        rows.extend((0..pad).map(|i| Maybe { a: Some(100 + i), b: Some("p".into()), v: 0 }));
        let report = Maybe::bulk_create_new(&mut client, &rows).await.unwrap();
        assert_eq!((report.inserted, report.skipped), (3 + pad as u64, 2), "{pad}");
        let kept: Vec<i32> = client
            .query("SELECT v FROM maybe WHERE v > 0 ORDER BY v", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(kept, [1, 3, 4], "{pad}");
        let report = Maybe::bulk(&mut client).returning_skipped().run(&rows).await.unwrap();
        assert_eq!(report.returned.len(), rows.len(), "{pad}: all stored");
        client.batch_execute("TRUNCATE maybe").await.unwrap();
    }
    db.drop().await;
}

// ----------------------------------------------- names, tables, models

macro_rules! model_on_table {
    ($name:ident, $table:literal) => {
        #[derive(BulkCreateNew, Debug, Clone, PartialEq)]
        #[bulk(table = $table, unique(k, s))]
        pub struct $name {
            pub k: i64,
            pub s: String,
            pub v: i64,
        }
    };
}

// Tables named like the aliases and CTEs a statement might use.
model_on_table!(TSrc, "src");
model_on_table!(TIns, "ins");
model_on_table!(TU, "u");
model_on_table!(TS, "s");
model_on_table!(TT, "t");
model_on_table!(TExcluded, "excluded");
model_on_table!(TNew, "new");
model_on_table!(TStored, "stored");
model_on_table!(TScratch, "scratch");
model_on_table!(TKept, "kept");
model_on_table!(TBatch, "batch");
model_on_table!(TRows, "rows");
model_on_table!(TKeys, "keys");
model_on_table!(TUpd, "upd");
model_on_table!(TSel, "sel");
model_on_table!(TUp, "up");
model_on_table!(TDel, "del");
model_on_table!(TD, "d");
model_on_table!(TX, "x");
model_on_table!(TI, "i");
model_on_table!(TChain, "chain");

/// Runs the plain call, `returning_skipped`, `returning_keys` and upsert on
/// both paths against `T`'s table; returns what did not count exactly.
async fn every_call_counts_exactly<T>(client: &mut Client, make: fn(i64, &str, i64) -> T) -> Vec<String>
where
    T: BulkCreateNew + Send + Sync,
{
    let table = T::model().table();
    let mut wrong = Vec::new();
    let check = |wrong: &mut Vec<String>, what: &str, got: (u64, u64), want: (u64, u64)| {
        if got != want {
            wrong.push(format!("table {table:?}, {what}: (inserted, other) = {got:?}, expected {want:?}"));
        }
    };
    client.batch_execute(&T::model().migration_sql()).await.unwrap();
    macro_rules! call {
        ($what:expr, $call:expr, |$r:ident| $got:expr, $want:expr) => {
            match $call.await {
                Ok($r) => check(&mut wrong, &$what, $got, $want),
                Err(e) => wrong.push(format!("table {table:?}, {}: {e}", $what)),
            }
        };
    }
    for pad in [0i64, COPY_BATCH as i64] {
        let path = if pad == 0 { "short" } else { "COPY" };
        let base = pad * 10;
        let mut rows: Vec<T> = (0..200 + pad).map(|i| make(base + i, "a", 0)).collect();
        rows.push(make(base, "a", 1));
        call!(
            format!("{path} plain (inserted, skipped)"),
            T::bulk_create_new(&mut *client, &rows),
            |r| (r.inserted, r.skipped),
            (200 + pad as u64, 1)
        );
        // Half stored, half new, one repeat.
        let rows: Vec<T> = (100..300 + pad).map(|i| make(base + i, "a", 2)).chain([make(base + 250, "a", 3)]).collect();
        call!(
            format!("{path} returning_skipped (inserted, skipped)"),
            T::bulk(&mut *client).returning_skipped().run(&rows),
            |r| (r.inserted, r.skipped),
            (100, 101 + pad as u64)
        );
        let rows: Vec<T> = (100..400 + pad).map(|i| make(base + i, "a", 4)).collect();
        call!(
            format!("{path} returning_keys (inserted, returned)"),
            T::bulk(&mut *client).returning_keys().run(&rows),
            |r| (r.inserted, r.returned.len() as u64),
            (100, 100)
        );
        let rows: Vec<T> = (300..500 + pad).map(|i| make(base + i, "a", 5)).collect();
        call!(
            format!("{path} upsert (inserted, updated)"),
            T::bulk(&mut *client).upsert(Upsert::all_columns().only_if_changed()).run(&rows),
            |r| (r.inserted, r.updated),
            (100, 100 + pad as u64)
        );
    }
    let stored = count(client, table).await as u64;
    let expected = 2 * 500 + COPY_BATCH as u64;
    check(&mut wrong, "rows stored (stored, 0)", (stored, 0), (expected, 0));
    wrong
}

// Tables named `src`, `ins`, `del`, `up` (and other names a statement might
// use for an alias) work with every call on both paths, counting exactly: the
// statements' CTE names cannot collide with a table's name.
#[tokio::test]
async fn tables_named_like_the_statements_aliases() {
    let db = TestDb::new("api_alias_tables").await;
    let mut client = db.connect().await;
    let mut wrong = Vec::new();
    macro_rules! probe {
        ($($t:ident),*) => {$(
            wrong.extend(every_call_counts_exactly::<$t>(&mut client, |k, s, v| $t { k, s: s.to_owned(), v }).await);
        )*};
    }
    probe!(
        TSrc, TIns, TU, TS, TT, TExcluded, TNew, TStored, TScratch, TKept, TBatch, TRows, TKeys, TUpd, TSel, TUp, TDel,
        TD, TX, TI, TChain
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    db.drop().await;
}

/// Columns named like the aliases inside the statements (`hit`, `i`, `s`,
/// `u`, `t`, `x`, `d`, `ord`, `done`).
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "aliased_columns", unique(k, s))]
pub struct AliasedColumns {
    pub k: i64,
    pub s: String,
    pub hit: i64,
    pub i: i64,
    pub u: i64,
    pub t: i64,
    pub x: i64,
    pub d: i64,
    pub ord: i64,
    pub done: bool,
}

// Every call on both paths counts exactly on a table whose columns are
// named like the statements' aliases (`hit` once made every `returning_*`
// statement ambiguous).
#[tokio::test]
async fn columns_named_like_the_statements_aliases() {
    let db = TestDb::new("api_alias_columns").await;
    let mut client = db.connect().await;
    let wrong = every_call_counts_exactly::<AliasedColumns>(&mut client, |k, s, v| AliasedColumns {
        k,
        s: s.to_owned(),
        hit: v,
        i: v,
        u: v,
        t: v,
        x: v,
        d: v,
        ord: v,
        done: v % 2 == 0,
    })
    .await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    db.drop().await;
}

/// Fields named like Rust and SQL keywords, and columns renamed to names
/// that need quoting.
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "Select \"From\" Where", unique(r#type, select), id = "Order")]
pub struct Keywords {
    pub r#type: String,
    pub select: i64,
    #[bulk(rename = "user", index)]
    pub r#match: Option<String>,
    #[bulk(rename = "col \"with\" quotes; drop table x", index)]
    pub from: i32,
    pub group: bool,
    #[bulk(rename = "ÄÖÜ ünïcödé")]
    pub r#fn: Vec<u8>,
    #[bulk(skip)]
    pub ignored: std::collections::HashMap<String, String>,
}

#[tokio::test]
async fn keyword_and_quoted_names_work_on_every_call() {
    let db = TestDb::new("api_keywords").await;
    let mut client = db.connect().await;
    client.batch_execute(&Keywords::model().migration_sql()).await.unwrap();
    bulk_runtime::verify_schema::<Keywords>(&client).await.unwrap();
    let make = |i: i64| Keywords {
        r#type: format!("t{}", i % 7),
        select: i,
        r#match: (i % 2 == 0).then(|| "m".to_owned()),
        from: i as i32,
        group: i % 3 == 0,
        r#fn: vec![i as u8],
        ignored: Default::default(),
    };
    for n in [50i64, COPY_BATCH as i64] {
        let rows: Vec<Keywords> = (0..n).map(make).collect();
        let r = Keywords::bulk_create_new(&mut client, &rows).await.unwrap();
        assert_eq!(r.inserted as i64, if n == 50 { 50 } else { n - 50 });
        let r = Keywords::bulk(&mut client).returning_keys().run(&rows).await.unwrap();
        assert_eq!(r.inserted, 0);
        let r = Keywords::bulk(&mut client)
            .upsert(Upsert::set([Keywords::columns().r#match, Keywords::columns().from]).only_if_changed())
            .run(&rows)
            .await
            .unwrap();
        assert_eq!(r.unchanged as i64, n);
    }
    db.drop().await;
}

/// Two tables whose generated index names are the same: `retweet` with
/// `unique(tweet_author)` and `retweet_tweet` with `unique(author)`. Each
/// model's `migration_sql()` must give its own table its unique key.
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "retweet", unique(tweet_author))]
pub struct IndexA {
    pub tweet_author: i64,
}

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "retweet_tweet", unique(author))]
pub struct IndexB {
    pub author: i64,
}

// `retweet`+`tweet_author` and `retweet_tweet`+`author` both have the plain
// index name `retweet_tweet_author_key`: the second model's DDL still gives
// its table a unique key (under a hashed name), so it passes the check and
// skips a repeated key.
#[tokio::test]
async fn migrations_of_two_tables_whose_index_names_collide() {
    let db = TestDb::new("api_index_names").await;
    let mut client = db.connect().await;
    client.batch_execute(&IndexA::model().migration_sql()).await.unwrap();
    client.batch_execute(&IndexB::model().migration_sql()).await.unwrap();
    let a = bulk_runtime::verify_schema::<IndexA>(&client).await;
    let b = bulk_runtime::verify_schema::<IndexB>(&client).await;
    let rb = IndexB::bulk_create_new(&mut client, [IndexB { author: 1 }, IndexB { author: 1 }]).await;
    db.drop().await;
    assert_eq!(a.unwrap(), vec![]);
    assert_eq!(b.unwrap(), vec![], "the second model's table has its unique key");
    assert_eq!(rb.map(|r| (r.inserted, r.skipped)).unwrap(), (1, 1));
}

/// Two models on one table: the full row, and a model of a subset of its
/// columns (the others nullable).
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "shared", unique(k))]
pub struct SharedFull {
    pub k: i64,
    pub a: Option<String>,
    pub b: Option<i64>,
}

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "shared", unique(k))]
pub struct SharedPart {
    pub k: i64,
    pub b: Option<i64>,
}

#[tokio::test]
async fn two_models_on_one_table() {
    let db = TestDb::new("api_two_models").await;
    let mut client = db.connect().await;
    client.batch_execute(&SharedFull::model().migration_sql()).await.unwrap();
    client.batch_execute(&SharedPart::model().migration_sql()).await.unwrap();
    for pad in [0i64, COPY_BATCH as i64] {
        let base = pad * 10;
        let full: Vec<SharedFull> =
            (0..100 + pad).map(|k| SharedFull { k: base + k, a: Some("a".into()), b: None }).collect();
        let part: Vec<SharedPart> = (50..150 + pad).map(|k| SharedPart { k: base + k, b: Some(k) }).collect();
        let r = SharedFull::bulk_create_new(&mut client, &full).await.unwrap();
        assert_eq!(r.inserted as i64, 100 + pad);
        let r = SharedPart::bulk_create_new(&mut client, &part).await.unwrap();
        assert_eq!(r.inserted, 50);
        let r = SharedPart::bulk(&mut client).upsert(Upsert::all_columns()).run(&part).await.unwrap();
        assert_eq!(r.updated as i64, 100 + pad);
    }
    db.drop().await;
}

/// Borrowed rows: `&str`, `&[u8]`, `Cow`, a nullable borrowed key.
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "borrowed", unique(name, tag), nulls_not_distinct)]
pub struct Borrowed<'a, 'b: 'a> {
    pub name: &'a str,
    pub tag: Option<std::borrow::Cow<'b, str>>,
    pub bytes: &'a [u8],
    pub boxed: Box<str>,
    pub cow_bytes: std::borrow::Cow<'b, [u8]>,
}

#[tokio::test]
async fn borrowed_rows_from_a_stream_of_references() {
    let db = TestDb::new("api_borrowed").await;
    let mut client = db.connect().await;
    client.batch_execute(&Borrowed::model().migration_sql()).await.unwrap();
    let names: Vec<String> = (0..COPY_BATCH + 10).map(|i| format!("name {i}")).collect();
    let bytes = vec![0u8, 1, 2, 255];
    let rows: Vec<Borrowed<'_, '_>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Borrowed {
            name: n,
            tag: (i % 2 == 0).then_some(std::borrow::Cow::Borrowed("t")),
            bytes: &bytes,
            boxed: n.clone().into_boxed_str(),
            cow_bytes: std::borrow::Cow::Owned(vec![i as u8]),
        })
        .collect();
    let r = Borrowed::bulk(&mut client).run_stream(stream::iter(&rows[..20])).await.unwrap();
    assert_eq!(r.inserted, 20);
    let r = Borrowed::bulk(&mut client).returning_keys().run_stream(stream::iter(&rows)).await.unwrap();
    assert_eq!(r.inserted as usize, rows.len() - 20);
    assert_eq!(r.returned[0].key, ("name 20".to_owned(), Some("t".to_owned())));
    db.drop().await;
}

/// README: `migration_statements()` returns the same statements as
/// `migration_sql()`, and `quote_ident` quotes as the generated SQL does.
#[tokio::test]
async fn migration_statements_and_quote_ident() {
    let sql = Keywords::model().migration_sql();
    let joined: String = Keywords::model().migration_statements().iter().map(|s| format!("{s};\n")).collect();
    assert_eq!(sql, joined);
    assert_eq!(bulk_runtime::quote_ident("a\"b"), "\"a\"\"b\"");
    assert!(sql.contains(&bulk_runtime::quote_ident("Select \"From\" Where")), "{sql}");
    assert!(sql.contains(&bulk_runtime::quote_ident("col \"with\" quotes; drop table x")), "{sql}");
}

/// README "What one call does": a failed call inside a caller's transaction
/// leaves that transaction exactly as it was, with no savepoint left open;
/// the caller's rollback undoes a successful call.
#[tokio::test]
async fn a_failed_call_in_a_transaction_leaves_no_savepoint() {
    let (db, mut client) = setup("api_savepoints").await;
    for pad in [0i64, COPY_BATCH as i64] {
        let mut tx = client.transaction().await.unwrap();
        tx.batch_execute("SAVEPOINT mine").await.unwrap();
        Line::bulk_create_new(&mut tx, [line("sp", 0)]).await.unwrap();
        let mut bad: Vec<Line> = (1..pad + 2).map(|i| line("sp", i)).collect();
        bad.push(Line { file: "sp".into(), n: -1, text: "\0".into() });
        assert!(Line::bulk_create_new(&mut tx, &bad).await.is_err());
        // Our own savepoint is still the innermost one: releasing it and
        // rolling back to it work only if the call left none of its own.
        tx.batch_execute("ROLLBACK TO SAVEPOINT mine; RELEASE SAVEPOINT mine").await.unwrap();
        let rows: i64 = tx.query_one("SELECT count(*) FROM line", &[]).await.unwrap().get(0);
        assert_eq!(rows, 0, "{pad}");
        Line::bulk_create_new(&mut tx, [line("sp", 0)]).await.unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(count(&client, "line").await, 0, "{pad}");
    }
    db.drop().await;
}

/// README: "`rows` is any `IntoIterator` of rows or references to rows,
/// consumed lazily": only up to 5,000 rows are read ahead before the first
/// rows are sent.
#[tokio::test]
async fn the_iterator_is_consumed_lazily() {
    let (db, mut client) = setup("api_lazy").await;
    let pulled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let max_gap = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let p = pulled.clone();
    let n = 6 * SMALL_BATCH;
    let sent_seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s = sent_seen.clone();
    let g = max_gap.clone();
    let rows = (0..n as i64).map(move |i| {
        let now = p.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let gap = now - s.load(std::sync::atomic::Ordering::SeqCst).min(now);
        g.fetch_max(gap, std::sync::atomic::Ordering::SeqCst);
        line("lazy", i)
    });
    let s2 = sent_seen.clone();
    let report = Line::bulk(&mut client)
        .on_progress(move |p| s2.store(p.sent as usize, std::sync::atomic::Ordering::SeqCst))
        .run(rows)
        .await
        .unwrap();
    assert_eq!(report.inserted as usize, n);
    // Rows pulled ahead of what was sent: the read-ahead plus one chunk of 128 KiB.
    let gap = max_gap.load(std::sync::atomic::Ordering::SeqCst);
    assert!(gap <= SMALL_BATCH + 8000, "pulled {gap} rows ahead of those sent");
    db.drop().await;
}

// Nine models on nine tables, for the scratch tables a session keeps.
macro_rules! lru_models {
    ($($name:ident $table:literal),*) => {$(
        #[derive(BulkCreateNew, Debug, Clone, PartialEq)]
        #[bulk(table = $table, unique(k))]
        pub struct $name {
            pub k: i64,
        }
    )*};
}
lru_models!(M1 "m1", M2 "m2", M3 "m3", M4 "m4", M5 "m5", M6 "m6", M7 "m7", M8 "m8", M9 "m9");

/// README: "A session keeps the scratch tables of its 8 most recently used
/// models and drops the least recently used one when it makes a ninth".
#[tokio::test]
async fn a_session_keeps_at_most_eight_scratch_tables() {
    let db = TestDb::new("api_scratch_lru").await;
    let mut client = db.connect().await;
    async fn temp_tables(client: &Client) -> i64 {
        client
            .query_one("SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema() AND relkind = 'r'", &[])
            .await
            .unwrap()
            .get(0)
    }
    let mut base = 0i64;
    macro_rules! copy_call {
        ($($m:ident),*) => {$(
            client.batch_execute(&$m::model().migration_sql()).await.unwrap();
            base += COPY_BATCH as i64;
            let r = $m::bulk_create_new(&mut client, (base..base + COPY_BATCH as i64).map(|k| $m { k })).await.unwrap();
            assert_eq!(r.inserted, COPY_BATCH as u64);
            assert!(temp_tables(&client).await <= 8, "{} scratch tables after {}", temp_tables(&client).await, stringify!($m));
        )*};
    }
    copy_call!(M1, M2, M3, M4, M5, M6, M7, M8);
    assert_eq!(temp_tables(&client).await, 8);
    copy_call!(M9, M1);
    assert_eq!(temp_tables(&client).await, 8);
    db.drop().await;
}

/// README: the id of `returning_keys` is the model's id column's value when
/// the table has it with an integer type, `None` otherwise.
#[tokio::test]
async fn returning_keys_gives_ids_only_with_an_id_column() {
    let db = TestDb::new("api_returned_ids").await;
    let mut client = db.connect().await;
    client.batch_execute(&Keywords::model().migration_sql()).await.unwrap();
    client.batch_execute(&Line::model().migration_sql()).await.unwrap();
    let row = |i: i64| Keywords {
        r#type: "t".into(),
        select: i,
        r#match: None,
        from: 0,
        group: false,
        r#fn: vec![],
        ignored: Default::default(),
    };
    for pad in [0i64, COPY_BATCH as i64] {
        let r = Keywords::bulk(&mut client).returning_keys().run((pad * 10..pad * 11 + 3).map(row)).await.unwrap();
        let ids: Vec<i64> = r.returned.iter().map(|n| n.id.expect("an id")).collect();
        let stored: Vec<i64> = client
            .query(
                "SELECT \"Order\" FROM \"Select \"\"From\"\" Where\" WHERE \"select\" >= $1 ORDER BY \"select\"",
                &[&(pad * 10)],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids, stored, "{pad}");
        let r = Line::bulk(&mut client)
            .returning_keys()
            .run((0..3 + pad).map(|i| line(&format!("ids{pad}"), i)))
            .await
            .unwrap();
        assert!(r.returned.iter().all(|n| n.id.is_none()));
    }
    db.drop().await;
}
