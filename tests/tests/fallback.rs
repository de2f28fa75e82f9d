//! The call's insert runs in two forms: first the plain anti-join insert,
//! then, if a key of the batch was stored meanwhile by another writer (the
//! plain insert fails with `unique_violation`), the same insert with
//! `ON CONFLICT DO NOTHING` on the same rows. These tests make another
//! transaction store a key of the batch while the plain insert waits on it,
//! on both paths and inside a caller's transaction: the call falls back,
//! skips that key, inserts the rest, and its counts are exact. After a
//! conflict, the next calls of the model go straight to `ON CONFLICT`.
//!
//! Each test has a model of its own: the choice of form is kept per model
//! for the whole process, and other tests' conflicts must not change it.

use bulk_runtime::__test_hooks::PLAIN_FROM;
use bulk_runtime::{BulkCreateNew, Ledger, Report};
use bulk_tests::{COPY_BATCH, TestDb, count};
use tokio_postgres::Client;

macro_rules! model {
    ($name:ident, $table:literal) => {
        #[derive(BulkCreateNew, Debug, Clone)]
        #[bulk(table = $table, unique(k))]
        struct $name {
            k: i64,
            payload: String,
        }

        impl $name {
            fn batch(len: usize, payload: &str) -> Vec<$name> {
                // Keys 0, 2, 4, ... in a scrambled order, every tenth one twice.
                let keys = (0..len as i64).map(|i| (i * 7919) % len as i64 * 2);
                let mut rows: Vec<$name> = keys.map(|k| $name { k, payload: payload.to_owned() }).collect();
                let repeats: Vec<$name> =
                    rows.iter().step_by(10).map(|r| $name { k: r.k, payload: "repeat".into() }).collect();
                rows.extend(repeats);
                rows
            }
        }
    };
}

model!(SmallItem, "small_item");
model!(CopyItem, "copy_item");
model!(NestedItem, "nested_item");
model!(TinyItem, "tiny_item");

async fn backend_pid(client: &Client) -> i32 {
    client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0)
}

/// A test's schema with `ddl` run in it, and its connections: the admin's,
/// the writer's (with its backend pid), and the other writer's.
struct Scene {
    db: TestDb,
    admin: Client,
    writer: Client,
    pid: i32,
    other: Client,
}

async fn scene(name: &str, ddl: &str) -> Scene {
    let db = TestDb::new(name).await;
    let admin = db.connect().await;
    admin.batch_execute(ddl).await.unwrap();
    let writer = db.connect().await;
    let pid = backend_pid(&writer).await;
    let other = db.connect().await;
    Scene { db, admin, writer, pid, other }
}

/// Waits (bounded) until backend `pid` is blocked on another transaction
/// (a row lock or a key being inserted) inside an `INSERT`; returns its statement.
async fn wait_until_blocked(admin: &Client, pid: i32) -> String {
    for _ in 0..4000 {
        let row = admin
            .query_opt(
                "SELECT query FROM pg_stat_activity WHERE pid = $1 AND state = 'active'
                    AND query LIKE '%INSERT INTO%' AND wait_event_type = 'Lock' AND wait_event = 'transactionid'",
                &[&pid],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            return row.get(0);
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("backend {pid} never waited on another transaction's key");
}

/// A transaction on `other` that inserts key `k` and stays open.
async fn hold_key(other: &Client, table: &str, k: i64) {
    other
        .batch_execute(&format!("BEGIN; INSERT INTO {table} (k, payload) VALUES ({k}, 'other writer')"))
        .await
        .unwrap();
}

/// The payload stored for key `k`.
async fn payload(client: &Client, table: &str, k: i64) -> String {
    client.query_one(&format!("SELECT payload FROM {table} WHERE k = $1"), &[&k]).await.unwrap().get(0)
}

/// Counts of a batch from `batch`, of which `stored` distinct keys were
/// stored by someone else.
fn expected(rows: usize, distinct: usize, stored: usize) -> Report {
    Report {
        offered: rows as u64,
        inserted: (distinct - stored) as u64,
        skipped: (rows - distinct + stored) as u64,
        ..Report::default()
    }
}

/// One call meets a key committed by another writer while its plain insert
/// waits on it, and falls back; the next call goes straight to ON CONFLICT.
macro_rules! falls_back {
    ($model:ident, $table:literal, $len:expr) => {{
        let Scene { db, admin, mut writer, pid, other } =
            scene(concat!("fallback_", $table), &$model::model().migration_sql()).await;

        // 1. Another transaction holds key 10 of the batch, uncommitted.
        let rows = $model::batch($len, "first call");
        hold_key(&other, $table, 10).await;
        let call = tokio::spawn(async move {
            let outcome = $model::bulk_create_new(&mut writer, &rows).await;
            (writer, outcome)
        });
        // The plain form (no ON CONFLICT) reaches key 10 and waits on it ...
        let blocked = wait_until_blocked(&admin, pid).await;
        assert!(blocked.contains("NOT EXISTS") && !blocked.contains("ON CONFLICT"), "plain form: {blocked}");
        // ... which the other transaction now commits: unique_violation.
        other.batch_execute("COMMIT").await.unwrap();
        let (mut writer, outcome) = call.await.unwrap();
        let outcome = outcome.expect("the call falls back to ON CONFLICT instead of failing");
        assert_eq!(outcome, expected($len + $len.div_ceil(10), $len, 1));
        assert_eq!(count(&admin, $table).await, $len as i64);
        assert_eq!(payload(&admin, $table, 10).await, "other writer", "the other writer's row stays");
        // Key 0 comes twice in the batch (the second time as "repeat").
        assert_eq!(payload(&admin, $table, 0).await, "first call", "the first offered row of a key wins");

        // 2. Right after a conflict, the next call runs ON CONFLICT at once:
        //    it waits on a held key in that form.
        let more: Vec<$model> =
            $model::batch($len, "second call").into_iter().map(|r| $model { k: r.k + 1, ..r }).collect();
        hold_key(&other, $table, 11).await;
        let call = tokio::spawn(async move { $model::bulk_create_new(&mut writer, &more).await });
        let blocked = wait_until_blocked(&admin, pid).await;
        assert!(on_conflict_form(&blocked), "ON CONFLICT form: {blocked}");
        other.batch_execute("COMMIT").await.unwrap();
        let outcome = call.await.unwrap().unwrap();
        assert_eq!(outcome, expected($len + $len.div_ceil(10), $len, 1));
        assert_eq!(count(&admin, $table).await, 2 * $len as i64);
        assert_eq!(payload(&admin, $table, 11).await, "other writer");
        db.drop().await;
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_stored_meanwhile_makes_a_short_batch_fall_back() {
    falls_back!(SmallItem, "small_item", 1_000_usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_stored_meanwhile_makes_a_copy_batch_fall_back() {
    falls_back!(CopyItem, "copy_item", COPY_BATCH);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_inside_a_callers_transaction_keeps_it_usable() {
    let Scene { db, admin, mut writer, pid, other } =
        scene("fallback_nested", &NestedItem::model().migration_sql()).await;
    let rows = NestedItem::batch(COPY_BATCH, "caller");
    hold_key(&other, "nested_item", 10).await;
    let call = tokio::spawn(async move {
        let mut tx = writer.transaction().await.unwrap();
        tx.batch_execute("INSERT INTO nested_item (k, payload) VALUES (-1, 'caller before')").await.unwrap();
        let outcome = NestedItem::bulk_create_new(&mut tx, &rows).await.expect("falls back");
        // The fallback emptied the session's scratch table (ON COMMIT
        // DELETE ROWS acts only at the caller's commit).
        let scratch: String = tx
            .query_one("SELECT relname::text FROM pg_class WHERE relnamespace = pg_my_temp_schema() AND relname LIKE '\\_\\_bulk\\_%'", &[])
            .await
            .unwrap()
            .get(0);
        let left: i64 = tx.query_one(&format!("SELECT count(*) FROM pg_temp.{scratch}"), &[]).await.unwrap().get(0);
        assert_eq!(left, 0, "scratch rows left in the caller's transaction");
        // The caller's transaction goes on: its own statement, another call
        // (half of its keys are new, the others stored by the first call), a commit.
        tx.batch_execute("INSERT INTO nested_item (k, payload) VALUES (-3, 'caller after')").await.unwrap();
        let more: Vec<NestedItem> =
            (0..COPY_BATCH as i64).map(|i| NestedItem { k: i, payload: "second call".into() }).collect();
        let second = NestedItem::bulk_create_new(&mut tx, &more).await.unwrap();
        assert_eq!(second, expected(COPY_BATCH, COPY_BATCH, COPY_BATCH / 2), "odd keys are new");
        tx.commit().await.unwrap();
        outcome
    });
    let blocked = wait_until_blocked(&admin, pid).await;
    assert!(!blocked.contains("ON CONFLICT"), "plain form first: {blocked}");
    other.batch_execute("COMMIT").await.unwrap();
    let outcome = call.await.unwrap();
    assert_eq!(outcome, expected(COPY_BATCH + COPY_BATCH.div_ceil(10), COPY_BATCH, 1));
    assert_eq!(count(&admin, "nested_item").await, COPY_BATCH as i64 + COPY_BATCH as i64 / 2 + 2);
    assert_eq!(payload(&admin, "nested_item", -1).await, "caller before");
    assert_eq!(payload(&admin, "nested_item", -3).await, "caller after");
    assert_eq!(payload(&admin, "nested_item", 10).await, "other writer");
    db.drop().await;
}

model!(DistinctItem, "distinct_item");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_batch_without_repeated_keys_is_inserted_without_distinct_on() {
    let Scene { db, admin, mut writer, pid, other } =
        scene("fallback_distinct", &DistinctItem::model().migration_sql()).await;
    // Distinct keys only (the batch without its repeats).
    let rows: Vec<DistinctItem> = DistinctItem::batch(COPY_BATCH, "first call").into_iter().take(COPY_BATCH).collect();
    hold_key(&other, "distinct_item", 10).await;
    let call = tokio::spawn(async move { DistinctItem::bulk_create_new(&mut writer, &rows).await });
    let blocked = wait_until_blocked(&admin, pid).await;
    assert!(!blocked.contains("DISTINCT") && !blocked.contains("ON CONFLICT"), "{blocked}");
    assert!(blocked.contains("NOT EXISTS"), "{blocked}");
    other.batch_execute("COMMIT").await.unwrap();
    let outcome = call.await.unwrap().unwrap();
    assert_eq!(outcome, expected(COPY_BATCH, COPY_BATCH, 1));
    assert_eq!(count(&admin, "distinct_item").await, COPY_BATCH as i64);
    db.drop().await;
}

/// Models with a key column under a case-insensitive collation, one per
/// path (the first conflict would send the other path to ON CONFLICT).
macro_rules! ci_model {
    ($name:ident, $table:literal) => {
        #[derive(BulkCreateNew, Debug, Clone)]
        #[bulk(table = $table, unique(name), id = false)]
        struct $name {
            name: String,
            payload: String,
        }

        impl $name {
            fn rows(len: usize) -> Vec<$name> {
                let mut rows: Vec<$name> =
                    (0..len).map(|i| $name { name: format!("key{i}"), payload: format!("row {i}") }).collect();
                rows.push($name { name: "KEY5".into(), payload: "upper case".into() });
                rows
            }
        }
    };
}

ci_model!(CiShort, "ci_short");
ci_model!(CiLong, "ci_long");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_equal_only_under_the_columns_collation_are_stored_once() {
    // "key5" and "KEY5" differ byte for byte, so the client sees no repeated
    // key, but the unique index holds them equal: the plain insert is
    // refused, and the ON CONFLICT form stores one of them, with exact counts.
    // (Which one: the scratch rows compare under the database's default
    // collation, see the README's "Known limits".)
    let ddl = "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE TABLE ci_short (name text COLLATE ci NOT NULL, payload text NOT NULL);
         CREATE UNIQUE INDEX ci_short_name ON ci_short (name);
         CREATE TABLE ci_long (name text COLLATE ci NOT NULL, payload text NOT NULL);
         CREATE UNIQUE INDEX ci_long_name ON ci_long (name);";
    let Scene { db, admin, mut writer, .. } = scene("fallback_collation", ddl).await;
    let check = |outcome: Report, len: usize| {
        assert_eq!(
            outcome,
            Report { offered: len as u64 + 1, inserted: len as u64, skipped: 1, ..Report::default() },
            "{len} rows"
        );
    };
    check(CiShort::bulk_create_new(&mut writer, &CiShort::rows(1_000)).await.unwrap(), 1_000);
    check(CiLong::bulk_create_new(&mut writer, &CiLong::rows(COPY_BATCH)).await.unwrap(), COPY_BATCH);
    for (table, len) in [("ci_short", 1_000), ("ci_long", COPY_BATCH)] {
        assert_eq!(count(&admin, table).await, len as i64);
        let sql = format!("SELECT count(*) FROM {table} WHERE name = 'key5'");
        let stored: i64 = admin.query_one(&sql, &[]).await.unwrap().get(0);
        assert_eq!(stored, 1, "{table}");
    }
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shortest_batches_go_straight_to_on_conflict() {
    let Scene { db, admin, mut writer, pid, other } = scene("fallback_tiny", &TinyItem::model().migration_sql()).await;
    // Fewer rows than PLAIN_FROM, repeats included.
    let len = (PLAIN_FROM - 1) * 10 / 11;
    let rows = TinyItem::batch(len, "tiny");
    assert!(rows.len() < PLAIN_FROM, "{}", rows.len());
    hold_key(&other, "tiny_item", 10).await;
    let call = tokio::spawn(async move { TinyItem::bulk_create_new(&mut writer, &rows).await });
    let blocked = wait_until_blocked(&admin, pid).await;
    assert!(on_conflict_form(&blocked), "{blocked}");
    other.batch_execute("COMMIT").await.unwrap();
    let outcome = call.await.unwrap().unwrap();
    assert_eq!(outcome, expected(len + len.div_ceil(10), len, 1));
    assert_eq!(count(&admin, "tiny_item").await, len as i64);
    db.drop().await;
}

model!(LedgerShort, "ledger_short");
model!(LedgerLong, "ledger_long");

/// A call with a batch id meets a key stored meanwhile: the fallback runs in
/// the same transaction as the ledger's claim, which records the counts
/// once; the same batch id then replays them.
macro_rules! ledger_falls_back {
    ($model:ident, $table:literal, $len:expr) => {{
        let ddl = format!("{}{}", $model::model().migration_sql(), Ledger::of::<$model>().migration_sql());
        let Scene { db, admin, mut writer, pid, other } = scene(concat!("fallback_", $table), &ddl).await;
        let rows = $model::batch($len, "first call");
        hold_key(&other, $table, 10).await;
        let held = rows.clone();
        let call = tokio::spawn(async move {
            let report = $model::bulk(&mut writer).batch_id("b1").run(&held).await;
            (writer, report)
        });
        let blocked = wait_until_blocked(&admin, pid).await;
        assert!(!blocked.contains("ON CONFLICT"), "plain form first: {blocked}");
        other.batch_execute("COMMIT").await.unwrap();
        let (mut writer, report) = call.await.unwrap();
        let report = report.expect("falls back");
        let counts = expected($len + $len.div_ceil(10), $len, 1);
        assert_eq!(
            (report.offered, report.inserted, report.skipped),
            (counts.offered, counts.inserted, counts.skipped)
        );
        assert!(!report.replayed);
        let recorded: i64 = admin
            .query_one(
                "SELECT count(*) FROM bulk_batches WHERE batch_id = 'b1' AND inserted = $1",
                &[&(counts.inserted as i64)],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(recorded, 1, "the counts are recorded once");
        let again = $model::bulk(&mut writer).batch_id("b1").run(&rows).await.unwrap();
        assert!(again.replayed);
        assert_eq!((again.inserted, again.skipped), (counts.inserted, counts.skipped));
        assert_eq!(count(&admin, $table).await, $len as i64);
        db.drop().await;
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_batch_with_a_batch_id_falls_back_and_records_once() {
    ledger_falls_back!(LedgerShort, "ledger_short", 1_000_usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_batch_with_a_batch_id_falls_back_and_records_once() {
    ledger_falls_back!(LedgerLong, "ledger_long", COPY_BATCH);
}

/// Whether `query`, a statement as `pg_stat_activity` shows it (cut at
/// `track_activity_query_size`, 1,024 bytes by default), is an `ON CONFLICT`
/// form: it says so, or it was cut before its end and its select list does
/// not hold the plain form's guard (which comes first there).
fn on_conflict_form(query: &str) -> bool {
    query.contains("ON CONFLICT")
        || (query.len() >= 1000 && !query.contains("1 / (SELECT count(*)::int4 FROM pg_catalog.pg_index"))
}
