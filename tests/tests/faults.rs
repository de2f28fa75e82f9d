//! Faults in the middle of a call: the backend terminated during COPY or
//! during the insert, and statement and lock timeouts. The call returns a
//! clear error, nothing of the batch is visible, nothing is left behind, and
//! running the batch again gives exact counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bulk_runtime::{BulkCreateNew, Error, Step};
use bulk_tests::{COPY_BATCH, Contended, TestDb, count, gate_at, lock_key, wait_for_backend};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

async fn setup(name: &str) -> TestDb {
    let db = TestDb::new(name).await;
    db.connect().await.batch_execute(&Contended::model().migration_sql()).await.unwrap();
    db
}

async fn backend_pid(client: &Client) -> i32 {
    client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0)
}

async fn terminate(admin: &Client, pid: i32) {
    let done: bool = admin.query_one("SELECT pg_terminate_backend($1, 10000)", &[&pid]).await.unwrap().get(0);
    assert!(done, "backend {pid} terminated");
}

/// `len` rows over `len * 3 / 4` keys (so some repeat), in a scrambled order.
fn batch(len: usize) -> Vec<Contended> {
    let keys = (len * 3 / 4) as u64;
    (0..len as u64).map(|i| Contended::key((i * 7919) % keys, format!("row {i}"))).collect()
}

fn distinct(rows: &[Contended]) -> u64 {
    rows.iter().map(Contended::number).collect::<std::collections::BTreeSet<_>>().len() as u64
}

/// The error of a call whose backend was terminated.
fn assert_lost(err: &Error) {
    assert!(matches!(err, Error::Database { .. }), "{err:?}");
    assert!(err.is_retryable(), "a lost connection is retryable: {err}");
    assert!(!err.connection_usable(), "{err}");
}

/// Runs the batch again on a new connection: every distinct key is stored
/// exactly once, and the counts say so.
async fn retry_on_new_connection(db: &TestDb, rows: &[Contended]) {
    let mut fresh = db.connect().await;
    let o = Contended::bulk_create_new(&mut fresh, rows).await.unwrap();
    assert_eq!((o.offered, o.inserted), (rows.len() as u64, distinct(rows)));
    assert_eq!(count(&fresh, "contended").await, distinct(rows) as i64);
    let again = Contended::bulk_create_new(&mut fresh, rows).await.unwrap();
    assert_eq!(again.inserted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_terminated_during_copy() {
    let db = setup("fault_copy").await;
    let admin = db.connect().await;
    let mut writer = db.connect().await;
    let pid = backend_pid(&writer).await;
    let rows = batch(60_000);

    // The rows come from an iterator that, once 20,000 rows are out (so the
    // COPY is under way on the server), holds the next one back until the
    // backend has been terminated.
    let killed = Arc::new(AtomicBool::new(false));
    let held = rows.clone();
    let flag = killed.clone();
    let call = tokio::spawn(async move {
        let rows = held.into_iter().enumerate().map(move |(i, row)| {
            if i == 20_000 {
                for _ in 0..6000 {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            row
        });
        Contended::bulk_create_new(&mut writer, rows).await
    });
    let query = wait_for_backend(&admin, pid, "COPY %", false).await;
    assert!(query.contains("FROM STDIN"), "{query}");
    terminate(&admin, pid).await;
    killed.store(true, Ordering::SeqCst);

    let err = call.await.unwrap().unwrap_err();
    assert_lost(&err);
    assert_eq!(err.step(), Some(Step::Copy), "{err}");
    assert_eq!(count(&admin, "contended").await, 0, "no partial rows");
    retry_on_new_connection(&db, &rows).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_terminated_during_insert() {
    terminated_during_insert(0, 4_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_terminated_during_insert_through_copy() {
    terminated_during_insert(1, 4 * COPY_BATCH).await;
}

/// The insert stops at a row past the middle of the key order (a CHECK
/// function waits on an advisory lock), so the rows before it are already
/// inserted by the statement when the backend is terminated.
async fn terminated_during_insert(n: i64, len: usize) {
    let db = setup(&format!("fault_insert_{n}")).await;
    let admin = db.connect().await;
    let lock = lock_key(100 + n);
    let rows = batch(len);
    let mut keys: Vec<u64> = rows.iter().map(Contended::number).collect();
    keys.sort_by_key(|k| {
        let c = Contended::key(*k, String::new());
        (c.a, c.b)
    });
    keys.dedup();
    gate_at(&admin, keys[keys.len() * 2 / 3], lock).await;
    admin.query_one("SELECT pg_advisory_lock($1)", &[&lock]).await.unwrap();

    let mut writer = db.connect().await;
    // Warm up: the session's schema check and scratch table are done.
    Contended::bulk_create_new(&mut writer, [Contended::key(1 << 40, "warm".into())]).await.unwrap();
    admin.execute("DELETE FROM contended", &[]).await.unwrap();
    let pid = backend_pid(&writer).await;
    let held = rows.clone();
    let call = tokio::spawn(async move { Contended::bulk_create_new(&mut writer, &held).await });
    // The call's insert (in either form) waits at the gate.
    wait_for_backend(&admin, pid, "%INSERT INTO%", true).await;
    terminate(&admin, pid).await;
    admin.query_one("SELECT pg_advisory_unlock($1)", &[&lock]).await.unwrap();

    let err = call.await.unwrap().unwrap_err();
    assert_lost(&err);
    assert_eq!(count(&admin, "contended").await, 0, "no partial rows");
    retry_on_new_connection(&db, &rows).await;
    db.drop().await;
}

/// Nothing of a failed call is left on the writer's session: no open
/// transaction, no lock, an empty scratch table, and the next call works.
/// (The failed transaction's ROLLBACK goes out as the call returns, without
/// waiting for the server; the caller need not send anything for it to run.)
async fn nothing_left_behind(admin: &Client, writer: &mut Client, pid: i32) {
    let mut state = String::new();
    for _ in 0..2000 {
        state = admin.query_one("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid]).await.unwrap().get(0);
        if state == "idle" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(state, "idle", "no transaction left open");
    let locks: i64 = admin
        .query_one("SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype <> 'virtualxid'", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert_eq!(locks, 0, "no lock left held");
    let scratch: Vec<String> = writer
        .query(
            "SELECT relname::text FROM pg_class WHERE relnamespace = pg_my_temp_schema() AND relname LIKE '\\_\\_bulk\\_%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for name in scratch {
        let n: i64 = writer
            .query_one(&format!("SELECT count(*) FROM pg_temp.{}", bulk_runtime::quote_ident(&name)), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "scratch table {name} is empty");
    }
    writer.batch_execute("RESET statement_timeout; RESET lock_timeout").await.unwrap();
    let o = Contended::bulk_create_new(writer, [Contended::key(1 << 41, "next".into())]).await.unwrap();
    assert_eq!(o.inserted, 1, "the connection takes the next batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_in_the_insert() {
    statement_timeout(0, 2_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_in_the_insert_through_copy() {
    statement_timeout(1, COPY_BATCH).await;
}

async fn statement_timeout(n: i64, len: usize) {
    let db = setup(&format!("fault_statement_timeout_{n}")).await;
    let admin = db.connect().await;
    let lock = lock_key(110 + n);
    gate_at(&admin, len as u64 / 2, lock).await;
    admin.query_one("SELECT pg_advisory_lock($1)", &[&lock]).await.unwrap();
    let mut writer = db.connect().await;
    let pid = backend_pid(&writer).await;
    writer.batch_execute("SET statement_timeout = '200ms'").await.unwrap();
    let rows: Vec<Contended> = (0..len as u64).map(|k| Contended::key(k, "t".into())).collect();
    let err = Contended::bulk_create_new(&mut writer, &rows).await.unwrap_err();
    admin.query_one("SELECT pg_advisory_unlock($1)", &[&lock]).await.unwrap();

    assert_eq!(err.sqlstate(), Some(&SqlState::QUERY_CANCELED), "{err}");
    assert_eq!(err.step(), Some(Step::Insert), "{err}");
    let shown = err.to_string();
    assert!(shown.contains("statement timeout") && shown.contains(r#""contended""#), "{shown}");
    assert!(err.connection_usable());
    assert_eq!(count(&admin, "contended").await, 0, "nothing of the batch");
    nothing_left_behind(&admin, &mut writer, pid).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_during_copy() {
    // The client stops producing rows in the middle of the COPY for longer
    // than statement_timeout (a backend waiting for COPY data notices the
    // timeout when the next data arrives).
    let db = setup("fault_statement_timeout_copy").await;
    let admin = db.connect().await;
    let mut writer = db.connect().await;
    let pid = backend_pid(&writer).await;
    writer.batch_execute("SET statement_timeout = '50ms'").await.unwrap();
    let rows = batch(40_000);
    let held = rows.clone();
    let iter = held.into_iter().enumerate().map(move |(i, row)| {
        if i == 20_000 {
            std::thread::sleep(Duration::from_millis(1500));
        }
        row
    });
    let (mut writer, result) =
        tokio::spawn(async move { (Contended::bulk_create_new(&mut writer, iter).await, writer) })
            .await
            .map(|(r, w)| (w, r))
            .unwrap();
    let err = result.unwrap_err();
    assert_eq!(err.sqlstate(), Some(&SqlState::QUERY_CANCELED), "{err}");
    assert_eq!(err.step(), Some(Step::Copy), "{err}");
    assert!(err.to_string().contains("statement timeout"), "{err}");
    assert!(err.connection_usable(), "{err}");
    assert_eq!(count(&admin, "contended").await, 0);
    nothing_left_behind(&admin, &mut writer, pid).await;
    db.drop().await;
}

#[tokio::test]
async fn lock_timeout_on_a_locked_table() {
    lock_timeout_on_a_locked_table_with(10).await;
}

#[tokio::test]
async fn lock_timeout_on_a_locked_table_through_copy() {
    lock_timeout_on_a_locked_table_with(COPY_BATCH).await;
}

/// Another session holds a SHARE lock on the table (as `CREATE INDEX` does):
/// the insert's lock wait ends at `lock_timeout` with a retryable error;
/// once the lock is gone, the same batch goes in.
async fn lock_timeout_on_a_locked_table_with(len: usize) {
    let db = setup(&format!("fault_lock_timeout_{len}")).await;
    let mut writer = db.connect().await;
    let pid = backend_pid(&writer).await;
    let rows: Vec<Contended> = (0..len as u64).map(|k| Contended::key(k, "l".into())).collect();
    // Warm up the session, so the lock wait is in the insert.
    Contended::bulk_create_new(&mut writer, [Contended::key(1 << 40, "warm".into())]).await.unwrap();
    writer.batch_execute("SET lock_timeout = '100ms'").await.unwrap();
    let mut admin = db.connect().await;
    let tx = admin.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE contended IN SHARE MODE").await.unwrap();
    let err = Contended::bulk_create_new(&mut writer, &rows).await.unwrap_err();
    tx.rollback().await.unwrap();

    assert_eq!(err.sqlstate(), Some(&SqlState::LOCK_NOT_AVAILABLE), "{err}");
    assert!(err.to_string().contains("lock timeout"), "{err}");
    assert!(err.is_retryable(), "{err}");
    assert!(err.connection_usable());
    assert_eq!(count(&admin, "contended").await, 1, "only the warm-up row");
    nothing_left_behind(&admin, &mut writer, pid).await;
    let o = Contended::bulk_create_new(&mut writer, &rows).await.unwrap();
    assert_eq!(o.inserted, len as u64);
    db.drop().await;
}

#[tokio::test]
async fn lock_timeout_on_a_key_another_transaction_is_inserting() {
    // Row-level: another transaction inserted one of the keys and has not
    // committed; the call waits for it (ON CONFLICT must know the outcome)
    // until lock_timeout.
    let db = setup("fault_lock_timeout_row").await;
    let mut writer = db.connect().await;
    let pid = backend_pid(&writer).await;
    writer.batch_execute("SET lock_timeout = '100ms'").await.unwrap();
    let mut admin = db.connect().await;
    let tx = admin.transaction().await.unwrap();
    tx.execute("INSERT INTO contended (a, b, payload) VALUES (3, 1, 'theirs')", &[]).await.unwrap();
    let rows: Vec<Contended> = (0..100).map(|k| Contended::key(k, "mine".into())).collect();
    let err = Contended::bulk_create_new(&mut writer, &rows).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some(&SqlState::LOCK_NOT_AVAILABLE), "{err}");
    assert!(err.is_retryable());
    tx.commit().await.unwrap();
    assert_eq!(count(&admin, "contended").await, 1, "nothing of the batch");
    nothing_left_behind(&admin, &mut writer, pid).await;
    let o = Contended::bulk_create_new(&mut writer, &rows).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (99, 1));
    db.drop().await;
}

#[derive(bulk_runtime::BulkType, Debug, Clone, Copy, PartialEq)]
#[bulk(type = "fault_mood")]
enum FaultMood {
    Happy,
    Sad,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "mood", unique(person))]
struct Mood {
    person: i64,
    mood: FaultMood,
    note: String,
}

/// `len` rows of new keys from `from` on.
fn moods(from: i64, len: usize) -> Vec<Mood> {
    (from..from + len as i64)
        .map(|person| Mood {
            person,
            mood: if person % 2 == 0 { FaultMood::Happy } else { FaultMood::Sad },
            note: format!("n{person}"),
        })
        .collect()
}

async fn mood_setup(name: &str) -> TestDb {
    use bulk_runtime::PgEnum;
    let db = TestDb::new(name).await;
    let migration = format!("{}; {}", FaultMood::create_type_sql(), Mood::model().migration_sql());
    db.connect().await.batch_execute(&migration).await.unwrap();
    db
}

/// Strips column `note` from the session's scratch table (made by an
/// earlier COPY call): the server would answer the COPY statement into it
/// with 42703 instead of `CopyInResponse`.
async fn strip_the_scratch_table(client: &Client) {
    let scratch: String = client
        .query_one(
            "SELECT relname::text FROM pg_class WHERE relnamespace = pg_my_temp_schema() AND relname LIKE '\\_\\_bulk\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let sql = format!("ALTER TABLE pg_temp.{} DROP COLUMN note", bulk_runtime::quote_ident(&scratch));
    client.batch_execute(&sql).await.unwrap();
}

/// On one session (`$session`: a `Client`, or the object of a pool of one
/// connection; `$next` gives the next one): a COPY call makes the scratch
/// table, then two COPY calls whose COPY the server would refuse as it
/// starts (42703): one after the scratch table lost a column, one after a
/// migration dropped the enum type with `CASCADE` (which strips the column
/// from the target and from the scratch table). Each call either writes
/// its whole batch, or fails and writes nothing; after a failure the same
/// connection serves the next calls, or the error says it is unusable and
/// it is closed by the time the call returns (so that a pool, whose
/// recycling checks `is_closed`, discards it). Then a short call and a
/// COPY call, with exact counts.
macro_rules! copy_refused_as_it_starts {
    ($db:expr, $session:expr, $next:expr) => {{
        let db: &TestDb = $db;
        let admin = db.connect().await;
        let mut conn = $session;
        let o = Mood::bulk_create_new(&mut conn, &moods(0, COPY_BATCH)).await.unwrap();
        assert_eq!(o.inserted, COPY_BATCH as u64);
        let mut stored = COPY_BATCH as i64;
        for (round, from) in [("scratch table stripped", 1_000_000), ("enum type dropped with CASCADE", 2_000_000)] {
            if from == 1_000_000 {
                strip_the_scratch_table(&conn).await;
            } else {
                admin.batch_execute("DROP TYPE fault_mood CASCADE").await.unwrap();
            }
            let pid = backend_pid(&conn).await;
            let result = Mood::bulk_create_new(&mut conn, &moods(from, COPY_BATCH)).await;
            let closed = conn.is_closed();
            match &result {
                Ok(o) => {
                    assert_eq!((o.offered, o.inserted), (COPY_BATCH as u64, COPY_BATCH as u64), "{round}");
                    stored += COPY_BATCH as i64;
                }
                Err(err) if err.connection_usable() => assert!(!closed, "{round}: {err}"),
                Err(err) => {
                    assert!(
                        closed,
                        "{round}: the error says the connection is unusable, yet it is still open when the call \
                         returns (a pool hands it out again): {err:?}"
                    );
                    drop(conn);
                    conn = $next;
                    assert_ne!(backend_pid(&conn).await, pid, "{round}: a new connection");
                }
            }
            if from == 2_000_000 {
                // The table lost its enum column: the call must fail, and
                // works again once the migration made the type and column again.
                let err = result.as_ref().expect_err(round);
                assert!(matches!(err, Error::SchemaMismatch { .. }) || err.sqlstate().is_some(), "{round}: {err:?}");
                admin
                    .batch_execute(&format!(
                        "{}; ALTER TABLE mood ADD COLUMN mood fault_mood NOT NULL DEFAULT 'happy'; \
                         ALTER TABLE mood ALTER COLUMN mood DROP DEFAULT",
                        <FaultMood as bulk_runtime::PgEnum>::create_type_sql()
                    ))
                    .await
                    .unwrap();
            }
            assert_eq!(count(&admin, "mood").await, stored, "{round}: the whole batch or nothing of it");
            if result.as_ref().is_err_and(Error::connection_usable) {
                assert_eq!(backend_pid(&conn).await, pid, "{round}: the same connection");
            }
            let short = Mood::bulk_create_new(&mut conn, &moods(from + 500_000, 10))
                .await
                .unwrap_or_else(|e| panic!("{round}: the short call after it ({result:?}): {e}"));
            assert_eq!(short.inserted, 10, "{round}");
            let long = Mood::bulk_create_new(&mut conn, &moods(from + 600_000, COPY_BATCH))
                .await
                .unwrap_or_else(|e| panic!("{round}: the COPY call after it ({result:?}): {e}"));
            assert_eq!(long.inserted, COPY_BATCH as u64, "{round}");
            stored += 10 + COPY_BATCH as i64;
            assert_eq!(count(&admin, "mood").await, stored, "{round}");
        }
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_refused_as_it_starts_fails_cleanly_and_the_client_serves_the_next_calls() {
    let db = mood_setup("fault_copy_refused").await;
    copy_refused_as_it_starts!(&db, db.connect().await, db.connect().await);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_refused_as_it_starts_on_a_pool_of_one_fails_cleanly_and_the_pool_serves_the_next_calls() {
    use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
    let db = mood_setup("fault_copy_refused_pool").await;
    let config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
    let pool =
        Pool::builder(Manager::from_config(db.config(), tokio_postgres::NoTls, config)).max_size(1).build().unwrap();
    copy_refused_as_it_starts!(&db, pool.get().await.unwrap(), pool.get().await.unwrap());
    pool.close();
    db.drop().await;
}
