//! Pooled connections passed as `&mut conn` (features `deadpool` and `bb8`):
//! deadpool-postgres objects and their transactions, bb8 pooled connections
//! and theirs. A pool of 4 connections serves 8 concurrent tasks offering
//! overlapping batches, with the plain call and the builder, on both paths;
//! calls inside a pooled connection's transaction are undone by its rollback
//! and kept by its commit.

use bb8_postgres::PostgresConnectionManager;
use bulk_runtime::{BulkCreateNew, Connection, Report};
use bulk_tests::{COPY_BATCH, Contended, TestDb, contended_batch, count, distinct_keys};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::stream;
use tokio_postgres::NoTls;

const TASKS: u64 = 8;
const POOL_SIZE: u32 = 4;

/// The batches of one round's tasks: `len` rows each, overlapping one
/// another and the round before, each repeating some of its own keys.
fn round_batches(round: u64, len: usize) -> Vec<Vec<Contended>> {
    (0..TASKS).map(|task| contended_batch(7, round, task, len, 2 * len as u64)).collect()
}

/// The rounds the concurrent tests run: a short batch, then one long enough
/// for the COPY path.
const ROUNDS: [(u64, usize); 2] = [(0, 300), (1, COPY_BATCH)];

/// What one task's call reports: its counts, and how many new rows the
/// builder returned (the inserted count again, for the plain call).
type TaskResult = (Report, u64);

/// Even tasks make the plain call, odd ones the builder with `returning_keys`.
async fn task_call<C: Connection>(task: usize, conn: &mut C, batch: &[Contended]) -> TaskResult {
    if task.is_multiple_of(2) {
        let outcome = Contended::bulk_create_new(conn, batch).await.unwrap();
        (outcome, outcome.inserted)
    } else {
        let report = Contended::bulk(conn).returning_keys().run(batch).await.unwrap();
        (report.outcome(), report.returned.len() as u64)
    }
}

/// Checks a round's results: every key stored once, and the inserted counts
/// add up to the rows the round added.
async fn check_round(
    db: &TestDb,
    all: &[Vec<Contended>],
    round: &[Vec<Contended>],
    results: &[TaskResult],
    before: i64,
) {
    let client = db.connect().await;
    let stored = count(&client, "contended").await;
    assert_eq!(stored as usize, distinct_keys(all).len());
    let inserted: u64 = results.iter().map(|(o, _)| o.inserted).sum();
    assert_eq!(inserted, (stored - before) as u64);
    for ((outcome, returned), batch) in results.iter().zip(round) {
        assert_eq!(outcome.offered, batch.len() as u64);
        assert_eq!(outcome.inserted + outcome.skipped, outcome.offered);
        assert_eq!(*returned, outcome.inserted);
    }
}

/// Fresh keys for the transaction tests: `len` rows past every round's keys.
fn fresh(from: u64, len: usize) -> Vec<Contended> {
    (from..from + len as u64).map(|k| Contended::key(k, format!("tx {k}"))).collect()
}

/// Calls inside a pooled connection's transaction `tx`: the plain call,
/// the builder and a stream, on `rows` (new keys), each seeing the earlier
/// ones' rows; returns what the first call inserted.
async fn calls_in_transaction<C: Connection>(tx: &mut C, rows: &[Contended]) -> u64 {
    let first = Contended::bulk_create_new(tx, rows).await.unwrap();
    assert_eq!(first.inserted, rows.len() as u64);
    let again = Contended::bulk(tx).returning_skipped().run(rows.iter()).await.unwrap();
    assert_eq!((again.inserted, again.returned.len()), (0, rows.len()));
    let streamed = Contended::bulk(tx).run_stream(stream::iter(rows)).await.unwrap();
    assert_eq!(streamed.inserted, 0);
    first.inserted
}

/// On both paths, calls inside `$conn`'s own transaction type: undone by its
/// rollback, kept by its commit. (A macro: the two pools' transaction types
/// share no trait.)
macro_rules! rolled_back_then_committed {
    ($conn:ident) => {
        for (from, len) in [(1_000_000, 10), (2_000_000, COPY_BATCH)] {
            let rows = fresh(from, len);
            let before = count(&$conn, "contended").await;
            let mut tx = $conn.transaction().await.unwrap();
            calls_in_transaction(&mut tx, &rows).await;
            tx.rollback().await.unwrap();
            assert_eq!(count(&$conn, "contended").await, before, "rolled back");
            let mut tx = $conn.transaction().await.unwrap();
            let inserted = calls_in_transaction(&mut tx, &rows).await;
            tx.commit().await.unwrap();
            assert_eq!(count(&$conn, "contended").await, before + inserted as i64, "committed");
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_objects_and_their_transactions() {
    let db = TestDb::new("pools_deadpool").await;
    let manager = Manager::from_config(db.config(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let pool = Pool::builder(manager).max_size(POOL_SIZE as usize).build().unwrap();
    pool.get().await.unwrap().batch_execute(&Contended::model().migration_sql()).await.unwrap();

    let mut all = Vec::new();
    for (round, len) in ROUNDS {
        let batches = round_batches(round, len);
        all.extend(batches.iter().cloned());
        let before = count(&db.connect().await, "contended").await;
        let mut tasks = Vec::new();
        for (task, batch) in batches.iter().cloned().enumerate() {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn = pool.get().await.unwrap();
                task_call(task, &mut conn, &batch).await
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        check_round(&db, &all, &batches, &results, before).await;
    }

    // Inside the pooled object's own transaction type, on both paths.
    let mut conn = pool.get().await.unwrap();
    rolled_back_then_committed!(conn);
    drop(conn);
    pool.close();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bb8_connections_and_their_transactions() {
    let db = TestDb::new("pools_bb8").await;
    let manager = PostgresConnectionManager::new(db.config(), NoTls);
    let pool = bb8::Pool::builder().max_size(POOL_SIZE).build(manager).await.unwrap();
    pool.get().await.unwrap().batch_execute(&Contended::model().migration_sql()).await.unwrap();

    let mut all = Vec::new();
    for (round, len) in ROUNDS {
        let batches = round_batches(round, len);
        all.extend(batches.iter().cloned());
        let before = count(&db.connect().await, "contended").await;
        let mut tasks = Vec::new();
        for (task, batch) in batches.iter().cloned().enumerate() {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                // A borrowed connection and an owned one ('static).
                if task % 4 < 2 {
                    let mut conn = pool.get().await.unwrap();
                    task_call(task, &mut conn, &batch).await
                } else {
                    let mut conn = pool.get_owned().await.unwrap();
                    task_call(task, &mut conn, &batch).await
                }
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        check_round(&db, &all, &batches, &results, before).await;
    }

    // Inside the pooled connection's transaction (a tokio-postgres one).
    let mut conn = pool.get().await.unwrap();
    rolled_back_then_committed!(conn);
    drop(conn);
    drop(pool);
    db.drop().await;
}
