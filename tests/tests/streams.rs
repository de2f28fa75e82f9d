//! Rows from an async `Stream`, progress reports, and a stream that fails.

use std::time::Duration;

use bulk_runtime::{BulkCreateNew, Error, Progress, Upsert};
use bulk_tests::{COPY_BATCH, TestDb, count};
use futures_util::StreamExt;
use tokio_postgres::Client;

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "line", unique(file, n), id = false)]
pub struct Line {
    pub file: String,
    pub n: i64,
    pub text: String,
}

fn line(file: &str, n: i64) -> Line {
    Line { file: file.to_owned(), n, text: format!("line {n} of {file}, padded to look like a log line .........") }
}

async fn setup(name: &str) -> (TestDb, Client) {
    let db = TestDb::new(name).await;
    let client = db.connect().await;
    client.batch_execute(&Line::model().migration_sql()).await.unwrap();
    (db, client)
}

/// An API pager: pages of `page` rows produced by another task, with a pause
/// between pages, through a channel of capacity 2, as one stream of rows.
fn pager(file: &'static str, pages: i64, page: i64) -> impl futures_util::Stream<Item = Line> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Line>>(2);
    tokio::spawn(async move {
        for p in 0..pages {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let rows = (p * page..(p + 1) * page).map(|n| line(file, n)).collect();
            if tx.send(rows).await.is_err() {
                return;
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|rows| (rows, rx)) })
        .flat_map(futures_util::stream::iter)
}

#[tokio::test]
async fn a_paged_stream_goes_through_both_paths_with_progress() {
    let (db, mut client) = setup("stream_pager").await;
    // 3 pages of 100: the short path (the whole stream is read first).
    let mut reports = Vec::new();
    let report = Line::bulk(&mut client).on_progress(|p| reports.push(p)).run_stream(pager("a", 3, 100)).await.unwrap();
    assert_eq!((report.offered, report.inserted), (300, 300));
    assert_eq!(reports.len(), 1);
    assert_eq!((reports[0].sent, reports[0].inserted, reports[0].finished), (300, 300, true));

    // 60 pages of 500 (30,000 rows, about 2.5 MB): the COPY path, fed page by
    // page. Whatever is buffered is sent whenever the stream waits for the
    // next page, so progress comes at least once per page after the first
    // 5,000 rows.
    let mut reports: Vec<Progress> = Vec::new();
    let report =
        Line::bulk(&mut client).on_progress(|p| reports.push(p)).run_stream(pager("b", 60, 500)).await.unwrap();
    assert_eq!((report.offered, report.inserted, report.skipped), (30_000, 30_000, 0));
    let last = reports.last().unwrap();
    assert_eq!((last.sent, last.inserted, last.finished), (30_000, 30_000, true));
    let during: Vec<&Progress> = reports.iter().filter(|p| !p.finished).collect();
    assert!(during.len() >= 50, "{} reports while sending", during.len());
    assert!(during.windows(2).all(|w| w[0].sent < w[1].sent), "sent grows");
    assert!(during.iter().all(|p| p.inserted == 0 && p.sent <= 30_000));
    assert_eq!(during.last().unwrap().sent, 30_000);
    assert_eq!(count(&client, "line").await, 30_300);

    // Again with overlap: the counts are exact through the stream too.
    let report = Line::bulk(&mut client).run_stream(pager("b", 70, 500)).await.unwrap();
    assert_eq!((report.offered, report.inserted, report.skipped), (35_000, 5_000, 30_000));
    db.drop().await;
}

#[tokio::test]
async fn progress_of_an_iterator_comes_per_chunk_and_at_the_end() {
    let (db, mut client) = setup("stream_progress").await;
    let mut reports: Vec<Progress> = Vec::new();
    let n = 40_000i64;
    let report =
        Line::bulk(&mut client).on_progress(|p| reports.push(p)).run((0..n).map(|i| line("c", i))).await.unwrap();
    assert_eq!(report.inserted, n as u64);
    // About 80 bytes a row, 128 KiB chunks: more than 20 reports.
    assert!(reports.len() > 20, "{}", reports.len());
    assert!(reports.windows(2).all(|w| w[0].sent <= w[1].sent));
    assert_eq!(reports.iter().filter(|p| p.finished).count(), 1);
    let last = reports.last().unwrap();
    assert_eq!((last.sent, last.inserted, last.finished), (n as u64, n as u64, true));
    assert_eq!(reports[reports.len() - 2].sent, n as u64, "the tail of the COPY is reported before the insert");
    // An upsert reports its updates at the end.
    let mut last = None;
    let report = Line::bulk(&mut client)
        .upsert(Upsert::columns(["text"]))
        .on_progress(|p| last = Some(p))
        .run((0..10).map(|i| line("c", i)))
        .await
        .unwrap();
    let last = last.unwrap();
    assert_eq!((last.sent, last.inserted, last.updated, last.finished), (10, 0, 10, true));
    assert_eq!(report.updated, 10);
    db.drop().await;
}

#[tokio::test]
async fn a_failing_stream_writes_nothing() {
    failing_stream(100).await;
}

#[tokio::test]
async fn a_failing_stream_writes_nothing_through_copy() {
    // Fails after several chunks were already sent to the server.
    failing_stream(3 * COPY_BATCH).await;
}

async fn failing_stream(fail_at: usize) {
    let (db, mut client) = setup(&format!("stream_fails_{fail_at}")).await;
    let rows = futures_util::stream::iter(0..fail_at as i64 + 10).map(move |i| {
        if i == fail_at as i64 { Err(std::io::Error::other("the file was truncated")) } else { Ok(line("d", i)) }
    });
    client.batch_execute(&bulk_runtime::Ledger::of::<Line>().migration_sql()).await.unwrap();
    let mut sent = 0;
    let err = Line::bulk(&mut client)
        .on_progress(|p| sent = p.sent)
        .batch_id("never recorded")
        .try_run_stream(rows)
        .await
        .unwrap_err();
    match &err {
        Error::Stream { row, source } => {
            assert_eq!(*row, fail_at);
            assert_eq!(source.to_string(), "the file was truncated");
        }
        other => panic!("expected a stream error, got {other:?}"),
    }
    assert_eq!(err.row(), Some(fail_at));
    assert!(err.to_string().contains("row stream failed at row"), "{err}");
    if fail_at > COPY_BATCH {
        assert!(sent > 0, "chunks were sent before the failure");
    }
    assert_eq!(count(&client, "line").await, 0);
    assert_eq!(count(&client, "bulk_batches").await, 0, "the batch id was not recorded");
    // The connection is still good.
    let report =
        Line::bulk(&mut client).run_stream(futures_util::stream::iter((0..3).map(|i| line("d", i)))).await.unwrap();
    assert_eq!(report.inserted, 3);
    db.drop().await;
}

#[tokio::test]
async fn streams_of_borrowed_rows_run_in_spawned_tasks() {
    let (db, mut client) = setup("stream_send").await;
    let rows: Vec<Line> = (0..COPY_BATCH as i64 * 2).map(|i| line("e", i)).collect();
    let handle = tokio::spawn(async move {
        // A stream of references that is not ready every 1000th row.
        let stream = Hesitant { rows: rows.iter(), waited: false };
        Line::bulk(&mut client).returning_skipped().run_stream(stream).await.unwrap()
    });
    let report = handle.await.unwrap();
    assert_eq!((report.inserted, report.returned.len()), (COPY_BATCH as u64 * 2, 0));
    db.drop().await;
}

/// A stream of borrowed rows that returns `Pending` once before every
/// 1000th row. (Written by hand: a stream built from closures over borrowed
/// rows trips rustc's check that the spawned future is `Send`,
/// rust-lang/rust#110338, whatever consumes it.)
struct Hesitant<'a> {
    rows: std::slice::Iter<'a, Line>,
    waited: bool,
}

impl<'a> futures_util::Stream for Hesitant<'a> {
    type Item = &'a Line;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<&'a Line>> {
        let next_is_slow = self.rows.as_slice().first().is_some_and(|r| r.n % 1000 == 0);
        if next_is_slow && !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        self.waited = false;
        std::task::Poll::Ready(self.rows.next())
    }
}
