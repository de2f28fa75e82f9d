//! A new connection's first call relies on the process's last passed schema
//! check of the model, verified by a guard inside the insert instead of the
//! check's catalog queries (see `bulk_runtime`'s `trust` module). These
//! tests change the table between connections of one process and check that
//! the call never stores a duplicate key, and still explains a table that
//! no longer fits the model.
//!
//! Each test has models of its own: the trusted check is kept per model.

use bulk_runtime::{BulkCreateNew, Error, SchemaProblem};
use bulk_tests::TestDb;
use bulk_tests::recorder::SqlRecorder;
use tokio_postgres::Client;

macro_rules! model {
    ($name:ident, $table:literal) => {
        #[derive(BulkCreateNew, Debug, Clone)]
        #[bulk(table = $table, unique(k), id = false)]
        struct $name {
            k: i64,
            payload: String,
        }

        impl $name {
            /// Keys `from..from + len`.
            fn batch(from: i64, len: usize) -> Vec<$name> {
                (from..from + len as i64).map(|k| $name { k, payload: format!("row {k}") }).collect()
            }
        }
    };
}

model!(Skipped, "cache_skipped");
model!(Replaced, "cache_replaced");
model!(Dropped, "cache_dropped");
model!(Retyped, "cache_retyped");
model!(Required, "cache_required");
model!(Elsewhere, "cache_elsewhere");
model!(Recreated, "cache_recreated");
model!(Repeatable, "cache_repeatable");

/// The schema check's catalog query: present in a call's statements when
/// the call checked the table.
const CHECK_QUERY: &str = "has_database_privilege";

/// The marker of the trusted insert's guard.
const GUARD: &str = "pg_typeof";

/// Rows of `table` with key `k`.
async fn copies(client: &Client, table: &str, k: i64) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM {table} WHERE k = $1"), &[&k]).await.unwrap().get(0)
}

/// Statements recorded after the first `skip`.
fn since(recorder: &SqlRecorder, skip: usize) -> Vec<String> {
    recorder.statements().into_iter().skip(skip).collect()
}

/// Drops the unique index of `table`.
async fn drop_unique_index(admin: &Client, table: &str) {
    let index: String = admin
        .query_one(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = $1::text::regclass AND indisunique",
            &[&table],
        )
        .await
        .unwrap()
        .get(0);
    admin.batch_execute(&format!("DROP INDEX {index}")).await.unwrap();
}

fn assert_problem(err: &Error, wanted: impl Fn(&SchemaProblem) -> bool) {
    match err {
        Error::SchemaMismatch { problems, .. } => assert!(problems.iter().any(wanted), "{err}"),
        other => panic!("expected the schema check's explanation, got {other}"),
    }
}

/// A second connection's first call sends the guarded insert without the
/// check's queries; its second call prepares the plain statement, and the
/// third runs it.
#[tokio::test]
async fn a_new_connection_writes_without_checking_again() {
    let db = TestDb::new("cache_skipped").await;
    let recorder = SqlRecorder::start().await;
    let admin = db.connect().await;
    admin.batch_execute(&Skipped::model().migration_sql()).await.unwrap();
    let mut first = recorder.connect(&db.schema).await;
    assert_eq!(Skipped::bulk_create_new(&mut first, &Skipped::batch(0, 10)).await.unwrap().inserted, 10);
    assert!(recorder.statements().iter().any(|s| s.contains(CHECK_QUERY)), "the first connection checks");
    drop(first);

    let before = recorder.statements().len();
    let mut second = recorder.connect(&db.schema).await;
    let report = Skipped::bulk_create_new(&mut second, &Skipped::batch(5, 10)).await.unwrap();
    assert_eq!((report.inserted, report.skipped), (5, 5));
    let sent = since(&recorder, before);
    assert!(!sent.iter().any(|s| s.contains(CHECK_QUERY)), "no check on the second connection: {sent:#?}");
    // The SET, and the guarded insert alone: the first call does not prepare.
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert!(sent[1].contains(GUARD), "{sent:#?}");

    // The second call prepares the plain statement with its guarded insert;
    // the third runs the prepared statement.
    let before = recorder.statements().len();
    let report = Skipped::bulk_create_new(&mut second, &Skipped::batch(10, 10)).await.unwrap();
    assert_eq!((report.inserted, report.skipped), (5, 5));
    let sent = since(&recorder, before);
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert!(sent[0].contains(GUARD) && !sent[1].contains(GUARD), "{sent:#?}");
    let before = recorder.statements().len();
    let report = Skipped::bulk_create_new(&mut second, &Skipped::batch(15, 10)).await.unwrap();
    assert_eq!((report.inserted, report.skipped), (5, 5));
    assert!(since(&recorder, before).is_empty(), "the prepared statement runs");
    assert_eq!(copies(&admin, "cache_skipped", 12).await, 1);
    db.drop().await;
}

/// The unique index replaced by another on the same key between
/// connections: each key stored once, and the plain form checks again.
#[tokio::test]
async fn a_replaced_index_is_checked_again() {
    let db = TestDb::new("cache_replaced").await;
    let recorder = SqlRecorder::start().await;
    let admin = db.connect().await;
    admin.batch_execute(&Replaced::model().migration_sql()).await.unwrap();
    let mut first = db.connect().await;
    Replaced::bulk_create_new(&mut first, &Replaced::batch(0, 200)).await.unwrap();
    drop_unique_index(&admin, "cache_replaced").await;
    admin.batch_execute("CREATE UNIQUE INDEX cache_replaced_k2 ON cache_replaced (k)").await.unwrap();
    for len in [10, 300] {
        let before = recorder.statements().len();
        let mut next = recorder.connect(&db.schema).await;
        let report = Replaced::bulk_create_new(&mut next, &Replaced::batch(100, len)).await.unwrap();
        assert_eq!(report.inserted, (100 + len as u64).saturating_sub(200), "{len} rows");
        let sent = since(&recorder, before);
        // The plain form (300 rows) relies on the checked index: its guard
        // refuses, and the call checks again. The `ON CONFLICT` form (10
        // rows) of a bigint key takes any arbiter PostgreSQL accepts.
        let checked = sent.iter().any(|s| s.contains(CHECK_QUERY));
        assert_eq!(checked, len == 300, "{len} rows: {sent:#?}");
    }
    assert_eq!(copies(&admin, "cache_replaced", 150).await, 1);
    db.drop().await;
}

/// The unique index dropped between connections, a stored key offered
/// again: nothing is stored twice, and the call explains why it refuses.
#[tokio::test]
async fn a_dropped_index_is_never_trusted() {
    let db = TestDb::new("cache_dropped").await;
    let admin = db.connect().await;
    admin.batch_execute(&Dropped::model().migration_sql()).await.unwrap();
    let mut first = db.connect().await;
    Dropped::bulk_create_new(&mut first, &Dropped::batch(0, 10)).await.unwrap();
    drop_unique_index(&admin, "cache_dropped").await;
    for len in [10, 300] {
        let mut next = db.connect().await;
        let err = Dropped::bulk_create_new(&mut next, &Dropped::batch(0, len)).await.unwrap_err();
        assert_problem(&err, |p| matches!(p, SchemaProblem::UniqueKeyMissing { .. }));
    }
    assert_eq!(copies(&admin, "cache_dropped", 3).await, 1);
    db.drop().await;
}

/// A column's type changed between connections: the schema check's
/// explanation, nothing written.
#[tokio::test]
async fn a_changed_column_type_is_explained() {
    let db = TestDb::new("cache_retyped").await;
    let admin = db.connect().await;
    admin.batch_execute(&Retyped::model().migration_sql()).await.unwrap();
    let mut first = db.connect().await;
    Retyped::bulk_create_new(&mut first, &Retyped::batch(0, 10)).await.unwrap();
    admin.batch_execute("ALTER TABLE cache_retyped ALTER COLUMN payload TYPE bigint USING 0").await.unwrap();
    let mut next = db.connect().await;
    let err = Retyped::bulk_create_new(&mut next, &Retyped::batch(10, 10)).await.unwrap_err();
    assert_problem(&err, |p| matches!(p, SchemaProblem::ColumnType { column, .. } if column == "payload"));
    assert_eq!(bulk_tests::count(&admin, "cache_retyped").await, 10);
    db.drop().await;
}

/// A required column the model lacks, added between connections.
#[tokio::test]
async fn a_new_required_column_is_explained() {
    let db = TestDb::new("cache_required").await;
    let admin = db.connect().await;
    admin.batch_execute(&Required::model().migration_sql()).await.unwrap();
    let mut first = db.connect().await;
    Required::bulk_create_new(&mut first, &Required::batch(0, 10)).await.unwrap();
    admin
        .batch_execute("TRUNCATE cache_required; ALTER TABLE cache_required ADD COLUMN extra int NOT NULL")
        .await
        .unwrap();
    let mut next = db.connect().await;
    let err = Required::bulk_create_new(&mut next, &Required::batch(10, 10)).await.unwrap_err();
    assert_problem(&err, |p| matches!(p, SchemaProblem::RequiredColumnNotInModel { column } if column == "extra"));
    db.drop().await;
}

/// A connection whose `search_path` leads to another table of the same
/// name: the call writes to that table, each key once in each table.
#[tokio::test]
async fn another_table_of_the_same_name_is_checked() {
    let one = TestDb::new("cache_elsewhere_one").await;
    let two = TestDb::new("cache_elsewhere_two").await;
    for db in [&one, &two] {
        db.connect().await.batch_execute(&Elsewhere::model().migration_sql()).await.unwrap();
    }
    for round in 0..2 {
        for db in [&one, &two] {
            let mut client = db.connect().await;
            let report = Elsewhere::bulk_create_new(&mut client, &Elsewhere::batch(0, 10)).await.unwrap();
            assert_eq!(report.inserted, if round == 0 { 10 } else { 0 }, "round {round}");
            assert_eq!(copies(&client, "cache_elsewhere", 5).await, 1);
        }
    }
    one.drop().await;
    two.drop().await;
}

/// The table dropped and made again between connections (a new OID).
#[tokio::test]
async fn a_recreated_table_is_checked_again() {
    let db = TestDb::new("cache_recreated").await;
    let admin = db.connect().await;
    admin.batch_execute(&Recreated::model().migration_sql()).await.unwrap();
    let mut first = db.connect().await;
    Recreated::bulk_create_new(&mut first, &Recreated::batch(0, 10)).await.unwrap();
    admin.batch_execute("DROP TABLE cache_recreated").await.unwrap();
    admin.batch_execute(&Recreated::model().migration_sql()).await.unwrap();
    admin.batch_execute("INSERT INTO cache_recreated VALUES (3, 'stored')").await.unwrap();
    for len in [10, 300] {
        let mut next = db.connect().await;
        let report = Recreated::bulk_create_new(&mut next, &Recreated::batch(0, len)).await.unwrap();
        assert_eq!(report.inserted, if len == 10 { 9 } else { 290 });
    }
    assert_eq!(copies(&admin, "cache_recreated", 3).await, 1);
    db.drop().await;
}

/// A session under `REPEATABLE READ`: the plain form's guard refuses as it
/// does without a trusted check, and the `ON CONFLICT` form inserts.
#[tokio::test]
async fn repeatable_read_sessions_take_the_on_conflict_form() {
    let db = TestDb::new("cache_repeatable").await;
    let admin = db.connect().await;
    admin.batch_execute(&Repeatable::model().migration_sql()).await.unwrap();
    let mut first = db.connect().await;
    Repeatable::bulk_create_new(&mut first, &Repeatable::batch(0, 200)).await.unwrap();
    let mut next = db.connect().await;
    next.batch_execute("SET default_transaction_isolation = 'repeatable read'").await.unwrap();
    let report = Repeatable::bulk_create_new(&mut next, &Repeatable::batch(100, 300)).await.unwrap();
    assert_eq!(report.inserted, 200);
    assert_eq!(copies(&admin, "cache_repeatable", 150).await, 1);
    db.drop().await;
}
