//! Poolers, concurrency, faults and retries: calls whose connection or
//! statement is cut short, and many calls at once, through PgBouncer and the
//! connection pools, with exact counts.
//!
//! - backends terminated mid-call behind PgBouncer (transaction and session
//!   mode, short and COPY batches, in a caller's transaction): nothing
//!   written, retryable, and `connection_usable()` tells the truth;
//! - PgBouncer's `query_timeout` while a COPY waits for rows, and its
//!   `idle_transaction_timeout` between two calls in a caller's transaction;
//! - `server_reset_query` variants (`DISCARD TEMP`, `DEALLOCATE ALL`, none,
//!   `RESET ALL; DISCARD PLANS; DISCARD SEQUENCES`, and a reset after every
//!   transaction in transaction mode): every call of every client counts
//!   exactly;
//! - statement mode: its refusal of the call's transaction is reported with
//!   PgBouncer's message, writes nothing, and is not retryable (`retry` does
//!   not send the batch again);
//! - many concurrent writers of every kind (plain, upsert, returning keys or
//!   skipped rows, upsert only if changed) on overlapping keys, directly,
//!   through a transaction pooler and through deadpool: one row per key, and
//!   the inserted counts add up to the stored rows;
//! - one batch id raced by several calls at once (directly and through a
//!   pooler, one of them rolled back by its caller): exactly one stores it;
//! - calls dropped (a timeout) on pooled connections (deadpool with each
//!   recycling method, bb8, PgBouncer) and a new connection's first call
//!   dropped while its insert waits: the dropped call wrote all of its batch
//!   or nothing, and the connection's next calls count exactly;
//! - `lock_timeout` on a row another session holds, on a key another
//!   transaction inserted and has not committed, and on a table locked
//!   `ACCESS EXCLUSIVE` (new, warm and pooled connections, a first call);
//!   `statement_timeout` mid-COPY in a caller's transaction and during a new
//!   connection's schema check;
//! - `RetryPolicy::run` with a deadpool pool whose first attempt's backend is
//!   terminated mid-COPY: the retry counts exactly.
//!
//! Each PgBouncer here is a process of its own, with a configuration in a
//! temporary directory; both are gone when the test ends, also when it fails,
//! and so are the backends of its server connections (see [`Bouncer`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bulk_runtime::retry::RetryPolicy;
use bulk_runtime::{BulkCreateNew, Error, Report, Upsert};
use bulk_tests::pgbouncer::{Pgbouncer, Upstream};
use bulk_tests::{COPY_BATCH, Contended, DATABASE, TestDb, contended_batch, count, distinct_keys};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

async fn setup(name: &str) -> TestDb {
    let db = TestDb::new(name).await;
    db.connect().await.batch_execute(&Contended::model().migration_sql()).await.unwrap();
    db
}

/// `n` rows of consecutive keys from key number `from`.
fn rows(from: u64, n: usize, tag: &str) -> Vec<Contended> {
    (0..n as u64).map(|k| Contended::key(from + k, format!("{tag} {k}"))).collect()
}

/// How long a test waits at most for something it polls for.
const PATIENCE: Duration = Duration::from_secs(30);

/// A private PgBouncer in front of a test's schema, with settings of the
/// test's own (`extra`).
///
/// Dropping it stops the process, removes its directory and waits until the
/// backends of its server connections have ended: a statement it forwarded
/// (a refused call's insert, say) may still run, holding locks on the test's
/// table, which a count would miss and the schema's drop could deadlock on.
struct Bouncer {
    inner: Pgbouncer,
}

impl Bouncer {
    async fn start(db: &TestDb, pool_mode: &str, pool_size: u32, extra: &str) -> Bouncer {
        Bouncer { inner: Pgbouncer::start_with(&Upstream::test_db(db), pool_mode, pool_size, extra).await }
    }

    async fn connect(&self) -> Client {
        self.inner.connect().await
    }

    fn log_path(&self) -> PathBuf {
        self.inner.log_path()
    }

    fn log(&self) -> String {
        self.inner.log()
    }

    /// The local ports of its server connections, which its log names
    /// ("new connection to server (from 127.0.0.1:38852)").
    fn server_ports(&self) -> Vec<i32> {
        const MARK: &str = "new connection to server (from ";
        self.log()
            .lines()
            .filter_map(|line| line.split_once(MARK))
            .filter_map(|(_, from)| from.split(')').next()?.rsplit(':').next()?.parse().ok())
            .collect()
    }

    /// Waits until each of its server connections has been idle (no
    /// statement, no transaction) for 300 ms: then what a dropped call sent
    /// without awaiting (its `ROLLBACK`) has been answered.
    ///
    /// A client's next request must not go out pipelined behind that
    /// answer: PgBouncer (1.18) in transaction mode hands the server back to
    /// the pool at the `ReadyForQuery` that ends the transaction and drops
    /// the answers to what the client sent after it, and the client waits
    /// for them forever.
    async fn settle(&self, admin: &Client) {
        let ports = self.server_ports();
        let settled = bulk_tests::eventually(6000, || async {
            let busy: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE client_port = ANY($1)
                        AND (state <> 'idle' OR state_change > clock_timestamp() - interval '300 ms')",
                    &[&ports],
                )
                .await
                .unwrap()
                .get(0);
            busy == 0
        })
        .await;
        assert!(settled, "the pooler's server connections never went idle");
    }
}

/// Runs the call `f`, which must end: through a pooler, a call that hangs
/// fails the test instead of stopping it.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f).await.unwrap_or_else(|_| panic!("{what}: no answer within {PATIENCE:?}"))
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let ports = self.server_ports();
        self.inner.stop();
        if ports.is_empty() {
            return;
        }
        // On a thread with a runtime of its own: this may run inside the
        // test's runtime, which cannot block on a future.
        let waited = std::thread::spawn(move || -> Result<bool, String> {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let mut config: tokio_postgres::Config =
                    bulk_tests::server_url().parse().map_err(|e| format!("{e}"))?;
                config.dbname(DATABASE).connect_timeout(Duration::from_secs(10));
                let (client, connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                // Backends that started later on a reused port are not its.
                let stopped: String =
                    client.query_one("SELECT clock_timestamp()::text", &[]).await.map_err(|e| e.to_string())?.get(0);
                for _ in 0..PATIENCE.as_millis() / 10 {
                    let left: i64 = client
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity
                              WHERE client_port = ANY($1) AND backend_start < $2::text::timestamptz",
                            &[&ports, &stopped],
                        )
                        .await
                        .map_err(|e| e.to_string())?
                        .get(0);
                    if left == 0 {
                        return Ok(true);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(false)
            })
        })
        .join();
        let ended = matches!(waited, Ok(Ok(true)));
        if !ended && !std::thread::panicking() {
            panic!("the backends of a stopped pgbouncer's server connections did not end: {waited:?}");
        }
    }
}

/// The backend that waits on the advisory lock `lock` (a gate of
/// [`bulk_tests::gate_at`]), once it does.
async fn waiting_on(admin: &Client, lock: i64) -> i32 {
    let mut waited = Duration::ZERO;
    while waited < PATIENCE {
        let row = admin
            .query_opt(
                "SELECT pid FROM pg_locks
                  WHERE locktype = 'advisory' AND NOT granted
                    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                    AND (classid::bigint << 32 | objid::bigint) = $1",
                &[&lock],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            return row.get(0);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        waited += Duration::from_millis(5);
    }
    panic!("no insert waited on the gate {lock}");
}

/// Blocks this thread (a row iterator the call reads) until the file at
/// `log` says `what`, for at most [`PATIENCE`].
fn block_until_logged(log: &Path, what: &str) {
    for _ in 0..PATIENCE.as_millis() / 10 {
        if std::fs::read_to_string(log).unwrap_or_default().contains(what) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The promise: after a failed call, the connection takes the next batch
/// unless `connection_usable()` is false.
async fn assert_usable_is_truthful(err: &Error, client: &mut Client, what: &str) {
    // Give the connection task time to notice a close.
    tokio::time::sleep(Duration::from_millis(100)).await;
    if err.connection_usable() {
        assert!(!client.is_closed(), "{what}: connection_usable() is true but the client is closed: {err:?}");
        let next = Contended::bulk_create_new(client, &rows(9_000_000, 3, "next")).await;
        assert!(next.is_ok(), "{what}: connection_usable() said usable, next call failed: {next:?} (first: {err:?})");
    }
}

/// The refusal of a statement-mode PgBouncer, reported as such.
fn assert_statement_mode_refusal(err: &Error) {
    assert!(err.to_string().contains("statement pooling mode"), "PgBouncer's message: {err}");
    assert_eq!(err.sqlstate(), Some(&SqlState::PROTOCOL_VIOLATION), "{err:?}");
    assert!(!err.is_retryable(), "a refusal by a statement-mode pooler is not worth a retry: {err:?}");
    assert!(!err.connection_usable(), "PgBouncer closed the connection: {err:?}");
}

// ---------------------------------------------------------------------
// PgBouncer in statement mode
// ---------------------------------------------------------------------

/// The COPY path needs a transaction, which statement mode refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_mode_refuses_a_copy_call_clearly() {
    let db = setup("pf_stmt_copy").await;
    let bouncer = Bouncer::start(&db, "statement", 2, "server_reset_query = DISCARD ALL").await;
    let mut client = bouncer.connect().await;
    let err = Contended::bulk_create_new(&mut client, &rows(0, COPY_BATCH, "s")).await.expect_err("refused");
    assert_statement_mode_refusal(&err);
    drop(bouncer);
    assert_eq!(count(&db.connect().await, "contended").await, 0, "nothing written");
    db.drop().await;
}

/// Short calls, each on a new connection to a statement-mode PgBouncer:
/// each one either counts exactly or is refused as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_mode_short_calls_on_new_connections() {
    let db = setup("pf_stmt_short").await;
    let bouncer = Bouncer::start(&db, "statement", 2, "server_reset_query = DISCARD ALL").await;
    let mut inserted = 0;
    for i in 0..3u64 {
        let mut client = bouncer.connect().await;
        match Contended::bulk_create_new(&mut client, &rows(i * 1000, 200, "s")).await {
            Ok(o) => {
                assert_eq!(o.inserted, 200, "call {i}: {o:?}");
                inserted += o.inserted;
            }
            Err(e) => {
                assert_statement_mode_refusal(&e);
                assert_usable_is_truthful(&e, &mut client, "statement mode short call").await;
            }
        }
    }
    drop(bouncer);
    assert_eq!(count(&db.connect().await, "contended").await as u64, inserted);
    db.drop().await;
}

/// PgBouncer in statement mode refuses the call's transaction block and
/// closes the connection (08P01): running the batch again can never succeed
/// there, so `retry` gives up after the first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_mode_refusal_is_not_retryable() {
    let db = setup("pf_stmt_retry").await;
    let bouncer = Bouncer::start(&db, "statement", 2, "server_reset_query = DISCARD ALL").await;
    // The process has checked the table (on another connection): each new
    // connection's first short call goes without the check, as BEGIN +
    // insert, which statement mode refuses.
    Contended::bulk_create_new(&mut db.connect().await, &rows(1 << 30, 1, "direct")).await.unwrap();
    let attempts = AtomicU32::new(0);
    let policy = RetryPolicy::new().max_attempts(4).backoff(Duration::from_millis(1), Duration::from_millis(5));
    let err = policy
        .run(tokio::time::sleep, |_| async {
            attempts.fetch_add(1, Ordering::SeqCst);
            let mut client = bouncer.connect().await;
            Contended::bulk_create_new(&mut client, &rows(0, 200, "s")).await
        })
        .await
        .expect_err("refused");
    assert_statement_mode_refusal(&err);
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "sent once: {err}");
    drop(bouncer);
    assert_eq!(count(&db.connect().await, "contended").await, 1, "nothing of the refused batch");
    db.drop().await;
}

// ---------------------------------------------------------------------
// Backends terminated behind a pooler
// ---------------------------------------------------------------------

/// The backend of a call through PgBouncer in `mode` is terminated while
/// the call's insert waits at a gate (`lock`, unique to the case).
async fn terminated_behind_pooler(mode: &str, len: usize, in_tx: bool, lock: i64) {
    let db = setup(&format!("pf_term_{mode}_{len}_{in_tx}")).await;
    let bouncer = Bouncer::start(&db, mode, 2, "server_reset_query = DISCARD ALL").await;
    let admin = db.connect().await;
    let lock = bulk_tests::lock_key(lock);
    bulk_tests::gate_at(&admin, len as u64 / 2, lock).await;
    admin.query_one("SELECT pg_advisory_lock($1)", &[&lock]).await.unwrap();
    let mut client = bouncer.connect().await;
    let batch = rows(0, len, "t");
    let call = tokio::spawn(async move {
        let r = if in_tx {
            let mut tx = client.transaction().await.unwrap();
            Contended::bulk_create_new(&mut tx, &batch).await
        } else {
            Contended::bulk_create_new(&mut client, &batch).await
        };
        (r, client)
    });
    let pid = waiting_on(&admin, lock).await;
    let ended: bool = admin.query_one("SELECT pg_terminate_backend($1, 30000)", &[&pid]).await.unwrap().get(0);
    assert!(ended, "backend {pid} did not end");
    admin.query_one("SELECT pg_advisory_unlock($1)", &[&lock]).await.unwrap();
    let (result, mut client) = call.await.unwrap();
    let err = result.expect_err("the call's backend was terminated");
    assert_eq!(count(&admin, "contended").await, 0, "nothing written");
    assert!(err.is_retryable(), "a lost connection is retryable: {err:?}");
    assert_usable_is_truthful(&err, &mut client, &format!("{mode} {len} in_tx={in_tx}")).await;
    drop(client);
    drop(bouncer);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_behind_transaction_pooler_short() {
    terminated_behind_pooler("transaction", 2_000, false, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_behind_transaction_pooler_copy() {
    terminated_behind_pooler("transaction", COPY_BATCH, false, 11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_behind_transaction_pooler_copy_in_tx() {
    terminated_behind_pooler("transaction", COPY_BATCH, true, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_behind_session_pooler_short() {
    terminated_behind_pooler("session", 2_000, false, 13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_behind_session_pooler_copy() {
    terminated_behind_pooler("session", COPY_BATCH, false, 14).await;
}

// ---------------------------------------------------------------------
// PgBouncer's own timeouts mid-call
// ---------------------------------------------------------------------

/// PgBouncer's `query_timeout` fires while the call's COPY waits for rows
/// (the row iterator waits until PgBouncer's log says it fired).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_query_timeout_mid_copy() {
    let db = setup("pf_pgb_query_timeout").await;
    let bouncer = Bouncer::start(&db, "transaction", 2, "server_reset_query = DISCARD ALL\nquery_timeout = 1").await;
    let admin = db.connect().await;
    let mut client = bouncer.connect().await;
    let log = bouncer.log_path();
    let (result, mut client) = tokio::spawn(async move {
        let iter = rows(0, 30_000, "q").into_iter().enumerate().map(move |(i, r)| {
            if i == 15_000 {
                block_until_logged(&log, "closing because: query timeout");
            }
            r
        });
        (Contended::bulk_create_new(&mut client, iter).await, client)
    })
    .await
    .unwrap();
    let err = result.expect_err("PgBouncer's query_timeout ended the call");
    assert!(err.is_retryable(), "a lost connection is retryable: {err:?}");
    assert!(!err.connection_usable(), "PgBouncer closed the connection: {err:?}");
    assert_usable_is_truthful(&err, &mut client, "pgbouncer query_timeout").await;
    drop(bouncer);
    assert_eq!(count(&admin, "contended").await, 0, "nothing written");
    db.drop().await;
}

/// PgBouncer's `idle_transaction_timeout` ends the client while a caller's
/// transaction holds a call's result; the next call in it fails, retryable,
/// and nothing of the transaction is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_idle_transaction_timeout_between_calls_in_tx() {
    let db = setup("pf_pgb_idle_tx").await;
    let bouncer =
        Bouncer::start(&db, "transaction", 2, "server_reset_query = DISCARD ALL\nidle_transaction_timeout = 1").await;
    let admin = db.connect().await;
    let mut client = bouncer.connect().await;
    let mut tx = client.transaction().await.unwrap();
    Contended::bulk_create_new(&mut tx, &rows(0, 10, "i")).await.unwrap();
    let fired = bulk_tests::eventually(6000, || async { bouncer.log().contains("idle transaction timeout") }).await;
    assert!(fired, "PgBouncer's idle_transaction_timeout never fired");
    let err = Contended::bulk_create_new(&mut tx, &rows(100, COPY_BATCH, "i"))
        .await
        .expect_err("the pooler ended the client");
    drop(tx);
    assert!(err.is_retryable(), "{err:?}");
    assert_usable_is_truthful(&err, &mut client, "idle_transaction_timeout").await;
    drop(bouncer);
    assert_eq!(count(&admin, "contended").await, 0);
    db.drop().await;
}

// ---------------------------------------------------------------------
// server_reset_query variants
// ---------------------------------------------------------------------

/// Three clients one after the other on a pool of one server connection,
/// five calls each (short, COPY, in a caller's transaction), each batch
/// repeating half of its keys.
async fn reset_variant(name: &str, mode: &str, extra: &str) {
    let db = setup(name).await;
    let bouncer = Bouncer::start(&db, mode, 1, extra).await;
    let mut expected = 0u64;
    for round in 0..3u64 {
        let mut client = bouncer.connect().await;
        client.batch_execute(&format!("SET search_path = {}", bulk_runtime::quote_ident(&db.schema))).await.unwrap();
        let base = round * 100_000;
        for (i, n) in [COPY_BATCH, 20, 300, COPY_BATCH, 20].into_iter().enumerate() {
            let batch = rows(base + i as u64 * 10_000, n, "r");
            let o = if i == 3 {
                let mut tx = client.transaction().await.unwrap();
                let o = Contended::bulk(&mut tx).returning_keys().run(batch.iter().chain(&batch[..n / 2])).await;
                let o = o.unwrap_or_else(|e| panic!("{name}: client {round} call {i}: {e:?}")).outcome();
                tx.commit().await.unwrap();
                o
            } else {
                Contended::bulk_create_new(&mut client, batch.iter().chain(&batch[..n / 2]))
                    .await
                    .unwrap_or_else(|e| panic!("{name}: client {round} call {i}: {e:?}"))
            };
            assert_eq!((o.inserted, o.skipped), (n as u64, (n / 2) as u64), "{name}: client {round}, call {i}");
            expected += n as u64;
        }
    }
    drop(bouncer);
    assert_eq!(count(&db.connect().await, "contended").await as u64, expected);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reset_discard_temp() {
    reset_variant("pf_reset_temp", "session", "server_reset_query = DISCARD TEMP").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reset_deallocate_all() {
    reset_variant("pf_reset_dealloc", "session", "server_reset_query = DEALLOCATE ALL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reset_none() {
    reset_variant("pf_reset_none", "session", "server_reset_query =").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reset_reset_all_discard_plans() {
    reset_variant("pf_reset_plans", "session", "server_reset_query = RESET ALL; DISCARD PLANS; DISCARD SEQUENCES")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_reset_always_deallocate_all_discard_temp() {
    reset_variant(
        "pf_reset_always",
        "transaction",
        "server_reset_query = DEALLOCATE ALL; DISCARD TEMP\nserver_reset_query_always = 1",
    )
    .await;
}

// ---------------------------------------------------------------------
// Many writers, mixed kinds, same keys
// ---------------------------------------------------------------------

/// What one call returned: kind, batch, counts, returned keys (for returning_keys).
#[derive(Debug, Clone)]
struct Done {
    kind: u64,
    batch_len: usize,
    report: Report,
    keys: Vec<(i32, i64)>,
    skipped_positions: usize,
}

/// A call of kind `kind % 5`: plain, upsert, returning keys, returning
/// skipped rows, upsert only if changed keeping the first of repeated keys.
async fn mixed_call<C: bulk_runtime::Connection>(kind: u64, conn: &mut C, batch: &[Contended]) -> Result<Done, Error> {
    let (report, keys, skipped_positions) = match kind % 5 {
        0 => (Contended::bulk_create_new(conn, batch).await?, Vec::new(), 0),
        1 => {
            let r = Contended::bulk(conn).upsert(Upsert::columns(["payload"])).run(batch).await?;
            (r.outcome(), Vec::new(), 0)
        }
        2 => {
            let r = Contended::bulk(conn).returning_keys().run(batch).await?;
            let keys = r.returned.iter().map(|n| n.key).collect();
            (r.outcome(), keys, 0)
        }
        3 => {
            let r = Contended::bulk(conn).returning_skipped().run(batch).await?;
            let n = r.returned.len();
            (r.outcome(), Vec::new(), n)
        }
        _ => {
            let r = Contended::bulk(conn)
                .upsert(Upsert::columns(["payload"]).only_if_changed().keep(bulk_runtime::Keep::First))
                .run(batch)
                .await?;
            (r.outcome(), Vec::new(), 0)
        }
    };
    Ok(Done { kind, batch_len: batch.len(), report, keys, skipped_positions })
}

/// Every call's counts add up to its batch, no key is reported new twice,
/// one row is stored per distinct key, and the inserted counts add up to
/// the stored rows.
fn check_mixed(done: &[Done], batches: &[Vec<Contended>], stored: i64) {
    let keys = distinct_keys(batches);
    let mut inserted = 0;
    let mut returned = std::collections::BTreeSet::new();
    for d in done {
        let r = &d.report;
        assert_eq!(r.offered, d.batch_len as u64, "{d:?}");
        assert_eq!(r.inserted + r.updated + r.unchanged + r.skipped, r.offered, "{d:?}");
        if d.kind % 5 == 2 {
            assert_eq!(d.keys.len() as u64, r.inserted, "{d:?}");
            for k in &d.keys {
                assert!(returned.insert(*k), "key {k:?} reported new twice");
            }
        }
        if d.kind % 5 == 3 {
            assert_eq!(d.skipped_positions as u64, r.skipped, "{d:?}");
        }
        inserted += r.inserted;
    }
    assert_eq!(stored as usize, keys.len(), "one row per distinct key");
    assert_eq!(inserted, stored as u64, "inserted counts add up to the stored rows");
}

/// Batch lengths from a few rows to the COPY path.
fn mixed_len(w: u64, round: u64) -> usize {
    match (w + round) % 4 {
        0 => 60,
        1 => 700,
        2 => 2_500,
        _ => COPY_BATCH + 37 * w as usize,
    }
}

/// 16 direct writers, 4 rounds started together, a small key universe,
/// every kind, half of the calls alone in a caller's transaction, deadlocks
/// detected after 10 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writers_mixed_kinds_high_contention() {
    let db = setup("pf_mixed_direct").await;
    let seed = bulk_tests::seed("direct_writers_mixed_kinds_high_contention");
    let writers = 16u64;
    let rounds = 4u64;
    let barrier = Arc::new(tokio::sync::Barrier::new(writers as usize));
    let mut tasks = Vec::new();
    let mut batches = Vec::new();
    for w in 0..writers {
        let mine: Vec<Vec<Contended>> =
            (0..rounds).map(|r| contended_batch(seed, r, w, mixed_len(w, r), 3_000)).collect();
        batches.extend(mine.clone());
        let mut client = db.connect().await;
        client.batch_execute("SET deadlock_timeout = '10ms'").await.unwrap();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for (r, batch) in mine.iter().enumerate() {
                barrier.wait().await;
                let kind = w * 7 + r as u64;
                let result = if (w + r as u64).is_multiple_of(2) {
                    let mut tx = client.transaction().await.unwrap();
                    let d = mixed_call(kind, &mut tx, batch).await;
                    tx.commit().await.unwrap();
                    d
                } else {
                    mixed_call(kind, &mut client, batch).await
                };
                match result {
                    Ok(d) => done.push(d),
                    Err(e) => panic!("writer {w} round {r} kind {}: {e:?}", kind % 5),
                }
            }
            done
        }));
    }
    let mut done = Vec::new();
    for t in tasks {
        done.extend(t.await.unwrap());
    }
    let stored = count(&db.connect().await, "contended").await;
    check_mixed(&done, &batches, stored);
    db.drop().await;
}

/// 16 clients of a transaction pooler with 4 server connections, 3 rounds,
/// every kind, a third of the calls in a caller's transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_mixed_kinds_through_transaction_pooler_some_in_tx() {
    let db = setup("pf_mixed_pgb").await;
    let bouncer = Bouncer::start(&db, "transaction", 4, "server_reset_query = DISCARD ALL").await;
    let seed = bulk_tests::seed("writers_mixed_kinds_through_transaction_pooler_some_in_tx");
    let writers = 16u64;
    let rounds = 3u64;
    let mut tasks = Vec::new();
    let mut batches = Vec::new();
    for w in 0..writers {
        let mine: Vec<Vec<Contended>> =
            (0..rounds).map(|r| contended_batch(seed, r, w, mixed_len(w, r + 1), 9_000)).collect();
        batches.extend(mine.clone());
        let mut client = bouncer.connect().await;
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for (r, batch) in mine.iter().enumerate() {
                let kind = w * 3 + r as u64;
                let result = if (w + r as u64).is_multiple_of(3) {
                    let mut tx = client.transaction().await.unwrap();
                    let d = mixed_call(kind, &mut tx, batch).await;
                    tx.commit().await.unwrap();
                    d
                } else {
                    mixed_call(kind, &mut client, batch).await
                };
                match result {
                    Ok(d) => done.push(d),
                    Err(e) => panic!("writer {w} round {r} kind {}: {e:?}", kind % 5),
                }
            }
            done
        }));
    }
    let mut done = Vec::new();
    for t in tasks {
        done.extend(t.await.unwrap());
    }
    drop(bouncer);
    let stored = count(&db.connect().await, "contended").await;
    check_mixed(&done, &batches, stored);
    db.drop().await;
}

/// 32 tasks of every kind sharing a deadpool pool of 3 connections, a
/// quarter of them in a caller's transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_tasks_mixed_kinds_pool_of_three() {
    use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
    let db = setup("pf_mixed_deadpool").await;
    let manager = Manager::from_config(db.config(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Clean });
    let pool = Pool::builder(manager).max_size(3).build().unwrap();
    let seed = bulk_tests::seed("deadpool_tasks_mixed_kinds_pool_of_three");
    let mut tasks = Vec::new();
    let mut batches = Vec::new();
    for w in 0..16u64 {
        for r in 0..2u64 {
            let batch = contended_batch(seed, r, w, mixed_len(w, r + 2), 9_000);
            batches.push(batch.clone());
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn = pool.get().await.unwrap();
                let kind = w + 2 * r;
                let result = if w % 4 == 0 {
                    let mut tx = conn.transaction().await.unwrap();
                    let d = mixed_call(kind, &mut tx, &batch).await;
                    tx.commit().await.unwrap();
                    d
                } else {
                    mixed_call(kind, &mut conn, &batch).await
                };
                result.unwrap_or_else(|e| panic!("task {w}/{r} kind {}: {e:?}", kind % 5))
            }));
        }
    }
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    let stored = count(&db.connect().await, "contended").await;
    check_mixed(&done, &batches, stored);
    pool.close();
    db.drop().await;
}

/// Five batch ids, each sent by four calls at once (retries racing the
/// original), of different kinds, half through a transaction pooler; one
/// call's caller rolls back. Exactly one call stores each batch, the others
/// replay its counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_same_batch_ids_mixed_kinds_and_pooler() {
    use bulk_runtime::Ledger;
    let db = setup("pf_ids_race").await;
    db.connect().await.batch_execute(&Ledger::of::<Contended>().migration_sql()).await.unwrap();
    let bouncer = Bouncer::start(&db, "transaction", 3, "server_reset_query = DISCARD ALL").await;
    let seed = bulk_tests::seed("concurrent_same_batch_ids_mixed_kinds_and_pooler");
    let ids = 5u64;
    let per_id = 4u64;
    let batches: Vec<Vec<Contended>> = (0..ids)
        .map(|i| contended_batch(seed, 0, i, [80, 900, COPY_BATCH, 3000, COPY_BATCH + 500][i as usize], 7_000))
        .collect();
    let barrier = Arc::new(tokio::sync::Barrier::new((ids * per_id) as usize));
    let mut tasks = Vec::new();
    for i in 0..ids {
        for j in 0..per_id {
            let batch = batches[i as usize].clone();
            let barrier = barrier.clone();
            let mut client = if j % 2 == 0 { bouncer.connect().await } else { db.connect().await };
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let id = format!("id {i}");
                let kind = (i + j) % 3;
                // One call of id 1 runs in a caller's transaction that rolls back.
                let rollback = i == 1 && j == 0;
                let mut tx = client.transaction().await.unwrap();
                let r = match kind {
                    0 => Contended::bulk(&mut tx).batch_id(id).run(&batch).await,
                    1 => Contended::bulk(&mut tx).batch_id(id).returning_keys().run(&batch).await.map(|r| r.outcome()),
                    _ => {
                        Contended::bulk(&mut tx).batch_id(id).returning_skipped().run(&batch).await.map(|r| r.outcome())
                    }
                };
                if rollback {
                    // Holds the batch id a while, so that the others wait on it.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                }
                (i, j, rollback, r)
            }));
        }
    }
    let mut by_id: std::collections::BTreeMap<u64, Vec<Report>> = Default::default();
    let mut inserted = 0;
    for t in tasks {
        let (i, j, rollback, r) = t.await.unwrap();
        let r = r.unwrap_or_else(|e| panic!("id {i} task {j}: {e:?}"));
        if rollback {
            continue;
        }
        if !r.replayed {
            inserted += r.inserted;
        }
        by_id.entry(i).or_default().push(r);
    }
    for (i, reports) in &by_id {
        let originals = reports.iter().filter(|r| !r.replayed).count();
        assert_eq!(originals, 1, "id {i}: exactly one call stored the batch: {reports:?}");
        let first = reports[0];
        for r in reports {
            assert_eq!((r.offered, r.inserted, r.skipped), (first.offered, first.inserted, first.skipped), "id {i}");
        }
    }
    drop(bouncer);
    let stored = count(&db.connect().await, "contended").await;
    assert_eq!(stored as u64, inserted, "the originals' counts add up to the stored rows");
    assert_eq!(stored as usize, distinct_keys(&batches).len());
    db.drop().await;
}

// ---------------------------------------------------------------------
// Dropped calls on pooled connections
// ---------------------------------------------------------------------

/// `again` is the report of a dropped call's batch (`len` rows) sent again
/// on the same connection: it stored all of the batch (the dropped call
/// wrote nothing) or none of it (the dropped call wrote it all), and all of
/// it when the dropped call's transaction was `rolled_back`.
fn assert_dropped_wrote_all_or_nothing(again: &Report, len: usize, rolled_back: bool, what: &str) {
    if rolled_back {
        assert_eq!(again.inserted, len as u64, "{what}: the caller's transaction was rolled back: {again:?}");
    } else {
        assert!(
            again.inserted == 0 || again.inserted == len as u64,
            "{what}: the dropped call wrote part of its batch: {again:?} of {len}"
        );
    }
}

/// A call dropped at different moments (a timeout) on the one object of a
/// deadpool pool; the next user of that object runs calls with exact counts,
/// and the dropped call wrote all of its batch or nothing.
async fn dropped_then_reused(recycling: deadpool_postgres::RecyclingMethod, in_tx: bool, name: &str) {
    use deadpool_postgres::{Manager, ManagerConfig, Pool};
    let db = setup(name).await;
    let admin = db.connect().await;
    let manager = Manager::from_config(db.config(), NoTls, ManagerConfig { recycling_method: recycling });
    let pool = Pool::builder(manager).max_size(1).build().unwrap();
    let mut next = 0u64;
    let mut stored = 0i64;
    for (step, (len, after_ms)) in
        [(COPY_BATCH * 4, 5u64), (COPY_BATCH * 4, 40), (COPY_BATCH * 4, 150), (3_000, 1), (3_000, 3), (COPY_BATCH, 0)]
            .into_iter()
            .enumerate()
    {
        let batch = rows(next, len, "drop");
        next += len as u64 + 1000;
        {
            let mut conn = pool.get().await.unwrap();
            let slow = batch.clone().into_iter().enumerate().map(|(i, r)| {
                if i % 5000 == 4999 {
                    std::thread::sleep(Duration::from_millis(2));
                }
                r
            });
            let limit = Duration::from_millis(after_ms);
            if in_tx {
                // The caller's transaction is dropped too (rolled back).
                let mut tx = conn.transaction().await.unwrap();
                let _ = tokio::time::timeout(limit, Contended::bulk_create_new(&mut tx, slow)).await;
            } else {
                let _ = tokio::time::timeout(limit, Contended::bulk_create_new(&mut conn, slow)).await;
            }
        }
        // The next user of the same pooled object.
        let mut conn = pool.get().await.unwrap();
        for (i, n) in [10usize, 400, COPY_BATCH].into_iter().enumerate() {
            let fresh = rows(next, n, "after");
            next += n as u64 + 1000;
            let o = Contended::bulk_create_new(&mut conn, fresh.iter().chain(&fresh[..n / 2]))
                .await
                .unwrap_or_else(|e| panic!("step {step}, call {i} after the dropped call: {e:?}"));
            assert_eq!((o.inserted, o.skipped), (n as u64, (n / 2) as u64), "step {step}, call {i}");
            stored += n as i64;
        }
        // And the dropped batch again: it waits for whatever of the dropped
        // call still runs, and stores what that did not.
        let again = Contended::bulk_create_new(&mut conn, &batch).await.unwrap();
        assert_dropped_wrote_all_or_nothing(&again, len, in_tx, &format!("step {step}"));
        stored += len as i64;
        assert_eq!(count(&admin, "contended").await, stored, "step {step}");
    }
    pool.close();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_dropped_calls_fast_recycling() {
    dropped_then_reused(deadpool_postgres::RecyclingMethod::Fast, false, "pf_drop_fast").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_dropped_calls_clean_recycling() {
    dropped_then_reused(deadpool_postgres::RecyclingMethod::Clean, false, "pf_drop_clean").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_dropped_calls_in_tx_verified_recycling() {
    dropped_then_reused(deadpool_postgres::RecyclingMethod::Verified, true, "pf_drop_tx").await;
}

/// A call dropped mid-COPY on the one connection of a bb8 pool, at
/// different moments; the next user of the connection counts exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bb8_dropped_call_mid_copy_then_reused() {
    use bb8_postgres::PostgresConnectionManager;
    let db = setup("pf_drop_bb8").await;
    let admin = db.connect().await;
    let pool =
        bb8::Pool::builder().max_size(1).build(PostgresConnectionManager::new(db.config(), NoTls)).await.unwrap();
    let mut stored = 0i64;
    let mut next = 0u64;
    for after_ms in [3u64, 20, 80, 200] {
        let batch = rows(next, COPY_BATCH * 3, "bb8");
        next += batch.len() as u64;
        {
            let mut conn = pool.get().await.unwrap();
            let limit = Duration::from_millis(after_ms);
            let _ = tokio::time::timeout(limit, Contended::bulk_create_new(&mut conn, &batch)).await;
        }
        let mut conn = pool.get().await.unwrap();
        for n in [10usize, COPY_BATCH] {
            let fresh = rows(next, n, "after");
            next += n as u64;
            let o = Contended::bulk(&mut conn).returning_keys().run(&fresh).await.unwrap();
            assert_eq!((o.inserted, o.returned.len()), (n as u64, n), "dropped after {after_ms} ms");
            stored += n as i64;
        }
        let again = Contended::bulk_create_new(&mut conn, &batch).await.unwrap();
        assert_dropped_wrote_all_or_nothing(&again, batch.len(), false, &format!("dropped after {after_ms} ms"));
        stored += batch.len() as i64;
        assert_eq!(count(&admin, "contended").await, stored, "dropped after {after_ms} ms");
    }
    drop(pool);
    db.drop().await;
}

/// A call dropped mid-COPY through a transaction pooler (every other one in
/// a caller's transaction, which then commits), then the same client goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_call_through_transaction_pooler() {
    let db = setup("pf_drop_pgb").await;
    let bouncer = Bouncer::start(&db, "transaction", 1, "server_reset_query = DISCARD ALL").await;
    let admin = db.connect().await;
    let mut client = bouncer.connect().await;
    let mut stored = 0i64;
    let mut next = 0u64;
    for (i, after_ms) in [2u64, 10, 40, 120, 400].into_iter().enumerate() {
        let batch = rows(next, COPY_BATCH * 3, "pgb");
        next += batch.len() as u64;
        let limit = Duration::from_millis(after_ms);
        if i % 2 == 0 {
            let _ = tokio::time::timeout(limit, Contended::bulk_create_new(&mut client, &batch)).await;
        } else {
            let mut tx = client.transaction().await.unwrap();
            let _ = tokio::time::timeout(limit, Contended::bulk(&mut tx).returning_skipped().run(&batch)).await;
            within("the commit", tx.commit())
                .await
                .unwrap_or_else(|e| panic!("commit of the caller's transaction after a dropped call: {e:?}"));
        }
        bouncer.settle(&admin).await;
        for n in [10usize, 300, COPY_BATCH] {
            let fresh = rows(next, n, "after");
            next += n as u64;
            let o = within("a call after a dropped one", Contended::bulk_create_new(&mut client, &fresh))
                .await
                .unwrap_or_else(|e| panic!("after drop {i}: {e:?}"));
            assert_eq!(o.inserted, n as u64, "after drop {i}");
            stored += n as i64;
        }
        let again = within("the dropped batch again", Contended::bulk_create_new(&mut client, &batch)).await.unwrap();
        assert_dropped_wrote_all_or_nothing(&again, batch.len(), false, &format!("drop {i}"));
        stored += batch.len() as i64;
        assert_eq!(count(&admin, "contended").await, stored, "drop {i}");
    }
    drop(client);
    drop(bouncer);
    db.drop().await;
}

/// A new connection's first call (without the check: the process checked
/// the table) dropped while its insert waits: nothing is written, and the
/// connection counts the next calls exactly. Direct and through a
/// transaction pooler.
async fn first_call_dropped_while_insert_waits(pooled: bool) {
    let db = setup(&format!("pf_first_drop_{pooled}")).await;
    let admin = db.connect().await;
    Contended::bulk_create_new(&mut db.connect().await, &rows(1 << 30, 1, "direct")).await.unwrap();
    let lock = bulk_tests::lock_key(20 + i64::from(pooled));
    bulk_tests::gate_at(&admin, 5, lock).await;
    admin.query_one("SELECT pg_advisory_lock($1)", &[&lock]).await.unwrap();
    let bouncer = if pooled {
        Some(Bouncer::start(&db, "transaction", 2, "server_reset_query = DISCARD ALL").await)
    } else {
        None
    };
    let mut writer = match &bouncer {
        Some(b) => b.connect().await,
        None => db.connect().await,
    };
    let batch = rows(0, 10, "first");
    tokio::select! {
        r = Contended::bulk_create_new(&mut writer, &batch) => panic!("the call ended at the gate: {r:?}"),
        _ = waiting_on(&admin, lock) => {}
    }
    // The call is dropped now; release the gate, and give a wrong commit a
    // moment to show (through the pooler: until its backend is idle, see
    // `Bouncer::settle`).
    admin.query_one("SELECT pg_advisory_unlock($1)", &[&lock]).await.unwrap();
    match &bouncer {
        Some(b) => b.settle(&admin).await,
        None => tokio::time::sleep(Duration::from_millis(300)).await,
    }
    assert_eq!(count(&admin, "contended").await, 1, "the dropped first call wrote nothing");
    // The same keys again: this waits for the dropped insert to end, so
    // counting all ten shows it wrote nothing, whenever it ended.
    let o = within("the batch again", Contended::bulk_create_new(&mut writer, &batch)).await.unwrap();
    assert_eq!(o.inserted, 10, "{o:?}");
    let o =
        within("a COPY call", Contended::bulk_create_new(&mut writer, &rows(100, COPY_BATCH, "copy"))).await.unwrap();
    assert_eq!(o.inserted, COPY_BATCH as u64);
    assert_eq!(count(&admin, "contended").await, 11 + COPY_BATCH as i64);
    drop(writer);
    drop(bouncer);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_call_dropped_direct() {
    first_call_dropped_while_insert_waits(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_call_dropped_through_transaction_pooler() {
    first_call_dropped_while_insert_waits(true).await;
}

// ---------------------------------------------------------------------
// lock_timeout and statement_timeout
// ---------------------------------------------------------------------

/// An upsert meets a stored key another session holds FOR UPDATE (until
/// after the call): lock_timeout; nothing of the batch is written, and a
/// caller's transaction goes on.
async fn upsert_on_a_locked_row(len: usize, in_tx: bool) {
    let db = setup(&format!("pf_upsert_lock_{len}_{in_tx}")).await;
    let mut admin = db.connect().await;
    let mut writer = db.connect().await;
    Contended::bulk_create_new(&mut writer, &rows(0, 10, "stored")).await.unwrap();
    writer.batch_execute("SET lock_timeout = '150ms'").await.unwrap();
    let tx = admin.transaction().await.unwrap();
    let locked = Contended::key(5, String::new());
    tx.execute("SELECT 1 FROM contended WHERE a = $1 AND b = $2 FOR UPDATE", &[&locked.a, &locked.b]).await.unwrap();
    let batch = rows(0, len, "new");
    let result = if in_tx {
        let mut wtx = writer.transaction().await.unwrap();
        wtx.execute("INSERT INTO contended (a, b, payload) VALUES (6, 999999, 'own')", &[]).await.unwrap();
        let r = Contended::bulk(&mut wtx).upsert(Upsert::columns(["payload"])).run(&batch).await;
        // The caller's transaction is usable after the failed call.
        let n: i64 = wtx.query_one("SELECT count(*) FROM contended WHERE b = 999999", &[]).await.unwrap().get(0);
        assert_eq!(n, 1, "the caller's own row is still there");
        wtx.commit().await.unwrap();
        r
    } else {
        Contended::bulk(&mut writer).upsert(Upsert::columns(["payload"])).run(&batch).await
    };
    tx.rollback().await.unwrap();
    let err = result.expect_err("lock timeout");
    assert_eq!(err.sqlstate(), Some(&SqlState::LOCK_NOT_AVAILABLE), "{err:?}");
    assert!(err.is_retryable() && err.connection_usable(), "{err:?}");
    let own = if in_tx { 1 } else { 0 };
    assert_eq!(count(&admin, "contended").await, 10 + own, "nothing of the batch");
    let stored_payload: String =
        admin.query_one("SELECT payload FROM contended WHERE a = 0 AND b = 0", &[]).await.unwrap().get(0);
    assert_eq!(stored_payload, "stored 0");
    let o = Contended::bulk(&mut writer).upsert(Upsert::columns(["payload"])).run(&batch).await.unwrap();
    assert_eq!((o.inserted, o.updated), (len as u64 - 10, 10));
    db.drop().await;
}

#[tokio::test]
async fn upsert_lock_timeout_short() {
    upsert_on_a_locked_row(100, false).await;
}

#[tokio::test]
async fn upsert_lock_timeout_copy() {
    upsert_on_a_locked_row(COPY_BATCH, false).await;
}

#[tokio::test]
async fn upsert_lock_timeout_copy_in_tx() {
    upsert_on_a_locked_row(COPY_BATCH, true).await;
}

#[tokio::test]
async fn upsert_lock_timeout_short_in_tx() {
    upsert_on_a_locked_row(100, true).await;
}

/// Another transaction inserted one of the keys and has not committed
/// (until after the call): the call waits on it until lock_timeout, and
/// writes nothing.
async fn uncommitted_key_lock_timeout(len: usize, kind: u64, in_tx: bool) {
    let db = setup(&format!("pf_uncommitted_{len}_{kind}_{in_tx}")).await;
    let mut admin = db.connect().await;
    let mut writer = db.connect().await;
    Contended::bulk_create_new(&mut writer, &rows(1 << 30, 1, "warm")).await.unwrap();
    writer.batch_execute("SET lock_timeout = '150ms'").await.unwrap();
    let tx = admin.transaction().await.unwrap();
    let k = Contended::key(len as u64 / 2, String::new());
    tx.execute("INSERT INTO contended (a, b, payload) VALUES ($1, $2, 'theirs')", &[&k.a, &k.b]).await.unwrap();
    let batch = rows(0, len, "mine");
    let result = if in_tx {
        let mut wtx = writer.transaction().await.unwrap();
        let r = mixed_call(kind, &mut wtx, &batch).await;
        wtx.commit().await.unwrap();
        r
    } else {
        mixed_call(kind, &mut writer, &batch).await
    };
    let err = result.expect_err("lock timeout");
    assert_eq!(err.sqlstate(), Some(&SqlState::LOCK_NOT_AVAILABLE), "{err:?}");
    assert!(err.is_retryable() && err.connection_usable(), "{err:?}");
    tx.commit().await.unwrap();
    assert_eq!(count(&admin, "contended").await, 2, "nothing of the batch");
    let d = mixed_call(kind, &mut writer, &batch).await.unwrap();
    assert_eq!(d.report.inserted, len as u64 - 1, "{d:?}");
    db.drop().await;
}

#[tokio::test]
async fn uncommitted_key_lock_timeout_copy_plain() {
    uncommitted_key_lock_timeout(COPY_BATCH, 0, false).await;
}

#[tokio::test]
async fn uncommitted_key_lock_timeout_copy_plain_in_tx() {
    uncommitted_key_lock_timeout(COPY_BATCH, 0, true).await;
}

#[tokio::test]
async fn uncommitted_key_lock_timeout_copy_keys() {
    uncommitted_key_lock_timeout(COPY_BATCH, 2, false).await;
}

#[tokio::test]
async fn uncommitted_key_lock_timeout_short_skipped_in_tx() {
    uncommitted_key_lock_timeout(1_000, 3, true).await;
}

#[tokio::test]
async fn uncommitted_key_lock_timeout_short_plain() {
    uncommitted_key_lock_timeout(200, 0, false).await;
}

/// statement_timeout fires mid-COPY (the row iterator pauses far longer
/// than the timeout) inside a caller's transaction: the call fails, not
/// retryable, and the caller's transaction goes on and commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_mid_copy_in_callers_tx() {
    let db = setup("pf_stmt_timeout_tx").await;
    let admin = db.connect().await;
    let mut writer = db.connect().await;
    // A warm connection: the timeout can only fire in the COPY.
    Contended::bulk_create_new(&mut writer, &rows(1 << 30, 1, "warm")).await.unwrap();
    let batch = rows(0, 40_000, "st");
    let held = batch.clone();
    let (result, mut writer) = tokio::spawn(async move {
        let r = {
            let mut tx = writer.transaction().await.unwrap();
            tx.execute("INSERT INTO contended (a, b, payload) VALUES (6, 888888, 'own')", &[]).await.unwrap();
            tx.batch_execute("SET LOCAL statement_timeout = '200ms'").await.unwrap();
            let iter = held.into_iter().enumerate().map(|(i, r)| {
                if i == 20_000 {
                    std::thread::sleep(Duration::from_secs(3));
                }
                r
            });
            let r = Contended::bulk(&mut tx).returning_keys().run(iter).await.map(|r| r.outcome());
            if let Err(e) = &r {
                assert!(e.connection_usable(), "{e:?}");
                tx.batch_execute("SET LOCAL statement_timeout = 0").await.unwrap();
                let n: i64 = tx.query_one("SELECT count(*) FROM contended", &[]).await.unwrap().get(0);
                assert_eq!(n, 2, "the warm row and the caller's own row only");
                let again = Contended::bulk_create_new(&mut tx, &rows(100_000, COPY_BATCH, "again")).await.unwrap();
                assert_eq!(again.inserted, COPY_BATCH as u64);
                tx.commit().await.unwrap();
            }
            r
        };
        (r, writer)
    })
    .await
    .unwrap();
    let err = result.expect_err("statement timeout");
    assert_eq!(err.sqlstate(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
    assert_eq!(count(&admin, "contended").await, 2 + COPY_BATCH as i64);
    let o = Contended::bulk_create_new(&mut writer, &batch).await.unwrap();
    assert_eq!(o.inserted, batch.len() as u64);
    db.drop().await;
}

/// lock_timeout on a table locked ACCESS EXCLUSIVE (a migration) until
/// after the call: on a new connection (the schema check), a warm one, and
/// through a transaction pooler (SET LOCAL in a caller's transaction).
async fn access_exclusive_lock_timeout(len: usize, kind: u64, warm: bool, pooled: bool) {
    let db = setup(&format!("pf_axlock_{len}_{kind}_{warm}_{pooled}")).await;
    let bouncer = if pooled {
        Some(Bouncer::start(&db, "transaction", 2, "server_reset_query = DISCARD ALL").await)
    } else {
        None
    };
    let mut writer = match &bouncer {
        Some(b) => b.connect().await,
        None => db.connect().await,
    };
    if warm {
        Contended::bulk_create_new(&mut writer, &rows(1 << 30, 1, "warm")).await.unwrap();
        Contended::bulk_create_new(&mut writer, &rows(1 << 31, COPY_BATCH, "warm")).await.unwrap();
    }
    let before = count(&db.connect().await, "contended").await;
    let mut admin = db.connect().await;
    let tx = admin.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE contended IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let batch = rows(0, len, "ax");
    let result = if pooled {
        let mut wtx = writer.transaction().await.unwrap();
        wtx.batch_execute("SET LOCAL lock_timeout = '150ms'").await.unwrap();
        let r = mixed_call(kind, &mut wtx, &batch).await;
        // Awaited, not dropped: a dropped transaction's ROLLBACK would go out
        // pipelined with the next call (see `Bouncer::settle`).
        wtx.rollback().await.unwrap();
        r
    } else {
        writer.batch_execute("SET lock_timeout = '150ms'").await.unwrap();
        mixed_call(kind, &mut writer, &batch).await
    };
    tx.rollback().await.unwrap();
    let err = result.expect_err("lock timeout");
    assert_eq!(err.sqlstate(), Some(&SqlState::LOCK_NOT_AVAILABLE), "{err:?}");
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.connection_usable(), "{err:?}");
    assert_eq!(count(&admin, "contended").await, before, "nothing written");
    let d = within("the call after the lock", mixed_call(kind, &mut writer, &batch)).await.unwrap();
    assert_eq!(d.report.inserted, len as u64, "{d:?}");
    drop(writer);
    drop(bouncer);
    db.drop().await;
}

#[tokio::test]
async fn ax_lock_new_connection_short_plain() {
    access_exclusive_lock_timeout(50, 0, false, false).await;
}

#[tokio::test]
async fn ax_lock_new_connection_copy_plain() {
    access_exclusive_lock_timeout(COPY_BATCH, 0, false, false).await;
}

#[tokio::test]
async fn ax_lock_new_connection_short_upsert() {
    access_exclusive_lock_timeout(500, 1, false, false).await;
}

#[tokio::test]
async fn ax_lock_new_connection_copy_keys() {
    access_exclusive_lock_timeout(COPY_BATCH, 2, false, false).await;
}

#[tokio::test]
async fn ax_lock_warm_short_plain() {
    access_exclusive_lock_timeout(300, 0, true, false).await;
}

#[tokio::test]
async fn ax_lock_warm_copy_skipped() {
    access_exclusive_lock_timeout(COPY_BATCH, 3, true, false).await;
}

#[tokio::test]
async fn ax_lock_pooled_short_plain() {
    access_exclusive_lock_timeout(300, 0, false, true).await;
}

#[tokio::test]
async fn ax_lock_pooled_copy_upsert() {
    access_exclusive_lock_timeout(COPY_BATCH, 4, true, true).await;
}

/// The process checked the table already (another connection): a new
/// connection's first call (without the check) meets the lock.
#[tokio::test]
async fn ax_lock_first_call_of_new_connection() {
    let db = setup("pf_axlock_first").await;
    let mut direct = db.connect().await;
    Contended::bulk_create_new(&mut direct, &rows(1 << 30, 1, "d")).await.unwrap();
    let mut admin = db.connect().await;
    let tx = admin.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE contended IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let mut writer = db.connect().await;
    writer.batch_execute("SET lock_timeout = '150ms'").await.unwrap();
    let err = Contended::bulk_create_new(&mut writer, &rows(0, 10, "f")).await.expect_err("lock timeout");
    tx.rollback().await.unwrap();
    assert_eq!(err.sqlstate(), Some(&SqlState::LOCK_NOT_AVAILABLE), "{err:?}");
    assert!(err.is_retryable() && err.connection_usable(), "{err:?}");
    assert_eq!(count(&admin, "contended").await, 1);
    let o = Contended::bulk_create_new(&mut writer, &rows(0, 10, "f")).await.unwrap();
    assert_eq!(o.inserted, 10);
    db.drop().await;
}

/// statement_timeout during a new connection's schema check (the table is
/// locked until after the call): not retryable, the connection goes on.
#[tokio::test]
async fn statement_timeout_in_schema_check() {
    let db = setup("pf_st_check").await;
    let mut admin = db.connect().await;
    let tx = admin.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE contended IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let mut writer = db.connect().await;
    writer.batch_execute("SET statement_timeout = '150ms'").await.unwrap();
    let err = Contended::bulk_create_new(&mut writer, &rows(0, COPY_BATCH, "f")).await.expect_err("timeout");
    tx.rollback().await.unwrap();
    assert_eq!(err.sqlstate(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert!(err.connection_usable(), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
    assert_eq!(count(&admin, "contended").await, 0);
    writer.batch_execute("RESET statement_timeout").await.unwrap();
    let o = Contended::bulk_create_new(&mut writer, &rows(0, COPY_BATCH, "f")).await.unwrap();
    assert_eq!(o.inserted, COPY_BATCH as u64);
    db.drop().await;
}

// ---------------------------------------------------------------------
// The retry helper
// ---------------------------------------------------------------------

/// RetryPolicy::run with a deadpool pool: the first attempt's backend is
/// terminated mid-COPY; the pool hands out a working connection and the
/// retry counts exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_run_with_deadpool_after_terminated_backend() {
    use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    let db = setup("pf_retry_pool").await;
    let admin = db.connect().await;
    let manager = Manager::from_config(db.config(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let pool = Pool::builder(manager).max_size(1).build().unwrap();
    let batch = rows(0, 30_000, "retry");
    let attempts = Arc::new(AtomicU32::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let policy = RetryPolicy::new().max_attempts(3).backoff(Duration::from_millis(10), Duration::from_millis(50));
    let run = {
        let (pool, batch, attempts, killed) = (pool.clone(), batch.clone(), attempts.clone(), killed.clone());
        tokio::spawn(async move {
            policy
                .run(tokio::time::sleep, |n| {
                    let (pool, batch, attempts, killed) =
                        (pool.clone(), batch.clone(), attempts.clone(), killed.clone());
                    async move {
                        attempts.fetch_add(1, Ordering::SeqCst);
                        let mut conn = pool.get().await?;
                        // The first attempt's rows stop halfway until its backend is gone.
                        let iter = batch.into_iter().enumerate().map(move |(i, r)| {
                            if n == 1 && i == 15_000 {
                                for _ in 0..PATIENCE.as_millis() / 5 {
                                    if killed.load(Ordering::SeqCst) {
                                        break;
                                    }
                                    std::thread::sleep(Duration::from_millis(5));
                                }
                            }
                            r
                        });
                        let o = Contended::bulk_create_new(&mut conn, iter).await?;
                        Ok::<_, BoxError>((n, o))
                    }
                })
                .await
        })
    };
    // The first attempt's backend, in its COPY (the pool's sessions share
    // the admin's application_name, which names the test's schema).
    let mut pid = None;
    for _ in 0..PATIENCE.as_millis() / 5 {
        let row = admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity
                  WHERE query LIKE 'COPY %' AND state = 'active' AND pid <> pg_backend_pid()
                    AND datname = current_database()
                    AND application_name = (SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid())",
                &[],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            pid = Some(row.get::<_, i32>(0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = pid.expect("the first attempt's COPY");
    let ended: bool = admin.query_one("SELECT pg_terminate_backend($1, 30000)", &[&pid]).await.unwrap().get(0);
    assert!(ended, "backend {pid} did not end");
    killed.store(true, Ordering::SeqCst);
    let result = run.await.unwrap();
    let (n, o) = result.unwrap_or_else(|e| panic!("after {} attempts: {e:?}", attempts.load(Ordering::SeqCst)));
    assert_eq!(n, attempts.load(Ordering::SeqCst));
    assert!(n >= 2, "the first attempt failed");
    assert_eq!(o.inserted, batch.len() as u64, "the retry counts exactly");
    assert_eq!(count(&admin, "contended").await, batch.len() as i64);
    pool.close();
    db.drop().await;
}
