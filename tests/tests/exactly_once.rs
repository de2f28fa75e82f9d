//! Exactly-once accounting with a batch id: the counts are recorded in the
//! ledger in the call's transaction, so a retry after an ambiguous COMMIT (the
//! server committed, the client never heard) reports the original counts
//! instead of 0, and two calls with the same id insert once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bulk_runtime::{BulkCreateNew, Error, Keep, Ledger, Report, Step, Upsert};
use bulk_tests::{COPY_BATCH, DATABASE, TestDb, count, server_url};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "payment", unique(account, seq))]
pub struct Payment {
    pub account: i64,
    pub seq: i64,
    pub cents: i64,
}

fn pay(account: i64, seq: i64) -> Payment {
    Payment { account, seq, cents: account * 1000 + seq }
}

/// `n` payments of account 1 (seq from `from`), plus a repeat of the first.
fn batch(from: i64, n: usize) -> Vec<Payment> {
    let mut rows: Vec<Payment> = (from..from + n as i64).map(|s| pay(1, s)).collect();
    rows.push(pay(1, from));
    rows
}

async fn setup(name: &str) -> (TestDb, Client) {
    let db = TestDb::new(name).await;
    let client = db.connect().await;
    client.batch_execute(&Payment::model().migration_sql()).await.unwrap();
    client.batch_execute(&Ledger::of::<Payment>().migration_sql()).await.unwrap();
    (db, client)
}

fn counts(r: &Report) -> (u64, u64, u64, u64, u64) {
    (r.offered, r.inserted, r.updated, r.unchanged, r.skipped)
}

/// The ledger's rows: `(batch_id, offered, inserted, skipped)`.
async fn ledger_rows(client: &Client) -> Vec<(String, i64, i64, i64)> {
    client
        .query("SELECT batch_id, offered, inserted, skipped FROM bulk_batches ORDER BY batch_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[tokio::test]
async fn a_batch_id_is_recorded_once_and_replayed() {
    recorded_once(10).await;
}

#[tokio::test]
async fn a_batch_id_is_recorded_once_and_replayed_through_copy() {
    recorded_once(COPY_BATCH).await;
}

async fn recorded_once(n: usize) {
    let (db, mut client) = setup(&format!("once_replay_{n}")).await;
    let n64 = n as u64;
    Payment::bulk_create_new(&mut client, [pay(1, 0)]).await.unwrap();
    let rows = batch(0, n);

    let first = Payment::bulk(&mut client).batch_id("import 7").run(&rows).await.unwrap();
    assert_eq!(counts(&first), (n64 + 1, n64 - 1, 0, 0, 2));
    assert!(!first.replayed);
    // The same id again: nothing written, the recorded counts, flagged.
    let again = Payment::bulk(&mut client).batch_id("import 7").run(&rows).await.unwrap();
    assert!(again.replayed);
    assert_eq!(counts(&again), counts(&first));
    assert_eq!(again.to_string(), format!("{} of {} records added (recorded earlier)", n - 1, n + 1));
    // Other rows under the same id are another batch: refused, not replayed.
    let other = Payment::bulk(&mut client).batch_id("import 7").run(batch(10_000, n)).await.unwrap_err();
    assert!(matches!(other, Error::BatchIdReused { .. }), "{other}");
    assert_eq!(count(&client, "payment").await as usize, n);
    // Another id runs normally (and the plain call's answer for a retry is 0).
    let fresh = Payment::bulk(&mut client).batch_id("import 8").run(&rows).await.unwrap();
    assert_eq!((fresh.replayed, fresh.inserted), (false, 0));
    assert_eq!(
        ledger_rows(&client).await,
        [
            ("import 7".to_owned(), n as i64 + 1, n as i64 - 1, 2),
            ("import 8".to_owned(), n as i64 + 1, 0, n as i64 + 1)
        ]
    );

    // A replay of a returning call returns the counts only.
    let keys = Payment::bulk(&mut client).returning_keys().batch_id("import 7").run(&rows).await.unwrap();
    assert!(keys.replayed && keys.returned.is_empty());
    assert_eq!(keys.inserted, n64 - 1);
    let skipped = Payment::bulk(&mut client).returning_skipped().batch_id("import 7").run(&rows).await.unwrap();
    assert!(skipped.replayed && skipped.returned.is_empty());
    db.drop().await;
}

/// A TCP proxy to the server. Once armed, it forwards the client's next
/// `COMMIT` to the server, waits for the server's answer (so the commit has
/// happened), drops that answer and closes both connections: the client
/// cannot know whether its transaction committed.
struct CommitCutter {
    port: u16,
    armed: Arc<AtomicBool>,
}

impl CommitCutter {
    async fn start() -> CommitCutter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let (host, server_port) = server_address();
        let arm = armed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect((host.as_str(), server_port)).await.unwrap();
                tokio::spawn(pump(client, server, arm.clone()));
            }
        });
        CommitCutter { port, armed }
    }

    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// A connection through the proxy, with `search_path` set to the test's schema.
    async fn connect(&self, db: &TestDb) -> Client {
        let server: Config = server_url().parse().unwrap();
        let mut config = Config::new();
        config.host("127.0.0.1").port(self.port).dbname(DATABASE).user(server.get_user().unwrap_or("postgres"));
        if let Some(password) = server.get_password() {
            config.password(password);
        }
        let quoted = bulk_runtime::quote_ident(&db.schema).replace('\\', "\\\\").replace(' ', "\\ ");
        config.options(format!("-c search_path={quoted}"));
        let (client, connection) = config.connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }
}

async fn pump(client: TcpStream, server: TcpStream, armed: Arc<AtomicBool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let cut = Arc::new(AtomicBool::new(false));
    let cut_up = cut.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = client_read.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            // A simple-protocol query message 'Q' with the text COMMIT.
            if armed.load(Ordering::SeqCst) && buf[..n].windows(7).any(|w| w == b"COMMIT\0") {
                armed.store(false, Ordering::SeqCst);
                cut_up.store(true, Ordering::SeqCst);
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = server_read.read(&mut buf).await.unwrap_or(0);
            if n == 0 || cut.load(Ordering::SeqCst) {
                // The answer to COMMIT arrived: the server has committed. Drop it.
                return;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// The test server's host and port.
fn server_address() -> (String, u16) {
    let config: Config = server_url().parse().unwrap();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

#[tokio::test]
async fn a_retry_after_an_ambiguous_commit_reports_the_original_counts() {
    ambiguous_commit(20).await;
}

#[tokio::test]
async fn a_retry_after_an_ambiguous_commit_reports_the_original_counts_through_copy() {
    ambiguous_commit(COPY_BATCH).await;
}

async fn ambiguous_commit(n: usize) {
    let (db, mut client) = setup(&format!("once_ambiguous_{n}")).await;
    let proxy = CommitCutter::start().await;
    let rows = batch(0, n);

    // With a batch id: the commit's answer is lost...
    let mut through = proxy.connect(&db).await;
    proxy.arm();
    let err = Payment::bulk(&mut through).batch_id("page 1").run(&rows).await.unwrap_err();
    assert_eq!(err.step(), Some(Step::Commit), "{err}");
    assert!(err.is_retryable() && !err.connection_usable(), "{err}");
    // ...but the server committed the rows and the counts together.
    assert_eq!(count(&client, "payment").await as usize, n);
    assert_eq!(ledger_rows(&client).await, [("page 1".to_owned(), n as i64 + 1, n as i64, 1)]);
    // The retry on a new connection reports what the lost attempt did.
    let retry = Payment::bulk(&mut client).batch_id("page 1").run(&rows).await.unwrap();
    assert!(retry.replayed);
    assert_eq!(counts(&retry), (n as u64 + 1, n as u64, 0, 0, 1));
    assert_eq!(count(&client, "payment").await as usize, n);

    // Without a batch id the same retry cannot tell: it reports 0 new rows.
    // (A long batch, so that the plain call commits with COMMIT.)
    let rows = batch(100_000, COPY_BATCH);
    let mut through = proxy.connect(&db).await;
    proxy.arm();
    let err = Payment::bulk_create_new(&mut through, &rows).await.unwrap_err();
    assert_eq!(err.step(), Some(Step::Commit), "{err}");
    let retry = Payment::bulk_create_new(&mut client, &rows).await.unwrap();
    assert_eq!(retry.inserted, 0, "the rows were committed by the lost attempt");
    db.drop().await;
}

#[tokio::test]
async fn concurrent_calls_with_one_batch_id_insert_once() {
    one_id_two_writers(10).await;
}

#[tokio::test]
async fn concurrent_calls_with_one_batch_id_insert_once_through_copy() {
    one_id_two_writers(COPY_BATCH).await;
}

async fn one_id_two_writers(n: usize) {
    let (db, mut a) = setup(&format!("once_concurrent_{n}")).await;
    for commit in [true, false] {
        let id = format!("batch commit={commit}");
        let rows = batch(if commit { 0 } else { 1_000_000 }, n);
        // A claims the id inside its transaction and holds it...
        let mut tx = a.transaction().await.unwrap();
        let first = Payment::bulk(&mut tx).batch_id(id.clone()).run(&rows).await.unwrap();
        assert_eq!(first.inserted, n as u64);
        // ...B, with the same id, waits for A's transaction to end.
        let mut b = db.connect().await;
        let b_rows = rows.clone();
        let b_id = id.clone();
        let second =
            tokio::spawn(async move { Payment::bulk(&mut b).batch_id(b_id).run(&b_rows).await.map(|r| (r, b)) });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!second.is_finished(), "B must wait for A's claim");
        if commit {
            tx.commit().await.unwrap();
            // A committed: B replays A's counts and writes nothing.
            let (report, _) = second.await.unwrap().unwrap();
            assert!(report.replayed);
            assert_eq!(counts(&report), counts(&first));
        } else {
            tx.rollback().await.unwrap();
            // A rolled back: B claims the id and inserts the batch itself.
            let (report, _) = second.await.unwrap().unwrap();
            assert!(!report.replayed);
            assert_eq!(report.inserted, n as u64);
        }
    }
    assert_eq!(count(&a, "payment").await as usize, 2 * n);
    assert_eq!(ledger_rows(&a).await.len(), 2);
    db.drop().await;
}

#[tokio::test]
async fn a_failed_call_records_nothing_and_its_retry_runs() {
    failed_call(10).await;
}

#[tokio::test]
async fn a_failed_call_records_nothing_and_its_retry_runs_through_copy() {
    failed_call(COPY_BATCH).await;
}

async fn failed_call(n: usize) {
    let (db, mut client) = setup(&format!("once_failed_{n}")).await;
    client.batch_execute("ALTER TABLE payment ADD CONSTRAINT positive CHECK (cents >= 0)").await.unwrap();
    let mut rows = batch(0, n);
    rows[n / 2].cents = -1;
    let err = Payment::bulk(&mut client).batch_id("b").run(&rows).await.unwrap_err();
    assert_eq!(err.step(), Some(Step::Insert), "{err}");
    assert_eq!(count(&client, "payment").await, 0);
    assert!(ledger_rows(&client).await.is_empty(), "the claim was rolled back with the rows");
    rows[n / 2].cents = 1;
    let retry = Payment::bulk(&mut client).batch_id("b").run(&rows).await.unwrap();
    assert_eq!((retry.replayed, retry.inserted), (false, n as u64));
    db.drop().await;
}

#[tokio::test]
async fn batch_ids_in_a_callers_transaction_roll_back_with_it() {
    let (db, mut client) = setup("once_tx").await;
    for pad in [0, COPY_BATCH] {
        let rows = batch(pad as i64 * 10, 5 + pad);
        let mut tx = client.transaction().await.unwrap();
        let r = Payment::bulk(&mut tx).batch_id(format!("t{pad}")).run(&rows).await.unwrap();
        assert_eq!(r.inserted as usize, 5 + pad);
        // Twice in the same transaction: the second call sees the claim.
        let again = Payment::bulk(&mut tx).batch_id(format!("t{pad}")).run(&rows).await.unwrap();
        assert!(again.replayed);
        tx.rollback().await.unwrap();
        assert!(!ledger_rows(&client).await.iter().any(|r| r.0 == format!("t{pad}")), "rolled back");
        let r = Payment::bulk(&mut client).batch_id(format!("t{pad}")).run(&rows).await.unwrap();
        assert_eq!((r.replayed, r.inserted as usize), (false, 5 + pad));
    }
    db.drop().await;
}

#[tokio::test]
async fn upsert_counts_are_replayed_too() {
    let (db, mut client) = setup("once_upsert").await;
    Payment::bulk_create_new(&mut client, [pay(1, 0), pay(1, 1)]).await.unwrap();
    for (id, n, cents) in [("small", 10, 7), ("copy", COPY_BATCH, 8)] {
        let rows: Vec<Payment> = (0..n as i64).map(|s| Payment { cents, ..pay(1, s) }).collect();
        let upsert = || Upsert::columns(["cents"]).only_if_changed();
        let first = Payment::bulk(&mut client).upsert(upsert()).batch_id(id).run(&rows).await.unwrap();
        let again = Payment::bulk(&mut client).upsert(upsert()).batch_id(id).run(&rows).await.unwrap();
        assert!(!first.replayed && again.replayed);
        assert_eq!(counts(&again), counts(&first));
        // Stored before: seq 0 and 1, then (after the short batch) 0..10.
        let stored = if id == "small" { 2 } else { 10 };
        assert_eq!((first.inserted, first.updated), (n as u64 - stored, stored));
    }
    db.drop().await;
}

#[tokio::test]
async fn an_empty_batch_is_not_recorded() {
    let (db, mut client) = setup("once_empty").await;
    let r = Payment::bulk(&mut client).batch_id("e").run(Vec::<Payment>::new()).await.unwrap();
    assert_eq!(r, Report::default());
    assert!(ledger_rows(&client).await.is_empty());
    let r = Payment::bulk(&mut client).batch_id("e").run([pay(1, 1)]).await.unwrap();
    assert_eq!((r.replayed, r.inserted), (false, 1));
    db.drop().await;
}

#[tokio::test]
async fn a_missing_ledger_is_reported_at_the_ledger_step() {
    let db = TestDb::new("once_no_ledger").await;
    let mut client = db.connect().await;
    client.batch_execute(&Payment::model().migration_sql()).await.unwrap();
    for n in [3, COPY_BATCH] {
        let err = Payment::bulk(&mut client).batch_id("x").run(batch(0, n)).await.unwrap_err();
        assert_eq!(err.step(), Some(Step::Ledger), "{err}");
        assert_eq!(err.sqlstate(), Some(&SqlState::UNDEFINED_TABLE), "{err}");
        assert!(matches!(err, Error::LedgerMissing { .. }));
        assert!(!err.is_retryable() && err.connection_usable());
        // The message says what is missing and how to create it.
        let message = err.to_string();
        assert!(
            message.contains(r#"the ledger table "bulk_batches" of `.batch_id(..)` is missing or out of date"#),
            "{message}"
        );
        assert!(message.contains(r#"relation "bulk_batches" does not exist"#), "{message}");
        assert!(message.contains("`client.batch_execute(&Ledger::of::<Payment>().migration_sql())`"), "{message}");
    }
    // A ledger in a schema that does not exist: the same error, naming that ledger.
    let elsewhere = Ledger::new("batches").in_schema("no such schema");
    let err = Payment::bulk(&mut client).batch_id("x").ledger(elsewhere).run(batch(0, 3)).await.unwrap_err();
    assert!(
        matches!(err, Error::LedgerMissing { ref ledger, .. } if ledger == r#""no such schema"."batches""#),
        "{err}"
    );
    assert_eq!(count(&client, "payment").await, 0);
    db.drop().await;
}

/// A ledger made by hand without its primary key: the claim's `ON
/// CONFLICT` has no key to use (42P10); the error names the ledger and the
/// key to add, nothing is written, and with the key added the call runs.
#[tokio::test]
async fn a_ledger_without_its_key_says_which_key_to_add() {
    let (db, mut client) = setup("once_ledger_no_key").await;
    client.batch_execute("ALTER TABLE bulk_batches DROP CONSTRAINT bulk_batches_pkey").await.unwrap();
    for n in [3, COPY_BATCH] {
        let err = Payment::bulk(&mut client).batch_id("x").run(batch(0, n)).await.unwrap_err();
        assert!(matches!(err, Error::LedgerKeyMissing { ref ledger, .. } if ledger == r#""bulk_batches""#), "{err:?}");
        assert_eq!(err.step(), Some(Step::Ledger), "{err}");
        assert_eq!(err.sqlstate(), Some(&SqlState::INVALID_COLUMN_REFERENCE), "{err}");
        assert!(!err.is_retryable() && err.connection_usable());
        let message = err.to_string();
        assert!(
            message.starts_with(r#"Payment: the ledger table "bulk_batches" of `.batch_id(..)` has no primary key"#),
            "{message}"
        );
        assert!(
            message.contains(r#"`ALTER TABLE "bulk_batches" ADD PRIMARY KEY ("target", "batch_id")`"#),
            "{message}"
        );
        assert_eq!(count(&client, "payment").await, 0);
        assert!(ledger_rows(&client).await.is_empty());
    }
    // A unique key of another shape is no better.
    client.batch_execute("ALTER TABLE bulk_batches ADD UNIQUE (batch_id)").await.unwrap();
    let err = Payment::bulk(&mut client).batch_id("x").run(batch(0, 3)).await.unwrap_err();
    assert!(matches!(err, Error::LedgerKeyMissing { .. }), "{err:?}");
    // The key the message names, in either column order, makes it work.
    client.batch_execute(r#"ALTER TABLE bulk_batches ADD UNIQUE ("batch_id", "target")"#).await.unwrap();
    let report = Payment::bulk(&mut client).batch_id("x").run(batch(0, 3)).await.unwrap();
    assert_eq!((report.replayed, report.inserted), (false, 3));
    let again = Payment::bulk(&mut client).batch_id("x").run(batch(0, 3)).await.unwrap();
    assert!(again.replayed);
    db.drop().await;
}

#[tokio::test]
async fn the_ledger_lives_in_the_models_schema_or_where_told() {
    #[derive(BulkCreateNew)]
    #[bulk(schema = "bulk once schema", table = "event", unique(k))]
    struct Event {
        k: i64,
    }
    let db = TestDb::with_schema("bulk once schema".to_owned()).await;
    let mut client = db.connect_plain().await;
    client.batch_execute(&Event::model().migration_sql()).await.unwrap();
    assert_eq!(Ledger::of::<Event>().qualified_name(), r#""bulk once schema"."bulk_batches""#);
    client.batch_execute(&Ledger::of::<Event>().migration_sql()).await.unwrap();
    let r = Event::bulk(&mut client).batch_id("a").run((0..3).map(|k| Event { k })).await.unwrap();
    assert_eq!(r.inserted, 3);
    let target: String =
        client.query_one(r#"SELECT target FROM "bulk once schema".bulk_batches"#, &[]).await.unwrap().get(0);
    assert_eq!(target, r#""bulk once schema".event"#, "the target is recorded schema-qualified");

    // Another ledger, named by the caller.
    let custom = Ledger::new("Imports Done").in_schema("bulk once schema");
    client.batch_execute(&custom.migration_sql()).await.unwrap();
    let r =
        Event::bulk(&mut client).ledger(custom.clone()).batch_id("a").run((0..5).map(|k| Event { k })).await.unwrap();
    assert_eq!((r.replayed, r.inserted), (false, 2), "a different ledger: not a replay");
    let r = Event::bulk(&mut client).ledger(custom).batch_id("a").run((0..5).map(|k| Event { k })).await.unwrap();
    assert!(r.replayed);
    db.drop().await;
}

/// Another batch under a used id is refused (never a silent replay), on
/// both paths, and nothing of it is written; the same batch replays.
async fn reused_id(n: usize) {
    let (db, mut client) = setup(&format!("once_reused_{n}")).await;
    let rows = batch(0, n);
    let first = Payment::bulk(&mut client).batch_id("page 7").run(&rows).await.unwrap();
    assert_eq!(first.inserted, n as u64);
    // Other rows of the same length, the same rows in another order, one
    // value changed: each is another batch.
    let mut reordered = rows.clone();
    reordered.reverse();
    let mut changed = rows.clone();
    changed[n / 2].cents += 1;
    for other in [batch(10_000, n), reordered, changed] {
        let err = Payment::bulk(&mut client).batch_id("page 7").run(&other).await.unwrap_err();
        match &err {
            Error::BatchIdReused { batch_id, recorded, offered, .. } => {
                assert_eq!(batch_id, "page 7");
                assert_ne!(recorded, offered);
                assert!(recorded.starts_with(&format!("{} rows of Payment ", n + 1)), "{recorded}");
            }
            other => panic!("expected BatchIdReused, got {other}"),
        }
        assert!(!err.is_retryable());
    }
    assert_eq!(count(&client, "payment").await as usize, n, "nothing of the other batches is written");
    let again = Payment::bulk(&mut client).batch_id("page 7").run(&rows).await.unwrap();
    assert!(again.replayed);
    assert_eq!(counts(&again), counts(&first));
    db.drop().await;
}

#[tokio::test]
async fn another_batch_under_a_used_id_is_refused() {
    reused_id(30).await;
}

#[tokio::test]
async fn another_batch_under_a_used_id_is_refused_through_copy() {
    reused_id(COPY_BATCH).await;
}

#[tokio::test]
async fn batch_ids_the_ledger_cannot_hold_are_refused_before_anything_is_sent() {
    let (db, mut client) = setup("once_bad_ids").await;
    let long = "x".repeat(513);
    for id in ["", "page\0one", long.as_str()] {
        for n in [10, COPY_BATCH] {
            let err = Payment::bulk(&mut client).batch_id(id).run(&batch(0, n)).await.unwrap_err();
            assert!(matches!(err, Error::Usage { .. }), "{id:?}: {err}");
            assert!(err.to_string().contains("batch id"), "{err}");
        }
    }
    assert_eq!(count(&client, "payment").await, 0);
    assert!(ledger_rows(&client).await.is_empty());
    // The longest allowed id works.
    let longest = "y".repeat(512);
    assert_eq!(Payment::bulk(&mut client).batch_id(longest).run(&batch(0, 10)).await.unwrap().inserted, 10);
    db.drop().await;
}

/// The same table seen by another model: a batch id used by one model is
/// refused to the other, rather than replaying the first model's counts.
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "payment", unique(account, seq))]
pub struct PaymentKey {
    pub account: i64,
    pub seq: i64,
}

/// Another table sharing the ledger.
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "refund", unique(account, seq))]
pub struct Refund {
    pub account: i64,
    pub seq: i64,
}

#[tokio::test]
async fn models_sharing_a_ledger_never_take_each_others_counts() {
    let (db, mut client) = setup("once_two_models").await;
    client.batch_execute(&Refund::model().migration_sql()).await.unwrap();
    client.batch_execute("ALTER TABLE payment ALTER COLUMN cents SET DEFAULT 0").await.unwrap();
    let payments = batch(0, 20);
    Payment::bulk(&mut client).batch_id("day 1").run(&payments).await.unwrap();
    // Another table, the same id, the same ledger: its own batch.
    let refunds: Vec<Refund> = (0..5).map(|seq| Refund { account: 1, seq }).collect();
    let report =
        Refund::bulk(&mut client).batch_id("day 1").ledger(Ledger::of::<Payment>()).run(&refunds).await.unwrap();
    assert!(!report.replayed);
    assert_eq!(report.inserted, 5);
    // The same table through another model: refused, not replayed.
    let keys: Vec<PaymentKey> = payments.iter().map(|p| PaymentKey { account: p.account, seq: p.seq }).collect();
    let err = PaymentKey::bulk(&mut client).batch_id("day 1").run(&keys).await.unwrap_err();
    assert!(matches!(err, Error::BatchIdReused { .. }), "{err}");
    assert!(err.to_string().contains("Payment") && err.to_string().contains("PaymentKey"), "{err}");
    db.drop().await;
}

/// A ledger made before fingerprints were recorded lacks the column: the
/// error says to run the (idempotent) migration, which upgrades it, and its
/// old rows still replay.
#[tokio::test]
async fn a_ledger_of_an_earlier_version_is_upgraded_by_its_migration() {
    let (db, mut client) = setup("once_old_ledger").await;
    client.batch_execute("ALTER TABLE bulk_batches DROP COLUMN fingerprint").await.unwrap();
    client
        .batch_execute("INSERT INTO bulk_batches (target, batch_id, offered, inserted, skipped) VALUES (format('%I.%I', current_schema(), 'payment'), 'old', 2, 1, 1)")
        .await
        .unwrap();
    let err = Payment::bulk(&mut client).batch_id("new").run(batch(0, 3)).await.unwrap_err();
    assert!(matches!(err, Error::LedgerMissing { .. }), "{err}");
    assert!(err.to_string().contains("is missing or out of date"), "{err}");
    client.batch_execute(&Ledger::of::<Payment>().migration_sql()).await.unwrap();
    let report = Payment::bulk(&mut client).batch_id("new").run(batch(0, 3)).await.unwrap();
    assert_eq!((report.replayed, report.inserted), (false, 3));
    // The old row has no fingerprint: it replays whatever the batch.
    let old = Payment::bulk(&mut client).batch_id("old").run(batch(100, 1)).await.unwrap();
    assert!(old.replayed);
    assert_eq!((old.offered, old.inserted, old.skipped), (2, 1, 1));
    db.drop().await;
}

/// A ledger made by hand with other column types than `migration_sql()`
/// gives (`integer` counts, a `varchar` target and fingerprint) records and
/// replays the same: its values are read as the migration's types, never
/// with a panic.
#[tokio::test]
async fn a_ledger_made_by_hand_with_narrower_types_replays() {
    let (db, mut client) = setup("once_hand_ledger").await;
    client
        .batch_execute(
            "DROP TABLE bulk_batches;
             CREATE TABLE bulk_batches (
                 target varchar(200) NOT NULL, batch_id varchar(100) NOT NULL,
                 offered integer NOT NULL DEFAULT 0, inserted integer NOT NULL DEFAULT 0,
                 updated integer NOT NULL DEFAULT 0, unchanged integer NOT NULL DEFAULT 0,
                 skipped integer NOT NULL DEFAULT 0, recorded_at timestamptz NOT NULL DEFAULT now(),
                 fingerprint varchar(200), PRIMARY KEY (target, batch_id))",
        )
        .await
        .unwrap();
    for (id, n) in [("small", 10), ("copy", COPY_BATCH)] {
        let rows = batch(if id == "small" { 0 } else { 1000 }, n);
        let first = Payment::bulk(&mut client).batch_id(id).run(&rows).await.unwrap();
        // Before: the replay panicked ("error retrieving column 0: error deserializing column 0").
        let again = Payment::bulk(&mut client).batch_id(id).run(&rows).await.unwrap();
        assert_eq!((first.replayed, again.replayed), (false, true));
        assert_eq!(counts(&again), (n as u64 + 1, n as u64, 0, 0, 1));
        let other = Payment::bulk(&mut client).batch_id(id).run(&rows[1..]).await.unwrap_err();
        assert!(matches!(other, Error::BatchIdReused { .. }), "{other}");
    }
    assert_eq!(count(&client, "payment").await, 10 + COPY_BATCH as i64);
    db.drop().await;
}

/// A batch id names one batch and what the call writes: an upsert under an
/// id that a plain call recorded (or an upsert keeping another row of a
/// repeated key, or of other columns) is refused, not replayed without
/// updating; the same upsert again replays.
#[tokio::test]
async fn an_upsert_under_an_id_recorded_for_another_write_is_refused() {
    let (db, mut client) = setup("once_upsert_mode").await;
    Payment::bulk_create_new(&mut client, [Payment { cents: 0, ..pay(1, 0) }]).await.unwrap();
    let cents = async |client: &Client| -> Vec<i64> {
        let rows = client.query("SELECT cents FROM payment ORDER BY seq", &[]).await.unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    };
    for n in [3, COPY_BATCH] {
        let id = format!("plain then upsert {n}");
        let rows: Vec<Payment> = (0..n as i64).map(|s| Payment { cents: 7, ..pay(1, s) }).collect();
        let plain = Payment::bulk(&mut client).batch_id(&id).run(&rows).await.unwrap();
        assert_eq!((plain.inserted, plain.skipped), (n as u64 - 1, 1));
        // Before: replayed as "2 of 3 records added (recorded earlier)", and seq 0 kept 0 cents.
        let err = Payment::bulk(&mut client).batch_id(&id).upsert(Upsert::all_columns()).run(&rows).await.unwrap_err();
        assert!(matches!(err, Error::BatchIdReused { .. }), "{err}");
        assert!(err.to_string().contains("upserting cents from the last row of a key"), "{err}");
        assert_eq!(cents(&client).await[0], 0);
        // The returning calls store what the plain call does: they replay it.
        let keys = Payment::bulk(&mut client).batch_id(&id).returning_keys().run(&rows).await.unwrap();
        assert!(keys.replayed && keys.returned.is_empty());
        assert_eq!(counts(&keys.outcome()), counts(&plain));
        client.execute("DELETE FROM payment WHERE seq > 0", &[]).await.unwrap();
    }
    let rows = vec![Payment { cents: 8, ..pay(1, 0) }, Payment { cents: 9, ..pay(1, 0) }];
    let upsert = || Upsert::columns(["cents"]);
    let first = Payment::bulk(&mut client).batch_id("upsert").upsert(upsert()).run(&rows).await.unwrap();
    assert_eq!(counts(&first), (2, 0, 1, 0, 1));
    assert_eq!(cents(&client).await, [9]);
    let other = Payment::bulk(&mut client).batch_id("upsert").upsert(upsert().keep(Keep::First)).run(&rows).await;
    assert!(matches!(other, Err(Error::BatchIdReused { .. })), "{other:?}");
    let err = Payment::bulk(&mut client).batch_id("upsert").run(&rows).await.unwrap_err();
    assert!(matches!(err, Error::BatchIdReused { .. }), "{err}");
    // The same upsert replays, whichever way its columns are named.
    let again = Payment::bulk(&mut client).batch_id("upsert").upsert(Upsert::all_columns()).run(&rows).await;
    assert_eq!(counts(&again.unwrap()), counts(&first));
    assert_eq!(cents(&client).await, [9]);
    db.drop().await;
}

/// An upsert with a batch id whose `COMMIT` answer is lost: the server
/// stored the new rows, the updates and the counts together, and the retry
/// replays them (a second run would have counted every row unchanged).
#[tokio::test]
async fn an_upsert_retried_after_an_ambiguous_commit_replays_its_counts() {
    let (db, mut client) = setup("once_ambiguous_upsert").await;
    let proxy = CommitCutter::start().await;
    for (n, round) in [(10, 1), (COPY_BATCH, 2)] {
        let base = round * 1_000_000;
        Payment::bulk_create_new(&mut client, (0..4).map(|s| pay(1, base + s))).await.unwrap();
        // Seq 0 and 1 stored and changed, 2 and 3 stored as offered, the
        // rest new; seq 0 offered twice, its first row kept.
        let mut rows: Vec<Payment> = (0..n as i64).map(|s| pay(1, base + s)).collect();
        rows[0].cents = -1;
        rows[1].cents = -2;
        rows.push(Payment { cents: -3, ..pay(1, base) });
        let upsert = || Upsert::columns(["cents"]).only_if_changed().keep(Keep::First);
        let id = format!("upsert {n}");
        let mut through = proxy.connect(&db).await;
        proxy.arm();
        let err = Payment::bulk(&mut through).upsert(upsert()).batch_id(&id).run(&rows).await.unwrap_err();
        assert_eq!(err.step(), Some(Step::Commit), "{err}");
        let n = n as u64;
        let retry = Payment::bulk(&mut client).upsert(upsert()).batch_id(&id).run(&rows).await.unwrap();
        assert!(retry.replayed);
        assert_eq!(counts(&retry), (n + 1, n - 4, 2, 2, 1));
        assert_eq!(
            retry.to_string(),
            format!("{} of {} records added, 2 updated, 2 unchanged (recorded earlier)", n - 4, n + 1)
        );
        let changed: Vec<i64> = client
            .query("SELECT cents FROM payment WHERE seq BETWEEN $1 AND $1 + 1 ORDER BY seq", &[&base])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(changed, [-1, -2]);
    }
    assert_eq!(count(&client, "payment").await, 10 + COPY_BATCH as i64);
    db.drop().await;
}

/// A row with jsonb values: one typed with a `HashMap`, whose keys
/// serialize in another order each time a map is built, one in an array.
#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "doc", unique(k))]
pub struct Doc {
    pub k: i64,
    pub attrs: bulk_runtime::Json<std::collections::HashMap<String, i64>>,
    pub tags: Vec<serde_json::Value>,
}

/// The same batch, built again for a retry (its maps made anew), replays:
/// jsonb values are fingerprinted with their keys sorted, as jsonb stores
/// them. Other values still tell batches apart.
#[tokio::test]
async fn a_batch_with_hash_maps_built_again_replays() {
    let (db, mut client) = setup("once_hash_maps").await;
    client.batch_execute(&Doc::model().migration_sql()).await.unwrap();
    let doc = |k: i64, v: i64| Doc {
        k,
        attrs: bulk_runtime::Json((0..8).map(|i| (format!("attr {i}"), i + v)).collect()),
        tags: vec![serde_json::json!({"b": v, "a": [k]}), serde_json::Value::Null],
    };
    for n in [3, COPY_BATCH] {
        let id = format!("docs {n}");
        let batch = |v: i64| (0..n as i64).map(|k| doc(k + 10 * n as i64, v)).collect::<Vec<_>>();
        let first = Doc::bulk(&mut client).batch_id(&id).run(batch(0)).await.unwrap();
        for _ in 0..3 {
            // Before: BatchIdReused ("3 rows of Doc d447...; this one is 3 rows of Doc f836...").
            let again = Doc::bulk(&mut client).batch_id(&id).run(batch(0)).await.unwrap();
            assert!(again.replayed);
            assert_eq!(counts(&again), counts(&first));
        }
        let other = Doc::bulk(&mut client).batch_id(&id).run(batch(1)).await.unwrap_err();
        assert!(matches!(other, Error::BatchIdReused { .. }), "{other}");
    }
    assert_eq!(count(&client, "doc").await, 3 + COPY_BATCH as i64);
    db.drop().await;
}
