//! A new connection's first call without the schema check, when this
//! process already passed a check of the model (see `bulk_runtime`'s
//! `call::first`): the insert returns its rows, and the call commits only
//! when the server's description of them names the checked table and column
//! types. These tests change the table between connections of one process
//! and check that no key is ever stored twice, that counts stay exact, and
//! that a table that no longer fits the model is explained as without the
//! shortcut, with nothing written.
//!
//! Each test has models of its own: the passed checks are kept per model.

use std::time::Duration;

use bulk_runtime::{BulkCreateNew, Error, SchemaProblem};
use bulk_tests::recorder::SqlRecorder;
use bulk_tests::{TestDb, count};
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
            /// Keys `from..from + len`, in a scrambled order.
            fn batch(from: i64, len: usize) -> Vec<$name> {
                let n = len as i64;
                (0..n).map(|i| $name { k: from + (i * 7919) % n, payload: format!("row {i}") }).collect()
            }
        }
    };
}

/// The schema check's catalog query: in a call's statements when it checked.
const CHECK_QUERY: &str = "format_type(a.atttypid";

/// Batch lengths that take the first call's two statements: `VALUES` and `unnest`.
const LENGTHS: [usize; 2] = [10, 300];

/// Rows of `table` with key `k`.
async fn copies(client: &Client, table: &str, k: i64) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM {table} WHERE k = $1"), &[&k]).await.unwrap().get(0)
}

/// Statements recorded after the first `skip`.
fn since(recorder: &SqlRecorder, skip: usize) -> Vec<String> {
    recorder.statements().into_iter().skip(skip).collect()
}

fn assert_problem(err: &Error, wanted: impl Fn(&SchemaProblem) -> bool) {
    match err {
        Error::SchemaMismatch { problems, .. } => assert!(problems.iter().any(wanted), "{err}"),
        other => panic!("expected the schema check's explanation, got {other:?}"),
    }
}

model!(Skipped, "first_skipped");

/// A second connection's first call sends `BEGIN`, the insert returning its
/// rows, and `COMMIT`, without the check; its second call checks and
/// prepares; the third runs the prepared statement.
#[tokio::test]
async fn a_new_connection_writes_without_checking_again() {
    let db = TestDb::new("first_skipped").await;
    let recorder = SqlRecorder::start().await;
    let admin = db.connect().await;
    admin.batch_execute(&Skipped::model().migration_sql()).await.unwrap();
    let mut first = recorder.connect(&db.schema).await;
    assert_eq!(Skipped::bulk_create_new(&mut first, &Skipped::batch(0, 10)).await.unwrap().inserted, 10);
    assert!(recorder.statements().iter().any(|s| s.contains(CHECK_QUERY)), "the process's first call checks");
    drop(first);

    let mut end = 10;
    for len in LENGTHS {
        // Five keys stored, the rest new.
        let from = end - 5;
        end = from + len as i64;
        let before = recorder.statements().len();
        let mut next = recorder.connect(&db.schema).await;
        let report = Skipped::bulk_create_new(&mut next, &Skipped::batch(from, len)).await.unwrap();
        assert_eq!((report.inserted as usize, report.skipped), (len - 5, 5), "{len} rows");
        let sent = since(&recorder, before);
        assert!(!sent.iter().any(|s| s.contains(CHECK_QUERY)), "no check on a new connection: {sent:#?}");
        // SET search_path, BEGIN, the insert, COMMIT.
        assert_eq!(sent.len(), 4, "{sent:#?}");
        assert_eq!((sent[1].as_str(), sent[3].as_str()), ("BEGIN", "COMMIT"), "{sent:#?}");
        let form = if len <= bulk_runtime::__test_hooks::FIRST_CALL_VALUES_UP_TO { "VALUES" } else { "unnest" };
        assert!(sent[2].contains(form) && sent[2].contains("RETURNING"), "{sent:#?}");

        // The connection's second call checks and prepares; its third runs
        // the prepared statement (nothing parsed).
        let base = 1000 * len as i64;
        let before = recorder.statements().len();
        let report = Skipped::bulk_create_new(&mut next, &Skipped::batch(base, 10)).await.unwrap();
        assert_eq!(report.inserted, 10);
        assert!(since(&recorder, before).iter().any(|s| s.contains(CHECK_QUERY)), "the second call checks");
        let before = recorder.statements().len();
        let report = Skipped::bulk_create_new(&mut next, &Skipped::batch(base + 5, 10)).await.unwrap();
        assert_eq!((report.inserted, report.skipped), (5, 5));
        assert!(since(&recorder, before).is_empty(), "the prepared statement runs: {:#?}", since(&recorder, before));
    }
    assert_eq!(copies(&admin, "first_skipped", 7).await, 1);
    assert_eq!(count(&admin, "first_skipped").await, 10 + 5 + 295 + 2 * 15);
    db.drop().await;
}

model!(AllStored, "first_all_stored");

/// A first call whose keys are all stored returns no row to read the
/// description from: it checks in the rollback's round trip, counts
/// exactly, and still explains a table that no longer fits the model (here
/// a key column made a domain, which the insert alone would accept).
#[tokio::test]
async fn a_first_call_whose_keys_are_all_stored_checks() {
    let db = TestDb::new("first_all_stored").await;
    let recorder = SqlRecorder::start().await;
    let admin = db.connect().await;
    admin.batch_execute(&AllStored::model().migration_sql()).await.unwrap();
    let mut first = db.connect().await;
    AllStored::bulk_create_new(&mut first, &AllStored::batch(0, 400)).await.unwrap();
    for len in LENGTHS {
        let before = recorder.statements().len();
        let mut next = recorder.connect(&db.schema).await;
        let report = AllStored::bulk_create_new(&mut next, &AllStored::batch(0, len)).await.unwrap();
        assert_eq!((report.inserted, report.skipped), (0, len as u64));
        let sent = since(&recorder, before);
        assert!(sent.iter().any(|s| s.contains("RETURNING")), "a first call: {sent:#?}");
        assert!(sent.iter().any(|s| s.contains(CHECK_QUERY)), "it checked: {sent:#?}");
    }
    admin
        .batch_execute("CREATE DOMAIN first_key AS bigint; ALTER TABLE first_all_stored ALTER COLUMN k TYPE first_key")
        .await
        .unwrap();
    for len in LENGTHS {
        let mut next = db.connect().await;
        let err = AllStored::bulk_create_new(&mut next, &AllStored::batch(0, len)).await.unwrap_err();
        assert_problem(&err, |p| matches!(p, SchemaProblem::ColumnType { column, .. } if column == "k"));
    }
    assert_eq!(count(&admin, "first_all_stored").await, 400);
    db.drop().await;
}

model!(Domain, "first_domain");

/// What a first call cannot see: a key column made a domain over its own
/// type (the server describes the base type). The first call of the first
/// new connection after the change writes (as the table takes it); that
/// connection's next call checks and refuses, and so does every new
/// connection after that check.
#[tokio::test]
async fn a_column_made_a_domain_is_refused_from_the_next_check_on() {
    let db = TestDb::new("first_domain").await;
    let admin = db.connect().await;
    admin.batch_execute(&Domain::model().migration_sql()).await.unwrap();
    let mut first = db.connect().await;
    Domain::bulk_create_new(&mut first, &Domain::batch(0, 10)).await.unwrap();
    admin
        .batch_execute("CREATE DOMAIN first_key AS bigint; ALTER TABLE first_domain ALTER COLUMN k TYPE first_key")
        .await
        .unwrap();
    let mut next = db.connect().await;
    assert_eq!(Domain::bulk_create_new(&mut next, &Domain::batch(10, 10)).await.unwrap().inserted, 10);
    let err = Domain::bulk_create_new(&mut next, &Domain::batch(20, 10)).await.unwrap_err();
    assert_problem(&err, |p| matches!(p, SchemaProblem::ColumnType { column, .. } if column == "k"));
    for len in LENGTHS {
        let mut next = db.connect().await;
        let err = Domain::bulk_create_new(&mut next, &Domain::batch(20, len)).await.unwrap_err();
        assert_problem(&err, |p| matches!(p, SchemaProblem::ColumnType { column, .. } if column == "k"));
    }
    assert_eq!(count(&admin, "first_domain").await, 20);
    db.drop().await;
}

model!(Ruled, "first_ruled");

/// An `ON INSERT ... DO ALSO` rule (an audit trail) created since this
/// process checked the table: a new connection's first call is refused
/// with the check's explanation and writes nothing, on both of its
/// statements. Before, the 300-row first call ran the plain form, stored
/// its 300 rows and committed, and the rule's audit table got none of them
/// (its action reruns the anti-join once the keys are stored).
#[tokio::test]
async fn an_insert_rule_created_since_the_check_is_refused() {
    let db = TestDb::new("first_ruled").await;
    let admin = db.connect().await;
    admin.batch_execute(&Ruled::model().migration_sql()).await.unwrap();
    admin.batch_execute("CREATE TABLE first_audit (k bigint NOT NULL)").await.unwrap();
    let rule = "CREATE RULE audited AS ON INSERT TO first_ruled DO ALSO INSERT INTO first_audit VALUES (NEW.k)";
    for (i, len) in LENGTHS.into_iter().enumerate() {
        // A check passed without the rule (a refused call forgets the passes).
        let from = 10_000 * i as i64;
        let mut checked = db.connect().await;
        assert_eq!(Ruled::bulk_create_new(&mut checked, &Ruled::batch(from, 10)).await.unwrap().inserted, 10);
        admin.batch_execute(rule).await.unwrap();
        let mut next = db.connect().await;
        let err = Ruled::bulk_create_new(&mut next, &Ruled::batch(from + 1000, len)).await.unwrap_err();
        assert_problem(&err, |p| matches!(p, SchemaProblem::InsertRules { rules } if rules == &["audited"]));
        admin.batch_execute("DROP RULE audited ON first_ruled").await.unwrap();
    }
    let written = (count(&admin, "first_ruled").await, count(&admin, "first_audit").await);
    db.drop().await;
    assert_eq!(written, (20, 0), "nothing of the refused batches is written");
}

model!(Dropped, "first_dropped");

/// The unique index dropped between connections: `ON CONFLICT` finds no
/// arbiter, nothing is written, and the check explains it.
#[tokio::test]
async fn a_dropped_unique_index_is_explained() {
    let db = TestDb::new("first_dropped").await;
    let admin = db.connect().await;
    admin.batch_execute(&Dropped::model().migration_sql()).await.unwrap();
    let mut first = db.connect().await;
    Dropped::bulk_create_new(&mut first, &Dropped::batch(0, 10)).await.unwrap();
    let index: String = admin
        .query_one(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'first_dropped'::regclass AND indisunique",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    admin.batch_execute(&format!("DROP INDEX {index}")).await.unwrap();
    for len in LENGTHS {
        let mut next = db.connect().await;
        let err = Dropped::bulk_create_new(&mut next, &Dropped::batch(5, len)).await.unwrap_err();
        assert_problem(&err, |p| matches!(p, SchemaProblem::UniqueKeyMissing { .. }));
    }
    assert_eq!(count(&admin, "first_dropped").await, 10);
    // Given back under another name, the index serves the next new connection.
    admin.batch_execute("CREATE UNIQUE INDEX first_dropped_again ON first_dropped (k)").await.unwrap();
    for len in LENGTHS {
        let mut next = db.connect().await;
        let report = Dropped::bulk_create_new(&mut next, &Dropped::batch(0, len)).await.unwrap();
        assert_eq!(report.inserted as usize, len - 10.min(len));
        assert_eq!(copies(&admin, "first_dropped", 3).await, 1);
    }
    db.drop().await;
}

model!(Forked, "first_forked");

/// The unique index's catalog entry says it is not unique, as a table of
/// the same OID and types on another server (a fork, the same migrations on
/// a fresh cluster) could have a plain index: `ON CONFLICT` refuses it as
/// an arbiter, and the call explains.
#[tokio::test]
async fn an_index_that_is_not_unique_is_explained() {
    let db = TestDb::new("first_forked").await;
    let admin = db.connect().await;
    admin.batch_execute(&Forked::model().migration_sql()).await.unwrap();
    let mut first = db.connect().await;
    Forked::bulk_create_new(&mut first, &Forked::batch(0, 10)).await.unwrap();
    admin
        .batch_execute("UPDATE pg_catalog.pg_index SET indisunique = false WHERE indrelid = 'first_forked'::regclass")
        .await
        .unwrap();
    for len in LENGTHS {
        let mut next = db.connect().await;
        let err = Forked::bulk_create_new(&mut next, &Forked::batch(5, len)).await.unwrap_err();
        assert_problem(&err, |p| matches!(p, SchemaProblem::UniqueKeyMissing { .. }));
    }
    assert_eq!(count(&admin, "first_forked").await, 10);
    db.drop().await;
}

model!(Retyped, "first_retyped");

/// A column's type changed between connections: to one the model does not
/// fit (explained, nothing written), then to one it does but the check did
/// not see (`numeric` for `bigint`: the call checks again and inserts).
#[tokio::test]
async fn a_changed_column_type_is_checked_again() {
    let db = TestDb::new("first_retyped").await;
    let admin = db.connect().await;
    admin.batch_execute(&Retyped::model().migration_sql()).await.unwrap();
    let mut first = db.connect().await;
    Retyped::bulk_create_new(&mut first, &Retyped::batch(0, 10)).await.unwrap();
    admin
        .batch_execute("ALTER TABLE first_retyped ALTER COLUMN payload TYPE bytea USING payload::bytea")
        .await
        .unwrap();
    for len in LENGTHS {
        let mut next = db.connect().await;
        let err = Retyped::bulk_create_new(&mut next, &Retyped::batch(5, len)).await.unwrap_err();
        assert_problem(&err, |p| matches!(p, SchemaProblem::ColumnType { column, .. } if column == "payload"));
    }
    assert_eq!(count(&admin, "first_retyped").await, 10);
    admin
        .batch_execute(
            "ALTER TABLE first_retyped ALTER COLUMN payload TYPE text USING convert_from(payload, 'UTF8'), \
             ALTER COLUMN k TYPE numeric",
        )
        .await
        .unwrap();
    let mut from = 0;
    for len in LENGTHS {
        let mut next = db.connect().await;
        let report = Retyped::bulk_create_new(&mut next, &Retyped::batch(from, len)).await.unwrap();
        let stored = if from == 0 { 10 } else { 0 };
        assert_eq!((report.inserted as usize, report.skipped as usize), (len - stored, stored));
        from += len as i64;
    }
    assert_eq!(count(&admin, "first_retyped").await, 310);
    db.drop().await;
}

model!(Required, "first_required");

/// A required column added between connections: explained, nothing written.
#[tokio::test]
async fn a_new_required_column_is_explained() {
    let db = TestDb::new("first_required").await;
    let admin = db.connect().await;
    admin.batch_execute(&Required::model().migration_sql()).await.unwrap();
    let mut first = db.connect().await;
    Required::bulk_create_new(&mut first, &Required::batch(0, 10)).await.unwrap();
    admin.batch_execute("ALTER TABLE first_required ADD COLUMN extra int NOT NULL DEFAULT 0").await.unwrap();
    admin.batch_execute("ALTER TABLE first_required ALTER COLUMN extra DROP DEFAULT").await.unwrap();
    for len in LENGTHS {
        let mut next = db.connect().await;
        let err = Required::bulk_create_new(&mut next, &Required::batch(5, len)).await.unwrap_err();
        assert_problem(&err, |p| matches!(p, SchemaProblem::RequiredColumnNotInModel { column } if column == "extra"));
    }
    assert_eq!(count(&admin, "first_required").await, 10);
    db.drop().await;
}

model!(Elsewhere, "first_elsewhere");

/// Two tables of one name in two schemas (as two databases or servers
/// would have): each connection writes to the table its `search_path`
/// names, with exact counts, whichever was checked last.
#[tokio::test]
async fn tables_of_one_name_elsewhere_are_told_apart() {
    let one = TestDb::new("first_elsewhere_one").await;
    let two = TestDb::new("first_elsewhere_two").await;
    for db in [&one, &two] {
        db.connect().await.batch_execute(&Elsewhere::model().migration_sql()).await.unwrap();
    }
    two.connect().await.batch_execute("INSERT INTO first_elsewhere VALUES (3, 'stored')").await.unwrap();
    let mut client = one.connect().await;
    Elsewhere::bulk_create_new(&mut client, &Elsewhere::batch(100_000, 1)).await.unwrap();
    for round in 0..2i64 {
        for (db, first) in [(&one, true), (&two, false)] {
            for len in LENGTHS {
                let mut next = db.connect().await;
                let from = 10_000 * (round + 1) + 10 * len as i64;
                let batch = [Elsewhere::batch(from, len), Elsewhere::batch(3, 1)].concat();
                let report = Elsewhere::bulk_create_new(&mut next, &batch).await.unwrap();
                // Key 3: stored in `two`; in `one`, from its first offer on.
                let new_3 = first && round == 0 && len == LENGTHS[0];
                assert_eq!(
                    report.inserted as usize,
                    len + usize::from(new_3),
                    "round {round}, {len} rows, {}",
                    db.schema
                );
            }
        }
    }
    assert_eq!(count(&one.connect().await, "first_elsewhere").await, 1 + 2 * 310 + 1);
    assert_eq!(count(&two.connect().await, "first_elsewhere").await, 1 + 2 * 310);
    one.drop().await;
    two.drop().await;
}

model!(Recreated, "first_recreated");

/// The table dropped and made again between connections (a new OID).
#[tokio::test]
async fn a_recreated_table_is_checked_again() {
    let db = TestDb::new("first_recreated").await;
    let admin = db.connect().await;
    admin.batch_execute(&Recreated::model().migration_sql()).await.unwrap();
    let mut first = db.connect().await;
    Recreated::bulk_create_new(&mut first, &Recreated::batch(0, 10)).await.unwrap();
    admin.batch_execute("DROP TABLE first_recreated").await.unwrap();
    admin.batch_execute(&Recreated::model().migration_sql()).await.unwrap();
    admin.batch_execute("INSERT INTO first_recreated VALUES (3, 'stored')").await.unwrap();
    for len in LENGTHS {
        let mut next = db.connect().await;
        let report = Recreated::bulk_create_new(&mut next, &Recreated::batch(0, len)).await.unwrap();
        assert_eq!(report.inserted, if len == 10 { 9 } else { 290 });
    }
    assert_eq!(copies(&admin, "first_recreated", 3).await, 1);
    db.drop().await;
}

model!(Viewed, "first_viewed");

/// The table renamed and a view of it put in its place between
/// connections: the view has no unique index, and the call refuses it as
/// the check does, with nothing written through it.
#[tokio::test]
async fn a_table_replaced_by_a_view_is_refused() {
    let db = TestDb::new("first_viewed").await;
    let admin = db.connect().await;
    admin.batch_execute(&Viewed::model().migration_sql()).await.unwrap();
    let mut first = db.connect().await;
    Viewed::bulk_create_new(&mut first, &Viewed::batch(0, 10)).await.unwrap();
    admin
        .batch_execute(
            "ALTER TABLE first_viewed RENAME TO first_viewed_base; \
             CREATE VIEW first_viewed AS SELECT * FROM first_viewed_base",
        )
        .await
        .unwrap();
    for len in LENGTHS {
        let mut next = db.connect().await;
        let err = Viewed::bulk_create_new(&mut next, &Viewed::batch(5, len)).await.unwrap_err();
        assert_problem(&err, |p| matches!(p, SchemaProblem::UniqueKeyMissing { .. }));
    }
    assert_eq!(count(&admin, "first_viewed_base").await, 10);
    db.drop().await;
}

model!(Repeatable, "first_repeatable");

/// A session under `REPEATABLE READ`.
#[tokio::test]
async fn a_repeatable_read_session_inserts() {
    let db = TestDb::new("first_repeatable").await;
    let admin = db.connect().await;
    admin.batch_execute(&Repeatable::model().migration_sql()).await.unwrap();
    let mut first = db.connect().await;
    Repeatable::bulk_create_new(&mut first, &Repeatable::batch(0, 200)).await.unwrap();
    let mut next = db.connect().await;
    next.batch_execute("SET default_transaction_isolation = 'repeatable read'").await.unwrap();
    let report = Repeatable::bulk_create_new(&mut next, &Repeatable::batch(100, 300)).await.unwrap();
    assert_eq!((report.inserted, report.skipped), (200, 100));
    assert_eq!(copies(&admin, "first_repeatable", 150).await, 1);
    db.drop().await;
}

/// A key of a bigint and a timestamp.
macro_rules! reading {
    ($name:ident, $table:literal) => {
        #[derive(BulkCreateNew, Debug, Clone)]
        #[bulk(table = $table, unique(sensor, at), id = false)]
        struct $name {
            sensor: i64,
            at: chrono::DateTime<chrono::Utc>,
        }

        impl $name {
            /// Two readings of one sensor 200 ms apart, that round to one
            /// whole second.
            fn pair(sensor: i64) -> [$name; 2] {
                let at = chrono::DateTime::from_timestamp(1_700_000_000, 100_000_000).unwrap();
                [$name { sensor, at }, $name { sensor, at: at + chrono::Duration::milliseconds(200) }]
            }
        }
    };
}

reading!(Rounded, "first_rounded");
reading!(RoundedElsewhere, "first_rounded_elsewhere");

/// The key's timestamp column altered to round to whole seconds between
/// connections (same type OID, another type modifier): explained, nothing
/// written. Two offered keys never become one stored key.
#[tokio::test]
async fn a_key_column_altered_to_round_is_refused() {
    let db = TestDb::new("first_rounded").await;
    let admin = db.connect().await;
    admin.batch_execute(&Rounded::model().migration_sql()).await.unwrap();
    let mut first = db.connect().await;
    assert_eq!(Rounded::bulk_create_new(&mut first, &Rounded::pair(1)[..1]).await.unwrap().inserted, 1);
    admin.batch_execute("ALTER TABLE first_rounded ALTER COLUMN at TYPE timestamptz(0)").await.unwrap();
    let mut next = db.connect().await;
    let err = Rounded::bulk_create_new(&mut next, &Rounded::pair(2)).await.unwrap_err();
    assert_problem(&err, |p| matches!(p, SchemaProblem::KeyRounded { column, .. } if column == "at"));
    assert_eq!(count(&admin, "first_rounded").await, 1);
    db.drop().await;
}

/// Two tables of one name, the second one's key rounding to whole seconds:
/// the check of the first does not vouch for the second.
#[tokio::test]
async fn another_table_whose_key_rounds_is_refused() {
    let one = TestDb::new("first_rounded_one").await;
    let two = TestDb::new("first_rounded_two").await;
    one.connect().await.batch_execute(&RoundedElsewhere::model().migration_sql()).await.unwrap();
    two.connect()
        .await
        .batch_execute(
            "CREATE TABLE first_rounded_elsewhere (sensor bigint NOT NULL, at timestamptz(0) NOT NULL, \
             UNIQUE (sensor, at))",
        )
        .await
        .unwrap();
    let mut client = one.connect().await;
    assert_eq!(RoundedElsewhere::bulk_create_new(&mut client, &RoundedElsewhere::pair(1)).await.unwrap().inserted, 2);
    let mut client = two.connect().await;
    let err = RoundedElsewhere::bulk_create_new(&mut client, &RoundedElsewhere::pair(1)).await.unwrap_err();
    assert_problem(&err, |p| matches!(p, SchemaProblem::KeyRounded { column, .. } if column == "at"));
    assert_eq!(count(&client, "first_rounded_elsewhere").await, 0);
    one.drop().await;
    two.drop().await;
}

model!(NoTemp, "first_no_temp");

/// A role that may write the table but not create temporary tables, after
/// the table's owner passed the check in the same process: its first call
/// of any size still says what is missing (a database that does not open
/// `TEMPORARY` to every role is always checked).
#[tokio::test]
async fn a_role_without_the_temporary_privilege_is_still_told() {
    let db = TestDb::new("first_no_temp").await;
    let admin = db.connect_plain().await;
    let database = format!("{}_db", db.schema);
    let role = format!("{}_role", db.schema);
    let (d, r) = (bulk_runtime::quote_ident(&database), bulk_runtime::quote_ident(&role));
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {d}")).await.unwrap();
    admin.batch_execute(&format!("DROP ROLE IF EXISTS {r}")).await.unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {d}")).await.unwrap();
    admin.batch_execute(&format!("CREATE ROLE {r} LOGIN")).await.unwrap();
    admin.batch_execute(&format!("REVOKE TEMPORARY ON DATABASE {d} FROM PUBLIC")).await.unwrap();
    let mut owner = bulk_tests::connect_to(&database, None).await;
    owner.batch_execute(&NoTemp::model().migration_sql()).await.unwrap();
    owner.batch_execute(&format!("GRANT SELECT, INSERT ON first_no_temp TO {r}")).await.unwrap();
    assert_eq!(NoTemp::bulk_create_new(&mut owner, &NoTemp::batch(0, 10)).await.unwrap().inserted, 10);
    for len in LENGTHS {
        let mut client = bulk_tests::connect_to(&database, Some(&role)).await;
        let err = NoTemp::bulk_create_new(&mut client, &NoTemp::batch(5, len)).await.unwrap_err();
        assert_problem(&err, |p| matches!(p, SchemaProblem::TemporaryTablesNotAllowed { .. }));
        let mut again = bulk_tests::connect_to(&database, None).await;
        NoTemp::bulk_create_new(&mut again, &NoTemp::batch(0, 10)).await.unwrap();
    }
    assert_eq!(count(&owner, "first_no_temp").await, 10);
    drop(owner);
    admin.batch_execute(&format!("DROP DATABASE {d} WITH (FORCE)")).await.unwrap();
    admin.batch_execute(&format!("DROP ROLE {r}")).await.unwrap();
    db.drop().await;
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "first_not_null", unique(k), id = false)]
struct Optional {
    k: i64,
    note: Option<String>,
}

/// A nullable field's column made `NOT NULL` between connections: the
/// check's explanation, even for a batch without a NULL in it (a model
/// with a nullable field is always checked).
#[tokio::test]
async fn a_column_made_not_null_is_explained() {
    let db = TestDb::new("first_not_null").await;
    let admin = db.connect().await;
    admin.batch_execute(&Optional::model().migration_sql()).await.unwrap();
    let batch = |from: i64, len: usize| -> Vec<Optional> {
        (from..from + len as i64).map(|k| Optional { k, note: Some(format!("row {k}")) }).collect()
    };
    let mut first = db.connect().await;
    Optional::bulk_create_new(&mut first, &batch(0, 10)).await.unwrap();
    admin.batch_execute("ALTER TABLE first_not_null ALTER COLUMN note SET NOT NULL").await.unwrap();
    for len in LENGTHS {
        let mut next = db.connect().await;
        let err = Optional::bulk_create_new(&mut next, &batch(5, len)).await.unwrap_err();
        assert_problem(&err, |p| matches!(p, SchemaProblem::ColumnNotNull { column } if column == "note"));
    }
    assert_eq!(count(&admin, "first_not_null").await, 10);
    db.drop().await;
}

model!(Timeout, "first_timeout");

/// A first call dropped while its insert waits on another writer's key (a
/// timeout): nothing is written, the connection takes the next call, and
/// the other writer's row is kept.
#[tokio::test]
async fn a_first_call_dropped_while_it_waits_writes_nothing() {
    let db = TestDb::new("first_timeout").await;
    let admin = db.connect().await;
    admin.batch_execute(&Timeout::model().migration_sql()).await.unwrap();
    let mut first = db.connect().await;
    Timeout::bulk_create_new(&mut first, &Timeout::batch(1000, 10)).await.unwrap();
    for len in LENGTHS {
        let other = db.connect().await;
        other.batch_execute("BEGIN; INSERT INTO first_timeout VALUES (3, 'other writer')").await.unwrap();
        let mut next = db.connect().await;
        let batch = Timeout::batch(0, len);
        let call = Timeout::bulk_create_new(&mut next, &batch);
        assert!(tokio::time::timeout(Duration::from_millis(300), call).await.is_err(), "the call waits on key 3");
        other.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(count(&admin, "first_timeout").await, 10, "{len} rows");
        let report = Timeout::bulk_create_new(&mut next, &Timeout::batch(0, len)).await.unwrap();
        assert_eq!(report.inserted as usize, len);
        admin.batch_execute("DELETE FROM first_timeout WHERE k < 1000").await.unwrap();
    }
    db.drop().await;
}

model!(Meanwhile, "first_meanwhile");

/// Another writer stores one of the batch's keys while a first call waits
/// on it: the call skips that key (the plain form of a longer batch fails
/// on it, writes nothing, and the call runs again in the `ON CONFLICT`
/// form), counts exactly, and the other writer's row is kept.
#[tokio::test]
async fn a_key_stored_meanwhile_is_skipped() {
    let db = TestDb::new("first_meanwhile").await;
    let admin = db.connect().await;
    admin.batch_execute(&Meanwhile::model().migration_sql()).await.unwrap();
    let mut first = db.connect().await;
    Meanwhile::bulk_create_new(&mut first, &Meanwhile::batch(100_000, 10)).await.unwrap();
    for len in LENGTHS {
        let other = db.connect().await;
        other.batch_execute("BEGIN; INSERT INTO first_meanwhile VALUES (3, 'other writer')").await.unwrap();
        let mut next = db.connect().await;
        let pid: i32 = next.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
        let batch = Meanwhile::batch(0, len);
        let call = tokio::spawn(async move { Meanwhile::bulk_create_new(&mut next, &batch).await });
        bulk_tests::wait_for_backend(&admin, pid, "INSERT%", false).await;
        other.batch_execute("COMMIT").await.unwrap();
        let report = call.await.unwrap().unwrap();
        assert_eq!((report.inserted as usize, report.skipped), (len - 1, 1), "{len} rows");
        let payload: String =
            admin.query_one("SELECT payload FROM first_meanwhile WHERE k = 3", &[]).await.unwrap().get(0);
        assert_eq!(payload, "other writer");
        admin.batch_execute("DELETE FROM first_meanwhile WHERE k < 100000").await.unwrap();
    }
    db.drop().await;
}

model!(Narrow, "first_narrow");

/// A role that may insert but read only the key column: `RETURNING` every
/// column is refused, so its first call runs as usual, with the check (and
/// this process's later first calls of the model do too); every count is
/// exact and nothing fails.
#[tokio::test]
async fn a_role_that_may_not_read_every_column_is_served_as_usual() {
    let db = TestDb::new("first_narrow").await;
    let admin = db.connect_plain().await;
    let role = format!("{}_role", db.schema);
    let r = bulk_runtime::quote_ident(&role);
    let schema = bulk_runtime::quote_ident(&db.schema);
    admin.batch_execute(&format!("DROP ROLE IF EXISTS {r}")).await.unwrap();
    admin.batch_execute(&format!("CREATE ROLE {r} LOGIN")).await.unwrap();
    let owner = db.connect().await;
    owner.batch_execute(&Narrow::model().migration_sql()).await.unwrap();
    owner
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA {schema} TO {r}; GRANT INSERT, SELECT (k) ON first_narrow TO {r}"
        ))
        .await
        .unwrap();
    let mut checked = db.connect().await;
    Narrow::bulk_create_new(&mut checked, &Narrow::batch(0, 10)).await.unwrap();
    let mut config = db.config();
    config.user(&role);
    let mut from = 5;
    for _ in 0..2 {
        for len in LENGTHS {
            let (mut client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            let report = Narrow::bulk_create_new(&mut client, &Narrow::batch(from, len)).await.unwrap();
            let stored = if from == 5 { 5 } else { 0 };
            assert_eq!((report.inserted as usize, report.skipped as usize), (len - stored, stored));
            from += len as i64 + 1000;
        }
    }
    assert_eq!(count(&owner, "first_narrow").await, 10 + 5 + 300 + 10 + 300);
    drop(owner);
    db.drop().await;
    admin.batch_execute(&format!("DROP ROLE {r}")).await.unwrap();
}

/// A model of 1,366 columns: 48 rows of it (the first call's longest
/// `VALUES`) take 65,568 values, more than a statement's 65,535 parameters.
#[derive(BulkCreateNew, Debug, Clone, Default)]
#[bulk(table = "first_wide", unique(k), id = false)]
#[rustfmt::skip]
struct Wide {
    k: i64,
    c0: i16, c1: i16, c2: i16, c3: i16, c4: i16, c5: i16, c6: i16, c7: i16, c8: i16, c9: i16, c10: i16, c11: i16, c12: i16, c13: i16, c14: i16, c15: i16, c16: i16, c17: i16, c18: i16, c19: i16,
    c20: i16, c21: i16, c22: i16, c23: i16, c24: i16, c25: i16, c26: i16, c27: i16, c28: i16, c29: i16, c30: i16, c31: i16, c32: i16, c33: i16, c34: i16, c35: i16, c36: i16, c37: i16, c38: i16, c39: i16,
    c40: i16, c41: i16, c42: i16, c43: i16, c44: i16, c45: i16, c46: i16, c47: i16, c48: i16, c49: i16, c50: i16, c51: i16, c52: i16, c53: i16, c54: i16, c55: i16, c56: i16, c57: i16, c58: i16, c59: i16,
    c60: i16, c61: i16, c62: i16, c63: i16, c64: i16, c65: i16, c66: i16, c67: i16, c68: i16, c69: i16, c70: i16, c71: i16, c72: i16, c73: i16, c74: i16, c75: i16, c76: i16, c77: i16, c78: i16, c79: i16,
    c80: i16, c81: i16, c82: i16, c83: i16, c84: i16, c85: i16, c86: i16, c87: i16, c88: i16, c89: i16, c90: i16, c91: i16, c92: i16, c93: i16, c94: i16, c95: i16, c96: i16, c97: i16, c98: i16, c99: i16,
    c100: i16, c101: i16, c102: i16, c103: i16, c104: i16, c105: i16, c106: i16, c107: i16, c108: i16, c109: i16, c110: i16, c111: i16, c112: i16, c113: i16, c114: i16, c115: i16, c116: i16, c117: i16, c118: i16, c119: i16,
    c120: i16, c121: i16, c122: i16, c123: i16, c124: i16, c125: i16, c126: i16, c127: i16, c128: i16, c129: i16, c130: i16, c131: i16, c132: i16, c133: i16, c134: i16, c135: i16, c136: i16, c137: i16, c138: i16, c139: i16,
    c140: i16, c141: i16, c142: i16, c143: i16, c144: i16, c145: i16, c146: i16, c147: i16, c148: i16, c149: i16, c150: i16, c151: i16, c152: i16, c153: i16, c154: i16, c155: i16, c156: i16, c157: i16, c158: i16, c159: i16,
    c160: i16, c161: i16, c162: i16, c163: i16, c164: i16, c165: i16, c166: i16, c167: i16, c168: i16, c169: i16, c170: i16, c171: i16, c172: i16, c173: i16, c174: i16, c175: i16, c176: i16, c177: i16, c178: i16, c179: i16,
    c180: i16, c181: i16, c182: i16, c183: i16, c184: i16, c185: i16, c186: i16, c187: i16, c188: i16, c189: i16, c190: i16, c191: i16, c192: i16, c193: i16, c194: i16, c195: i16, c196: i16, c197: i16, c198: i16, c199: i16,
    c200: i16, c201: i16, c202: i16, c203: i16, c204: i16, c205: i16, c206: i16, c207: i16, c208: i16, c209: i16, c210: i16, c211: i16, c212: i16, c213: i16, c214: i16, c215: i16, c216: i16, c217: i16, c218: i16, c219: i16,
    c220: i16, c221: i16, c222: i16, c223: i16, c224: i16, c225: i16, c226: i16, c227: i16, c228: i16, c229: i16, c230: i16, c231: i16, c232: i16, c233: i16, c234: i16, c235: i16, c236: i16, c237: i16, c238: i16, c239: i16,
    c240: i16, c241: i16, c242: i16, c243: i16, c244: i16, c245: i16, c246: i16, c247: i16, c248: i16, c249: i16, c250: i16, c251: i16, c252: i16, c253: i16, c254: i16, c255: i16, c256: i16, c257: i16, c258: i16, c259: i16,
    c260: i16, c261: i16, c262: i16, c263: i16, c264: i16, c265: i16, c266: i16, c267: i16, c268: i16, c269: i16, c270: i16, c271: i16, c272: i16, c273: i16, c274: i16, c275: i16, c276: i16, c277: i16, c278: i16, c279: i16,
    c280: i16, c281: i16, c282: i16, c283: i16, c284: i16, c285: i16, c286: i16, c287: i16, c288: i16, c289: i16, c290: i16, c291: i16, c292: i16, c293: i16, c294: i16, c295: i16, c296: i16, c297: i16, c298: i16, c299: i16,
    c300: i16, c301: i16, c302: i16, c303: i16, c304: i16, c305: i16, c306: i16, c307: i16, c308: i16, c309: i16, c310: i16, c311: i16, c312: i16, c313: i16, c314: i16, c315: i16, c316: i16, c317: i16, c318: i16, c319: i16,
    c320: i16, c321: i16, c322: i16, c323: i16, c324: i16, c325: i16, c326: i16, c327: i16, c328: i16, c329: i16, c330: i16, c331: i16, c332: i16, c333: i16, c334: i16, c335: i16, c336: i16, c337: i16, c338: i16, c339: i16,
    c340: i16, c341: i16, c342: i16, c343: i16, c344: i16, c345: i16, c346: i16, c347: i16, c348: i16, c349: i16, c350: i16, c351: i16, c352: i16, c353: i16, c354: i16, c355: i16, c356: i16, c357: i16, c358: i16, c359: i16,
    c360: i16, c361: i16, c362: i16, c363: i16, c364: i16, c365: i16, c366: i16, c367: i16, c368: i16, c369: i16, c370: i16, c371: i16, c372: i16, c373: i16, c374: i16, c375: i16, c376: i16, c377: i16, c378: i16, c379: i16,
    c380: i16, c381: i16, c382: i16, c383: i16, c384: i16, c385: i16, c386: i16, c387: i16, c388: i16, c389: i16, c390: i16, c391: i16, c392: i16, c393: i16, c394: i16, c395: i16, c396: i16, c397: i16, c398: i16, c399: i16,
    c400: i16, c401: i16, c402: i16, c403: i16, c404: i16, c405: i16, c406: i16, c407: i16, c408: i16, c409: i16, c410: i16, c411: i16, c412: i16, c413: i16, c414: i16, c415: i16, c416: i16, c417: i16, c418: i16, c419: i16,
    c420: i16, c421: i16, c422: i16, c423: i16, c424: i16, c425: i16, c426: i16, c427: i16, c428: i16, c429: i16, c430: i16, c431: i16, c432: i16, c433: i16, c434: i16, c435: i16, c436: i16, c437: i16, c438: i16, c439: i16,
    c440: i16, c441: i16, c442: i16, c443: i16, c444: i16, c445: i16, c446: i16, c447: i16, c448: i16, c449: i16, c450: i16, c451: i16, c452: i16, c453: i16, c454: i16, c455: i16, c456: i16, c457: i16, c458: i16, c459: i16,
    c460: i16, c461: i16, c462: i16, c463: i16, c464: i16, c465: i16, c466: i16, c467: i16, c468: i16, c469: i16, c470: i16, c471: i16, c472: i16, c473: i16, c474: i16, c475: i16, c476: i16, c477: i16, c478: i16, c479: i16,
    c480: i16, c481: i16, c482: i16, c483: i16, c484: i16, c485: i16, c486: i16, c487: i16, c488: i16, c489: i16, c490: i16, c491: i16, c492: i16, c493: i16, c494: i16, c495: i16, c496: i16, c497: i16, c498: i16, c499: i16,
    c500: i16, c501: i16, c502: i16, c503: i16, c504: i16, c505: i16, c506: i16, c507: i16, c508: i16, c509: i16, c510: i16, c511: i16, c512: i16, c513: i16, c514: i16, c515: i16, c516: i16, c517: i16, c518: i16, c519: i16,
    c520: i16, c521: i16, c522: i16, c523: i16, c524: i16, c525: i16, c526: i16, c527: i16, c528: i16, c529: i16, c530: i16, c531: i16, c532: i16, c533: i16, c534: i16, c535: i16, c536: i16, c537: i16, c538: i16, c539: i16,
    c540: i16, c541: i16, c542: i16, c543: i16, c544: i16, c545: i16, c546: i16, c547: i16, c548: i16, c549: i16, c550: i16, c551: i16, c552: i16, c553: i16, c554: i16, c555: i16, c556: i16, c557: i16, c558: i16, c559: i16,
    c560: i16, c561: i16, c562: i16, c563: i16, c564: i16, c565: i16, c566: i16, c567: i16, c568: i16, c569: i16, c570: i16, c571: i16, c572: i16, c573: i16, c574: i16, c575: i16, c576: i16, c577: i16, c578: i16, c579: i16,
    c580: i16, c581: i16, c582: i16, c583: i16, c584: i16, c585: i16, c586: i16, c587: i16, c588: i16, c589: i16, c590: i16, c591: i16, c592: i16, c593: i16, c594: i16, c595: i16, c596: i16, c597: i16, c598: i16, c599: i16,
    c600: i16, c601: i16, c602: i16, c603: i16, c604: i16, c605: i16, c606: i16, c607: i16, c608: i16, c609: i16, c610: i16, c611: i16, c612: i16, c613: i16, c614: i16, c615: i16, c616: i16, c617: i16, c618: i16, c619: i16,
    c620: i16, c621: i16, c622: i16, c623: i16, c624: i16, c625: i16, c626: i16, c627: i16, c628: i16, c629: i16, c630: i16, c631: i16, c632: i16, c633: i16, c634: i16, c635: i16, c636: i16, c637: i16, c638: i16, c639: i16,
    c640: i16, c641: i16, c642: i16, c643: i16, c644: i16, c645: i16, c646: i16, c647: i16, c648: i16, c649: i16, c650: i16, c651: i16, c652: i16, c653: i16, c654: i16, c655: i16, c656: i16, c657: i16, c658: i16, c659: i16,
    c660: i16, c661: i16, c662: i16, c663: i16, c664: i16, c665: i16, c666: i16, c667: i16, c668: i16, c669: i16, c670: i16, c671: i16, c672: i16, c673: i16, c674: i16, c675: i16, c676: i16, c677: i16, c678: i16, c679: i16,
    c680: i16, c681: i16, c682: i16, c683: i16, c684: i16, c685: i16, c686: i16, c687: i16, c688: i16, c689: i16, c690: i16, c691: i16, c692: i16, c693: i16, c694: i16, c695: i16, c696: i16, c697: i16, c698: i16, c699: i16,
    c700: i16, c701: i16, c702: i16, c703: i16, c704: i16, c705: i16, c706: i16, c707: i16, c708: i16, c709: i16, c710: i16, c711: i16, c712: i16, c713: i16, c714: i16, c715: i16, c716: i16, c717: i16, c718: i16, c719: i16,
    c720: i16, c721: i16, c722: i16, c723: i16, c724: i16, c725: i16, c726: i16, c727: i16, c728: i16, c729: i16, c730: i16, c731: i16, c732: i16, c733: i16, c734: i16, c735: i16, c736: i16, c737: i16, c738: i16, c739: i16,
    c740: i16, c741: i16, c742: i16, c743: i16, c744: i16, c745: i16, c746: i16, c747: i16, c748: i16, c749: i16, c750: i16, c751: i16, c752: i16, c753: i16, c754: i16, c755: i16, c756: i16, c757: i16, c758: i16, c759: i16,
    c760: i16, c761: i16, c762: i16, c763: i16, c764: i16, c765: i16, c766: i16, c767: i16, c768: i16, c769: i16, c770: i16, c771: i16, c772: i16, c773: i16, c774: i16, c775: i16, c776: i16, c777: i16, c778: i16, c779: i16,
    c780: i16, c781: i16, c782: i16, c783: i16, c784: i16, c785: i16, c786: i16, c787: i16, c788: i16, c789: i16, c790: i16, c791: i16, c792: i16, c793: i16, c794: i16, c795: i16, c796: i16, c797: i16, c798: i16, c799: i16,
    c800: i16, c801: i16, c802: i16, c803: i16, c804: i16, c805: i16, c806: i16, c807: i16, c808: i16, c809: i16, c810: i16, c811: i16, c812: i16, c813: i16, c814: i16, c815: i16, c816: i16, c817: i16, c818: i16, c819: i16,
    c820: i16, c821: i16, c822: i16, c823: i16, c824: i16, c825: i16, c826: i16, c827: i16, c828: i16, c829: i16, c830: i16, c831: i16, c832: i16, c833: i16, c834: i16, c835: i16, c836: i16, c837: i16, c838: i16, c839: i16,
    c840: i16, c841: i16, c842: i16, c843: i16, c844: i16, c845: i16, c846: i16, c847: i16, c848: i16, c849: i16, c850: i16, c851: i16, c852: i16, c853: i16, c854: i16, c855: i16, c856: i16, c857: i16, c858: i16, c859: i16,
    c860: i16, c861: i16, c862: i16, c863: i16, c864: i16, c865: i16, c866: i16, c867: i16, c868: i16, c869: i16, c870: i16, c871: i16, c872: i16, c873: i16, c874: i16, c875: i16, c876: i16, c877: i16, c878: i16, c879: i16,
    c880: i16, c881: i16, c882: i16, c883: i16, c884: i16, c885: i16, c886: i16, c887: i16, c888: i16, c889: i16, c890: i16, c891: i16, c892: i16, c893: i16, c894: i16, c895: i16, c896: i16, c897: i16, c898: i16, c899: i16,
    c900: i16, c901: i16, c902: i16, c903: i16, c904: i16, c905: i16, c906: i16, c907: i16, c908: i16, c909: i16, c910: i16, c911: i16, c912: i16, c913: i16, c914: i16, c915: i16, c916: i16, c917: i16, c918: i16, c919: i16,
    c920: i16, c921: i16, c922: i16, c923: i16, c924: i16, c925: i16, c926: i16, c927: i16, c928: i16, c929: i16, c930: i16, c931: i16, c932: i16, c933: i16, c934: i16, c935: i16, c936: i16, c937: i16, c938: i16, c939: i16,
    c940: i16, c941: i16, c942: i16, c943: i16, c944: i16, c945: i16, c946: i16, c947: i16, c948: i16, c949: i16, c950: i16, c951: i16, c952: i16, c953: i16, c954: i16, c955: i16, c956: i16, c957: i16, c958: i16, c959: i16,
    c960: i16, c961: i16, c962: i16, c963: i16, c964: i16, c965: i16, c966: i16, c967: i16, c968: i16, c969: i16, c970: i16, c971: i16, c972: i16, c973: i16, c974: i16, c975: i16, c976: i16, c977: i16, c978: i16, c979: i16,
    c980: i16, c981: i16, c982: i16, c983: i16, c984: i16, c985: i16, c986: i16, c987: i16, c988: i16, c989: i16, c990: i16, c991: i16, c992: i16, c993: i16, c994: i16, c995: i16, c996: i16, c997: i16, c998: i16, c999: i16,
    c1000: i16, c1001: i16, c1002: i16, c1003: i16, c1004: i16, c1005: i16, c1006: i16, c1007: i16, c1008: i16, c1009: i16, c1010: i16, c1011: i16, c1012: i16, c1013: i16, c1014: i16, c1015: i16, c1016: i16, c1017: i16, c1018: i16, c1019: i16,
    c1020: i16, c1021: i16, c1022: i16, c1023: i16, c1024: i16, c1025: i16, c1026: i16, c1027: i16, c1028: i16, c1029: i16, c1030: i16, c1031: i16, c1032: i16, c1033: i16, c1034: i16, c1035: i16, c1036: i16, c1037: i16, c1038: i16, c1039: i16,
    c1040: i16, c1041: i16, c1042: i16, c1043: i16, c1044: i16, c1045: i16, c1046: i16, c1047: i16, c1048: i16, c1049: i16, c1050: i16, c1051: i16, c1052: i16, c1053: i16, c1054: i16, c1055: i16, c1056: i16, c1057: i16, c1058: i16, c1059: i16,
    c1060: i16, c1061: i16, c1062: i16, c1063: i16, c1064: i16, c1065: i16, c1066: i16, c1067: i16, c1068: i16, c1069: i16, c1070: i16, c1071: i16, c1072: i16, c1073: i16, c1074: i16, c1075: i16, c1076: i16, c1077: i16, c1078: i16, c1079: i16,
    c1080: i16, c1081: i16, c1082: i16, c1083: i16, c1084: i16, c1085: i16, c1086: i16, c1087: i16, c1088: i16, c1089: i16, c1090: i16, c1091: i16, c1092: i16, c1093: i16, c1094: i16, c1095: i16, c1096: i16, c1097: i16, c1098: i16, c1099: i16,
    c1100: i16, c1101: i16, c1102: i16, c1103: i16, c1104: i16, c1105: i16, c1106: i16, c1107: i16, c1108: i16, c1109: i16, c1110: i16, c1111: i16, c1112: i16, c1113: i16, c1114: i16, c1115: i16, c1116: i16, c1117: i16, c1118: i16, c1119: i16,
    c1120: i16, c1121: i16, c1122: i16, c1123: i16, c1124: i16, c1125: i16, c1126: i16, c1127: i16, c1128: i16, c1129: i16, c1130: i16, c1131: i16, c1132: i16, c1133: i16, c1134: i16, c1135: i16, c1136: i16, c1137: i16, c1138: i16, c1139: i16,
    c1140: i16, c1141: i16, c1142: i16, c1143: i16, c1144: i16, c1145: i16, c1146: i16, c1147: i16, c1148: i16, c1149: i16, c1150: i16, c1151: i16, c1152: i16, c1153: i16, c1154: i16, c1155: i16, c1156: i16, c1157: i16, c1158: i16, c1159: i16,
    c1160: i16, c1161: i16, c1162: i16, c1163: i16, c1164: i16, c1165: i16, c1166: i16, c1167: i16, c1168: i16, c1169: i16, c1170: i16, c1171: i16, c1172: i16, c1173: i16, c1174: i16, c1175: i16, c1176: i16, c1177: i16, c1178: i16, c1179: i16,
    c1180: i16, c1181: i16, c1182: i16, c1183: i16, c1184: i16, c1185: i16, c1186: i16, c1187: i16, c1188: i16, c1189: i16, c1190: i16, c1191: i16, c1192: i16, c1193: i16, c1194: i16, c1195: i16, c1196: i16, c1197: i16, c1198: i16, c1199: i16,
    c1200: i16, c1201: i16, c1202: i16, c1203: i16, c1204: i16, c1205: i16, c1206: i16, c1207: i16, c1208: i16, c1209: i16, c1210: i16, c1211: i16, c1212: i16, c1213: i16, c1214: i16, c1215: i16, c1216: i16, c1217: i16, c1218: i16, c1219: i16,
    c1220: i16, c1221: i16, c1222: i16, c1223: i16, c1224: i16, c1225: i16, c1226: i16, c1227: i16, c1228: i16, c1229: i16, c1230: i16, c1231: i16, c1232: i16, c1233: i16, c1234: i16, c1235: i16, c1236: i16, c1237: i16, c1238: i16, c1239: i16,
    c1240: i16, c1241: i16, c1242: i16, c1243: i16, c1244: i16, c1245: i16, c1246: i16, c1247: i16, c1248: i16, c1249: i16, c1250: i16, c1251: i16, c1252: i16, c1253: i16, c1254: i16, c1255: i16, c1256: i16, c1257: i16, c1258: i16, c1259: i16,
    c1260: i16, c1261: i16, c1262: i16, c1263: i16, c1264: i16, c1265: i16, c1266: i16, c1267: i16, c1268: i16, c1269: i16, c1270: i16, c1271: i16, c1272: i16, c1273: i16, c1274: i16, c1275: i16, c1276: i16, c1277: i16, c1278: i16, c1279: i16,
    c1280: i16, c1281: i16, c1282: i16, c1283: i16, c1284: i16, c1285: i16, c1286: i16, c1287: i16, c1288: i16, c1289: i16, c1290: i16, c1291: i16, c1292: i16, c1293: i16, c1294: i16, c1295: i16, c1296: i16, c1297: i16, c1298: i16, c1299: i16,
    c1300: i16, c1301: i16, c1302: i16, c1303: i16, c1304: i16, c1305: i16, c1306: i16, c1307: i16, c1308: i16, c1309: i16, c1310: i16, c1311: i16, c1312: i16, c1313: i16, c1314: i16, c1315: i16, c1316: i16, c1317: i16, c1318: i16, c1319: i16,
    c1320: i16, c1321: i16, c1322: i16, c1323: i16, c1324: i16, c1325: i16, c1326: i16, c1327: i16, c1328: i16, c1329: i16, c1330: i16, c1331: i16, c1332: i16, c1333: i16, c1334: i16, c1335: i16, c1336: i16, c1337: i16, c1338: i16, c1339: i16,
    c1340: i16, c1341: i16, c1342: i16, c1343: i16, c1344: i16, c1345: i16, c1346: i16, c1347: i16, c1348: i16, c1349: i16, c1350: i16, c1351: i16, c1352: i16, c1353: i16, c1354: i16, c1355: i16, c1356: i16, c1357: i16, c1358: i16, c1359: i16,
    c1360: i16, c1361: i16, c1362: i16, c1363: i16, c1364: i16,
}

/// A first call whose `VALUES` would take more than 65,535 parameters goes
/// as `unnest` (one parameter per column) and inserts every row.
#[tokio::test]
async fn a_first_call_of_a_very_wide_model_fits_the_protocol() {
    let db = TestDb::new("first_wide").await;
    let recorder = SqlRecorder::start().await;
    let admin = db.connect().await;
    admin.batch_execute(&Wide::model().migration_sql()).await.unwrap();
    let mut first = recorder.connect(&db.schema).await;
    Wide::bulk_create_new(&mut first, [Wide::default()]).await.unwrap();
    let len = bulk_runtime::__test_hooks::FIRST_CALL_VALUES_UP_TO;
    assert!(len * Wide::model().columns().len() > 65_535);
    let before = recorder.statements().len();
    let mut next = recorder.connect(&db.schema).await;
    let rows: Vec<Wide> = (1..=len as i64).map(|k| Wide { k, c1364: 7, ..Wide::default() }).collect();
    // Before: "failed at insert: error parsing response from server: value too large to transmit".
    let report = Wide::bulk_create_new(&mut next, &rows).await.unwrap();
    assert_eq!((report.inserted, report.skipped), (len as u64, 0));
    let sent = since(&recorder, before);
    assert!(!sent.iter().any(|s| s.contains(CHECK_QUERY)), "no check on a new connection: {sent:#?}");
    assert!(sent.iter().any(|s| s.contains("unnest") && s.contains("RETURNING")), "{sent:#?}");
    let sevens: i64 = admin.query_one("SELECT count(*) FROM first_wide WHERE c1364 = 7", &[]).await.unwrap().get(0);
    assert_eq!((count(&admin, "first_wide").await, sevens), (1 + len as i64, len as i64));
    db.drop().await;
}
