//! Schema and session changes between calls on a reused
//! connection (the library caches its schema check, its prepared statements
//! and its scratch table per connection). Each probe makes the change after
//! the connection's first call checked the table, then asserts what the
//! README promises for the next call: exact counts and the offered rows
//! stored as offered, or a clear error with nothing written.
//!
//! Every probe runs on the three paths: a batch under 128 rows (the short
//! path's `ON CONFLICT` form), 300 rows (the short path's plain form) and
//! [`COPY_BATCH`] rows (binary COPY through the scratch table). Each probe
//! and path has a model of its own (the insert's form is chosen per model
//! for the whole process).

use bulk_runtime::{BulkCreateNew, Error, SchemaProblem};
use bulk_tests::{COPY_BATCH, TestDb, count};
use tokio_postgres::Client;

/// The three batch lengths of every probe.
const SHORT: usize = 10;
const PLAIN: usize = 300;

fn q(name: &str) -> String {
    bulk_runtime::quote_ident(name)
}

/// Whether `err` is the schema check's refusal with a problem `pred` accepts.
fn refused_with(err: &Error, pred: impl Fn(&SchemaProblem) -> bool) -> bool {
    matches!(err, Error::SchemaMismatch { problems, .. } if problems.iter().any(pred))
}

fn describe<T: std::fmt::Debug>(r: &Result<T, Error>) -> String {
    match r {
        Ok(v) => format!("Ok({v:?})"),
        Err(e) => format!("Err({e}; sqlstate {:?}; {e:?})", e.sqlstate().map(|s| s.code())),
    }
}

// ---------------------------------------------------------------------------
// A bigint column altered to double precision after the check
// ---------------------------------------------------------------------------

macro_rules! num_model {
    ($name:ident, $table:literal) => {
        #[derive(BulkCreateNew, Debug, Clone)]
        #[bulk(table = $table, unique(k), id = false)]
        struct $name {
            k: i64,
            n: i64,
        }

        impl $name {
            /// Keys `from..from + len`, `n` an odd number beyond 2^53 (not
            /// a `double precision`).
            fn batch(from: i64, len: usize) -> Vec<$name> {
                (from..from + len as i64).map(|k| $name { k, n: (1i64 << 53) + 2 * k + 1 }).collect()
            }
        }
    };
}

num_model!(LossyShort, "lossy_short");
num_model!(LossyPlain, "lossy_plain");
num_model!(LossyCopy, "lossy_copy");

/// The `n` values stored in `table` that differ from the `n` the batch
/// offered for their key (a `double precision` read as the `bigint` it
/// holds exactly).
async fn changed_n(admin: &Client, table: &str) -> Vec<(i64, i64)> {
    admin
        .query(
            &format!(
                "SELECT k, n::bigint FROM {} WHERE n::bigint <> 9007199254740992 + 2 * k + 1 ORDER BY k",
                q(table)
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

// A `bigint` column altered to `double precision` after the check takes
// every i64 through an assignment cast, without an error but rounded
// (2^53 + 1 stored as 2^53). The statements' guards see a column whose type
// the check would refuse, and the checked connection's call fails with the
// check's `ColumnType`, nothing written, on every path (once a defect: the
// call returned Ok and stored every `n` rounded).
macro_rules! lossy_retype {
    ($model:ident, $table:literal, $len:expr) => {{
        let db = TestDb::new(concat!("chg_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        let first = $model::bulk_create_new(&mut writer, &$model::batch(0, $len)).await.unwrap();
        assert_eq!(first.inserted, $len as u64);
        admin
            .batch_execute(concat!("ALTER TABLE ", $table, " ALTER COLUMN n TYPE double precision"))
            .await
            .unwrap();
        let mut fresh = db.connect().await;
        let fresh_result = $model::bulk_create_new(&mut fresh, &$model::batch(1_000_000, 3)).await;
        let fresh_refused = fresh_result.as_ref().is_err_and(|e| {
            refused_with(e, |p| matches!(p, SchemaProblem::ColumnType { column, .. } if column == "n"))
        });
        // Undo the first batch's rounding for the comparison below.
        admin.batch_execute(concat!("TRUNCATE ", $table)).await.unwrap();
        let result = $model::bulk_create_new(&mut writer, &$model::batch(0, $len)).await;
        let stored = count(&admin, $table).await;
        let changed = changed_n(&admin, $table).await;
        db.drop().await;
        assert!(fresh_refused, "a new connection's check refuses the table: {}", describe(&fresh_result));
        // Refused (every value would be stored converted), nothing written.
        assert!(
            result.as_ref().is_err_and(|e| refused_with(
                e,
                |p| matches!(p, SchemaProblem::ColumnType { column, .. } if column == "n")
            )),
            "expected the check's explanation: {}",
            describe(&result)
        );
        assert_eq!(stored, 0, "nothing written ({} rows changed)", changed.len());
    }};
}

#[tokio::test]
async fn bigint_column_altered_to_double_after_the_check_short() {
    lossy_retype!(LossyShort, "lossy_short", SHORT)
}

#[tokio::test]
async fn bigint_column_altered_to_double_after_the_check_plain() {
    lossy_retype!(LossyPlain, "lossy_plain", PLAIN)
}

#[tokio::test]
async fn bigint_column_altered_to_double_after_the_check_copy() {
    lossy_retype!(LossyCopy, "lossy_copy", COPY_BATCH)
}

// ---------------------------------------------------------------------------
// client_encoding changed between calls
// ---------------------------------------------------------------------------

macro_rules! text_model {
    ($name:ident, $table:literal) => {
        #[derive(BulkCreateNew, Debug, Clone)]
        #[bulk(table = $table, unique(k), id = false)]
        struct $name {
            k: i64,
            payload: String,
        }

        impl $name {
            fn batch(from: i64, len: usize, text: &str) -> Vec<$name> {
                (from..from + len as i64).map(|k| $name { k, payload: format!("{text} {k}") }).collect()
            }
        }
    };
}

text_model!(EncShort, "enc_short");
text_model!(EncPlain, "enc_plain");
text_model!(EncCopy, "enc_copy");

const NON_LATIN: &str = "héllo 日本 ✓";

/// Stored payloads that differ from the offered ones.
async fn changed_payloads(admin: &Client, table: &str, text: &str) -> Vec<(i64, String)> {
    admin
        .query(&format!("SELECT k, payload FROM {} WHERE payload <> $1 || ' ' || k ORDER BY k", q(table)), &[&text])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

// `SET client_encoding = 'LATIN1'` between calls: the server would convert
// every text value of the binary protocol (bind parameters and binary COPY
// alike) from LATIN1, while the call sends UTF-8 ("héllo" stored as
// "hÃ©llo"). Refused with `SchemaProblem::ClientEncoding`, nothing written,
// on every path (once a defect: every call stored its text mangled).
// `SQL_ASCII` converts nothing and takes the rows as offered.
macro_rules! client_encoding {
    ($model:ident, $table:literal, $len:expr, $encoding:literal) => {{
        let db = TestDb::new(concat!("chg_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        let first = $model::bulk_create_new(&mut writer, &$model::batch(0, $len, NON_LATIN)).await.unwrap();
        assert_eq!(first.inserted, $len as u64);
        writer.batch_execute(concat!("SET client_encoding = '", $encoding, "'")).await.unwrap();
        let result = $model::bulk_create_new(&mut writer, &$model::batch(100_000, $len, NON_LATIN)).await;
        let stored = count(&admin, $table).await;
        let changed = changed_payloads(&admin, $table, NON_LATIN).await;
        db.drop().await;
        if $encoding == "SQL_ASCII" {
            // SQL_ASCII converts nothing: the rows go in as offered.
            let report = result.as_ref().expect("SQL_ASCII takes the rows");
            assert_eq!((report.inserted, stored), ($len as u64, 2 * $len as i64), "{report:?}");
            assert!(
                changed.is_empty(),
                "{} of {} rows stored with another payload than offered, first: {:?}",
                changed.len(),
                $len,
                changed.first()
            );
        } else {
            // Any other encoding would store the UTF-8 text converted:
            // refused, naming the setting, nothing written.
            assert!(
                result.as_ref().is_err_and(|e| refused_with(
                    e,
                    |p| matches!(p, SchemaProblem::ClientEncoding { found } if found == $encoding)
                )),
                "expected SchemaProblem::ClientEncoding: {}",
                describe(&result)
            );
            assert_eq!(stored, $len as i64, "nothing written");
        }
    }};
}

#[tokio::test]
async fn client_encoding_latin1_between_calls_short() {
    client_encoding!(EncShort, "enc_short", SHORT, "LATIN1")
}

#[tokio::test]
async fn client_encoding_latin1_between_calls_plain() {
    client_encoding!(EncPlain, "enc_plain", PLAIN, "LATIN1")
}

#[tokio::test]
async fn client_encoding_latin1_between_calls_copy() {
    client_encoding!(EncCopy, "enc_copy", COPY_BATCH, "LATIN1")
}

// ---------------------------------------------------------------------------
// search_path to a same-named table whose non-key column has another type
// ---------------------------------------------------------------------------

num_model!(TenantShort, "tenant_short");
num_model!(TenantPlain, "tenant_plain");
num_model!(TenantCopy, "tenant_copy");

// The connection checked the table in its schema; its `search_path` then
// leads to another tenant's same-named table whose `n` column is `text`,
// which a new connection's check refuses (`ColumnType` on `n`). On the
// checked connection every kind of call is refused the same way, nothing
// written to the other tenant's table (once a defect: the plain call, and
// `batch_id` on the COPY path, wrote the i64s as text).
macro_rules! tenant_of_another_type {
    ($model:ident, $table:literal, $len:expr) => {{
        use bulk_runtime::{Ledger, Upsert};
        let db = TestDb::new(concat!("chg_", $table)).await;
        let other = format!("{}_b", db.schema);
        let admin = db.connect().await;
        let ledger = Ledger::of::<$model>().migration_sql();
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        admin.batch_execute(&ledger).await.unwrap();
        admin
            .batch_execute(&format!(
                "CREATE SCHEMA {o}; CREATE TABLE {o}.{t} (k bigint NOT NULL UNIQUE, n text NOT NULL); \
                 SET search_path = {o}; {ledger}",
                o = q(&other),
                t = q($table)
            ))
            .await
            .unwrap();
        let mut writer = db.connect().await;
        let b = |i: i64| $model::batch(i * 100_000, $len);
        assert_eq!($model::bulk_create_new(&mut writer, &b(0)).await.unwrap().inserted, $len as u64);
        assert_eq!($model::bulk(&mut writer).returning_keys().run(&b(1)).await.unwrap().inserted, $len as u64);
        assert_eq!($model::bulk(&mut writer).upsert(Upsert::all_columns()).run(&b(2)).await.unwrap().inserted, $len as u64);
        assert_eq!($model::bulk(&mut writer).batch_id("one").run(&b(3)).await.unwrap().inserted, $len as u64);
        writer.batch_execute(&format!("SET search_path = {}", q(&other))).await.unwrap();
        let results = [
            ("plain", $model::bulk_create_new(&mut writer, &b(0)).await.map(|r| r.inserted)),
            ("returning_keys", $model::bulk(&mut writer).returning_keys().run(&b(1)).await.map(|r| r.inserted)),
            ("upsert", $model::bulk(&mut writer).upsert(Upsert::all_columns()).run(&b(2)).await.map(|r| r.inserted)),
            ("batch_id", $model::bulk(&mut writer).batch_id("two").run(&b(3)).await.map(|r| r.inserted)),
        ];
        let mut fresh = db.connect().await;
        fresh.batch_execute(&format!("SET search_path = {}", q(&other))).await.unwrap();
        let fresh_result = $model::bulk_create_new(&mut fresh, &$model::batch(1_000_000, 3)).await;
        let stored: i64 = admin
            .query_one(&format!("SELECT count(*) FROM {}.{}", q(&other), q($table)), &[])
            .await
            .unwrap()
            .get(0);
        admin.batch_execute(&format!("DROP SCHEMA {} CASCADE", q(&other))).await.unwrap();
        db.drop().await;
        let column_n = |e: &Error| refused_with(e, |p| matches!(p, SchemaProblem::ColumnType { column, .. } if column == "n"));
        assert!(fresh_result.as_ref().is_err_and(column_n), "a new connection refuses: {}", describe(&fresh_result));
        let summary: Vec<String> = results.iter().map(|(kind, r)| format!("{kind}: {}", describe(r))).collect();
        assert!(
            results.iter().all(|(_, r)| r.as_ref().is_err_and(column_n)) && stored == 0,
            "the checked connection after the switch: {summary:#?}, {stored} rows written to the other tenant's text column",
        );
    }};
}

#[tokio::test]
async fn search_path_to_a_tenant_whose_column_is_text_short() {
    tenant_of_another_type!(TenantShort, "tenant_short", SHORT)
}

#[tokio::test]
async fn search_path_to_a_tenant_whose_column_is_text_plain() {
    tenant_of_another_type!(TenantPlain, "tenant_plain", PLAIN)
}

#[tokio::test]
async fn search_path_to_a_tenant_whose_column_is_text_copy() {
    tenant_of_another_type!(TenantCopy, "tenant_copy", COPY_BATCH)
}

// ---------------------------------------------------------------------------
// search_path = '' between calls
// ---------------------------------------------------------------------------

text_model!(EmptyPathShort, "empty_path_short");
text_model!(EmptyPathPlain, "empty_path_plain");
text_model!(EmptyPathCopy, "empty_path_copy");

/// With `search_path = ''` the table is not found: the call must say so
/// (`TableMissing`), writing nothing; after `RESET search_path` the same
/// connection counts exactly.
macro_rules! empty_search_path {
    ($model:ident, $table:literal, $len:expr) => {{
        let db = TestDb::new(concat!("chg_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        $model::bulk_create_new(&mut writer, &$model::batch(0, $len, "a")).await.unwrap();
        writer.batch_execute("SET search_path = ''").await.unwrap();
        let result = $model::bulk_create_new(&mut writer, &$model::batch(0, 2 * $len, "b")).await;
        let keys = $model::bulk(&mut writer).returning_keys().run(&$model::batch(0, 2 * $len, "b")).await;
        writer.batch_execute("RESET search_path").await.unwrap();
        let after = $model::bulk_create_new(&mut writer, &$model::batch(0, 2 * $len, "b")).await;
        let stored = count(&admin, $table).await;
        db.drop().await;
        for r in [result.map(|_| ()), keys.map(|_| ())] {
            assert!(
                r.as_ref().is_err_and(|e| refused_with(e, |p| matches!(p, SchemaProblem::TableMissing))),
                "{}",
                describe(&r)
            );
        }
        let after = after.unwrap();
        assert_eq!((after.inserted, after.skipped, stored), ($len as u64, $len as u64, 2 * $len as i64));
    }};
}

#[tokio::test]
async fn empty_search_path_between_calls_short() {
    empty_search_path!(EmptyPathShort, "empty_path_short", SHORT)
}

#[tokio::test]
async fn empty_search_path_between_calls_plain() {
    empty_search_path!(EmptyPathPlain, "empty_path_plain", PLAIN)
}

#[tokio::test]
async fn empty_search_path_between_calls_copy() {
    empty_search_path!(EmptyPathCopy, "empty_path_copy", COPY_BATCH)
}

// ---------------------------------------------------------------------------
// An enum label renamed after the check
// ---------------------------------------------------------------------------

#[derive(bulk_runtime::BulkType, Debug, Clone, Copy, PartialEq)]
#[bulk(type = "audit_mood")]
enum AuditMood {
    Happy,
    Sad,
}

macro_rules! mood_model {
    ($name:ident, $table:literal) => {
        #[derive(BulkCreateNew, Debug, Clone)]
        #[bulk(table = $table, unique(k), id = false)]
        struct $name {
            k: i64,
            mood: AuditMood,
        }

        impl $name {
            fn batch(from: i64, len: usize) -> Vec<$name> {
                (from..from + len as i64)
                    .map(|k| $name { k, mood: if k % 2 == 0 { AuditMood::Happy } else { AuditMood::Sad } })
                    .collect()
            }
        }
    };
}

mood_model!(MoodShort, "mood_short");
mood_model!(MoodPlain, "mood_plain");
mood_model!(MoodCopy, "mood_copy");

/// `ALTER TYPE ... RENAME VALUE 'sad' TO 'blue'` after the check: the
/// enum lacks a label of the Rust enum. README: "The schema check refuses
/// an enum type that lacks a label of the Rust enum
/// (`SchemaProblem::EnumLabelsMissing`, naming them ...) before any row is
/// sent, so that no path depends on which rows reach the server". The
/// checked connection's call must fail (nothing written), the same way on
/// every path, and after the label is renamed back count exactly.
macro_rules! enum_label_renamed {
    ($model:ident, $table:literal, $len:expr) => {{
        use bulk_runtime::PgEnum;
        let db = TestDb::new(concat!("chg_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&AuditMood::create_type_sql()).await.unwrap();
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        $model::bulk_create_new(&mut writer, &$model::batch(0, $len)).await.unwrap();
        admin.batch_execute("ALTER TYPE audit_mood RENAME VALUE 'sad' TO 'blue'").await.unwrap();
        let result = $model::bulk_create_new(&mut writer, &$model::batch(100_000, $len)).await;
        let stored = count(&admin, $table).await;
        admin.batch_execute("ALTER TYPE audit_mood RENAME VALUE 'blue' TO 'sad'").await.unwrap();
        let after = $model::bulk_create_new(&mut writer, &$model::batch(100_000, $len)).await;
        let stored_after = count(&admin, $table).await;
        db.drop().await;
        assert_eq!(stored, $len as i64, "nothing of the refused batch written: {}", describe(&result));
        assert!(result.as_ref().is_err_and(Error::connection_usable), "{}", describe(&result));
        assert_eq!(after.map(|r| r.inserted).map_err(|e| e.to_string()), Ok($len as u64));
        assert_eq!(stored_after, 2 * $len as i64);
        assert!(
            result.as_ref().is_err_and(|e| refused_with(e, |p| matches!(p, SchemaProblem::EnumLabelsMissing { .. }))),
            "the check's explanation: {}",
            describe(&result)
        );
    }};
}

#[tokio::test]
async fn enum_label_renamed_after_the_check_short() {
    enum_label_renamed!(MoodShort, "mood_short", SHORT)
}

#[tokio::test]
async fn enum_label_renamed_after_the_check_plain() {
    enum_label_renamed!(MoodPlain, "mood_plain", PLAIN)
}

// After `RENAME VALUE 'sad' TO 'blue'` every path answers with
// `EnumLabelsMissing`, nothing written (once the COPY path returned the
// server's bare 22P02 from the COPY instead).
#[tokio::test]
async fn enum_label_renamed_after_the_check_copy() {
    enum_label_renamed!(MoodCopy, "mood_copy", COPY_BATCH)
}

// ---------------------------------------------------------------------------
// A column renamed or dropped between calls
// ---------------------------------------------------------------------------

num_model!(RenamedShort, "renamed_short");
num_model!(RenamedPlain, "renamed_plain");
num_model!(RenamedCopy, "renamed_copy");

/// The model's column `n` renamed to `m` after the check: every kind of
/// call fails with the check's explanation (`ColumnMissing` n), nothing
/// written; renamed back, the same connection counts exactly.
macro_rules! column_renamed {
    ($model:ident, $table:literal, $len:expr) => {{
        use bulk_runtime::Upsert;
        let db = TestDb::new(concat!("chg_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        let b = |i: i64| $model::batch(i * 100_000, $len);
        $model::bulk_create_new(&mut writer, &b(0)).await.unwrap();
        $model::bulk(&mut writer).returning_keys().run(&b(1)).await.unwrap();
        $model::bulk(&mut writer).upsert(Upsert::all_columns()).run(&b(2)).await.unwrap();
        admin.batch_execute(concat!("ALTER TABLE ", $table, " RENAME COLUMN n TO m")).await.unwrap();
        let results = [
            ("plain", $model::bulk_create_new(&mut writer, &b(3)).await.map(|r| r.inserted)),
            ("returning_keys", $model::bulk(&mut writer).returning_keys().run(&b(3)).await.map(|r| r.inserted)),
            ("upsert", $model::bulk(&mut writer).upsert(Upsert::all_columns()).run(&b(3)).await.map(|r| r.inserted)),
        ];
        let stored = count(&admin, $table).await;
        admin.batch_execute(concat!("ALTER TABLE ", $table, " RENAME COLUMN m TO n")).await.unwrap();
        let after = $model::bulk_create_new(&mut writer, &b(3)).await;
        db.drop().await;
        let summary: Vec<String> = results.iter().map(|(kind, r)| format!("{kind}: {}", describe(r))).collect();
        let missing_n =
            |e: &Error| refused_with(e, |p| matches!(p, SchemaProblem::ColumnMissing { column, .. } if column == "n"));
        assert!(results.iter().all(|(_, r)| r.as_ref().is_err_and(missing_n)), "{summary:#?}");
        assert_eq!(stored, 3 * $len as i64, "nothing written: {summary:#?}");
        assert_eq!(after.map(|r| r.inserted).map_err(|e| e.to_string()), Ok($len as u64));
    }};
}

#[tokio::test]
async fn column_renamed_between_calls_short() {
    column_renamed!(RenamedShort, "renamed_short", SHORT)
}

#[tokio::test]
async fn column_renamed_between_calls_plain() {
    column_renamed!(RenamedPlain, "renamed_plain", PLAIN)
}

#[tokio::test]
async fn column_renamed_between_calls_copy() {
    column_renamed!(RenamedCopy, "renamed_copy", COPY_BATCH)
}

// ---------------------------------------------------------------------------
// The table renamed away and a new one of another shape under its name
// ---------------------------------------------------------------------------

text_model!(ReplacedShort, "replaced_short");
text_model!(ReplacedPlain, "replaced_plain");
text_model!(ReplacedCopy, "replaced_copy");

/// The table renamed to `<t>_old` and a new `<t>` made with a `NOT NULL`
/// column the model lacks (no default): the next call is refused, naming
/// the column, nothing written to either table; with a
/// default on that column the same connection writes into the new table,
/// with exact counts, and never into the old one.
macro_rules! table_replaced {
    ($model:ident, $table:literal, $len:expr) => {{
        let db = TestDb::new(concat!("chg_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        $model::bulk_create_new(&mut writer, &$model::batch(0, $len, "a")).await.unwrap();
        admin
            .batch_execute(concat!(
                "ALTER TABLE ", $table, " RENAME TO ", $table, "_old; ",
                "CREATE TABLE ", $table, " (k bigint NOT NULL UNIQUE, tenant text NOT NULL, payload text NOT NULL)"
            ))
            .await
            .unwrap();
        let refused = $model::bulk_create_new(&mut writer, &$model::batch(0, 2 * $len, "b")).await;
        let (new_rows, old_rows) =
            (count(&admin, $table).await, count(&admin, concat!($table, "_old")).await);
        admin.batch_execute(concat!("ALTER TABLE ", $table, " ALTER COLUMN tenant SET DEFAULT 'x'")).await.unwrap();
        let after = $model::bulk_create_new(&mut writer, &$model::batch(0, 2 * $len, "b")).await;
        let again = $model::bulk_create_new(&mut writer, &$model::batch($len as i64, 2 * $len, "c")).await;
        let (new_after, old_after) =
            (count(&admin, $table).await, count(&admin, concat!($table, "_old")).await);
        db.drop().await;
        // (The check's explanation, or the server's not-null refusal
        // naming the column, as `session_state.rs` accepts.)
        assert!(
            refused.as_ref().is_err_and(|e| refused_with(
                e,
                |p| matches!(p, SchemaProblem::RequiredColumnNotInModel { column, .. } if column == "tenant")
            ) || (e.field() == Some("tenant") && e.connection_usable())),
            "{}",
            describe(&refused)
        );
        assert_eq!((new_rows, old_rows), (0, $len as i64), "nothing written");
        let (after, again) = (after.unwrap(), again.unwrap());
        assert_eq!((after.inserted, again.inserted, again.skipped), (2 * $len as u64, $len as u64, $len as u64));
        assert_eq!((new_after, old_after), (3 * $len as i64, $len as i64));
    }};
}

#[tokio::test]
async fn table_replaced_by_one_of_another_shape_short() {
    table_replaced!(ReplacedShort, "replaced_short", SHORT)
}

#[tokio::test]
async fn table_replaced_by_one_of_another_shape_plain() {
    table_replaced!(ReplacedPlain, "replaced_plain", PLAIN)
}

#[tokio::test]
async fn table_replaced_by_one_of_another_shape_copy() {
    table_replaced!(ReplacedCopy, "replaced_copy", COPY_BATCH)
}

// ---------------------------------------------------------------------------
// The table replaced by a partitioned table, or by a view over it
// ---------------------------------------------------------------------------

text_model!(PartShort, "part_short");
text_model!(PartPlain, "part_plain");
text_model!(PartCopy, "part_copy");

/// The table renamed away and a hash-partitioned table of the same shape
/// made under its name (unique on the key): the plain call, returning_keys
/// and upsert write into the new table with exact counts.
macro_rules! replaced_by_partitioned {
    ($model:ident, $table:literal, $len:expr) => {{
        use bulk_runtime::Upsert;
        let db = TestDb::new(concat!("chg_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        let b = |from: i64, tag: &str| $model::batch(from, $len, tag);
        $model::bulk_create_new(&mut writer, &b(0, "a")).await.unwrap();
        $model::bulk(&mut writer).returning_keys().run(&b(100_000, "a")).await.unwrap();
        $model::bulk(&mut writer).upsert(Upsert::all_columns()).run(&b(200_000, "a")).await.unwrap();
        admin
            .batch_execute(concat!(
                "ALTER TABLE ",
                $table,
                " RENAME TO ",
                $table,
                "_old; ",
                "CREATE TABLE ",
                $table,
                " (k bigint NOT NULL, payload text NOT NULL, UNIQUE (k)) PARTITION BY HASH (k); ",
                "CREATE TABLE ",
                $table,
                "_0 PARTITION OF ",
                $table,
                " FOR VALUES WITH (MODULUS 2, REMAINDER 0); ",
                "CREATE TABLE ",
                $table,
                "_1 PARTITION OF ",
                $table,
                " FOR VALUES WITH (MODULUS 2, REMAINDER 1); ",
                "INSERT INTO ",
                $table,
                " SELECT k, payload FROM ",
                $table,
                "_old WHERE k % 2 = 0"
            ))
            .await
            .unwrap();
        let stored_before = count(&admin, $table).await;
        let plain = $model::bulk_create_new(&mut writer, &b(0, "b")).await.map(|r| (r.inserted, r.skipped));
        let keys = $model::bulk(&mut writer)
            .returning_keys()
            .run(&b(100_000, "b"))
            .await
            .map(|r| (r.inserted, r.returned.len() as u64));
        let upsert = $model::bulk(&mut writer)
            .upsert(Upsert::all_columns())
            .run(&b(200_000, "b"))
            .await
            .map(|r| (r.inserted, r.updated));
        let stored = count(&admin, $table).await;
        let old = count(&admin, concat!($table, "_old")).await;
        let b_rows: i64 = admin
            .query_one(&format!("SELECT count(*) FROM {} WHERE payload LIKE 'b %'", q($table)), &[])
            .await
            .unwrap()
            .get(0);
        db.drop().await;
        // Every key offered before was stored in the old table; the even
        // ones were copied over.
        let kept = stored_before as u64 / 3; // of each batch, the even keys
        let new = $len as u64 - kept;
        assert_eq!(plain.map_err(|e| e.to_string()), Ok((new, kept)));
        assert_eq!(keys.map_err(|e| e.to_string()), Ok((new, new)));
        assert_eq!(upsert.map_err(|e| e.to_string()), Ok((new, kept)));
        assert_eq!(stored, 3 * $len as i64);
        assert_eq!(old, 3 * $len as i64, "nothing written to the old table");
        assert_eq!(b_rows, 2 * new as i64 + $len as i64, "new keys (plain, keys), all of the upsert's");
    }};
}

#[tokio::test]
async fn table_replaced_by_a_partitioned_table_short() {
    replaced_by_partitioned!(PartShort, "part_short", SHORT)
}

#[tokio::test]
async fn table_replaced_by_a_partitioned_table_plain() {
    replaced_by_partitioned!(PartPlain, "part_plain", PLAIN)
}

#[tokio::test]
async fn table_replaced_by_a_partitioned_table_copy() {
    replaced_by_partitioned!(PartCopy, "part_copy", COPY_BATCH)
}

text_model!(ViewShort, "view_short");
text_model!(ViewPlain, "view_plain");
text_model!(ViewCopy, "view_copy");

/// The table renamed to `<t>_base` and a view `<t>` over it that shows only
/// even keys (auto-updatable). The next call must either count exactly
/// (keys stored in the base table, hidden by the view, skipped: the base's
/// unique index refuses them) or be refused, nothing written; never a key
/// stored twice or a call failing with a bare unique violation.
macro_rules! replaced_by_view {
    ($model:ident, $table:literal, $len:expr) => {{
        let db = TestDb::new(concat!("chg_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        $model::bulk_create_new(&mut writer, &$model::batch(0, $len, "a")).await.unwrap();
        admin
            .batch_execute(concat!(
                "ALTER TABLE ",
                $table,
                " RENAME TO ",
                $table,
                "_base; ",
                "CREATE VIEW ",
                $table,
                " AS SELECT * FROM ",
                $table,
                "_base WHERE k % 2 = 0"
            ))
            .await
            .unwrap();
        let result = $model::bulk_create_new(&mut writer, &$model::batch(0, 2 * $len, "b")).await;
        let base = count(&admin, concat!($table, "_base")).await;
        db.drop().await;
        match &result {
            Ok(r) => {
                assert_eq!((r.inserted, r.skipped), ($len as u64, $len as u64), "{r:?}");
                assert_eq!(base, 2 * $len as i64);
            }
            Err(e) => {
                assert!(matches!(e, Error::SchemaMismatch { .. }), "a clear refusal: {}", describe(&result));
                assert_eq!(base, $len as i64, "nothing written");
            }
        }
    }};
}

#[tokio::test]
async fn table_replaced_by_a_view_short() {
    replaced_by_view!(ViewShort, "view_short", SHORT)
}

#[tokio::test]
async fn table_replaced_by_a_view_plain() {
    replaced_by_view!(ViewPlain, "view_plain", PLAIN)
}

#[tokio::test]
async fn table_replaced_by_a_view_copy() {
    replaced_by_view!(ViewCopy, "view_copy", COPY_BATCH)
}

// ---------------------------------------------------------------------------
// The key's unique constraint replaced by a partial unique index
// ---------------------------------------------------------------------------

text_model!(PartialShort, "partial_short");
text_model!(PartialPlain, "partial_plain");
text_model!(PartialCopy, "partial_copy");

/// The key's unique constraint replaced by a partial unique index (`WHERE
/// k >= 0`), which the check does not accept as the key (`ON CONFLICT
/// (k)` cannot take it as its arbiter). The next call must be refused with
/// the check's explanation (`UniqueKeyMissing`), nothing written.
macro_rules! partial_index {
    ($model:ident, $table:literal, $len:expr) => {{
        let db = TestDb::new(concat!("chg_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        $model::bulk_create_new(&mut writer, &$model::batch(0, $len, "a")).await.unwrap();
        admin
            .batch_execute(&format!(
                "DO $$ DECLARE i regclass; BEGIN
                     FOR i IN SELECT indexrelid::regclass FROM pg_index WHERE indrelid = '{t}'::regclass AND indisunique
                     LOOP EXECUTE 'DROP INDEX ' || i; END LOOP;
                 END $$; CREATE UNIQUE INDEX ON {t} (k) WHERE k >= 0",
                t = q($table),
            ))
            .await
            .unwrap();
        let result = $model::bulk_create_new(&mut writer, &$model::batch(0, 2 * $len, "b")).await;
        let stored = count(&admin, $table).await;
        db.drop().await;
        assert_eq!(stored, $len as i64, "nothing written: {}", describe(&result));
        assert!(
            result.as_ref().is_err_and(|e| refused_with(e, |p| matches!(p, SchemaProblem::UniqueKeyMissing { .. }))),
            "{}",
            describe(&result)
        );
    }};
}

#[tokio::test]
async fn key_replaced_by_a_partial_unique_index_short() {
    partial_index!(PartialShort, "partial_short", SHORT)
}

#[tokio::test]
async fn key_replaced_by_a_partial_unique_index_plain() {
    partial_index!(PartialPlain, "partial_plain", PLAIN)
}

#[tokio::test]
async fn key_replaced_by_a_partial_unique_index_copy() {
    partial_index!(PartialCopy, "partial_copy", COPY_BATCH)
}

// ---------------------------------------------------------------------------
// TimeZone, DateStyle, IntervalStyle, extra_float_digits changed between calls
// ---------------------------------------------------------------------------

macro_rules! timed_model {
    ($name:ident, $table:literal) => {
        #[derive(BulkCreateNew, Debug, Clone, PartialEq)]
        #[bulk(table = $table, unique(k, at), id = false)]
        struct $name {
            k: i64,
            at: chrono::DateTime<chrono::Utc>,
            local: chrono::NaiveDateTime,
            day: chrono::NaiveDate,
            f: f64,
            r: f32,
        }

        impl $name {
            fn batch(from: i64, len: usize) -> Vec<$name> {
                use chrono::TimeZone;
                (from..from + len as i64)
                    .map(|k| {
                        let micros = 1_700_000_000_123_457 + k * 3_600_000_001;
                        let at = chrono::Utc.timestamp_micros(micros).unwrap();
                        $name {
                            k,
                            at,
                            local: at.naive_utc() + chrono::Duration::microseconds(7),
                            day: at.date_naive(),
                            f: 0.1 + k as f64 * 1e-17 + f64::EPSILON * k as f64,
                            r: 1.0 / 3.0 + k as f32 * f32::EPSILON,
                        }
                    })
                    .collect()
            }
        }
    };
}

timed_model!(TimedShort, "timed_short");
timed_model!(TimedPlain, "timed_plain");
timed_model!(TimedCopy, "timed_copy");

/// Session settings that change how values print (`TimeZone`, `DateStyle`,
/// `IntervalStyle`, `extra_float_digits`) set between calls: each call
/// stores the offered values exactly (read back in binary on a connection
/// with the default settings), keys of both settings' calls compare equal
/// (the second call's repeats are skipped), and an upsert
/// `only_if_changed` of the same rows finds every row unchanged.
macro_rules! print_settings {
    ($model:ident, $table:literal, $len:expr) => {{
        use bulk_runtime::Upsert;
        let db = TestDb::new(concat!("chg_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        let first = $model::batch(0, $len);
        $model::bulk_create_new(&mut writer, &first).await.unwrap();
        writer
            .batch_execute(
                "SET TimeZone = 'Pacific/Chatham'; SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'sql_standard'; \
                 SET extra_float_digits = -15",
            )
            .await
            .unwrap();
        let second = $model::batch($len as i64 / 2, $len);
        let again = $model::bulk_create_new(&mut writer, &second).await.unwrap();
        let upsert =
            $model::bulk(&mut writer).upsert(Upsert::all_columns().only_if_changed()).run(&second).await.unwrap();
        let rows =
            admin.query(&format!("SELECT k, at, local, day, f, r FROM {} ORDER BY k", q($table)), &[]).await.unwrap();
        db.drop().await;
        let half = ($len / 2) as u64;
        assert_eq!((again.inserted, again.skipped), ($len as u64 - half, half));
        assert_eq!((upsert.inserted, upsert.updated, upsert.unchanged), (0, 0, $len as u64), "{upsert:?}");
        let expected = $model::batch(0, $len + $len / 2);
        assert_eq!(rows.len(), expected.len());
        for (row, want) in rows.iter().zip(&expected) {
            let got = $model {
                k: row.get(0),
                at: row.get(1),
                local: row.get(2),
                day: row.get(3),
                f: row.get(4),
                r: row.get(5),
            };
            assert_eq!(&got, want);
        }
    }};
}

#[tokio::test]
async fn print_settings_between_calls_store_exact_values_short() {
    print_settings!(TimedShort, "timed_short", SHORT)
}

#[tokio::test]
async fn print_settings_between_calls_store_exact_values_plain() {
    print_settings!(TimedPlain, "timed_plain", PLAIN)
}

#[tokio::test]
async fn print_settings_between_calls_store_exact_values_copy() {
    print_settings!(TimedCopy, "timed_copy", COPY_BATCH)
}

// ---------------------------------------------------------------------------
// DISCARD ALL between calls of every kind
// ---------------------------------------------------------------------------

text_model!(DiscardShort, "discard_short");
text_model!(DiscardPlain, "discard_plain");
text_model!(DiscardCopy, "discard_copy");

/// `DISCARD ALL` before each call (prepared statements and the scratch
/// table gone, settings reset to the session's defaults): plain,
/// returning_keys, returning_skipped, upsert and batch_id calls of
/// half-overlapping batches count exactly, and a batch id replays.
macro_rules! discard_all {
    ($model:ident, $table:literal, $len:expr) => {{
        use bulk_runtime::{Ledger, Upsert};
        let db = TestDb::new(concat!("chg_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        admin.batch_execute(&Ledger::of::<$model>().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        let len = $len as i64;
        let half = ($len / 2) as u64;
        let new = $len as u64 - half;
        $model::bulk_create_new(&mut writer, &$model::batch(0, $len, "a")).await.unwrap();
        let mut got = Vec::new();
        for (i, kind) in ["plain", "keys", "skipped", "upsert", "batch", "replay"].into_iter().enumerate() {
            writer.batch_execute("DISCARD ALL").await.unwrap();
            let from = len / 2 * (i as i64 + 1).min(5);
            let batch = $model::batch(from, $len, kind);
            let r = match kind {
                "plain" => $model::bulk_create_new(&mut writer, &batch).await.map(|r| (r.inserted, r.skipped, 0)),
                "keys" => $model::bulk(&mut writer)
                    .returning_keys()
                    .run(&batch)
                    .await
                    .map(|r| (r.inserted, r.skipped, r.returned.len() as u64)),
                "skipped" => $model::bulk(&mut writer)
                    .returning_skipped()
                    .run(&batch)
                    .await
                    .map(|r| (r.inserted, r.skipped, r.returned.len() as u64)),
                "upsert" => $model::bulk(&mut writer)
                    .upsert(Upsert::all_columns())
                    .run(&batch)
                    .await
                    .map(|r| (r.inserted, r.skipped, r.updated)),
                _ => {
                    let batch = $model::batch(len / 2 * 5, $len, "batch");
                    $model::bulk(&mut writer)
                        .batch_id("b")
                        .run(&batch)
                        .await
                        .map(|r| (r.inserted, r.skipped, u64::from(r.replayed)))
                }
            };
            got.push((kind, r.map_err(|e| describe::<()>(&Err(e)))));
        }
        let stored = count(&admin, $table).await;
        db.drop().await;
        let want = vec![
            ("plain", Ok((new, half, 0))),
            ("keys", Ok((new, half, new))),
            ("skipped", Ok((new, half, half))),
            ("upsert", Ok((new, 0, half))),
            ("batch", Ok((new, half, 0))),
            ("replay", Ok((new, half, 1))),
        ];
        assert_eq!(got, want);
        assert_eq!(stored, len + 5 * new as i64);
    }};
}

#[tokio::test]
async fn discard_all_before_every_kind_of_call_short() {
    discard_all!(DiscardShort, "discard_short", SHORT)
}

#[tokio::test]
async fn discard_all_before_every_kind_of_call_plain() {
    discard_all!(DiscardPlain, "discard_plain", PLAIN)
}

#[tokio::test]
async fn discard_all_before_every_kind_of_call_copy() {
    discard_all!(DiscardCopy, "discard_copy", COPY_BATCH)
}

// ---------------------------------------------------------------------------
// A domain dropped with CASCADE and made again between calls
// ---------------------------------------------------------------------------

macro_rules! domain_model {
    ($name:ident, $table:literal) => {
        #[derive(BulkCreateNew, Debug, Clone)]
        #[bulk(table = $table, unique(k), id = false)]
        struct $name {
            k: i64,
            #[bulk(sql_type = "audit_owner")]
            owner: String,
        }

        impl $name {
            fn batch(from: i64, len: usize) -> Vec<$name> {
                (from..from + len as i64).map(|k| $name { k, owner: format!("owner {k}") }).collect()
            }
        }
    };
}

domain_model!(DomainShort, "domain_short");
domain_model!(DomainPlain, "domain_plain");
domain_model!(DomainCopy, "domain_copy");

/// The column's domain dropped with `CASCADE` (which drops the column) and
/// made again, and the column added back: the checked connection's next
/// calls (plain, then returning_keys) count exactly and store the offered
/// owners.
macro_rules! domain_made_again {
    ($model:ident, $table:literal, $len:expr) => {{
        const DOMAIN: &str = "CREATE DOMAIN audit_owner AS text CHECK (VALUE <> '')";
        let db = TestDb::new(concat!("chg_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(DOMAIN).await.unwrap();
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        $model::bulk_create_new(&mut writer, &$model::batch(0, $len)).await.unwrap();
        $model::bulk(&mut writer).returning_keys().run(&$model::batch(100_000, $len)).await.unwrap();
        admin
            .batch_execute(&format!(
                "DROP DOMAIN audit_owner CASCADE; {DOMAIN}; \
                 ALTER TABLE {t} ADD COLUMN owner audit_owner NOT NULL DEFAULT 'gone'",
                t = q($table)
            ))
            .await
            .unwrap();
        let plain = $model::bulk_create_new(&mut writer, &$model::batch(200_000, $len)).await;
        let keys = $model::bulk(&mut writer).returning_keys().run(&$model::batch(300_000, $len)).await;
        let wrong: i64 = admin
            .query_one(&format!("SELECT count(*) FROM {} WHERE k >= 200000 AND owner <> 'owner ' || k", q($table)), &[])
            .await
            .unwrap()
            .get(0);
        let stored = count(&admin, $table).await;
        db.drop().await;
        assert_eq!(plain.map(|r| r.inserted).map_err(|e| describe::<()>(&Err(e))), Ok($len as u64));
        assert_eq!(keys.map(|r| r.returned.len()).map_err(|e| describe::<()>(&Err(e))), Ok($len));
        assert_eq!((stored, wrong), (4 * $len as i64, 0));
    }};
}

#[tokio::test]
async fn domain_dropped_and_made_again_between_calls_short() {
    domain_made_again!(DomainShort, "domain_short", SHORT)
}

#[tokio::test]
async fn domain_dropped_and_made_again_between_calls_plain() {
    domain_made_again!(DomainPlain, "domain_plain", PLAIN)
}

#[tokio::test]
async fn domain_dropped_and_made_again_between_calls_copy() {
    domain_made_again!(DomainCopy, "domain_copy", COPY_BATCH)
}

// ---------------------------------------------------------------------------
// The same column change behind PgBouncer (transaction and session mode)
// ---------------------------------------------------------------------------

num_model!(PooledLossyShort, "pooled_lossy_short");
num_model!(PooledLossyCopy, "pooled_lossy_copy");
num_model!(SessionLossyShort, "session_lossy_short");
num_model!(SessionLossyCopy, "session_lossy_copy");

// As `bigint_column_altered_to_double_after_the_check_*`, through
// PgBouncer in transaction and session mode: refused with `ColumnType` on
// `n` on both paths (once the COPY path stored every `n` rounded).
macro_rules! pooled_lossy {
    ($model:ident, $table:literal, $len:expr, $mode:literal) => {{
        use bulk_tests::pgbouncer::Pgbouncer;
        let db = TestDb::new(concat!("chg_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let bouncer = Pgbouncer::start(&db, $mode, 2).await;
        let mut writer = bouncer.connect().await;
        let first = $model::bulk_create_new(&mut writer, &$model::batch(0, $len)).await;
        admin
            .batch_execute(concat!("ALTER TABLE ", $table, " ALTER COLUMN n TYPE double precision"))
            .await
            .unwrap();
        let result = $model::bulk_create_new(&mut writer, &$model::batch(100_000, $len)).await;
        let stored = count(&admin, $table).await;
        let changed: Vec<(i64, i64)> =
            changed_n(&admin, $table).await.into_iter().filter(|(k, _)| *k >= 100_000).collect();
        drop(writer);
        drop(bouncer);
        db.drop().await;
        assert_eq!(first.map(|r| r.inserted).map_err(|e| e.to_string()), Ok($len as u64));
        assert!(
            result.as_ref().is_err_and(|e| refused_with(
                e,
                |p| matches!(p, SchemaProblem::ColumnType { column, .. } if column == "n")
            )),
            "{}",
            describe(&result)
        );
        assert_eq!(stored, $len as i64, "nothing written ({} rows changed)", changed.len());
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bigint_column_altered_to_double_behind_a_transaction_pooler_short() {
    pooled_lossy!(PooledLossyShort, "pooled_lossy_short", SHORT, "transaction")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bigint_column_altered_to_double_behind_a_transaction_pooler_copy() {
    pooled_lossy!(PooledLossyCopy, "pooled_lossy_copy", COPY_BATCH, "transaction")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bigint_column_altered_to_double_behind_a_session_pooler_short() {
    pooled_lossy!(SessionLossyShort, "session_lossy_short", SHORT, "session")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bigint_column_altered_to_double_behind_a_session_pooler_copy() {
    pooled_lossy!(SessionLossyCopy, "session_lossy_copy", COPY_BATCH, "session")
}

// ---------------------------------------------------------------------------
// client_encoding = SQL_ASCII between calls (no conversion)
// ---------------------------------------------------------------------------

text_model!(AsciiShort, "ascii_short");
text_model!(AsciiPlain, "ascii_plain");
text_model!(AsciiCopy, "ascii_copy");

/// `SQL_ASCII` makes the server take the bytes as they come: the UTF-8 text
/// is stored as offered.
#[tokio::test]
async fn client_encoding_sql_ascii_between_calls_short() {
    client_encoding!(AsciiShort, "ascii_short", SHORT, "SQL_ASCII")
}

#[tokio::test]
async fn client_encoding_sql_ascii_between_calls_plain() {
    client_encoding!(AsciiPlain, "ascii_plain", PLAIN, "SQL_ASCII")
}

#[tokio::test]
async fn client_encoding_sql_ascii_between_calls_copy() {
    client_encoding!(AsciiCopy, "ascii_copy", COPY_BATCH, "SQL_ASCII")
}

// ---------------------------------------------------------------------------
// A model column made a generated column, and the key made deferrable
// ---------------------------------------------------------------------------

num_model!(GeneratedShort, "generated_short");
num_model!(GeneratedPlain, "generated_plain");
num_model!(GeneratedCopy, "generated_copy");

/// The model's column `n` dropped and added back as a generated column
/// (`GENERATED ALWAYS AS (k * 2) STORED`), which the check refuses
/// (`ColumnGenerated`): the checked connection's call fails naming `n`,
/// nothing written, and the connection serves the next call.
macro_rules! made_generated {
    ($model:ident, $table:literal, $len:expr) => {{
        let db = TestDb::new(concat!("chg_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        $model::bulk_create_new(&mut writer, &$model::batch(0, $len)).await.unwrap();
        admin
            .batch_execute(concat!(
                "ALTER TABLE ", $table, " DROP COLUMN n; ",
                "ALTER TABLE ", $table, " ADD COLUMN n bigint GENERATED ALWAYS AS (k * 2) STORED"
            ))
            .await
            .unwrap();
        let result = $model::bulk_create_new(&mut writer, &$model::batch(100_000, $len)).await;
        let stored = count(&admin, $table).await;
        db.drop().await;
        assert_eq!(stored, $len as i64, "nothing written: {}", describe(&result));
        let err = result.as_ref().unwrap_err();
        assert!(err.connection_usable(), "{}", describe(&result));
        assert!(
            refused_with(err, |p| matches!(p, SchemaProblem::ColumnGenerated { column, .. } if column == "n"))
                || err.to_string().contains("\"n\""),
            "names the column: {}",
            describe(&result)
        );
    }};
}

#[tokio::test]
async fn model_column_made_generated_between_calls_short() {
    made_generated!(GeneratedShort, "generated_short", SHORT)
}

#[tokio::test]
async fn model_column_made_generated_between_calls_plain() {
    made_generated!(GeneratedPlain, "generated_plain", PLAIN)
}

#[tokio::test]
async fn model_column_made_generated_between_calls_copy() {
    made_generated!(GeneratedCopy, "generated_copy", COPY_BATCH)
}

text_model!(DeferredShort, "deferred_short");
text_model!(DeferredPlain, "deferred_plain");
text_model!(DeferredCopy, "deferred_copy");

/// The key's unique index replaced by a `DEFERRABLE INITIALLY DEFERRED`
/// unique constraint (no immediate index left): the next call is refused
/// with the check's explanation naming the deferrable index, nothing
/// written.
macro_rules! key_made_deferrable {
    ($model:ident, $table:literal, $len:expr) => {{
        let db = TestDb::new(concat!("chg_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        $model::bulk_create_new(&mut writer, &$model::batch(0, $len, "a")).await.unwrap();
        admin
            .batch_execute(&format!(
                "DO $$ DECLARE i regclass; BEGIN
                     FOR i IN SELECT indexrelid::regclass FROM pg_index WHERE indrelid = '{t}'::regclass AND indisunique
                     LOOP EXECUTE 'DROP INDEX ' || i; END LOOP;
                 END $$; ALTER TABLE {t} ADD UNIQUE (k) DEFERRABLE INITIALLY DEFERRED",
                t = q($table),
            ))
            .await
            .unwrap();
        let result = $model::bulk_create_new(&mut writer, &$model::batch(0, 2 * $len, "b")).await;
        let stored = count(&admin, $table).await;
        db.drop().await;
        assert_eq!(stored, $len as i64, "nothing written: {}", describe(&result));
        // (`DeferrableKeyConstraint` is for one beside an immediate index;
        // with none left, the check's `UniqueKeyMissing` says why the
        // deferrable one does not serve.)
        assert!(
            result.as_ref().is_err_and(|e| refused_with(e, |p| match p {
                SchemaProblem::DeferrableKeyConstraint { .. } => true,
                SchemaProblem::UniqueKeyMissing { rejected, .. } => rejected.iter().any(|r| r.contains("deferrable")),
                _ => false,
            })),
            "{}",
            describe(&result)
        );
    }};
}

#[tokio::test]
async fn key_made_deferrable_between_calls_short() {
    key_made_deferrable!(DeferredShort, "deferred_short", SHORT)
}

#[tokio::test]
async fn key_made_deferrable_between_calls_plain() {
    key_made_deferrable!(DeferredPlain, "deferred_plain", PLAIN)
}

#[tokio::test]
async fn key_made_deferrable_between_calls_copy() {
    key_made_deferrable!(DeferredCopy, "deferred_copy", COPY_BATCH)
}

// ---------------------------------------------------------------------------
// A key column altered to round its values after the check
// ---------------------------------------------------------------------------

macro_rules! rounded_model {
    ($name:ident, $table:literal) => {
        #[derive(BulkCreateNew, Debug, Clone)]
        #[bulk(table = $table, unique(sensor, at), id = false)]
        struct $name {
            sensor: i64,
            at: chrono::DateTime<chrono::Utc>,
            n: i64,
        }

        impl $name {
            /// `len` keys of sensor `sensor`, `at` whole seconds from the
            /// epoch plus `millis` (all distinct, and distinct once rounded
            /// to whole seconds only when `millis` is 0).
            fn batch(sensor: i64, len: usize, millis: i64) -> Vec<$name> {
                (0..len as i64)
                    .map(|i| $name {
                        sensor,
                        at: chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + i * 1000 + millis).unwrap(),
                        n: i,
                    })
                    .collect()
            }
        }
    };
}

rounded_model!(RoundedShort, "rounded_short");
rounded_model!(RoundedPlain, "rounded_plain");
rounded_model!(RoundedCopy, "rounded_copy");
rounded_model!(RoundedKeys, "rounded_keys");
rounded_model!(RoundedUpsert, "rounded_upsert");

/// Which builder form a probe calls.
#[derive(Clone, Copy, Debug)]
enum Form {
    Plain,
    ReturningKeys,
    Upsert,
}

// A `timestamptz` key column altered to `timestamptz(0)` after the check
// rounds every offered key to the second: a stored key's offered variant
// 300 ms later is then the same key, and so are two new ones 300 ms apart.
// A new connection's check refuses such a table (`KeyRounded`); the checked
// connection's next call must too, nothing written, whatever its form
// (once a gap: the server re-planned its prepared statements without
// telling the client, and two offered keys that round alike counted as one
// inserted and one skipped).
macro_rules! key_altered_to_round {
    ($model:ident, $table:literal, $len:expr, $form:expr) => {{
        let db = TestDb::new(concat!("chg_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        let first = $model::bulk_create_new(&mut writer, &$model::batch(1, $len, 0)).await.unwrap();
        assert_eq!(first.inserted, $len as u64);
        admin
            .batch_execute(concat!("ALTER TABLE ", $table, " ALTER COLUMN at TYPE timestamptz(0)"))
            .await
            .unwrap();
        // Sensor 1's keys again, 300 ms later (stored once rounded), and
        // sensor 2's new keys twice, 300 ms apart (one key each once rounded).
        let mut batch = $model::batch(1, $len / 2, 300);
        batch.extend($model::batch(2, $len / 2, 0));
        batch.extend($model::batch(2, $len - $len / 2, 300));
        let result = match $form {
            Form::Plain => $model::bulk_create_new(&mut writer, &batch).await.map(|r| r.inserted),
            Form::ReturningKeys => {
                $model::bulk(&mut writer).returning_keys().run(&batch).await.map(|r| r.inserted)
            }
            Form::Upsert => $model::bulk(&mut writer)
                .upsert(bulk_runtime::Upsert::set([$model::columns().n]))
                .run(&batch)
                .await
                .map(|r| r.inserted),
        };
        let stored = count(&admin, $table).await;
        db.drop().await;
        assert_eq!(stored, $len as i64, "nothing written: {}", describe(&result));
        assert!(
            result.as_ref().is_err_and(|e| refused_with(
                e,
                |p| matches!(p, SchemaProblem::KeyRounded { column, .. } if column == "at")
            )),
            "expected KeyRounded: {}",
            describe(&result)
        );
    }};
}

#[tokio::test]
async fn key_altered_to_round_after_the_check_short() {
    key_altered_to_round!(RoundedShort, "rounded_short", SHORT, Form::Plain)
}

#[tokio::test]
async fn key_altered_to_round_after_the_check_plain() {
    key_altered_to_round!(RoundedPlain, "rounded_plain", PLAIN, Form::Plain)
}

#[tokio::test]
async fn key_altered_to_round_after_the_check_copy() {
    key_altered_to_round!(RoundedCopy, "rounded_copy", COPY_BATCH, Form::Plain)
}

#[tokio::test]
async fn key_altered_to_round_after_the_check_returning_keys() {
    key_altered_to_round!(RoundedKeys, "rounded_keys", PLAIN, Form::ReturningKeys)
}

#[tokio::test]
async fn key_altered_to_round_after_the_check_upsert() {
    key_altered_to_round!(RoundedUpsert, "rounded_upsert", SHORT, Form::Upsert)
}

num_model!(NegScaleShort, "negscale_short");
num_model!(NegScaleCopy, "negscale_copy");

/// A `bigint` key altered to `numeric(20, -2)` after the check (the check
/// accepts `numeric` for an `i64` key, but not one that rounds to
/// hundreds): refused with `KeyRounded`, nothing written.
macro_rules! key_altered_to_negative_scale {
    ($model:ident, $table:literal, $len:expr) => {{
        let db = TestDb::new(concat!("chg_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        $model::bulk_create_new(&mut writer, &$model::batch(0, 1)).await.unwrap();
        admin
            .batch_execute(concat!("ALTER TABLE ", $table, " ALTER COLUMN k TYPE numeric(20, -2)"))
            .await
            .unwrap();
        // Keys 100 apart from 1,000 on, and each of them plus 1: one stored
        // key per pair once rounded.
        let mut batch = $model::batch(0, 0);
        for i in 0..($len as i64) / 2 {
            batch.extend($model::batch(1_000 + 100 * i, 1));
            batch.extend($model::batch(1_001 + 100 * i, 1));
        }
        let result = $model::bulk_create_new(&mut writer, &batch).await;
        let stored = count(&admin, $table).await;
        db.drop().await;
        assert_eq!(stored, 1, "nothing written: {}", describe(&result));
        assert!(
            result.as_ref().is_err_and(|e| refused_with(
                e,
                |p| matches!(p, SchemaProblem::KeyRounded { column, .. } if column == "k")
            )),
            "expected KeyRounded: {}",
            describe(&result)
        );
    }};
}

#[tokio::test]
async fn integer_key_altered_to_a_negative_scale_after_the_check_short() {
    key_altered_to_negative_scale!(NegScaleShort, "negscale_short", SHORT)
}

#[tokio::test]
async fn integer_key_altered_to_a_negative_scale_after_the_check_copy() {
    key_altered_to_negative_scale!(NegScaleCopy, "negscale_copy", COPY_BATCH)
}

// ---------------------------------------------------------------------------
// The table's name also names another type, in a schema before the
// table's on the search_path (an enum named like the table): the short
// path's `ON CONFLICT` form reads its columns' types from the catalog then
// (README). Made before the check, and made after it, then the table
// altered: counts exact, a retyped column refused, nothing written.
// ---------------------------------------------------------------------------

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "shadowed", unique(k), id = false)]
struct Shadowed {
    k: i64,
    n: i64,
}

fn shadowed(from: i64, len: usize) -> Vec<Shadowed> {
    (from..from + len as i64).map(|k| Shadowed { k, n: (1i64 << 53) + 2 * k + 1 }).collect()
}

async fn shadow_probe(before_check: bool, in_transaction: bool) {
    let db = TestDb::new(&format!("shadow_{before_check}_{in_transaction}")).await;
    let admin = db.connect().await;
    let front = format!("{}_front", db.schema);
    admin.batch_execute(&Shadowed::model().migration_sql()).await.unwrap();
    admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}", q(&front))).await.unwrap();
    let shadow = format!("CREATE TYPE {}.shadowed AS ENUM ('a')", q(&front));
    if before_check {
        admin.batch_execute(&shadow).await.unwrap();
    }
    let mut w = db.connect().await;
    w.batch_execute(&format!("SET search_path = {}, {}", q(&front), q(&db.schema))).await.unwrap();
    let what = format!("shadow made before the check: {before_check}, in a transaction: {in_transaction}");
    for round in 0..7 {
        let r = if in_transaction {
            let mut tx = w.transaction().await.unwrap();
            let r = Shadowed::bulk_create_new(&mut tx, &shadowed(round * 5, SHORT)).await;
            tx.commit().await.unwrap();
            r
        } else {
            Shadowed::bulk_create_new(&mut w, &shadowed(round * 5, SHORT)).await
        };
        let want = if round == 0 { SHORT } else { 5 };
        assert_eq!(r.as_ref().map(|r| r.inserted as usize).ok(), Some(want), "{what}, round {round}: {}", describe(&r));
    }
    // Another kind of call: its statement is prepared with the next check
    // (the connection is known to be direct now).
    let rows = shadowed(500, SHORT);
    let r = if in_transaction {
        let mut tx = w.transaction().await.unwrap();
        let r = Shadowed::bulk(&mut tx).returning_keys().run(&rows).await;
        tx.commit().await.unwrap();
        r
    } else {
        Shadowed::bulk(&mut w).returning_keys().run(&rows).await
    };
    assert_eq!(r.as_ref().map(|r| r.inserted as usize).ok(), Some(SHORT), "{what}, returning_keys: {:?}", r.err());
    if !before_check {
        admin.batch_execute(&shadow).await.unwrap();
    }
    // Altered in a way that keeps the model fitting: the statement is
    // parsed again, and the name now finds the enum first.
    admin.batch_execute("ALTER TABLE shadowed ADD COLUMN extra int").await.unwrap();
    let r = Shadowed::bulk_create_new(&mut w, &shadowed(1_000, SHORT)).await;
    assert_eq!(r.as_ref().map(|r| r.inserted as usize).ok(), Some(SHORT), "{what}, column added: {}", describe(&r));
    let stored = count(&admin, "shadowed").await;
    admin.batch_execute("ALTER TABLE shadowed ALTER n TYPE double precision").await.unwrap();
    let r = Shadowed::bulk_create_new(&mut w, &shadowed(2_000, SHORT)).await;
    assert!(
        matches!(&r, Err(e) if refused_with(e, |p| matches!(p, SchemaProblem::ColumnType { .. }))),
        "{what}, retyped: {}",
        describe(&r)
    );
    assert_eq!(count(&admin, "shadowed").await, stored, "{what}: nothing written");
    admin.batch_execute(&format!("DROP SCHEMA {} CASCADE", q(&front))).await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn a_type_named_like_the_table_first_on_the_search_path() {
    for in_transaction in [false, true] {
        shadow_probe(true, in_transaction).await;
        shadow_probe(false, in_transaction).await;
    }
}

// ---------------------------------------------------------------------------
// The short path's guard reads the columns' types from the statement while
// they are built-in types it knows, and from the catalog otherwise: a key
// column altered to `numeric(20, 0)` (which may round, so the catalog
// guard), then a payload column to `numeric` (known), then both back, then
// a payload column to `text` (refused); every call on one connection,
// counts exact, first offered row kept.
// ---------------------------------------------------------------------------

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "guard_forms", unique(k), id = false)]
struct GuardForms {
    k: i64,
    n: i64,
}

#[tokio::test]
async fn the_guard_follows_the_columns_types_back_and_forth() {
    let db = TestDb::new("guard_forms").await;
    let admin = db.connect().await;
    admin.batch_execute(&GuardForms::model().migration_sql()).await.unwrap();
    let mut w = db.connect().await;
    let batch = |from: i64| -> Vec<GuardForms> {
        // Ten new keys, a repeat of the first (kept out) and a stored key.
        let mut rows: Vec<GuardForms> = (from..from + 10).map(|k| GuardForms { k, n: k * 3 }).collect();
        rows.push(GuardForms { k: from, n: -1 });
        rows.push(GuardForms { k: 0, n: -1 });
        rows
    };
    GuardForms::bulk_create_new(&mut w, [GuardForms { k: 0, n: 0 }]).await.unwrap();
    let steps = [
        "SELECT 1",
        "ALTER TABLE guard_forms ALTER k TYPE numeric(20, 0)",
        "ALTER TABLE guard_forms ALTER n TYPE numeric",
        "ALTER TABLE guard_forms ALTER k TYPE bigint, ALTER n TYPE bigint",
        "SELECT 1",
    ];
    let mut from = 100;
    for step in steps {
        admin.batch_execute(step).await.unwrap();
        for _ in 0..7 {
            let r = GuardForms::bulk_create_new(&mut w, &batch(from)).await;
            assert_eq!(r.as_ref().map(|r| (r.inserted, r.skipped)).ok(), Some((10, 2)), "{step}: {}", describe(&r));
            let n: i64 = admin
                .query_one(&format!("SELECT n::bigint FROM guard_forms WHERE k = {from}"), &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, from * 3, "{step}: the first offered row");
            from += 100;
        }
    }
    admin.batch_execute("ALTER TABLE guard_forms ALTER n TYPE text").await.unwrap();
    let stored = count(&admin, "guard_forms").await;
    let r = GuardForms::bulk_create_new(&mut w, &batch(from)).await;
    assert!(
        matches!(&r, Err(e) if refused_with(e, |p| matches!(p, SchemaProblem::ColumnType { .. }))),
        "text: {}",
        describe(&r)
    );
    assert_eq!(count(&admin, "guard_forms").await, stored, "nothing written");
    db.drop().await;
}
