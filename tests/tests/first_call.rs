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
