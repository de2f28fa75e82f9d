//! Isolation levels and the retry helper. Under READ COMMITTED nothing needs a
//! retry, even inside callers' transactions; under REPEATABLE READ and
//! SERIALIZABLE a concurrent writer's key surfaces as a retryable
//! serialization failure, and `bulk_runtime::retry` reruns the batch in a
//! fresh transaction (or on a new connection) with exact counts.

use std::sync::Arc;

use bulk_runtime::retry::{RetryPolicy, with_retry};
use bulk_runtime::{BulkCreateNew, Report};
use bulk_tests::{COPY_BATCH, Contended, TestDb, contended_batch, count, distinct_keys};
use tokio_postgres::IsolationLevel;
use tokio_postgres::error::SqlState;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn setup(name: &str) -> TestDb {
    let db = TestDb::new(name).await;
    db.connect().await.batch_execute(&Contended::model().migration_sql()).await.unwrap();
    db
}

fn rows(keys: impl IntoIterator<Item = u64>, tag: &str) -> Vec<Contended> {
    keys.into_iter().map(|k| Contended::key(k, format!("{tag} {k}"))).collect()
}

/// `batch` plus `pad` rows of keys of their own (from 10^9 on), so a padded
/// batch takes the COPY path.
fn padded(batch: Vec<Contended>, pad: usize) -> Vec<Contended> {
    batch.into_iter().chain(rows(1_000_000_000..1_000_000_000 + pad as u64, "pad")).collect()
}

/// A policy whose waits are short, for tests.
fn quick() -> RetryPolicy {
    RetryPolicy::new().max_attempts(4).backoff(std::time::Duration::from_millis(1), std::time::Duration::from_millis(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_committed_callers_transactions_need_no_retry() {
    // Eight writers, each call inside its own READ COMMITTED transaction with
    // a statement of its own before it, overlapping keys: no call fails.
    let db = setup("iso_read_committed").await;
    let seed = bulk_tests::seed("iso_read_committed");
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let mut client = db.connect().await;
        client.batch_execute("SET deadlock_timeout = '50ms'").await.unwrap();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut batches = Vec::new();
            let mut total = Report::default();
            for round in 0..3 {
                let batch =
                    contended_batch(seed, round, w, if (w + round) % 2 == 0 { 2_000 } else { COPY_BATCH }, 9_000);
                barrier.wait().await;
                let mut tx =
                    client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await.unwrap();
                tx.query_one("SELECT count(*) FROM contended", &[]).await.unwrap();
                total +=
                    Contended::bulk_create_new(&mut tx, &batch).await.unwrap_or_else(|e| panic!("{w}/{round}: {e}"));
                tx.commit().await.unwrap();
                batches.push(batch);
            }
            (total, batches)
        }));
    }
    let mut total = Report::default();
    let mut batches = Vec::new();
    for t in tasks {
        let (o, b) = t.await.unwrap();
        total += o;
        batches.extend(b);
    }
    let keys = distinct_keys(&batches);
    assert_eq!(total.inserted, keys.len() as u64);
    assert_eq!(count(&db.connect().await, "contended").await, keys.len() as i64);
    db.drop().await;
}

#[tokio::test]
async fn serializable_conflict_is_a_retryable_error() {
    serializable_conflict(0).await;
}

#[tokio::test]
async fn serializable_conflict_is_a_retryable_error_through_copy() {
    serializable_conflict(COPY_BATCH).await;
}

/// A SERIALIZABLE caller whose snapshot predates another writer's commit of
/// one of its keys. (REPEATABLE READ: `errors.rs`.)
async fn serializable_conflict(pad: usize) {
    let db = setup(&format!("iso_serializable_{pad}")).await;
    let mut client = db.connect().await;
    let mut other = db.connect().await;
    Contended::bulk_create_new(&mut client, rows([1 << 40], "warm")).await.unwrap();
    let batch = padded(rows(0..10, "mine"), pad);

    let mut tx = client.build_transaction().isolation_level(IsolationLevel::Serializable).start().await.unwrap();
    tx.query_one("SELECT count(*) FROM contended", &[]).await.unwrap();
    Contended::bulk_create_new(&mut other, rows([5], "theirs")).await.unwrap();
    let err = Contended::bulk_create_new(&mut tx, &batch).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some(&SqlState::T_R_SERIALIZATION_FAILURE), "{err}");
    assert!(err.is_retryable(), "{err}");
    assert!(err.connection_usable());
    tx.rollback().await.unwrap();
    assert_eq!(count(&client, "contended").await, 2, "nothing of the batch");
    db.drop().await;
}

#[tokio::test]
async fn retry_reruns_a_serialization_failure_in_a_fresh_transaction() {
    retry_after_serialization_failure(IsolationLevel::RepeatableRead, 0).await;
    retry_after_serialization_failure(IsolationLevel::Serializable, COPY_BATCH).await;
}

async fn retry_after_serialization_failure(level: IsolationLevel, pad: usize) {
    let db = setup(&format!("iso_retry_{pad}")).await;
    let mut client = db.connect().await;
    let mut other = db.connect().await;
    Contended::bulk_create_new(&mut client, rows([1 << 40], "warm")).await.unwrap();
    let batch = padded(rows(0..10, "mine"), pad);
    let mut errors = Vec::new();
    let mut retry = quick().start();
    let outcome = loop {
        let attempt = async {
            let mut tx = client.build_transaction().isolation_level(level).start().await?;
            tx.query_one("SELECT count(*) FROM contended", &[]).await?;
            if retry.attempt() == 1 {
                // Another writer stores one of the keys after the snapshot.
                Contended::bulk_create_new(&mut other, rows([5], "theirs")).await?;
            }
            let result = Contended::bulk_create_new(&mut tx, &batch).await;
            if let Err(e) = &result {
                errors.push(e.sqlstate().cloned());
            }
            let outcome = result?;
            tx.commit().await?;
            Ok::<_, BoxError>((retry.attempt(), outcome))
        };
        match attempt.await {
            Ok(done) => break done,
            Err(e) => retry.retry_after(e, tokio::time::sleep).await.unwrap(),
        }
    };
    assert_eq!(errors, [Some(SqlState::T_R_SERIALIZATION_FAILURE)]);
    let (attempt, o) = outcome;
    assert_eq!(attempt, 2);
    assert_eq!((o.offered, o.inserted, o.skipped), (batch.len() as u64, batch.len() as u64 - 1, 1));
    assert_eq!(count(&client, "contended").await, 1 + batch.len() as i64);
    let payload: String =
        client.query_one("SELECT payload FROM contended WHERE a = 5 AND b = 0", &[]).await.unwrap().get(0);
    assert_eq!(payload, "theirs 5");
    db.drop().await;
}

#[tokio::test]
async fn retry_reconnects_after_a_lost_connection() {
    let db = setup("iso_retry_reconnect").await;
    let admin = db.connect().await;
    let mut client = db.connect().await;
    let batch = rows(0..COPY_BATCH as u64, "r");
    let mut connections = 1;
    let mut retry = RetryPolicy::default().start();
    let (attempt, o) = loop {
        if client.is_closed() {
            client = db.connect().await;
            connections += 1;
        }
        if retry.attempt() == 1 {
            // The server goes away before this attempt's call.
            let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
            admin.query_one("SELECT pg_terminate_backend($1, 10000)", &[&pid]).await.unwrap();
            for _ in 0..1000 {
                if client.is_closed() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        match Contended::bulk_create_new(&mut client, &batch).await {
            Ok(o) => break (retry.attempt(), o),
            Err(e) => {
                assert!(e.is_retryable() && !e.connection_usable(), "{e}");
                retry.retry_after(e, tokio::time::sleep).await.unwrap();
            }
        }
    };
    assert_eq!((attempt, connections), (2, 2));
    assert_eq!(o.inserted, COPY_BATCH as u64);
    assert_eq!(count(&admin, "contended").await, COPY_BATCH as i64);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlock_with_the_callers_own_statements_is_retried() {
    // Two transactions each insert a key with a plain INSERT, then bulk-insert
    // the other's key: a deadlock the call cannot prevent (the caller's own
    // rows came first). One of them fails with a retryable deadlock error;
    // the helper reruns its whole transaction. A rerun that starts before the
    // other side has taken the victim's key can collide with it again (seen
    // once in CI), so the backoff leaves the other side time to commit and the
    // test asserts that every failure was a deadlock, not how many there were.
    let db = setup("iso_deadlock").await;
    let first = db.connect().await;
    let second = db.connect().await;
    for c in [&first, &second] {
        c.batch_execute("SET deadlock_timeout = '20ms'").await.unwrap();
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let mut tasks = Vec::new();
    for (mut client, mine, theirs) in [(first, 1u64, 2u64), (second, 2, 1)] {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let policy = RetryPolicy::new()
                .max_attempts(8)
                .backoff(std::time::Duration::from_millis(20), std::time::Duration::from_millis(200));
            let mut retry = policy.start();
            let result = loop {
                let attempt = async {
                    let mut tx = client.transaction().await?;
                    let own = Contended::key(mine, String::new());
                    tx.execute(
                        "INSERT INTO contended (a, b, payload) VALUES ($1, $2, 'plain') ON CONFLICT DO NOTHING",
                        &[&own.a, &own.b],
                    )
                    .await?;
                    if retry.attempt() == 1 {
                        barrier.wait().await;
                    }
                    let r = Contended::bulk_create_new(&mut tx, rows([theirs, mine + 10], "bulk")).await;
                    if let Err(e) = &r {
                        errors.push(e.sqlstate().cloned());
                    }
                    let o = r?;
                    tx.commit().await?;
                    Ok::<_, BoxError>((retry.attempt(), o))
                };
                match attempt.await {
                    Ok(done) => break done,
                    Err(e) => retry.retry_after(e, tokio::time::sleep).await.unwrap(),
                }
            };
            (client, result, errors)
        }));
    }
    let mut deadlocks = 0;
    let mut inserted = 0;
    for t in tasks {
        let (_, (attempt, o), errors) = t.await.unwrap();
        deadlocks += errors.len();
        assert!(errors.iter().all(|e| *e == Some(SqlState::T_R_DEADLOCK_DETECTED)), "{errors:?}");
        assert_eq!(attempt as usize, errors.len() + 1);
        inserted += o.inserted;
    }
    assert!(deadlocks >= 1, "the two transactions deadlocked, and a victim was chosen");
    // Each transaction stored its own plain row; of the bulk rows, the other's
    // key was skipped by whichever committed second, and both new keys went in.
    assert_eq!(inserted, 3);
    assert_eq!(count(&db.connect().await, "contended").await, 4);
    db.drop().await;
}

#[tokio::test]
async fn retry_does_not_rerun_errors_that_would_fail_again() {
    let db = setup("iso_retry_not_retryable").await;
    let client = db.connect().await;
    client.batch_execute("ALTER TABLE contended ADD CONSTRAINT short CHECK (length(payload) < 5)").await.unwrap();
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let err = with_retry(tokio::time::sleep, |_| async {
        attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut client = db.connect().await;
        Contended::bulk_create_new(&mut client, rows([1, 2], "too long")).await
    })
    .await
    .unwrap_err();
    assert_eq!(attempts.into_inner(), 1);
    assert_eq!(err.sqlstate(), Some(&SqlState::CHECK_VIOLATION));
    assert!(!err.is_retryable());
    db.drop().await;
}
