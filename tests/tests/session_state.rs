//! Session state, and changes to the table between calls on one connection
//! (after the connection's first call checked the table and prepared its
//! statements):
//!
//! - rows a `BEFORE INSERT` trigger drops (returns `NULL` for) are counted
//!   as skipped, by the plain call, `returning_keys` and
//!   `returning_skipped`, also when the trigger comes after the first call
//!   and when it drops every row of a new connection's first call;
//! - `SET ROLE` and `SET LOCAL ROLE` to a role without `INSERT`: the call
//!   fails with the server's refusal and the caller's transaction goes on;
//! - `default_transaction_read_only`: refused, nothing written, the
//!   connection serves the next call;
//! - `default_transaction_isolation = serializable`: exact counts;
//! - `DEALLOCATE ALL` in a caller's transaction (the prepared statements
//!   gone);
//! - a `NOT NULL` column the model does not write, added while the
//!   connection is checked: the call inside a caller's transaction fails and
//!   leaves the transaction usable;
//! - a failed call's explanation (what it asks the server after the error)
//!   must not abort the caller's transaction: a role without `USAGE` on the
//!   model's schema;
//! - `returning_keys` after the `id` column became a `uuid` or `text`
//!   column, or after a `search_path` switch to a tenant whose `id` is a
//!   `uuid`: the ids are `None`;
//! - a `text` key narrowed to `varchar(5)` (the table drops trailing spaces,
//!   so two offered keys become one: the first offered row is kept), or
//!   altered to `name` (cuts at 63 bytes): refused by the schema check, on
//!   the checked connection as on a fresh one, nothing written;
//! - row-level security enabled between calls: rows the role may not see
//!   still count as stored keys (skipped, not overwritten).
//!
//! Most tests run once per path: a short batch, a batch of 300 rows, and one
//! of [`COPY_BATCH`] rows (binary COPY through the scratch table). Each test
//! has models of its own: the choice of the insert's form is kept per model
//! for the whole process.
//!
//! A test that creates a role (roles belong to the whole server) runs on a
//! task of its own and drops the role also when it fails: see [`with_role`].

use std::future::Future;
use std::time::Duration;

use bulk_runtime::{BulkCreateNew, Error, SchemaProblem};
use bulk_tests::{COPY_BATCH, TestDb, count};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

macro_rules! model {
    ($name:ident, $table:literal) => {
        #[derive(BulkCreateNew, Debug, Clone)]
        #[bulk(table = $table, unique(k))]
        struct $name {
            k: i64,
            payload: String,
        }

        impl $name {
            /// Keys `from..from + len`; every third row's payload starts with "drop".
            fn batch(from: i64, len: usize) -> Vec<$name> {
                (0..len as i64)
                    .map(|i| $name {
                        k: from + i,
                        payload: if i % 3 == 0 { format!("drop {i}") } else { format!("row {i}") },
                    })
                    .collect()
            }
        }
    };
}

/// A model keyed by a text column, without a surrogate id.
macro_rules! text_model {
    ($name:ident, $table:literal) => {
        #[derive(BulkCreateNew, Debug, Clone)]
        #[bulk(table = $table, unique(email), id = false)]
        struct $name {
            email: String,
            name: String,
        }
    };
}

fn panic_err(e: Error) -> ! {
    panic!("{e} ({:?}) {e:?}", e.sqlstate())
}

/// A trigger function that drops every row whose payload starts with "drop".
const SUPPRESS: &str = "CREATE FUNCTION suppress() RETURNS trigger LANGUAGE plpgsql AS \
     $$ BEGIN IF NEW.payload LIKE 'drop%' THEN RETURN NULL; END IF; RETURN NEW; END $$";

/// A role of this test, with `USAGE` on the test's schema and `grants` on
/// its tables (which must exist).
async fn make_role(admin: &Client, db: &TestDb, suffix: &str, grants: &str) -> String {
    let role = format!("{}_{suffix}", db.schema);
    let r = bulk_runtime::quote_ident(&role);
    let s = bulk_runtime::quote_ident(&db.schema);
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {r}; CREATE ROLE {r}; GRANT USAGE ON SCHEMA {s} TO {r}; \
             GRANT {grants} ON ALL TABLES IN SCHEMA {s} TO {r}"
        ))
        .await
        .unwrap();
    role
}

/// Drops a role of this test with what it owns and was granted. A session
/// of the role that just ended may still hold its temporary tables for a
/// moment: a refusal is tried again for a while.
async fn drop_role(admin: &Client, db: &TestDb, role: &str) -> Result<(), tokio_postgres::Error> {
    let r = bulk_runtime::quote_ident(role);
    let s = bulk_runtime::quote_ident(&db.schema);
    let sql = format!(
        "REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {r}; REVOKE ALL ON SCHEMA {s} FROM {r}; \
         DROP OWNED BY {r}; DROP ROLE {r}"
    );
    let mut attempts = 0;
    loop {
        match admin.batch_execute(&sql).await {
            Ok(()) => return Ok(()),
            Err(_) if attempts < 100 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs `test`, which uses `role`, on a task of its own; then drops the role
/// and the test's schema, also when `test` failed, and fails as it did (or
/// when the role could not be dropped).
async fn with_role(admin: &Client, db: TestDb, role: &str, test: impl Future<Output = ()> + Send + 'static) {
    let outcome = tokio::spawn(test).await;
    let dropped = drop_role(admin, &db, role).await;
    db.drop().await;
    if let Err(p) = outcome {
        std::panic::resume_unwind(p.into_panic());
    }
    if let Err(e) = dropped {
        panic!("drop role {role}: {e:?}");
    }
}

// ---------------------------------------------------------------- rows a BEFORE INSERT trigger drops

model!(SupShort, "sup_short");
model!(SupPlain, "sup_plain");
model!(SupCopy, "sup_copy");
model!(SupKeysShort, "sup_keys_short");
model!(SupKeysCopy, "sup_keys_copy");
model!(SupSkipShort, "sup_skip_short");
model!(SupSkipCopy, "sup_skip_copy");

/// A trigger added after the connection's first calls drops every third
/// row: the plain call counts them as skipped, on the checked connection
/// and on a new one.
macro_rules! suppressed_plain {
    ($test:ident, $model:ident, $table:literal, $len:expr) => {
        #[tokio::test]
        async fn $test() {
            let db = TestDb::new(stringify!($test)).await;
            let admin = db.connect().await;
            admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
            let mut client = db.connect().await;
            // Warm: checked and prepared.
            $model::bulk_create_new(&mut client, &$model::batch(1_000_000, $len)).await.unwrap();
            $model::bulk_create_new(&mut client, &$model::batch(2_000_000, $len)).await.unwrap();
            admin
                .batch_execute(&format!(
                    "{SUPPRESS}; CREATE TRIGGER s BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION suppress()",
                    t = $table
                ))
                .await
                .unwrap();
            let before = count(&admin, $table).await;
            let rows = $model::batch(0, $len);
            let drops = rows.iter().filter(|r| r.payload.starts_with("drop")).count() as u64;
            assert!(drops > 0);
            let o = $model::bulk_create_new(&mut client, &rows).await.unwrap_or_else(|e| panic_err(e));
            let stored = count(&admin, $table).await - before;
            assert_eq!(stored as u64, $len as u64 - drops);
            assert_eq!((o.offered, o.inserted, o.skipped), ($len as u64, $len as u64 - drops, drops));
            // A new connection's first call (this process checked the model).
            let mut fresh = db.connect().await;
            let rows = $model::batch(5_000_000, $len);
            let o = $model::bulk_create_new(&mut fresh, &rows).await.unwrap_or_else(|e| panic_err(e));
            assert_eq!((o.offered, o.inserted, o.skipped), ($len as u64, $len as u64 - drops, drops));
            assert_eq!(count(&admin, $table).await - before, 2 * ($len as i64 - drops as i64));
            db.drop().await;
        }
    };
}

suppressed_plain!(suppressed_rows_short, SupShort, "sup_short", 10);
suppressed_plain!(suppressed_rows_plain_form, SupPlain, "sup_plain", 300);
suppressed_plain!(suppressed_rows_copy, SupCopy, "sup_copy", COPY_BATCH);

/// The same for `returning_keys` (the dropped rows are not returned) and
/// `returning_skipped` (they are).
macro_rules! suppressed_variant {
    ($test:ident, $model:ident, $table:literal, $len:expr, $keys:expr) => {
        #[tokio::test]
        async fn $test() {
            let db = TestDb::new(stringify!($test)).await;
            let admin = db.connect().await;
            admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
            let mut client = db.connect().await;
            let warm = $model::batch(1_000_000, $len);
            if $keys {
                $model::bulk(&mut client).returning_keys().run(&warm).await.unwrap();
            } else {
                $model::bulk(&mut client).returning_skipped().run(&warm).await.unwrap();
            }
            admin
                .batch_execute(&format!(
                    "{SUPPRESS}; CREATE TRIGGER s BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION suppress()",
                    t = $table
                ))
                .await
                .unwrap();
            let rows = $model::batch(0, $len);
            let dropped: Vec<usize> =
                rows.iter().enumerate().filter(|(_, r)| r.payload.starts_with("drop")).map(|(i, _)| i).collect();
            let kept: Vec<usize> =
                rows.iter().enumerate().filter(|(_, r)| !r.payload.starts_with("drop")).map(|(i, _)| i).collect();
            if $keys {
                let r = $model::bulk(&mut client).returning_keys().run(&rows).await.unwrap_or_else(|e| panic_err(e));
                assert_eq!((r.inserted, r.skipped), (kept.len() as u64, dropped.len() as u64));
                let mut got: Vec<usize> = r.returned.iter().map(|n| n.index).collect();
                got.sort();
                assert_eq!(got, kept);
            } else {
                let r = $model::bulk(&mut client).returning_skipped().run(&rows).await.unwrap_or_else(|e| panic_err(e));
                assert_eq!((r.inserted, r.skipped), (kept.len() as u64, dropped.len() as u64));
                let mut got = r.returned.clone();
                got.sort();
                assert_eq!(got, dropped);
            }
            assert_eq!(count(&admin, $table).await, ($len + kept.len()) as i64);
            db.drop().await;
        }
    };
}

suppressed_variant!(suppressed_rows_returning_keys_short, SupKeysShort, "sup_keys_short", 300, true);
suppressed_variant!(suppressed_rows_returning_keys_copy, SupKeysCopy, "sup_keys_copy", COPY_BATCH, true);
suppressed_variant!(suppressed_rows_returning_skipped_short, SupSkipShort, "sup_skip_short", 300, false);
suppressed_variant!(suppressed_rows_returning_skipped_copy, SupSkipCopy, "sup_skip_copy", COPY_BATCH, false);

model!(AllSup, "all_sup");

/// A trigger that drops every row: a new connection's first call of 1, 10
/// and 200 rows stores none and counts them all as skipped.
#[tokio::test]
async fn every_row_suppressed_on_a_first_call() {
    let db = TestDb::new("all_sup").await;
    let admin = db.connect().await;
    admin.batch_execute(&AllSup::model().migration_sql()).await.unwrap();
    let mut client = db.connect().await;
    AllSup::bulk_create_new(&mut client, &AllSup::batch(1_000_000, 10)).await.unwrap();
    admin
        .batch_execute(&format!(
            "{SUPPRESS}; CREATE TRIGGER s BEFORE INSERT ON all_sup FOR EACH ROW EXECUTE FUNCTION suppress()"
        ))
        .await
        .unwrap();
    for len in [1usize, 10, 200] {
        let rows: Vec<AllSup> =
            (0..len as i64).map(|k| AllSup { k: 10_000 * len as i64 + k, payload: "drop".into() }).collect();
        let mut fresh = db.connect().await;
        let o = AllSup::bulk_create_new(&mut fresh, &rows).await.unwrap_or_else(|e| panic_err(e));
        assert_eq!((o.inserted, o.skipped), (0, len as u64));
    }
    assert_eq!(count(&admin, "all_sup").await, 10);
    db.drop().await;
}

// ---------------------------------------------------------------- SET ROLE / SET LOCAL ROLE without INSERT

model!(NoInsShort, "noins_short");
model!(NoInsCopy, "noins_copy");

/// A role that may read but not insert: `SET LOCAL ROLE` in a caller's
/// transaction, then `SET ROLE` for the session. Each call fails with the
/// server's refusal; the caller's transaction goes on (its role and its
/// rows as they were), and after `RESET ROLE` the connection writes.
macro_rules! role_without_insert {
    ($test:ident, $model:ident, $table:literal, $len:expr) => {
        #[tokio::test]
        async fn $test() {
            let db = TestDb::new(stringify!($test)).await;
            let admin = db.connect().await;
            admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
            let mut client = db.connect().await;
            let role = make_role(&admin, &db, "ro", "SELECT").await;
            let test = {
                let role = role.clone();
                async move {
                    let r = bulk_runtime::quote_ident(&role);
                    $model::bulk_create_new(&mut client, &$model::batch(1_000_000, $len)).await.unwrap();
                    let mut tx = client.transaction().await.unwrap();
                    tx.batch_execute("CREATE TEMP TABLE mine (x int); INSERT INTO mine VALUES (1)").await.unwrap();
                    tx.batch_execute(&format!("SET LOCAL ROLE {r}")).await.unwrap();
                    let e = $model::bulk_create_new(&mut tx, &$model::batch(0, $len)).await.unwrap_err();
                    assert_eq!(e.sqlstate(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
                    assert!(e.connection_usable(), "{e}");
                    let n: i64 = tx.query_one("SELECT 1::int8", &[]).await.unwrap().get(0);
                    assert_eq!(n, 1);
                    let who: String = tx.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
                    assert_eq!(who, role);
                    tx.batch_execute("RESET ROLE").await.unwrap();
                    let mine: i64 = tx.query_one("SELECT count(*) FROM mine", &[]).await.unwrap().get(0);
                    assert_eq!(mine, 1);
                    tx.rollback().await.unwrap();
                    // A session-level SET ROLE, outside a transaction.
                    client.batch_execute(&format!("SET ROLE {r}")).await.unwrap();
                    let e = $model::bulk_create_new(&mut client, &$model::batch(0, $len)).await.unwrap_err();
                    assert_eq!(e.sqlstate(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
                    client.batch_execute("RESET ROLE").await.unwrap();
                    assert_eq!(count(&client, $table).await, $len as i64);
                    let o = $model::bulk_create_new(&mut client, &$model::batch(0, $len))
                        .await
                        .unwrap_or_else(|e| panic_err(e));
                    assert_eq!(o.inserted, $len as u64);
                }
            };
            with_role(&admin, db, &role, test).await;
        }
    };
}

role_without_insert!(set_role_without_insert_short, NoInsShort, "noins_short", 10);
role_without_insert!(set_role_without_insert_copy, NoInsCopy, "noins_copy", COPY_BATCH);

// ---------------------------------------------------------------- default_transaction_read_only

model!(RoShort, "ro_short");
model!(RoCopy, "ro_copy");

macro_rules! read_only {
    ($test:ident, $model:ident, $table:literal, $len:expr) => {
        #[tokio::test]
        async fn $test() {
            let db = TestDb::new(stringify!($test)).await;
            let admin = db.connect().await;
            admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
            let mut client = db.connect().await;
            $model::bulk_create_new(&mut client, &$model::batch(1_000_000, $len)).await.unwrap();
            client.batch_execute("SET default_transaction_read_only = on").await.unwrap();
            let e = $model::bulk_create_new(&mut client, &$model::batch(0, $len)).await.unwrap_err();
            assert_eq!(e.sqlstate(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{e}");
            assert!(!e.is_retryable(), "{e}");
            assert!(e.connection_usable(), "{e}");
            assert_eq!(count(&admin, $table).await, $len as i64);
            client.batch_execute("SET default_transaction_read_only = off").await.unwrap();
            let o =
                $model::bulk_create_new(&mut client, &$model::batch(0, $len)).await.unwrap_or_else(|e| panic_err(e));
            assert_eq!(o.inserted, $len as u64);
            db.drop().await;
        }
    };
}

read_only!(read_only_session_short, RoShort, "ro_short", 10);
read_only!(read_only_session_copy, RoCopy, "ro_copy", COPY_BATCH);

// ---------------------------------------------------------------- default_transaction_isolation = serializable

model!(SerShort, "ser_short");
model!(SerPlain, "ser_plain");
model!(SerCopy, "ser_copy");

macro_rules! serializable_session {
    ($test:ident, $model:ident, $table:literal, $len:expr) => {
        #[tokio::test]
        async fn $test() {
            let db = TestDb::new(stringify!($test)).await;
            let admin = db.connect().await;
            admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
            let mut client = db.connect().await;
            $model::bulk_create_new(&mut client, &$model::batch(1_000_000, $len)).await.unwrap();
            client.batch_execute("SET default_transaction_isolation = 'serializable'").await.unwrap();
            let half = $model::batch(0, $len / 2);
            let o = $model::bulk_create_new(&mut client, &half).await.unwrap_or_else(|e| panic_err(e));
            assert_eq!(o.inserted, ($len / 2) as u64);
            let o =
                $model::bulk_create_new(&mut client, &$model::batch(0, $len)).await.unwrap_or_else(|e| panic_err(e));
            assert_eq!((o.inserted, o.skipped), (($len - $len / 2) as u64, ($len / 2) as u64));
            assert_eq!(count(&admin, $table).await, 2 * $len as i64);
            db.drop().await;
        }
    };
}

serializable_session!(serializable_session_short, SerShort, "ser_short", 10);
serializable_session!(serializable_session_plain, SerPlain, "ser_plain", 300);
serializable_session!(serializable_session_copy, SerCopy, "ser_copy", COPY_BATCH);

// ---------------------------------------------------------------- DEALLOCATE ALL inside a caller's transaction

model!(DeallocTx, "dealloc_tx");

/// The connection's prepared statements deallocated inside a caller's
/// transaction: the calls there prepare them again and write.
#[tokio::test]
async fn deallocate_all_inside_a_callers_transaction() {
    let db = TestDb::new("dealloc_tx").await;
    let admin = db.connect().await;
    admin.batch_execute(&DeallocTx::model().migration_sql()).await.unwrap();
    let mut client = db.connect().await;
    DeallocTx::bulk_create_new(&mut client, &DeallocTx::batch(1_000_000, 300)).await.unwrap();
    DeallocTx::bulk_create_new(&mut client, &DeallocTx::batch(2_000_000, 300)).await.unwrap();
    DeallocTx::bulk_create_new(&mut client, &DeallocTx::batch(3_000_000, 10)).await.unwrap();
    let mut tx = client.transaction().await.unwrap();
    tx.batch_execute("DEALLOCATE ALL").await.unwrap();
    let o = DeallocTx::bulk_create_new(&mut tx, &DeallocTx::batch(0, 300)).await.unwrap_or_else(|e| panic_err(e));
    assert_eq!(o.inserted, 300);
    let o = DeallocTx::bulk_create_new(&mut tx, &DeallocTx::batch(300, 10)).await.unwrap_or_else(|e| panic_err(e));
    assert_eq!(o.inserted, 10);
    tx.commit().await.unwrap();
    assert_eq!(count(&admin, "dealloc_tx").await, 920);
    db.drop().await;
}

// ---------------------------------------------------------------- NOT NULL column added, inside a caller's transaction

model!(NnShort, "nn_short");
model!(NnCopy, "nn_copy");

/// A `NOT NULL` column without a default, which the model does not write,
/// added after the connection checked the table: the call in a caller's
/// transaction fails naming the column, writes nothing, and leaves the
/// transaction usable.
macro_rules! not_null_added {
    ($test:ident, $model:ident, $table:literal, $len:expr) => {
        #[tokio::test]
        async fn $test() {
            let db = TestDb::new(stringify!($test)).await;
            let admin = db.connect().await;
            admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
            let mut client = db.connect().await;
            $model::bulk_create_new(&mut client, &$model::batch(1_000_000, $len)).await.unwrap();
            admin
                .batch_execute(&format!(
                    "ALTER TABLE {t} ADD COLUMN extra int; UPDATE {t} SET extra = 1; \
                     ALTER TABLE {t} ALTER COLUMN extra SET NOT NULL",
                    t = $table
                ))
                .await
                .unwrap();
            let mut tx = client.transaction().await.unwrap();
            let e = $model::bulk_create_new(&mut tx, &$model::batch(0, $len)).await.unwrap_err();
            assert_eq!(e.sqlstate(), Some(&SqlState::NOT_NULL_VIOLATION), "{e}");
            assert!(matches!(&e, Error::Database { field: Some(f), .. } if f == "extra"), "{e}");
            assert!(e.connection_usable(), "{e}");
            let n: i64 = tx.query_one(&format!("SELECT count(*) FROM {}", $table), &[]).await.unwrap().get(0);
            assert_eq!(n, $len as i64);
            tx.commit().await.unwrap();
            db.drop().await;
        }
    };
}

not_null_added!(not_null_column_added_in_tx_short, NnShort, "nn_short", 10);
not_null_added!(not_null_column_added_in_tx_copy, NnCopy, "nn_copy", COPY_BATCH);

// ---------------------------------------------------------------- role without USAGE on the model's schema, in a caller's transaction

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(schema = "session_state_usage", table = "usage_item", unique(k))]
struct UsageShort {
    k: i64,
    payload: String,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(schema = "session_state_usage", table = "usage_item", unique(k))]
struct UsageCopy {
    k: i64,
    payload: String,
}

/// A caller's transaction switches (`SET LOCAL ROLE`) to a role that may
/// not use the model's schema; the call fails, and what it asks the server
/// to explain the failure must leave the caller's transaction as it was
/// (README, "What one call does").
#[tokio::test]
async fn a_role_without_schema_usage_leaves_the_callers_transaction_usable() {
    let db = TestDb::with_schema("session_state_usage".to_owned()).await;
    let admin = db.connect().await;
    admin.batch_execute(&UsageShort::model().migration_sql()).await.unwrap();
    let mut client = db.connect().await;
    let role = format!("{}_nousage", db.schema);
    let r = bulk_runtime::quote_ident(&role);
    admin.batch_execute(&format!("DROP ROLE IF EXISTS {r}; CREATE ROLE {r}")).await.unwrap();
    let test = {
        let role = role.clone();
        async move {
            for len in [10usize, COPY_BATCH] {
                let mut tx = client.transaction().await.unwrap();
                tx.batch_execute("CREATE TEMP TABLE mine (x int); INSERT INTO mine VALUES (1)").await.unwrap();
                tx.batch_execute(&format!("SET LOCAL ROLE {r}")).await.unwrap();
                let e = if len == 10 {
                    let rows: Vec<UsageShort> =
                        (0..len as i64).map(|k| UsageShort { k, payload: "x".into() }).collect();
                    UsageShort::bulk_create_new(&mut tx, &rows).await.unwrap_err()
                } else {
                    let rows: Vec<UsageCopy> = (0..len as i64).map(|k| UsageCopy { k, payload: "x".into() }).collect();
                    UsageCopy::bulk_create_new(&mut tx, &rows).await.unwrap_err()
                };
                assert_eq!(e.sqlstate(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{len} rows: {e}");
                assert!(e.connection_usable(), "{len} rows: {e}");
                // The caller's transaction goes on, as the role it set.
                let who = tx.query_one("SELECT current_user::text", &[]).await.unwrap_or_else(|after| {
                    panic!("{len} rows: after the call's error ({e}), the caller's transaction is aborted: {after:?}")
                });
                assert_eq!(who.get::<_, String>(0), role, "{len} rows");
                tx.batch_execute("RESET ROLE").await.unwrap();
                let mine: i64 = tx.query_one("SELECT count(*) FROM mine", &[]).await.unwrap().get(0);
                assert_eq!(mine, 1, "{len} rows");
                tx.rollback().await.unwrap();
            }
            assert_eq!(count(&client, "usage_item").await, 0);
        }
    };
    with_role(&admin, db, &role, test).await;
}

// ---------------------------------------------------------------- returning_keys after the id column changed type

model!(UuidIdShort, "uuid_id_short");
model!(UuidIdCopy, "uuid_id_copy");
model!(TextIdShort, "text_id_short");

/// The `id` column replaced by one the call does not return (not an
/// integer): `returning_keys` returns no ids, on a new connection and on
/// the one that checked the table before the change.
macro_rules! id_replaced {
    ($test:ident, $model:ident, $table:literal, $len:expr, $ddl:literal) => {
        #[tokio::test]
        async fn $test() {
            let db = TestDb::new(stringify!($test)).await;
            let admin = db.connect().await;
            admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
            let mut client = db.connect().await;
            let r = $model::bulk(&mut client).returning_keys().run(&$model::batch(1_000_000, $len)).await.unwrap();
            assert!(r.returned[0].id.is_some());
            admin.batch_execute(&format!($ddl, t = $table)).await.unwrap();
            // A new connection.
            let mut fresh = db.connect().await;
            let r = $model::bulk(&mut fresh)
                .returning_keys()
                .run(&$model::batch(3_000_000, $len))
                .await
                .unwrap_or_else(|e| panic_err(e));
            assert_eq!(r.inserted, $len as u64);
            assert!(r.returned.iter().all(|n| n.id.is_none()));
            // The connection that checked before the change, twice.
            for from in [4_000_000, 2_000_000] {
                let r = $model::bulk(&mut client)
                    .returning_keys()
                    .run(&$model::batch(from, $len))
                    .await
                    .unwrap_or_else(|e| panic_err(e));
                assert_eq!(r.inserted, $len as u64);
                assert!(r.returned.iter().all(|n| n.id.is_none()));
            }
            assert_eq!(count(&admin, $table).await, 4 * $len as i64);
            db.drop().await;
        }
    };
}

id_replaced!(
    returning_keys_after_id_became_uuid_short,
    UuidIdShort,
    "uuid_id_short",
    10,
    "ALTER TABLE {t} DROP COLUMN id; ALTER TABLE {t} ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY"
);
id_replaced!(
    returning_keys_after_id_became_uuid_copy,
    UuidIdCopy,
    "uuid_id_copy",
    COPY_BATCH,
    "ALTER TABLE {t} DROP COLUMN id; ALTER TABLE {t} ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY"
);
id_replaced!(
    returning_keys_after_id_became_text_short,
    TextIdShort,
    "text_id_short",
    10,
    "ALTER TABLE {t} ALTER COLUMN id DROP IDENTITY; ALTER TABLE {t} ALTER COLUMN id TYPE text; \
     ALTER TABLE {t} ALTER COLUMN id SET DEFAULT 'id-' || gen_random_uuid()::text"
);

model!(TenantId, "tenant_item");

/// A connection that served tenant a (integer ids) switches `search_path`
/// to tenant b, whose table of the same name has a `uuid` id: no ids.
#[tokio::test]
async fn returning_keys_after_a_search_path_switch_to_a_tenant_with_a_uuid_id() {
    let db = TestDb::new("tenant_uuid_a").await;
    let other = TestDb::new("tenant_uuid_b").await;
    let admin = db.connect().await;
    admin.batch_execute(&TenantId::model().migration_sql()).await.unwrap();
    let b = other.connect().await;
    b.batch_execute(
        "CREATE TABLE tenant_item (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), k bigint NOT NULL UNIQUE, \
         payload text NOT NULL)",
    )
    .await
    .unwrap();
    // A connection of tenant b alone: ids are None.
    let mut only_b = other.connect().await;
    let r = TenantId::bulk(&mut only_b)
        .returning_keys()
        .run(&TenantId::batch(0, 10))
        .await
        .unwrap_or_else(|e| panic_err(e));
    assert!(r.returned.iter().all(|n| n.id.is_none()));
    // A connection that served tenant a first.
    let mut client = db.connect().await;
    let r = TenantId::bulk(&mut client).returning_keys().run(&TenantId::batch(0, 10)).await.unwrap();
    assert!(r.returned.iter().all(|n| n.id.is_some()));
    client.batch_execute(&format!("SET search_path = {}", bulk_runtime::quote_ident(&other.schema))).await.unwrap();
    let r = TenantId::bulk(&mut client)
        .returning_keys()
        .run(&TenantId::batch(100, 10))
        .await
        .unwrap_or_else(|e| panic_err(e));
    assert_eq!(r.inserted, 10);
    assert!(r.returned.iter().all(|n| n.id.is_none()));
    assert_eq!(count(&b, "tenant_item").await, 20);
    assert_eq!(count(&admin, "tenant_item").await, 10);
    other.drop().await;
    db.drop().await;
}

// ---------------------------------------------------------------- text key narrowed to varchar(5)

text_model!(VcShort, "vc_short");
text_model!(VcPlain, "vc_plain");
text_model!(VcCopy, "vc_copy");

/// The key column narrowed to `varchar(5)` after the connection checked it:
/// "abcde   " is stored as "abcde" (PostgreSQL cuts trailing spaces to fit),
/// so the two offered keys are one. The first offered row is kept, the
/// other counted as skipped.
macro_rules! narrowed_to_varchar {
    ($test:ident, $model:ident, $table:literal, $pad:expr) => {
        #[tokio::test]
        async fn $test() {
            let db = TestDb::new(stringify!($test)).await;
            let admin = db.connect().await;
            admin
                .batch_execute(&format!(
                    "CREATE TABLE {t} (email text NOT NULL UNIQUE, name text NOT NULL)",
                    t = $table
                ))
                .await
                .unwrap();
            let mut client = db.connect().await;
            let warm: Vec<$model> =
                (0..$pad + 2).map(|i| $model { email: format!("w{i}"), name: "w".into() }).collect();
            $model::bulk_create_new(&mut client, &warm).await.unwrap();
            $model::bulk_create_new(&mut client, &warm).await.unwrap();
            admin
                .batch_execute(&format!("TRUNCATE {t}; ALTER TABLE {t} ALTER COLUMN email TYPE varchar(5)", t = $table))
                .await
                .unwrap();
            let mut rows = vec![
                $model { email: "abcde   ".into(), name: "first".into() },
                $model { email: "abcde".into(), name: "second".into() },
            ];
            rows.extend((0..$pad).map(|i| $model { email: format!("p{i}"), name: "pad".into() }));
            let o = $model::bulk_create_new(&mut client, &rows).await.unwrap_or_else(|e| panic_err(e));
            assert_eq!((o.inserted, o.skipped), ($pad as u64 + 1, 1));
            let name: String = admin
                .query_one(&format!("SELECT name FROM {t} WHERE email = 'abcde'", t = $table), &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(name, "first");
            assert_eq!(count(&admin, $table).await, $pad as i64 + 1);
            db.drop().await;
        }
    };
}

narrowed_to_varchar!(text_key_narrowed_to_varchar_short, VcShort, "vc_short", 8);
narrowed_to_varchar!(text_key_narrowed_to_varchar_plain, VcPlain, "vc_plain", 300);
narrowed_to_varchar!(text_key_narrowed_to_varchar_copy, VcCopy, "vc_copy", COPY_BATCH);

// ---------------------------------------------------------------- text key altered to `name` (cuts at 63 bytes)

text_model!(NameShort, "name_short");
text_model!(NameCopy, "name_copy");

/// Asserts that `result` is the schema check's refusal of key column
/// `email`, now of type `name`.
fn assert_refuses_name_key<T: std::fmt::Debug>(result: Result<T, Error>, connection: &str) {
    match result {
        Err(Error::SchemaMismatch { problems, .. }) => assert!(
            problems.iter().any(
                |p| matches!(p, SchemaProblem::ColumnType { column, found, .. } if column == "email" && found == "name")
            ),
            "{connection} connection: {problems:?}"
        ),
        other => panic!("{connection} connection: expected Error::SchemaMismatch, got {other:?}"),
    }
}

/// The key column altered to `name` (which cuts values at 63 bytes, so two
/// offered keys could become one) after the connection checked it: the
/// checked connection refuses the table as a new one does, and writes
/// nothing.
macro_rules! altered_to_name {
    ($test:ident, $model:ident, $table:literal, $pad:expr) => {
        #[tokio::test]
        async fn $test() {
            let db = TestDb::new(stringify!($test)).await;
            let admin = db.connect().await;
            admin
                .batch_execute(&format!(
                    "CREATE TABLE {t} (email text NOT NULL UNIQUE, name text NOT NULL)",
                    t = $table
                ))
                .await
                .unwrap();
            let mut client = db.connect().await;
            let warm: Vec<$model> =
                (0..$pad + 2).map(|i| $model { email: format!("w{i}"), name: "w".into() }).collect();
            $model::bulk_create_new(&mut client, &warm).await.unwrap();
            $model::bulk_create_new(&mut client, &warm).await.unwrap();
            admin
                .batch_execute(&format!("TRUNCATE {t}; ALTER TABLE {t} ALTER COLUMN email TYPE name", t = $table))
                .await
                .unwrap();
            let long = "x".repeat(63);
            let mut rows = vec![
                $model { email: format!("{long}zz"), name: "first".into() },
                $model { email: format!("{long}aa"), name: "second".into() },
            ];
            rows.extend((0..$pad).map(|i| $model { email: format!("p{i}"), name: "pad".into() }));
            assert_refuses_name_key($model::bulk_create_new(&mut client, &rows).await, "the checked");
            assert_eq!(count(&admin, $table).await, 0);
            let mut fresh = db.connect().await;
            assert_refuses_name_key($model::bulk_create_new(&mut fresh, &rows).await, "a new");
            assert_eq!(count(&admin, $table).await, 0);
            db.drop().await;
        }
    };
}

altered_to_name!(text_key_altered_to_name_short, NameShort, "name_short", 8);
altered_to_name!(text_key_altered_to_name_copy, NameCopy, "name_copy", COPY_BATCH);

// ---------------------------------------------------------------- row-level security enabled between calls

model!(RlsShort, "rls_short");
model!(RlsCopy, "rls_copy");

/// Row-level security enabled after the role's connection checked the
/// table, with a policy that hides another tenant's rows from it: the keys
/// of those rows still count as stored (skipped), and the hidden rows stay
/// as they were.
macro_rules! rls_between_calls {
    ($test:ident, $model:ident, $table:literal, $len:expr) => {
        #[tokio::test]
        async fn $test() {
            let db = TestDb::new(stringify!($test)).await;
            let admin = db.connect().await;
            admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
            let mut client = db.connect().await;
            let mut owner = db.connect().await;
            let setup = db.connect().await;
            let role = make_role(&admin, &db, "rls", "SELECT, INSERT").await;
            let test = {
                let r = bulk_runtime::quote_ident(&role);
                async move {
                    client.batch_execute(&format!("SET ROLE {r}")).await.unwrap();
                    let warm = $model::batch(1_000_000, $len);
                    let o = $model::bulk_create_new(&mut client, &warm).await.unwrap();
                    assert_eq!(o.inserted, $len as u64);
                    // Another tenant's rows: keys 0..len/2, which the policy hides from the role.
                    let theirs: Vec<$model> =
                        (0..($len / 2) as i64).map(|k| $model { k, payload: "theirs".into() }).collect();
                    $model::bulk_create_new(&mut owner, &theirs).await.unwrap();
                    setup
                        .batch_execute(&format!(
                            "ALTER TABLE {t} ENABLE ROW LEVEL SECURITY; \
                             CREATE POLICY sel ON {t} FOR SELECT USING (payload LIKE 'row%' OR payload LIKE 'drop%'); \
                             CREATE POLICY ins ON {t} FOR INSERT WITH CHECK (true)",
                            t = $table
                        ))
                        .await
                        .unwrap();
                    let rows = $model::batch(0, $len);
                    let o = $model::bulk_create_new(&mut client, &rows).await.unwrap_or_else(|e| panic_err(e));
                    assert_eq!((o.inserted, o.skipped), (($len - $len / 2) as u64, ($len / 2) as u64));
                    let theirs_kept: i64 = setup
                        .query_one(&format!("SELECT count(*) FROM {t} WHERE payload = 'theirs'", t = $table), &[])
                        .await
                        .unwrap()
                        .get(0);
                    assert_eq!(theirs_kept, ($len / 2) as i64);
                    assert_eq!(count(&setup, $table).await, 2 * $len as i64);
                }
            };
            with_role(&admin, db, &role, test).await;
        }
    };
}

rls_between_calls!(rls_enabled_between_calls_short, RlsShort, "rls_short", 300);
rls_between_calls!(rls_enabled_between_calls_copy, RlsCopy, "rls_copy", COPY_BATCH);
