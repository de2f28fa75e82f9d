//! When the session or the table differs from what the call checked: the
//! unique index dropped, `search_path` or the role switched between calls,
//! failed calls and fallbacks inside a caller's transaction (no savepoint
//! may stay open), a call dropped while it waits (a timeout).
//!
//! Each test has models of its own: the choice of the insert's form is kept
//! per model for the whole process.

use std::time::Duration;

use bulk_runtime::{BulkCreateNew, Error, SchemaProblem};
use bulk_tests::{COPY_BATCH, TestDb, count};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

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
                let len = len as i64;
                (0..len).map(|i| $name { k: from + (i * 7919) % len, payload: format!("row {i}") }).collect()
            }
        }
    };
}

model!(DropShort, "drop_short");
model!(DropCopy, "drop_copy");
model!(PathShort, "path_item");
model!(PathCopy, "path_item");
model!(RoleItem, "role_item");
model!(NestedItem, "nested_item");
model!(TimeoutShort, "timeout_short");
model!(TimeoutCopy, "timeout_copy");
model!(BrokenCopy, "broken_copy");
model!(DeferShort, "defer_short");
model!(DeferPlain, "defer_plain");
model!(DeferCopy, "defer_copy");
model!(RuleShort, "rule_short");
model!(RulePlain, "rule_plain");
model!(RuleCopy, "rule_copy");
model!(InsteadShort, "instead_short");
model!(InsteadPlain, "instead_plain");
model!(InsteadCopy, "instead_copy");
model!(NothingShort, "nothing_short");
model!(NothingPlain, "nothing_plain");
model!(NothingCopy, "nothing_copy");
model!(NothingLedger, "nothing_ledger");
model!(NarrowShort, "narrow_short");
model!(NarrowPlain, "narrow_plain");
model!(NarrowCopy, "narrow_copy");

/// How many rows of `table` hold key `k`.
async fn copies(client: &Client, table: &str, k: i64) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM {table} WHERE k = $1"), &[&k]).await.unwrap().get(0)
}

/// A transaction on `other` that inserts key `k` and stays open.
async fn hold_key(other: &Client, table: &str, k: i64) {
    other
        .batch_execute(&format!("BEGIN; INSERT INTO {table} (k, payload) VALUES ({k}, 'other writer')"))
        .await
        .unwrap();
}

fn assert_unique_key_missing(err: &Error) {
    match err {
        Error::SchemaMismatch { problems, .. } => {
            assert!(problems.iter().any(|p| matches!(p, SchemaProblem::UniqueKeyMissing { .. })), "{err}")
        }
        other => panic!("expected the schema check's explanation, got {other}"),
    }
}

/// The session checked the table; then an admin drops the unique index and
/// another writer stores (uncommitted) a key of the next batch. The plain
/// insert would store that key a second time; the call must refuse.
macro_rules! dropped_index {
    ($model:ident, $table:literal, $len:expr) => {{
        let db = TestDb::new(concat!("dropped_index_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        let other = db.connect().await;
        // The first call checks the table (and keys 0..len are stored).
        let first = $model::bulk_create_new(&mut writer, &$model::batch(0, $len)).await.unwrap();
        assert_eq!(first.inserted, $len as u64);

        let index: String = admin
            .query_one(
                "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = $1::text::regclass AND indisunique",
                &[&$table],
            )
            .await
            .unwrap()
            .get(0);
        admin.batch_execute(&format!("DROP INDEX {index}")).await.unwrap();
        let k = $len as i64 + 10;
        hold_key(&other, $table, k).await;
        let err = $model::bulk_create_new(&mut writer, &$model::batch($len as i64, $len)).await.unwrap_err();
        other.batch_execute("COMMIT").await.unwrap();
        assert_unique_key_missing(&err);
        assert!(err.connection_usable(), "{err}");
        assert_eq!(copies(&admin, $table, k).await, 1, "key {k} stored twice");
        assert_eq!(count(&admin, $table).await, $len as i64 + 1, "nothing of the refused batch is written");
        db.drop().await;
    }};
}

#[tokio::test]
async fn a_dropped_unique_index_never_lets_a_duplicate_in() {
    dropped_index!(DropShort, "drop_short", 300)
}

#[tokio::test]
async fn a_dropped_unique_index_never_lets_a_duplicate_in_through_copy() {
    dropped_index!(DropCopy, "drop_copy", COPY_BATCH)
}

/// A pooled connection checked the table in one schema, then its
/// `search_path` leads to a same-named table without the unique index.
macro_rules! switched_search_path {
    ($model:ident, $len:expr) => {{
        let db = TestDb::new("switched_search_path").await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let other_schema = format!("{}_other", db.schema);
        admin
            .batch_execute(&format!(
                "CREATE SCHEMA {s}; CREATE TABLE {s}.path_item (k bigint NOT NULL, payload text NOT NULL)",
                s = bulk_runtime::quote_ident(&other_schema)
            ))
            .await
            .unwrap();
        let mut writer = db.connect().await;
        let other = db.connect().await;
        $model::bulk_create_new(&mut writer, &$model::batch(0, $len)).await.unwrap();

        let path = format!("SET search_path = {}", bulk_runtime::quote_ident(&other_schema));
        writer.batch_execute(&path).await.unwrap();
        other.batch_execute(&path).await.unwrap();
        hold_key(&other, "path_item", 10).await;
        let err = $model::bulk_create_new(&mut writer, &$model::batch(0, $len)).await.unwrap_err();
        other.batch_execute("COMMIT").await.unwrap();
        assert_unique_key_missing(&err);
        assert_eq!(copies(&other, "path_item", 10).await, 1, "key 10 stored twice");
        assert_eq!(count(&other, "path_item").await, 1, "nothing of the refused batch is written");
        admin
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", bulk_runtime::quote_ident(&other_schema)))
            .await
            .unwrap();
        db.drop().await;
    }};
}

#[tokio::test]
async fn a_search_path_switch_to_a_table_without_the_index_never_lets_a_duplicate_in() {
    switched_search_path!(PathShort, 300)
}

#[tokio::test]
async fn a_search_path_switch_to_a_table_without_the_index_never_lets_a_duplicate_in_through_copy() {
    switched_search_path!(PathCopy, COPY_BATCH)
}

/// A role of this test (roles belong to the whole server), allowed to write
/// the test's table.
async fn role(admin: &Client, db: &TestDb, suffix: &str) -> String {
    let role = format!("{}_{suffix}", db.schema);
    let r = bulk_runtime::quote_ident(&role);
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {r}; CREATE ROLE {r}; GRANT USAGE ON SCHEMA {s} TO {r}; \
             GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA {s} TO {r}",
            s = bulk_runtime::quote_ident(&db.schema)
        ))
        .await
        .unwrap();
    role
}

async fn drop_role(admin: &Client, db: &TestDb, role: &str) {
    let r = bulk_runtime::quote_ident(role);
    let s = bulk_runtime::quote_ident(&db.schema);
    admin
        .batch_execute(&format!(
            "REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {r}; REVOKE ALL ON SCHEMA {s} FROM {r}; DROP ROLE {r}"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn calls_work_across_role_switches_on_both_paths() {
    let db = TestDb::new("role_switches").await;
    let admin = db.connect().await;
    admin.batch_execute(&RoleItem::model().migration_sql()).await.unwrap();
    let (alice, bob) = (role(&admin, &db, "alice").await, role(&admin, &db, "bob").await);
    let mut client = db.connect().await;
    let mut next = 0;
    let mut call = async |client: &mut Client, len: usize| {
        let rows = RoleItem::batch(next, len);
        next += len as i64;
        let outcome = RoleItem::bulk_create_new(client, &rows).await.unwrap_or_else(|e| panic!("{len} rows: {e}"));
        assert_eq!(outcome.inserted, len as u64);
    };
    // The scratch table is made by the session's first role, then used by others.
    for set in ["", &format!("SET ROLE {}", bulk_runtime::quote_ident(&alice)), "RESET ROLE"] {
        if !set.is_empty() {
            client.batch_execute(set).await.unwrap();
        }
        call(&mut client, COPY_BATCH).await;
        call(&mut client, 300).await;
    }
    // As PostgREST does: SET LOCAL ROLE inside each of the caller's transactions.
    for who in [&bob, &alice, &bob] {
        let mut tx = client.transaction().await.unwrap();
        tx.batch_execute(&format!("SET LOCAL ROLE {}", bulk_runtime::quote_ident(who))).await.unwrap();
        let rows = RoleItem::batch(next, COPY_BATCH);
        next += COPY_BATCH as i64;
        let outcome = RoleItem::bulk_create_new(&mut tx, &rows).await.unwrap_or_else(|e| panic!("as {who}: {e}"));
        assert_eq!(outcome.inserted, COPY_BATCH as u64);
        tx.commit().await.unwrap();
    }
    assert_eq!(count(&admin, "role_item").await, next);
    drop(client);
    drop_role(&admin, &db, &alice).await;
    drop_role(&admin, &db, &bob).await;
    db.drop().await;
}

/// The session's scratch table closed to the current role (`REVOKE ... FROM
/// PUBLIC`, then `SET ROLE`): a COPY into it would be refused as it starts,
/// which leaves tokio-postgres's connection out of step (see
/// `CopyWriter::start`). The query before the COPY sees the role may not
/// insert there, and the call makes the scratch table again (dropping the
/// old one as its owner, which the session may become) and writes; the
/// connection serves the next call.
#[tokio::test]
async fn a_scratch_table_closed_to_the_current_role_is_made_again() {
    let db = TestDb::new("copy_refused").await;
    let admin = db.connect().await;
    admin.batch_execute(&BrokenCopy::model().migration_sql()).await.unwrap();
    let carol = role(&admin, &db, "carol").await;
    let mut client = db.connect().await;
    BrokenCopy::bulk_create_new(&mut client, &BrokenCopy::batch(0, COPY_BATCH)).await.unwrap();
    // Take the session's scratch table away from every role but its owner.
    let scratch: String = client
        .query_one(
            "SELECT relname::text FROM pg_class WHERE relnamespace = pg_my_temp_schema() AND relname LIKE '\\_\\_bulk\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!(
            "REVOKE ALL ON pg_temp.{} FROM PUBLIC; SET ROLE {}",
            bulk_runtime::quote_ident(&scratch),
            bulk_runtime::quote_ident(&carol)
        ))
        .await
        .unwrap();
    let o = BrokenCopy::bulk_create_new(&mut client, &BrokenCopy::batch(COPY_BATCH as i64, COPY_BATCH))
        .await
        .expect("the COPY call as the other role");
    assert_eq!(o.inserted, COPY_BATCH as u64);
    let next = BrokenCopy::bulk_create_new(&mut client, &BrokenCopy::batch(0, 10)).await.expect("the next call");
    assert_eq!((next.inserted, next.skipped), (0, 10));
    client.batch_execute("RESET ROLE; DISCARD TEMP").await.unwrap();
    assert_eq!(count(&admin, "broken_copy").await, 2 * COPY_BATCH as i64);
    drop(client);
    drop_role(&admin, &db, &carol).await;
    db.drop().await;
}

/// Whether the caller's transaction holds a savepoint named as the call's.
/// (Ends the transaction's usefulness: the failed RELEASE aborts it.)
async fn leaked_savepoint(tx: &tokio_postgres::Transaction<'_>) -> bool {
    match tx.batch_execute("RELEASE SAVEPOINT bulk_create_new").await {
        Ok(()) => true,
        Err(e) => {
            assert_eq!(e.code(), Some(&SqlState::S_E_INVALID_SPECIFICATION), "{e:?}");
            false
        }
    }
}

#[tokio::test]
async fn failed_calls_leave_the_callers_transaction_as_it_was() {
    let db = TestDb::new("savepoints").await;
    let admin = db.connect().await;
    admin.batch_execute(&NestedItem::model().migration_sql()).await.unwrap();
    admin.batch_execute("ALTER TABLE nested_item ADD CHECK (k <> 77)").await.unwrap();
    let mut client = db.connect().await;
    let mut tx = client.transaction().await.unwrap();
    tx.batch_execute("INSERT INTO nested_item (k, payload) VALUES (-1, 'the caller''s own row')").await.unwrap();
    for round in 0..10 {
        for len in [10, 300, COPY_BATCH] {
            // Key 77 breaks the CHECK: the call fails on the server.
            let err = NestedItem::bulk_create_new(&mut tx, &NestedItem::batch(70, len)).await.unwrap_err();
            assert_eq!(err.sqlstate(), Some(&SqlState::CHECK_VIOLATION), "round {round}, {len} rows: {err}");
            assert!(err.connection_usable());
        }
        // A call that succeeds in between, on both paths.
        let from = 1000 + round * 10_000;
        NestedItem::bulk_create_new(&mut tx, &NestedItem::batch(from, 300)).await.unwrap();
        NestedItem::bulk_create_new(&mut tx, &NestedItem::batch(from + 1000, COPY_BATCH)).await.unwrap();
    }
    assert_eq!(count(tx.client(), "nested_item").await, 1 + 10 * (300 + COPY_BATCH as i64));
    assert!(!leaked_savepoint(&tx).await, "a call left its savepoint open in the caller's transaction");
    drop(tx);
    db.drop().await;
}

/// A call dropped (a timeout) while its insert waits on a key another
/// transaction is inserting: once sent, the insert runs to its end on the
/// server with the call's commit, so the batch is stored when the other
/// transaction rolls back, exactly as when the call is not dropped. Both
/// paths behave alike, and the connection takes the next batch.
macro_rules! dropped_while_waiting {
    ($model:ident, $table:literal, $len:expr) => {{
        let db = TestDb::new(concat!("dropped_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        let other = db.connect().await;
        let pid: i32 = writer.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
        hold_key(&other, $table, 5).await;
        let rows = $model::batch(0, $len);
        let call = tokio::time::timeout(Duration::from_millis(300), $model::bulk_create_new(&mut writer, &rows));
        assert!(call.await.is_err(), "the call waits on key 5 until the timeout");
        // The insert still waits on the server.
        let waiting: i64 = admin
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'", &[&pid])
            .await
            .unwrap()
            .get(0);
        assert_eq!(waiting, 1);
        other.batch_execute("ROLLBACK").await.unwrap();
        // The connection takes the next batch (after the dropped call's end).
        let next = $model::bulk_create_new(&mut writer, &$model::batch($len as i64, 10)).await.unwrap();
        assert_eq!(next.inserted, 10);
        assert_eq!(count(&admin, $table).await, $len as i64 + 10, "the dropped call's batch is stored whole");
        assert!(!bulk_tests::in_transaction(&admin, pid).await, "no transaction left open");
        db.drop().await;
    }};
}

#[tokio::test]
async fn a_call_dropped_while_its_insert_waits_completes_on_the_server() {
    dropped_while_waiting!(TimeoutShort, "timeout_short", 300)
}

#[tokio::test]
async fn a_call_dropped_while_its_insert_waits_completes_on_the_server_through_copy() {
    dropped_while_waiting!(TimeoutCopy, "timeout_copy", COPY_BATCH)
}

model!(MovedItem, "moved_item");

/// The statements prepared on `client`'s backend (asked unprepared).
async fn prepared(client: &Client) -> i64 {
    client.query_typed("SELECT count(*) FROM pg_prepared_statements", &[]).await.unwrap()[0].get(0)
}

/// The library tells connections apart by what the server told each one at
/// startup, not by where the `Client` sits in memory.
#[tokio::test]
async fn connections_are_told_apart_by_their_backend_not_their_address() {
    let db = TestDb::new("identity").await;
    let admin = db.connect().await;
    admin.batch_execute(&MovedItem::model().migration_sql()).await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = db.connect().await;
        let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
        assert_eq!(bulk_runtime::__test_hooks::connection_process_id(&client), pid);
        clients.push(client);
    }

    // One client moved to a new place in memory before every call keeps its
    // statements: no new prepared statement on its backend after the first
    // call of each form.
    let mut homes: Vec<Option<Client>> = vec![clients.pop()];
    let mut next = 0;
    for round in 0..40 {
        let client = homes.last_mut().unwrap().take();
        homes.push(client);
        let client = homes.last_mut().unwrap().as_mut().unwrap();
        let len = if round % 2 == 0 { 10 } else { 300 };
        MovedItem::bulk_create_new(client, &MovedItem::batch(next, len)).await.unwrap();
        next += len as i64;
    }
    let moved = homes.last().unwrap().as_ref().unwrap();
    assert_eq!(prepared(moved).await, 2, "one statement per form of the insert, after 40 calls from 40 places");

    // Clients dropped and made again (which may land where an old one was)
    // start afresh: each new one's first call runs its insert unprepared
    // (without the check, which this process passed: see `first_call.rs`),
    // and its second checks and prepares for itself.
    for _ in 0..20 {
        drop(clients.pop());
        let mut fresh = db.connect().await;
        for prepares in [0, 1] {
            let outcome = MovedItem::bulk_create_new(&mut fresh, &MovedItem::batch(next, 300)).await.unwrap();
            assert_eq!(outcome.inserted, 300);
            next += 300;
            assert_eq!(prepared(&fresh).await, prepares, "a fresh connection prepares its own statement, once");
        }
        clients.push(fresh);
    }
    assert_eq!(count(&admin, "moved_item").await, next);
    db.drop().await;
}

macro_rules! many_models {
    ($($name:ident $table:literal),+) => {
        $(model!($name, $table);)+

        /// One COPY call of `batch(from, COPY_BATCH)` for each model in turn.
        async fn each_model<C: bulk_runtime::Connection>(client: &mut C, from: i64) -> Vec<u64> {
            vec![$($name::bulk_create_new(client, &$name::batch(from, COPY_BATCH)).await.unwrap().inserted),+]
        }

        /// The DDL of every model's table.
        fn every_table() -> String {
            [$($name::model().migration_sql()),+].concat()
        }
    };
}

many_models!(
    M01 "m01", M02 "m02", M03 "m03", M04 "m04", M05 "m05", M06 "m06", M07 "m07", M08 "m08", M09 "m09", M10 "m10",
    M11 "m11", M12 "m12", M13 "m13", M14 "m14", M15 "m15", M16 "m16", M17 "m17", M18 "m18", M19 "m19", M20 "m20"
);

/// The session's scratch tables.
async fn scratch_tables(client: &Client) -> i64 {
    client
        .query_typed(
            "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema() AND relname LIKE '\\_\\_bulk\\_%'",
            &[],
        )
        .await
        .unwrap()[0]
        .get(0)
}

/// Every scratch table is truncated at the commit of any transaction that
/// touched a temporary table, so a session keeps a bounded number of them.
#[tokio::test]
async fn many_models_on_one_connection_keep_a_bounded_number_of_scratch_tables() {
    let db = TestDb::new("many_models").await;
    let mut client = db.connect().await;
    client.batch_execute(&every_table()).await.unwrap();
    for round in 0..2 {
        let inserted = each_model(&mut client, round * COPY_BATCH as i64).await;
        assert!(inserted.iter().all(|&n| n == COPY_BATCH as u64), "{inserted:?}");
        let tables = scratch_tables(&client).await;
        assert!((1..=8).contains(&tables), "{tables} scratch tables after round {round} of 20 models");
    }
    // Inside a caller's transaction, too; and the rows all went in.
    let mut tx = client.transaction().await.unwrap();
    let inserted = each_model(&mut tx, 2 * COPY_BATCH as i64).await;
    assert!(inserted.iter().all(|&n| n == COPY_BATCH as u64), "{inserted:?}");
    tx.commit().await.unwrap();
    assert!(scratch_tables(&client).await <= 8);
    assert_eq!(count(&client, "m01").await, 3 * COPY_BATCH as i64);
    assert_eq!(count(&client, "m20").await, 3 * COPY_BATCH as i64);
    db.drop().await;
}

model!(RepeatableItem, "repeatable_item");
model!(DeferredItem, "deferred_item");

/// Under REPEATABLE READ the statement's snapshot is the transaction's
/// first: an index dropped after it must not let a duplicate in either.
#[tokio::test]
async fn a_unique_index_dropped_after_a_repeatable_read_snapshot_never_lets_a_duplicate_in() {
    for len in [300, COPY_BATCH] {
        let db = TestDb::new("dropped_index_rr").await;
        let admin = db.connect().await;
        admin.batch_execute(&RepeatableItem::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        RepeatableItem::bulk_create_new(&mut writer, &RepeatableItem::batch(0, 10)).await.unwrap();
        let mut tx = writer
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await
            .unwrap();
        tx.query_one("SELECT count(*) FROM pg_class", &[]).await.unwrap(); // the snapshot
        let index: String = admin
            .query_one("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'repeatable_item'::regclass AND indisunique", &[])
            .await
            .unwrap()
            .get(0);
        let k = len as i64 + 20;
        admin
            .batch_execute(&format!(
                "DROP INDEX {index}; INSERT INTO repeatable_item (k, payload) VALUES ({k}, 'other')"
            ))
            .await
            .unwrap();
        let result = RepeatableItem::bulk_create_new(&mut tx, &RepeatableItem::batch(10, len + 20)).await;
        let _ = tx.commit().await;
        assert!(result.is_err(), "{len} rows: no unique index, the call cannot skip stored keys: {result:?}");
        assert_eq!(copies(&admin, "repeatable_item", k).await, 1, "{len} rows: key {k} stored twice");
        db.drop().await;
    }
}

/// A deferred constraint on another column fails at the COMMIT that the
/// COPY path sends with its insert: the call reports that violation, and
/// nothing is written.
#[tokio::test]
async fn a_deferred_constraint_failing_at_commit_is_the_calls_error() {
    let db = TestDb::new("deferred_commit").await;
    let mut client = db.connect().await;
    client.batch_execute(&DeferredItem::model().migration_sql()).await.unwrap();
    client
        .batch_execute(
            "ALTER TABLE deferred_item ADD CONSTRAINT one_payload UNIQUE (payload) DEFERRABLE INITIALLY DEFERRED",
        )
        .await
        .unwrap();
    let mut rows = DeferredItem::batch(0, COPY_BATCH);
    rows[7].payload = rows[8].payload.clone();
    let err = DeferredItem::bulk_create_new(&mut client, &rows).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some(&SqlState::UNIQUE_VIOLATION), "{err}");
    assert!(err.to_string().contains("one_payload"), "{err}");
    assert!(err.connection_usable());
    assert_eq!(count(&client, "deferred_item").await, 0);
    let ok = DeferredItem::bulk_create_new(&mut client, &DeferredItem::batch(0, COPY_BATCH)).await.unwrap();
    assert_eq!(ok.inserted, COPY_BATCH as u64);
    db.drop().await;
}

/// The session checked the table; then an admin adds a `DEFERRABLE`
/// unique constraint on the key beside its immediate index, which makes
/// PostgreSQL refuse every `ON CONFLICT (k)` statement on the table (55000).
/// Another writer holds a key of the next batch and commits while the call
/// waits, so the plain form meets it and falls back to `ON CONFLICT`; the
/// short path uses `ON CONFLICT` at once. Either way the call answers with
/// the check's explanation and writes nothing; without the constraint the
/// same batch counts exactly.
macro_rules! deferrable_beside_the_key {
    ($model:ident, $table:literal, $len:expr) => {{
        let db = TestDb::new(concat!("deferrable_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        let other = db.connect().await;
        let first = $model::bulk_create_new(&mut writer, &$model::batch(0, $len)).await.unwrap();
        assert_eq!(first.inserted, $len as u64);
        admin
            .batch_execute(concat!(
                "ALTER TABLE ",
                $table,
                " ADD CONSTRAINT later UNIQUE (k) DEFERRABLE INITIALLY IMMEDIATE"
            ))
            .await
            .unwrap();
        let k = $len as i64 + 1;
        hold_key(&other, $table, k).await;
        let rows = $model::batch($len as i64, $len);
        let commit = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            other.batch_execute("COMMIT").await.unwrap();
        };
        let (result, ()) = tokio::join!($model::bulk_create_new(&mut writer, &rows), commit);
        let err = result.unwrap_err();
        match &err {
            Error::SchemaMismatch { problems, .. } => assert_eq!(
                problems,
                &[SchemaProblem::DeferrableKeyConstraint { index: "later".into(), key: vec!["k".into()] }],
                "{err}"
            ),
            other => panic!("expected the schema check's explanation, got {other}"),
        }
        assert!(err.connection_usable(), "{err}");
        assert_eq!(count(&admin, $table).await, $len as i64 + 1, "nothing of the refused batch is written");
        admin.batch_execute(concat!("ALTER TABLE ", $table, " DROP CONSTRAINT later")).await.unwrap();
        let again = $model::bulk_create_new(&mut writer, &rows).await.unwrap();
        assert_eq!((again.inserted, again.skipped), ($len as u64 - 1, 1));
        assert_eq!(copies(&admin, $table, k).await, 1);
        db.drop().await;
    }};
}

#[tokio::test]
async fn a_deferrable_constraint_added_beside_the_key_is_explained_on_the_short_path() {
    deferrable_beside_the_key!(DeferShort, "defer_short", 10)
}

#[tokio::test]
async fn a_deferrable_constraint_added_beside_the_key_is_explained_by_the_plain_form() {
    deferrable_beside_the_key!(DeferPlain, "defer_plain", 300)
}

#[tokio::test]
async fn a_deferrable_constraint_added_beside_the_key_is_explained_through_copy() {
    deferrable_beside_the_key!(DeferCopy, "defer_copy", COPY_BATCH)
}

/// A `nulls_not_distinct` model whose key has a nullable column.
macro_rules! tag_model {
    ($name:ident, $table:literal) => {
        #[derive(BulkCreateNew, Debug, Clone)]
        #[bulk(table = $table, unique(owner, label), nulls_not_distinct, id = false)]
        struct $name {
            owner: i64,
            label: Option<i64>,
            note: String,
        }

        impl $name {
            /// Owners `from..from + len`, each with a NULL label.
            fn batch(from: i64, len: usize) -> Vec<$name> {
                (from..from + len as i64).map(|owner| $name { owner, label: None, note: "new".into() }).collect()
            }
        }
    };
}

tag_model!(NullsShort, "nulls_short");
tag_model!(NullsPlain, "nulls_plain");
tag_model!(NullsCopy, "nulls_copy");
tag_model!(NullsRepeatable, "nulls_repeatable");

/// The connection checked the table (and prepared its statements, both
/// forms on the short path); then the NULLS NOT DISTINCT unique index is
/// replaced by a plain (NULLS DISTINCT) one on the same columns, which
/// `ON CONFLICT` takes as its arbiter but which lets a NULL key in twice.
/// The next call must refuse with the schema check's explanation, writing
/// nothing; `repeatable`: inside a caller's REPEATABLE READ transaction.
macro_rules! nulls_index_swapped {
    ($model:ident, $table:literal, $len:expr, $repeatable:expr) => {{
        let db = TestDb::new(concat!("nulls_swapped_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut client = db.connect().await;
        // A short batch (the `ON CONFLICT` form), then one of `len` rows.
        $model::bulk_create_new(&mut client, &$model::batch(0, 5)).await.unwrap();
        $model::bulk_create_new(&mut client, &$model::batch(5, $len)).await.unwrap();
        let stored = count(&admin, $table).await;
        let index: String = admin
            .query_one(
                "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = $1::text::regclass AND indisunique",
                &[&$table],
            )
            .await
            .unwrap()
            .get(0);
        admin
            .batch_execute(&format!(
                "DROP INDEX {index}; CREATE UNIQUE INDEX {}_nd ON {} (owner, label)",
                $table, $table
            ))
            .await
            .unwrap();
        // Stored keys (owner 0..) again, and new ones.
        let rows = $model::batch(0, 2 * $len);
        let err = if $repeatable {
            let mut tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .start()
                .await
                .unwrap();
            let err = $model::bulk_create_new(&mut tx, &rows).await.unwrap_err();
            tx.commit().await.unwrap();
            err
        } else {
            $model::bulk_create_new(&mut client, &rows).await.unwrap_err()
        };
        assert_unique_key_missing(&err);
        let twice: i64 = admin
            .query_one(&format!("SELECT count(*) FROM {} WHERE owner = 0 AND label IS NULL", $table), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(twice, 1, "key (0, NULL) stored twice");
        assert_eq!(count(&admin, $table).await, stored, "nothing of the refused batch is written");
        db.drop().await;
    }};
}

#[tokio::test]
async fn a_nulls_distinct_index_in_place_of_the_key_is_refused_on_the_short_path() {
    nulls_index_swapped!(NullsShort, "nulls_short", 5, false)
}

#[tokio::test]
async fn a_nulls_distinct_index_in_place_of_the_key_is_refused_by_the_plain_form() {
    nulls_index_swapped!(NullsPlain, "nulls_plain", 300, false)
}

#[tokio::test]
async fn a_nulls_distinct_index_in_place_of_the_key_is_refused_through_copy() {
    nulls_index_swapped!(NullsCopy, "nulls_copy", COPY_BATCH, false)
}

#[tokio::test]
async fn a_nulls_distinct_index_in_place_of_the_key_is_refused_in_a_repeatable_read_transaction() {
    nulls_index_swapped!(NullsRepeatable, "nulls_repeatable", 300, true)
}

/// Inside a caller's REPEATABLE READ transaction (whose snapshot predates
/// the call), the `ON CONFLICT` form's guard passes a table whose index
/// fits: calls on both paths go through, also after a row of another key.
#[tokio::test]
async fn the_on_conflict_guard_lets_calls_through_in_a_repeatable_read_transaction() {
    let db = TestDb::new("guard_repeatable").await;
    let admin = db.connect().await;
    admin.batch_execute(&NullsRepeatable::model().migration_sql()).await.unwrap();
    let mut client = db.connect().await;
    let mut tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .unwrap();
    for (from, len) in [(0, 5), (0, 10), (10, 300), (0, COPY_BATCH)] {
        let report = NullsRepeatable::bulk_create_new(&mut tx, &NullsRepeatable::batch(from, len)).await.unwrap();
        assert_eq!(report.offered, len as u64);
    }
    tx.commit().await.unwrap();
    assert_eq!(count(&admin, "nulls_repeatable").await, COPY_BATCH as i64);
    db.drop().await;
}

/// A model with a text key.
macro_rules! member_model {
    ($name:ident, $table:literal) => {
        #[derive(BulkCreateNew, Debug, Clone)]
        #[bulk(table = $table, unique(email), id = false)]
        struct $name {
            email: String,
            name: String,
        }

        impl $name {
            /// `ann@x` offered as "first", `Ann@x` as "second", then `pad`
            /// other keys.
            fn batch(pad: usize) -> Vec<$name> {
                let mut rows = vec![
                    $name { email: "ann@x".into(), name: "first".into() },
                    $name { email: "Ann@x".into(), name: "second".into() },
                ];
                rows.extend((0..pad).map(|i| $name { email: format!("f{i}@y"), name: "pad".into() }));
                rows
            }
        }
    };
}

member_model!(CollatedShort, "collated_short");
member_model!(CollatedPlain, "collated_plain");
member_model!(CollatedCopy, "collated_copy");
member_model!(CiPathShort, "ci_path");
member_model!(CiPathPlain, "ci_path");
member_model!(CiPathCopy, "ci_path");

const CASE_INSENSITIVE: &str = "CREATE COLLATION IF NOT EXISTS case_insensitive \
     (provider = icu, locale = 'und-u-ks-level2', deterministic = false)";

/// The names stored under a key equal to `ann@x` ignoring case.
async fn kept(client: &Client, table: &str) -> Vec<String> {
    let sql = format!("SELECT name FROM {table} WHERE lower(email COLLATE \"C\") = 'ann@x' ORDER BY name");
    client.query(&sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

/// The connection checked the table; then the key's unique index is
/// replaced by one under a case-insensitive collation, which the schema
/// check does not accept as the key (`ON CONFLICT` takes it). The next
/// call must refuse, writing nothing.
macro_rules! index_under_another_collation {
    ($model:ident, $table:literal, $pad:expr) => {{
        let db = TestDb::new(concat!("index_collation_", $table)).await;
        let admin = db.connect().await;
        admin
            .batch_execute(&format!(
                "{CASE_INSENSITIVE}; CREATE TABLE {t} (email text NOT NULL, name text NOT NULL); \
                 CREATE UNIQUE INDEX {t}_email ON {t} (email)",
                t = $table
            ))
            .await
            .unwrap();
        let mut client = db.connect().await;
        $model::bulk_create_new(&mut client, &$model::batch(0)[..1]).await.unwrap();
        $model::bulk_create_new(&mut client, &$model::batch($pad)[2..]).await.unwrap();
        admin
            .batch_execute(&format!(
                "TRUNCATE {t}; DROP INDEX {t}_email; CREATE UNIQUE INDEX {t}_email ON {t} (email COLLATE case_insensitive)",
                t = $table
            ))
            .await
            .unwrap();
        let err = $model::bulk_create_new(&mut client, &$model::batch($pad)).await.unwrap_err();
        assert_unique_key_missing(&err);
        assert_eq!(count(&admin, $table).await, 0, "nothing of the refused batch is written");
        db.drop().await;
    }};
}

#[tokio::test]
async fn a_key_index_under_another_collation_is_refused_on_the_short_path() {
    index_under_another_collation!(CollatedShort, "collated_short", 0)
}

#[tokio::test]
async fn a_key_index_under_another_collation_is_refused_by_the_plain_form() {
    index_under_another_collation!(CollatedPlain, "collated_plain", 200)
}

#[tokio::test]
async fn a_key_index_under_another_collation_is_refused_through_copy() {
    index_under_another_collation!(CollatedCopy, "collated_copy", COPY_BATCH)
}

/// The connection checked `ci_path` in its schema; then its `search_path`
/// leads to a same-named table whose key column compares case-insensitively.
/// The next call must compare keys as that table does (the first offered of
/// `ann@x` and `Ann@x` is kept), as a new connection with that path does.
macro_rules! search_path_to_another_collation {
    ($model:ident, $pad:expr) => {{
        let db = TestDb::new("search_path_collation").await;
        let admin = db.connect().await;
        let other = format!("{}_ci", db.schema);
        let o = bulk_runtime::quote_ident(&other);
        admin
            .batch_execute(&format!(
                "{CASE_INSENSITIVE}; CREATE TABLE ci_path (email text NOT NULL UNIQUE, name text NOT NULL); \
                 CREATE SCHEMA {o}; \
                 CREATE TABLE {o}.ci_path (email text COLLATE case_insensitive NOT NULL UNIQUE, name text NOT NULL)"
            ))
            .await
            .unwrap();
        let mut client = db.connect().await;
        $model::bulk_create_new(&mut client, &$model::batch(0)[..1]).await.unwrap();
        $model::bulk_create_new(&mut client, &$model::batch($pad)[2..]).await.unwrap();
        client.batch_execute(&format!("SET search_path = {o}")).await.unwrap();
        let report = $model::bulk_create_new(&mut client, &$model::batch($pad)).await.unwrap();
        assert_eq!((report.inserted, report.skipped), ($pad as u64 + 1, 1), "{report:?}");
        assert_eq!(kept(&client, "ci_path").await, ["first"], "the first offered row of a key is kept");
        // Again, now that the connection knows the table.
        client.batch_execute("TRUNCATE ci_path").await.unwrap();
        $model::bulk_create_new(&mut client, &$model::batch($pad)).await.unwrap();
        assert_eq!(kept(&client, "ci_path").await, ["first"]);
        admin.batch_execute(&format!("DROP SCHEMA {o} CASCADE")).await.unwrap();
        db.drop().await;
    }};
}

#[tokio::test]
async fn a_search_path_switch_to_a_key_under_another_collation_checks_again_on_the_short_path() {
    search_path_to_another_collation!(CiPathShort, 0)
}

#[tokio::test]
async fn a_search_path_switch_to_a_key_under_another_collation_checks_again_for_the_plain_form() {
    search_path_to_another_collation!(CiPathPlain, 200)
}

#[tokio::test]
async fn a_search_path_switch_to_a_key_under_another_collation_checks_again_through_copy() {
    search_path_to_another_collation!(CiPathCopy, COPY_BATCH)
}

/// The `bulk` builder's calls whose statements take `ON CONFLICT`'s arbiter
/// as the plain call's `ON CONFLICT` forms do.
#[derive(Debug, Clone, Copy)]
enum Variant {
    Keys,
    Skipped,
    Upsert,
}

const VARIANTS: [Variant; 3] = [Variant::Keys, Variant::Skipped, Variant::Upsert];

/// Runs `rows` as the `variant` call (an upsert of every column, keeping
/// the first offered row of a key): `(inserted, skipped, positions)`, the
/// positions being the new rows' for `returning_keys`, the skipped rows'
/// for `returning_skipped`, none for an upsert.
async fn run_variant<T: BulkCreateNew, C: bulk_runtime::Connection + ?Sized>(
    client: &mut C,
    variant: Variant,
    rows: &[T],
) -> Result<(u64, u64, Vec<usize>), Error> {
    Ok(match variant {
        Variant::Keys => {
            let r = T::bulk(client).returning_keys().run(rows).await?;
            (r.inserted, r.skipped, r.returned.iter().map(|row| row.index).collect())
        }
        Variant::Skipped => {
            let r = T::bulk(client).returning_skipped().run(rows).await?;
            (r.inserted, r.skipped, r.returned)
        }
        Variant::Upsert => {
            let upsert = bulk_runtime::Upsert::all_columns().keep(bulk_runtime::Keep::First);
            let r = T::bulk(client).upsert(upsert).run(rows).await?;
            (r.inserted, r.skipped, Vec::new())
        }
    })
}

tag_model!(NullsVariantsShort, "nulls_variants_short");
tag_model!(NullsVariantsCopy, "nulls_variants_copy");

/// As `nulls_index_swapped`, for each of the builder's variants, whose
/// connection made the same call before the swap (and so prepared its
/// statements, on the short path, or made its scratch table).
macro_rules! nulls_index_swapped_variants {
    ($model:ident, $table:literal, $len:expr) => {{
        for variant in VARIANTS {
            let db = TestDb::new(concat!("nulls_swapped_", $table)).await;
            let admin = db.connect().await;
            admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
            let mut client = db.connect().await;
            run_variant(&mut client, variant, &$model::batch(0, 5)).await.unwrap();
            run_variant(&mut client, variant, &$model::batch(5, $len)).await.unwrap();
            let stored = count(&admin, $table).await;
            let index: String = admin
                .query_one(
                    "SELECT indexrelid::regclass::text FROM pg_index \
                     WHERE indrelid = $1::text::regclass AND indisunique",
                    &[&$table],
                )
                .await
                .unwrap()
                .get(0);
            admin
                .batch_execute(&format!(
                    "DROP INDEX {index}; CREATE UNIQUE INDEX {t}_nd ON {t} (owner, label)",
                    t = $table
                ))
                .await
                .unwrap();
            // (With new keys: the guard goes with the rows the anti-join
            // lets through, so a batch of stored keys alone writes nothing
            // and is not refused.)
            let err = run_variant(&mut client, variant, &$model::batch(0, 3 * $len)).await.unwrap_err();
            assert_unique_key_missing(&err);
            let twice: i64 = admin
                .query_one(&format!("SELECT count(*) FROM {} WHERE owner = 0 AND label IS NULL", $table), &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(twice, 1, "{variant:?}: key (0, NULL) stored twice");
            assert_eq!(count(&admin, $table).await, stored, "{variant:?}: nothing of the refused batch is written");
            db.drop().await;
        }
    }};
}

#[tokio::test]
async fn a_nulls_distinct_index_in_place_of_the_key_is_refused_by_the_variants_on_the_short_path() {
    nulls_index_swapped_variants!(NullsVariantsShort, "nulls_variants_short", 5)
}

#[tokio::test]
async fn a_nulls_distinct_index_in_place_of_the_key_is_refused_by_the_variants_through_copy() {
    nulls_index_swapped_variants!(NullsVariantsCopy, "nulls_variants_copy", COPY_BATCH)
}

tag_model!(NullsVariantsRepeatable, "nulls_variants_repeatable");

/// As `the_on_conflict_guard_lets_calls_through_in_a_repeatable_read_transaction`,
/// for each of the builder's variants.
#[tokio::test]
async fn the_variants_guard_lets_calls_through_in_a_repeatable_read_transaction() {
    for variant in VARIANTS {
        let db = TestDb::new("guard_repeatable_variants").await;
        let admin = db.connect().await;
        admin.batch_execute(&NullsVariantsRepeatable::model().migration_sql()).await.unwrap();
        let mut client = db.connect().await;
        let mut tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await
            .unwrap();
        let mut inserted = 0;
        for (from, len) in [(0, 5), (0, 10), (0, COPY_BATCH)] {
            let rows = NullsVariantsRepeatable::batch(from, len);
            inserted += run_variant(&mut tx, variant, &rows).await.unwrap().0;
        }
        assert_eq!(inserted, COPY_BATCH as u64, "{variant:?}");
        tx.commit().await.unwrap();
        assert_eq!(count(&admin, "nulls_variants_repeatable").await, COPY_BATCH as i64, "{variant:?}");
        db.drop().await;
    }
}

member_model!(CollatedVariantsShort, "collated_variants_short");
member_model!(CollatedVariantsCopy, "collated_variants_copy");

/// As `index_under_another_collation`, for each of the builder's variants.
macro_rules! index_under_another_collation_variants {
    ($model:ident, $table:literal, $pad:expr) => {{
        for variant in VARIANTS {
            let db = TestDb::new(concat!("index_collation_", $table)).await;
            let admin = db.connect().await;
            admin
                .batch_execute(&format!(
                    "{CASE_INSENSITIVE}; CREATE TABLE {t} (email text NOT NULL, name text NOT NULL); \
                     CREATE UNIQUE INDEX {t}_email ON {t} (email)",
                    t = $table
                ))
                .await
                .unwrap();
            let mut client = db.connect().await;
            run_variant(&mut client, variant, &$model::batch(0)[..1]).await.unwrap();
            run_variant(&mut client, variant, &$model::batch($pad)[2..]).await.unwrap();
            admin
                .batch_execute(&format!(
                    "TRUNCATE {t}; DROP INDEX {t}_email; \
                     CREATE UNIQUE INDEX {t}_email ON {t} (email COLLATE case_insensitive)",
                    t = $table
                ))
                .await
                .unwrap();
            let err = run_variant(&mut client, variant, &$model::batch($pad)).await.unwrap_err();
            assert_unique_key_missing(&err);
            assert_eq!(count(&admin, $table).await, 0, "{variant:?}: nothing of the refused batch is written");
            db.drop().await;
        }
    }};
}

#[tokio::test]
async fn a_key_index_under_another_collation_is_refused_by_the_variants_on_the_short_path() {
    index_under_another_collation_variants!(CollatedVariantsShort, "collated_variants_short", 0)
}

#[tokio::test]
async fn a_key_index_under_another_collation_is_refused_by_the_variants_through_copy() {
    index_under_another_collation_variants!(CollatedVariantsCopy, "collated_variants_copy", COPY_BATCH)
}

member_model!(CiPathVariantsShort, "ci_path");
member_model!(CiPathVariantsCopy, "ci_path");

/// As `search_path_to_another_collation`, for each of the builder's
/// variants: the first offered row of `ann@x` and `Ann@x` is kept, the
/// second reported skipped.
macro_rules! search_path_to_another_collation_variants {
    ($model:ident, $pad:expr) => {{
        for variant in VARIANTS {
            let db = TestDb::new("search_path_collation").await;
            let admin = db.connect().await;
            let other = format!("{}_ci", db.schema);
            let o = bulk_runtime::quote_ident(&other);
            admin
                .batch_execute(&format!(
                    "{CASE_INSENSITIVE}; CREATE TABLE ci_path (email text NOT NULL UNIQUE, name text NOT NULL); \
                     CREATE SCHEMA {o}; \
                     CREATE TABLE {o}.ci_path (email text COLLATE case_insensitive NOT NULL UNIQUE, name text NOT NULL)"
                ))
                .await
                .unwrap();
            let mut client = db.connect().await;
            run_variant(&mut client, variant, &$model::batch(0)[..1]).await.unwrap();
            run_variant(&mut client, variant, &$model::batch($pad)[2..]).await.unwrap();
            client.batch_execute(&format!("SET search_path = {o}")).await.unwrap();
            for again in [false, true] {
                if again {
                    // Now that the connection knows the table.
                    client.batch_execute("TRUNCATE ci_path").await.unwrap();
                }
                let (inserted, skipped, positions) =
                    run_variant(&mut client, variant, &$model::batch($pad)).await.unwrap();
                assert_eq!((inserted, skipped), ($pad as u64 + 1, 1), "{variant:?}");
                assert_eq!(kept(&client, "ci_path").await, ["first"], "{variant:?}: the first offered row is kept");
                match variant {
                    Variant::Keys => assert!(positions.contains(&0) && !positions.contains(&1), "{variant:?}"),
                    Variant::Skipped => assert_eq!(positions, [1], "{variant:?}"),
                    Variant::Upsert => {}
                }
            }
            admin.batch_execute(&format!("DROP SCHEMA {o} CASCADE")).await.unwrap();
            db.drop().await;
        }
    }};
}

#[tokio::test]
async fn a_search_path_switch_to_a_key_under_another_collation_checks_again_for_the_variants_on_the_short_path() {
    search_path_to_another_collation_variants!(CiPathVariantsShort, 0)
}

#[tokio::test]
async fn a_search_path_switch_to_a_key_under_another_collation_checks_again_for_the_variants_through_copy() {
    search_path_to_another_collation_variants!(CiPathVariantsCopy, COPY_BATCH)
}

/// The session checked the table; then an admin creates an `ON INSERT`
/// rule on it that writes each row to an audit table too (`DO ALSO`), or
/// there instead (`DO INSTEAD`). The check refuses a table with such a
/// rule, and so must the connection's next call, on every path, as must
/// `returning_skipped`: nothing written to the table or the audit table.
/// Before, the plain form (300 rows) and the COPY path stored every row
/// while the `DO ALSO` audit got none, and with `DO INSTEAD` reported every
/// row inserted while the table got none; short batches and
/// `returning_skipped` failed with a bare 0A000. A `DO INSTEAD NOTHING`
/// rule turned the plain form into no statement at all: nothing written,
/// and every row counted as skipped. Without the rule the same batch
/// counts exactly.
macro_rules! rule_after_the_check {
    ($model:ident, $table:literal, $len:expr, $action:literal) => {{
        let db = TestDb::new(concat!("rule_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        let first = $model::bulk_create_new(&mut writer, &$model::batch(0, $len)).await.unwrap();
        assert_eq!(first.inserted, $len as u64);
        admin
            .batch_execute(concat!(
                "CREATE TABLE audit (k bigint NOT NULL); CREATE RULE audited AS ON INSERT TO ",
                $table,
                " DO ",
                $action
            ))
            .await
            .unwrap();
        let rows = $model::batch($len as i64, $len);
        let plain = $model::bulk_create_new(&mut writer, &rows).await.map(|r| r.inserted);
        // (Its `WITH` query, which PostgreSQL refuses on such a table.)
        let returning = $model::bulk(&mut writer).returning_skipped().run(&rows).await.map(|r| r.inserted);
        for err in [plain.unwrap_err(), returning.unwrap_err()] {
            match &err {
                Error::SchemaMismatch { problems, .. } => {
                    assert_eq!(problems, &[SchemaProblem::InsertRules { rules: vec!["audited".into()] }], "{err}")
                }
                other => panic!("expected the schema check's explanation, got {other}"),
            }
            assert!(err.connection_usable(), "{err}");
        }
        let written = (count(&admin, $table).await, count(&admin, "audit").await);
        assert_eq!(written, ($len as i64, 0), "nothing of the refused batch is written");
        admin.batch_execute(concat!("DROP RULE audited ON ", $table)).await.unwrap();
        let again = $model::bulk_create_new(&mut writer, &rows).await.unwrap();
        assert_eq!((again.inserted, again.skipped), ($len as u64, 0));
        assert_eq!(count(&admin, $table).await, 2 * $len as i64);
        db.drop().await;
    }};
}

#[tokio::test]
async fn an_insert_rule_created_after_the_check_is_refused_on_the_short_path() {
    rule_after_the_check!(RuleShort, "rule_short", 10, "ALSO INSERT INTO audit VALUES (NEW.k)")
}

#[tokio::test]
async fn an_insert_rule_created_after_the_check_is_refused_by_the_plain_form() {
    rule_after_the_check!(RulePlain, "rule_plain", 300, "ALSO INSERT INTO audit VALUES (NEW.k)")
}

#[tokio::test]
async fn an_insert_rule_created_after_the_check_is_refused_through_copy() {
    rule_after_the_check!(RuleCopy, "rule_copy", COPY_BATCH, "ALSO INSERT INTO audit VALUES (NEW.k)")
}

#[tokio::test]
async fn an_instead_rule_created_after_the_check_is_refused_on_the_short_path() {
    rule_after_the_check!(InsteadShort, "instead_short", 10, "INSTEAD INSERT INTO audit VALUES (NEW.k)")
}

#[tokio::test]
async fn an_instead_rule_created_after_the_check_is_refused_by_the_plain_form() {
    rule_after_the_check!(InsteadPlain, "instead_plain", 300, "INSTEAD INSERT INTO audit VALUES (NEW.k)")
}

#[tokio::test]
async fn an_instead_rule_created_after_the_check_is_refused_through_copy() {
    rule_after_the_check!(InsteadCopy, "instead_copy", COPY_BATCH, "INSTEAD INSERT INTO audit VALUES (NEW.k)")
}

#[tokio::test]
async fn an_instead_nothing_rule_created_after_the_check_is_refused_on_the_short_path() {
    rule_after_the_check!(NothingShort, "nothing_short", 10, "INSTEAD NOTHING")
}

#[tokio::test]
async fn an_instead_nothing_rule_created_after_the_check_is_refused_by_the_plain_form() {
    rule_after_the_check!(NothingPlain, "nothing_plain", 300, "INSTEAD NOTHING")
}

#[tokio::test]
async fn an_instead_nothing_rule_created_after_the_check_is_refused_through_copy() {
    rule_after_the_check!(NothingCopy, "nothing_copy", COPY_BATCH, "INSTEAD NOTHING")
}

/// A `DO INSTEAD NOTHING` rule created after the check, met by the plain
/// call with a batch id and inside a caller's transaction, on the short
/// path's two forms: refused with `InsertRules`, nothing written, no batch
/// recorded in the ledger (the retry after the rule is dropped counts
/// exactly, not as a replay of an empty batch), and the caller's
/// transaction still usable.
#[tokio::test]
async fn an_instead_nothing_rule_is_refused_with_a_batch_id_and_in_a_transaction() {
    let db = TestDb::new("rule_nothing_ledger").await;
    let admin = db.connect().await;
    admin.batch_execute(&NothingLedger::model().migration_sql()).await.unwrap();
    admin.batch_execute(&bulk_runtime::Ledger::of::<NothingLedger>().migration_sql()).await.unwrap();
    let mut writer = db.connect().await;
    let mut from = 0;
    for len in [10, 300] {
        assert_eq!(
            NothingLedger::bulk_create_new(&mut writer, &NothingLedger::batch(from, len)).await.unwrap().inserted,
            len as u64
        );
        from += 1000;
        admin.batch_execute("CREATE RULE nothing AS ON INSERT TO nothing_ledger DO INSTEAD NOTHING").await.unwrap();
        let before = count(&admin, "nothing_ledger").await;
        let rows = NothingLedger::batch(from, len);
        let refused = |e: &Error| {
            matches!(e, Error::SchemaMismatch { problems, .. }
                if problems == &[SchemaProblem::InsertRules { rules: vec!["nothing".into()] }])
        };
        let id = format!("batch {len}");
        let err = NothingLedger::bulk(&mut writer).batch_id(id.as_str()).run(&rows).await.unwrap_err();
        assert!(refused(&err), "{len} with a batch id: {err}");
        let mut tx = writer.transaction().await.unwrap();
        let err = NothingLedger::bulk_create_new(&mut tx, &rows).await.unwrap_err();
        assert!(refused(&err), "{len} in a transaction: {err}");
        tx.execute("SELECT 1", &[]).await.expect("the caller's transaction is still usable");
        tx.commit().await.unwrap();
        assert_eq!(count(&admin, "nothing_ledger").await, before, "{len}: nothing written");
        admin.batch_execute("DROP RULE nothing ON nothing_ledger").await.unwrap();
        let again = NothingLedger::bulk(&mut writer).batch_id(id.as_str()).run(&rows).await.unwrap();
        assert_eq!((again.inserted, again.skipped), (len as u64, 0), "{len}: the batch id was not recorded");
        from += 1000;
    }
    db.drop().await;
}

/// The session checked the table; then an admin narrows the key column
/// from `bigint` to `integer`, which the model's `i64` no longer fits. A
/// batch with a key beyond `integer` fails on every path with the schema
/// check's explanation (not the bare 22003 of the cast), nothing written,
/// the connection usable; with the column widened back the same batch
/// counts exactly.
macro_rules! narrowed_after_the_check {
    ($model:ident, $table:literal, $len:expr) => {{
        let db = TestDb::new(concat!("narrowed_", $table)).await;
        let admin = db.connect().await;
        admin.batch_execute(&$model::model().migration_sql()).await.unwrap();
        let mut writer = db.connect().await;
        let first = $model::bulk_create_new(&mut writer, &$model::batch(0, $len)).await.unwrap();
        assert_eq!(first.inserted, $len as u64);
        admin.batch_execute(concat!("ALTER TABLE ", $table, " ALTER COLUMN k TYPE integer")).await.unwrap();
        // Keys below and beyond `integer`'s range.
        let rows = $model::batch(i32::MAX as i64 - $len as i64 / 2, $len);
        let plain = $model::bulk_create_new(&mut writer, &rows).await.map(|r| r.inserted);
        let returning = $model::bulk(&mut writer).returning_skipped().run(&rows).await.map(|r| r.inserted);
        for err in [plain.unwrap_err(), returning.unwrap_err()] {
            match &err {
                Error::SchemaMismatch { problems, .. } => assert!(
                    problems.iter().any(|p| matches!(p, SchemaProblem::ColumnType { column, .. } if column == "k")),
                    "{err}"
                ),
                other => panic!("expected the schema check's explanation, got {other}"),
            }
            assert!(err.connection_usable(), "{err}");
        }
        assert_eq!(count(&admin, $table).await, $len as i64, "nothing of the refused batch is written");
        admin.batch_execute(concat!("ALTER TABLE ", $table, " ALTER COLUMN k TYPE bigint")).await.unwrap();
        let again = $model::bulk_create_new(&mut writer, &rows).await.unwrap();
        assert_eq!((again.inserted, again.skipped), ($len as u64, 0));
        assert_eq!(count(&admin, $table).await, 2 * $len as i64);
        db.drop().await;
    }};
}

#[tokio::test]
async fn a_key_column_narrowed_after_the_check_is_explained_on_the_short_path() {
    narrowed_after_the_check!(NarrowShort, "narrow_short", 10)
}

#[tokio::test]
async fn a_key_column_narrowed_after_the_check_is_explained_by_the_plain_form() {
    narrowed_after_the_check!(NarrowPlain, "narrow_plain", 300)
}

#[tokio::test]
async fn a_key_column_narrowed_after_the_check_is_explained_through_copy() {
    narrowed_after_the_check!(NarrowCopy, "narrow_copy", COPY_BATCH)
}
