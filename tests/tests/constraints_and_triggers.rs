//! Table constraints and triggers beyond the unique key (foreign keys,
//! deferred constraints, exclusion constraints, other unique indexes,
//! CHECK / NOT NULL / generated columns, row and statement triggers), on
//! both paths, on a `Client` and inside a caller's `Transaction`: errors
//! are the table's own, nothing is written when a call fails, a repeat or a
//! stored key's row never reaches the table, and counts are exact.

use bulk_runtime::{BulkCreateNew, Error, Report, Upsert};
use bulk_tests::{COPY_BATCH, TestDb, count};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// A short batch under 128 rows (the `ON CONFLICT` form).
const SHORT: usize = 10;
/// A short batch of the plain (anti-join) form.
const PLAIN: usize = 200;
/// A batch of the COPY path.
fn long() -> usize {
    COPY_BATCH + 10
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum On {
    Client,
    Tx,
}

/// Runs the plain call on `client` itself or inside a transaction of it
/// (committed after a success; after a failure the transaction must still
/// be usable: a marker row written before the call is committed with it).
async fn call<T: BulkCreateNew>(client: &mut Client, on: On, rows: &[T]) -> Result<Report, Error> {
    match on {
        On::Client => T::bulk_create_new(client, rows).await,
        On::Tx => {
            client.batch_execute("CREATE TABLE IF NOT EXISTS marker (n int)").await.unwrap();
            let mut tx = client.transaction().await.unwrap();
            tx.execute("INSERT INTO marker VALUES (1)", &[]).await.unwrap();
            let result = T::bulk_create_new(&mut tx, rows).await;
            tx.query_one("SELECT 1", &[]).await.expect("the caller's transaction stays usable");
            tx.commit().await.expect("the caller's commit");
            let markers: i64 = client.query_one("SELECT count(*) FROM marker", &[]).await.unwrap().get(0);
            assert!(markers >= 1, "the caller's own write survived");
            client.batch_execute("DELETE FROM marker").await.unwrap();
            result
        }
    }
}

fn code(e: &Error) -> String {
    e.sqlstate().map_or_else(|| format!("no sqlstate: {e}"), |c| c.code().to_owned())
}

fn constraint(e: &Error) -> Option<String> {
    e.db_error().and_then(|d| d.constraint()).map(str::to_owned)
}

// ---------------------------------------------------------------------------
// Foreign keys
// ---------------------------------------------------------------------------

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "child", unique(k))]
pub struct Child {
    pub k: i64,
    pub parent: i64,
    pub note: String,
}

fn child(k: i64, parent: i64) -> Child {
    Child { k, parent, note: format!("n{k}") }
}

async fn fk_setup(name: &str, deferred: bool) -> (TestDb, Client) {
    let db = TestDb::new(name).await;
    let client = db.connect().await;
    client
        .batch_execute("CREATE TABLE parent (id bigint PRIMARY KEY); INSERT INTO parent SELECT generate_series(0, 9)")
        .await
        .unwrap();
    client.batch_execute(&Child::model().migration_sql()).await.unwrap();
    let when = if deferred { "DEFERRABLE INITIALLY DEFERRED" } else { "" };
    client
        .batch_execute(&format!(
            "ALTER TABLE child ADD CONSTRAINT child_parent_fk FOREIGN KEY (parent) REFERENCES parent (id) \
             ON DELETE CASCADE {when}"
        ))
        .await
        .unwrap();
    (db, client)
}

/// `n` rows, keys `base..base + n`, parents 0..9; row `bad` (if any) names
/// the missing parent 999.
fn children(base: i64, n: usize, bad: Option<usize>) -> Vec<Child> {
    (0..n).map(|i| child(base + i as i64, if Some(i) == bad { 999 } else { (i % 10) as i64 })).collect()
}

async fn fk_missing_parent(n: usize, on: On, deferred: bool) {
    let name = format!("fk_missing_{n}_{on:?}_{deferred}").to_lowercase();
    let (db, mut client) = fk_setup(&name, deferred).await;
    let bad = n / 2;
    let err = call(&mut client, on, &children(0, n, Some(bad))).await;
    match on {
        On::Tx if deferred => {
            // The deferred check comes at the caller's commit, which `call`
            // asserts succeeds: so it must not get here with Ok.
            unreachable!()
        }
        _ => {}
    }
    let err = err.expect_err("a missing parent fails the call");
    println!("{n} {on:?} deferred={deferred}: {err}; row {:?} field {:?}", err.row(), err.field());
    assert_eq!(code(&err), "23503", "{err}");
    assert_eq!(constraint(&err).as_deref(), Some("child_parent_fk"));
    assert!(!err.is_retryable(), "a missing parent is not retryable: {err}");
    assert!(err.connection_usable());
    assert_eq!(count(&client, "child").await, 0, "nothing written");
    // The connection takes the next batch.
    let o = call(&mut client, on, &children(0, n, None)).await.unwrap();
    assert_eq!((o.offered, o.inserted, o.skipped), (n as u64, n as u64, 0));
    assert_eq!(count(&client, "child").await, n as i64);
    db.drop().await;
}

#[tokio::test]
async fn fk_missing_parent_short_client() {
    fk_missing_parent(SHORT, On::Client, false).await;
}
#[tokio::test]
async fn fk_missing_parent_plain_client() {
    fk_missing_parent(PLAIN, On::Client, false).await;
}
#[tokio::test]
async fn fk_missing_parent_copy_client() {
    fk_missing_parent(long(), On::Client, false).await;
}
#[tokio::test]
async fn fk_missing_parent_short_tx() {
    fk_missing_parent(SHORT, On::Tx, false).await;
}
#[tokio::test]
async fn fk_missing_parent_plain_tx() {
    fk_missing_parent(PLAIN, On::Tx, false).await;
}
#[tokio::test]
async fn fk_missing_parent_copy_tx() {
    fk_missing_parent(long(), On::Tx, false).await;
}
#[tokio::test]
async fn deferred_fk_missing_parent_short_client() {
    fk_missing_parent(SHORT, On::Client, true).await;
}
#[tokio::test]
async fn deferred_fk_missing_parent_plain_client() {
    fk_missing_parent(PLAIN, On::Client, true).await;
}
#[tokio::test]
async fn deferred_fk_missing_parent_copy_client() {
    fk_missing_parent(long(), On::Client, true).await;
}

/// A row whose key is stored (or repeats an earlier row of the batch) is
/// skipped, even when its parent is missing: the FK is only checked on
/// rows inserted.
async fn fk_missing_parent_on_skipped_rows(n: usize, on: On, deferred: bool) {
    let name = format!("fk_skipped_{n}_{on:?}_{deferred}").to_lowercase();
    let (db, mut client) = fk_setup(&name, deferred).await;
    Child::bulk_create_new(&mut client, [child(3, 3)]).await.unwrap();
    let mut rows = children(0, n, Some(3)); // key 3 stored: its row is skipped
    rows.push(child(5, 999)); // a repeat of key 5, offered after the first
    let o = call(&mut client, on, &rows).await.expect("skipped rows never reach the FK");
    assert_eq!((o.offered, o.inserted, o.skipped), (n as u64 + 1, n as u64 - 1, 2));
    assert_eq!(count(&client, "child").await, n as i64);
    db.drop().await;
}

#[tokio::test]
async fn fk_missing_parent_on_skipped_rows_short() {
    fk_missing_parent_on_skipped_rows(SHORT, On::Client, false).await;
    fk_missing_parent_on_skipped_rows(SHORT, On::Tx, true).await;
}
#[tokio::test]
async fn fk_missing_parent_on_skipped_rows_plain() {
    fk_missing_parent_on_skipped_rows(PLAIN, On::Client, false).await;
    fk_missing_parent_on_skipped_rows(PLAIN, On::Tx, true).await;
}
#[tokio::test]
async fn fk_missing_parent_on_skipped_rows_copy() {
    fk_missing_parent_on_skipped_rows(long(), On::Client, true).await;
    fk_missing_parent_on_skipped_rows(long(), On::Tx, false).await;
}

/// Inside a caller's transaction, a deferred FK is checked at the caller's
/// commit: the call itself succeeds (as any statement would); the caller
/// can still add the parent before committing, or its commit fails and
/// nothing is stored. With `SET CONSTRAINTS ALL IMMEDIATE` the call fails
/// and leaves the caller's transaction usable.
async fn deferred_fk_in_caller_tx(n: usize) {
    let (db, mut client) = fk_setup(&format!("deferred_fk_tx_{n}"), true).await;
    // 1. Commit fails: nothing stored.
    {
        let mut tx = client.transaction().await.unwrap();
        let o = Child::bulk_create_new(&mut tx, &children(0, n, Some(1))).await.unwrap();
        assert_eq!(o.inserted, n as u64);
        let e = tx.commit().await.expect_err("the caller's commit checks the deferred FK");
        assert_eq!(e.code(), Some(&SqlState::FOREIGN_KEY_VIOLATION));
    }
    assert_eq!(count(&client, "child").await, 0);
    // 2. The parent added later in the same transaction: commit succeeds.
    {
        let mut tx = client.transaction().await.unwrap();
        let o = Child::bulk_create_new(&mut tx, &children(0, n, Some(1))).await.unwrap();
        assert_eq!(o.inserted, n as u64);
        tx.execute("INSERT INTO parent VALUES (999)", &[]).await.unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(count(&client, "child").await, n as i64);
    // 3. SET CONSTRAINTS ALL IMMEDIATE: the call fails, the transaction is usable.
    client.batch_execute("DELETE FROM parent WHERE id = 999").await.unwrap();
    {
        let mut tx = client.transaction().await.unwrap();
        tx.batch_execute("SET CONSTRAINTS ALL IMMEDIATE").await.unwrap();
        let err = Child::bulk_create_new(&mut tx, &children(10_000, n, Some(2))).await.unwrap_err();
        assert_eq!(code(&err), "23503", "{err}");
        let o = Child::bulk_create_new(&mut tx, &children(10_000, n, None)).await.unwrap();
        assert_eq!(o.inserted, n as u64);
        tx.commit().await.unwrap();
    }
    // (The parent 999's delete cascaded to the one row of step 2 that named it.)
    assert_eq!(count(&client, "child").await, 2 * n as i64 - 1);
    db.drop().await;
}

#[tokio::test]
async fn deferred_fk_in_caller_tx_short() {
    deferred_fk_in_caller_tx(SHORT).await;
    deferred_fk_in_caller_tx(PLAIN).await;
}
#[tokio::test]
async fn deferred_fk_in_caller_tx_copy() {
    deferred_fk_in_caller_tx(long()).await;
}

/// A deferred FK failing at the call's own commit, with a batch id: no
/// ledger row is left, and the same id then runs (not replayed).
async fn deferred_fk_with_batch_id(n: usize) {
    let (db, mut client) = fk_setup(&format!("deferred_fk_ledger_{n}"), true).await;
    client.batch_execute(&bulk_runtime::Ledger::of::<Child>().migration_sql()).await.unwrap();
    let rows = children(0, n, Some(0));
    let err = Child::bulk(&mut client).batch_id("b1").run(&rows).await.unwrap_err();
    assert_eq!(code(&err), "23503", "{err}");
    assert!(err.connection_usable());
    assert_eq!(count(&client, "child").await, 0);
    assert_eq!(count(&client, "bulk_batches").await, 0, "a failed call leaves no ledger row");
    client.batch_execute("INSERT INTO parent VALUES (999)").await.unwrap();
    let o = Child::bulk(&mut client).batch_id("b1").run(&rows).await.unwrap();
    assert!(!o.replayed);
    assert_eq!(o.inserted, n as u64);
    db.drop().await;
}

#[tokio::test]
async fn deferred_fk_with_batch_id_short() {
    deferred_fk_with_batch_id(SHORT).await;
}
#[tokio::test]
async fn deferred_fk_with_batch_id_copy() {
    deferred_fk_with_batch_id(long()).await;
}

/// The builder's variants on a missing parent (immediate and deferred).
async fn fk_variants(n: usize, deferred: bool) {
    let (db, mut client) = fk_setup(&format!("fk_variants_{n}_{deferred}"), deferred).await;
    let rows = children(0, n, Some(n - 1));
    let e = Child::bulk(&mut client).returning_keys().run(&rows).await.unwrap_err();
    assert_eq!(code(&e), "23503", "{e}");
    let e = Child::bulk(&mut client).returning_skipped().run(&rows).await.unwrap_err();
    assert_eq!(code(&e), "23503", "{e}");
    let e = Child::bulk(&mut client).upsert(Upsert::all_columns()).run(&rows).await.unwrap_err();
    assert_eq!(code(&e), "23503", "{e}");
    assert_eq!(count(&client, "child").await, 0);
    // An upsert that moves a stored row to a missing parent.
    Child::bulk_create_new(&mut client, &children(0, n, None)).await.unwrap();
    let e = Child::bulk(&mut client).upsert(Upsert::all_columns()).run(&rows).await.unwrap_err();
    assert_eq!(code(&e), "23503", "{e}");
    let parents: i64 = client.query_one("SELECT count(*) FROM child WHERE parent = 999", &[]).await.unwrap().get(0);
    assert_eq!(parents, 0);
    db.drop().await;
}

#[tokio::test]
async fn fk_variants_short() {
    fk_variants(SHORT, false).await;
    fk_variants(SHORT, true).await;
}
#[tokio::test]
async fn fk_variants_copy() {
    fk_variants(long(), false).await;
    fk_variants(long(), true).await;
}

/// A new connection's first call (this process has checked the table)
/// meeting a missing parent, immediate or deferred.
#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "fchild", unique(k))]
pub struct FirstChild {
    pub k: i64,
    pub parent: i64,
}

async fn first_call_fk(deferred: bool, n: usize) {
    let db = TestDb::new(&format!("first_call_fk_{deferred}_{n}")).await;
    let mut client = db.connect().await;
    let when = if deferred { "DEFERRABLE INITIALLY DEFERRED" } else { "" };
    client
        .batch_execute(&format!(
            "CREATE TABLE parent (id bigint PRIMARY KEY); INSERT INTO parent VALUES (1);
             {} ALTER TABLE fchild ADD FOREIGN KEY (parent) REFERENCES parent (id) {when};",
            FirstChild::model().migration_sql()
        ))
        .await
        .unwrap();
    // The check, passed in this process.
    FirstChild::bulk_create_new(&mut client, [FirstChild { k: -1, parent: 1 }]).await.unwrap();
    let mut fresh = db.connect().await;
    let rows: Vec<_> = (0..n as i64).map(|k| FirstChild { k, parent: if k == 3 { 7 } else { 1 } }).collect();
    let err = FirstChild::bulk_create_new(&mut fresh, &rows).await.unwrap_err();
    assert_eq!(code(&err), "23503", "{err}");
    assert!(err.connection_usable());
    assert_eq!(count(&fresh, "fchild").await, 1);
    let pid: i32 = fresh.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    assert!(!bulk_tests::in_transaction(&client, pid).await, "no transaction left open");
    let rows: Vec<_> = (0..n as i64).map(|k| FirstChild { k, parent: 1 }).collect();
    let o = FirstChild::bulk_create_new(&mut fresh, &rows).await.unwrap();
    assert_eq!(o.inserted, n as u64);
    db.drop().await;
}

#[tokio::test]
async fn first_call_fk_immediate_and_deferred() {
    first_call_fk(false, SHORT).await;
    first_call_fk(true, SHORT).await;
    first_call_fk(false, PLAIN).await;
    first_call_fk(true, PLAIN).await;
}

/// A foreign key to the same table: rows may name rows of the same batch,
/// also ones that come later in key order.
#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "node", unique(k))]
pub struct Node {
    pub k: i64,
    pub up: i64,
}

async fn self_fk(n: usize, on: On) {
    let db = TestDb::new(&format!("self_fk_{n}_{on:?}").to_lowercase()).await;
    let mut client = db.connect().await;
    client.batch_execute(&Node::model().migration_sql()).await.unwrap();
    client.batch_execute("ALTER TABLE node ADD FOREIGN KEY (up) REFERENCES node (k)").await.unwrap();
    // Each row names the next key (the last names itself), in descending offer order.
    let nn = n as i64;
    let rows: Vec<_> = (0..nn).rev().map(|k| Node { k, up: (k + 1).min(nn - 1) }).collect();
    let o = call(&mut client, on, &rows).await.unwrap();
    assert_eq!(o.inserted, n as u64);
    // A row naming a key that is only a repeat's (not stored): the repeat is skipped, its key is stored.
    let rows = vec![Node { k: nn, up: nn + 1 }, Node { k: nn + 1, up: nn }, Node { k: nn + 1, up: 12345 }];
    let o = call(&mut client, on, &rows).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (2, 1));
    // A row naming a missing key fails, nothing written.
    let rows = vec![Node { k: nn + 2, up: nn + 2 }, Node { k: nn + 3, up: -5 }];
    let e = call(&mut client, on, &rows).await.unwrap_err();
    assert_eq!(code(&e), "23503");
    assert_eq!(count(&client, "node").await, nn + 2);
    db.drop().await;
}

#[tokio::test]
async fn self_referencing_fk() {
    self_fk(SHORT, On::Client).await;
    self_fk(PLAIN, On::Tx).await;
    self_fk(long(), On::Client).await;
    self_fk(long(), On::Tx).await;
}

/// A parent deleted (ON DELETE CASCADE) by another session while the call
/// is in the middle of its insert: the call fails on the FK, nothing
/// written, or (if the delete waits for it) the cascade removes the rows
/// after it: either way no orphan.
async fn parent_deleted_during_call(n: usize) {
    let (db, mut client) = fk_setup(&format!("parent_deleted_{n}"), false).await;
    let lock = bulk_tests::lock_key(n as i64 + 77);
    let gate_k = (n / 2) as i64;
    client
        .batch_execute(&format!(
            "CREATE FUNCTION gate(k bigint) RETURNS boolean LANGUAGE plpgsql AS $$
             BEGIN IF k = {gate_k} THEN PERFORM pg_advisory_xact_lock_shared({lock}); END IF; RETURN true; END $$;
             ALTER TABLE child ADD CONSTRAINT gated CHECK (gate(k));"
        ))
        .await
        .unwrap();
    let admin = db.connect().await;
    admin.execute("SELECT pg_advisory_lock($1)", &[&lock]).await.unwrap();
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let rows = children(0, n, None);
    let task = tokio::spawn(async move {
        let r = Child::bulk_create_new(&mut client, &rows).await;
        (r, client)
    });
    bulk_tests::wait_for_backend(&admin, pid, "%INSERT%", true).await;
    // Parent 0 is named by row 0 (inserted before the gate).
    let deleted = admin.execute("DELETE FROM parent WHERE id = 0", &[]).await.unwrap();
    assert_eq!(deleted, 1);
    admin.execute("SELECT pg_advisory_unlock($1)", &[&lock]).await.unwrap();
    let (r, client) = task.await.unwrap();
    let orphans: i64 = admin
        .query_one("SELECT count(*) FROM child c WHERE NOT EXISTS (SELECT 1 FROM parent p WHERE p.id = c.parent)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0);
    match r {
        Err(e) => {
            println!("{n}: {e}");
            assert_eq!(code(&e), "23503", "{e}");
            assert_eq!(count(&client, "child").await, 0);
        }
        Ok(o) => panic!("the call succeeded although its parent 0 was deleted before its FK check: {o:?}"),
    }
    db.drop().await;
}

#[tokio::test]
async fn parent_deleted_during_call_short() {
    parent_deleted_during_call(PLAIN).await;
}
#[tokio::test]
async fn parent_deleted_during_call_copy() {
    parent_deleted_during_call(long()).await;
}

// ---------------------------------------------------------------------------
// Another unique index, a partial unique index, a deferrable unique
// constraint on another column, an exclusion constraint
// ---------------------------------------------------------------------------

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "account", unique(k))]
pub struct Account {
    pub k: i64,
    pub email: String,
    pub active: bool,
}

fn accounts(base: i64, n: usize) -> Vec<Account> {
    (0..n).map(|i| Account { k: base + i as i64, email: format!("e{}", base + i as i64), active: true }).collect()
}

/// `index`: the DDL of the other unique index (on `email`).
async fn other_unique(n: usize, on: On, index: &str, tag: &str) {
    let db = TestDb::new(&format!("other_unique_{tag}_{n}_{on:?}").to_lowercase()).await;
    let mut client = db.connect().await;
    client.batch_execute(&Account::model().migration_sql()).await.unwrap();
    client.batch_execute(index).await.unwrap();
    // 1. Two new keys with one email inside the batch.
    let mut rows = accounts(0, n);
    rows[n - 1].email = "e0".into();
    let r = call(&mut client, on, &rows).await;
    let deferred = index.contains("DEFERRED");
    if deferred && on == On::Tx {
        // `call` commits the caller's transaction: it would have failed.
        unreachable!("{r:?}");
    }
    let e = r.expect_err("a conflict on another unique index is an error, not a skipped row");
    assert_eq!(code(&e), "23505", "{e}");
    assert_eq!(constraint(&e).as_deref(), Some("account_email"), "{e}");
    assert!(!e.is_retryable(), "{e}");
    assert!(e.connection_usable());
    assert_eq!(count(&client, "account").await, 0);
    // 2. A new key with the email of a stored row.
    call(&mut client, on, &accounts(0, n)).await.unwrap();
    let mut rows = accounts(n as i64, n);
    rows[n / 2].email = "e1".into();
    let e = call(&mut client, on, &rows).await.expect_err("other-index conflict with a stored row");
    assert_eq!(code(&e), "23505", "{e}");
    assert_eq!(count(&client, "account").await, n as i64);
    // 3. A stored key with another row's email: skipped.
    let mut rows = accounts(n as i64, n);
    rows.push(Account { k: 0, email: "e1".into(), active: true });
    let o = call(&mut client, on, &rows).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (n as u64, 1));
    // 4. A repeated key whose repeat has another stored email: skipped.
    let mut rows = accounts(2 * n as i64, n);
    rows.push(Account { k: 2 * n as i64, email: "e1".into(), active: true });
    let o = call(&mut client, on, &rows).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (n as u64, 1));
    assert_eq!(count(&client, "account").await, 3 * n as i64);
    db.drop().await;
}

const EMAIL_UNIQUE: &str = "CREATE UNIQUE INDEX account_email ON account (email)";
const EMAIL_PARTIAL: &str = "CREATE UNIQUE INDEX account_email ON account (email) WHERE active";
const EMAIL_DEFERRED: &str =
    "ALTER TABLE account ADD CONSTRAINT account_email UNIQUE (email) DEFERRABLE INITIALLY DEFERRED";
const EMAIL_DEFERRABLE_IMMEDIATE: &str =
    "ALTER TABLE account ADD CONSTRAINT account_email UNIQUE (email) DEFERRABLE INITIALLY IMMEDIATE";

#[tokio::test]
async fn other_unique_index_short() {
    for on in [On::Client, On::Tx] {
        other_unique(SHORT, on, EMAIL_UNIQUE, "u").await;
        other_unique(SHORT, on, EMAIL_PARTIAL, "p").await;
        other_unique(SHORT, on, EMAIL_DEFERRABLE_IMMEDIATE, "di").await;
    }
    other_unique(SHORT, On::Client, EMAIL_DEFERRED, "dd").await;
}
#[tokio::test]
async fn other_unique_index_plain() {
    for on in [On::Client, On::Tx] {
        other_unique(PLAIN, on, EMAIL_UNIQUE, "u").await;
        other_unique(PLAIN, on, EMAIL_PARTIAL, "p").await;
        other_unique(PLAIN, on, EMAIL_DEFERRABLE_IMMEDIATE, "di").await;
    }
    other_unique(PLAIN, On::Client, EMAIL_DEFERRED, "dd").await;
}
#[tokio::test]
async fn other_unique_index_copy() {
    for on in [On::Client, On::Tx] {
        other_unique(long(), on, EMAIL_UNIQUE, "u").await;
        other_unique(long(), on, EMAIL_PARTIAL, "p").await;
        other_unique(long(), on, EMAIL_DEFERRABLE_IMMEDIATE, "di").await;
    }
    other_unique(long(), On::Client, EMAIL_DEFERRED, "dd").await;
}

/// The builder's variants on another unique index: an error, never a
/// skipped row.
async fn other_unique_variants(n: usize) {
    let db = TestDb::new(&format!("other_unique_variants_{n}")).await;
    let mut client = db.connect().await;
    client.batch_execute(&Account::model().migration_sql()).await.unwrap();
    client.batch_execute(EMAIL_UNIQUE).await.unwrap();
    let mut rows = accounts(0, n);
    rows[1].email = "e0".into();
    let e = Account::bulk(&mut client).returning_keys().run(&rows).await.unwrap_err();
    assert_eq!(code(&e), "23505", "{e}");
    let e = Account::bulk(&mut client).returning_skipped().run(&rows).await.unwrap_err();
    assert_eq!(code(&e), "23505", "{e}");
    let e = Account::bulk(&mut client).upsert(Upsert::all_columns()).run(&rows).await.unwrap_err();
    assert_eq!(code(&e), "23505", "{e}");
    assert_eq!(count(&client, "account").await, 0);
    // An upsert that gives a stored key another stored row's email.
    Account::bulk_create_new(&mut client, &accounts(0, n)).await.unwrap();
    let mut rows = accounts(0, n);
    rows[2].email = "e3".into();
    let e = Account::bulk(&mut client).upsert(Upsert::all_columns()).run(&rows).await.unwrap_err();
    assert_eq!(code(&e), "23505", "{e}");
    let e = Account::bulk(&mut client).upsert(Upsert::all_columns().only_if_changed()).run(&rows).await.unwrap_err();
    assert_eq!(code(&e), "23505", "{e}");
    db.drop().await;
}

#[tokio::test]
async fn other_unique_index_variants_short() {
    other_unique_variants(SHORT).await;
    other_unique_variants(PLAIN).await;
}
#[tokio::test]
async fn other_unique_index_variants_copy() {
    other_unique_variants(long()).await;
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "slot", unique(k))]
pub struct Slot {
    pub k: i64,
    pub lo: i32,
    pub hi: i32,
}

/// `n` slots of disjoint ranges `[10k, 10k + 5)`.
fn slots(base: i64, n: usize) -> Vec<Slot> {
    (0..n as i64)
        .map(|i| Slot { k: base + i, lo: (10 * (base + i)) as i32, hi: (10 * (base + i) + 5) as i32 })
        .collect()
}

async fn exclusion(n: usize, on: On, deferred: bool) {
    let db = TestDb::new(&format!("exclusion_{n}_{on:?}_{deferred}").to_lowercase()).await;
    let mut client = db.connect().await;
    client.batch_execute(&Slot::model().migration_sql()).await.unwrap();
    let when = if deferred { "DEFERRABLE INITIALLY DEFERRED" } else { "" };
    client
        .batch_execute(&format!(
            "ALTER TABLE slot ADD CONSTRAINT slot_no_overlap EXCLUDE USING gist (int4range(lo, hi) WITH &&) {when}"
        ))
        .await
        .unwrap();
    // Two new rows that overlap.
    let mut rows = slots(0, n);
    rows[n - 1].lo = 1;
    let r = call(&mut client, on, &rows).await;
    if deferred && on == On::Tx {
        unreachable!("{r:?}");
    }
    let e = r.expect_err("an exclusion violation");
    assert_eq!(code(&e), "23P01", "{e}");
    assert!(!e.is_retryable());
    assert!(e.connection_usable());
    assert_eq!(count(&client, "slot").await, 0);
    // A new row overlapping a stored one.
    call(&mut client, on, &slots(0, n)).await.unwrap();
    let mut rows = slots(n as i64, n);
    rows[0].lo = 3;
    let e = call(&mut client, on, &rows).await.unwrap_err();
    assert_eq!(code(&e), "23P01", "{e}");
    // A stored key's row overlapping a stored row: skipped; a repeat overlapping: skipped.
    let mut rows = slots(n as i64, n);
    rows.push(Slot { k: 0, lo: 10, hi: 30 });
    rows.push(Slot { k: n as i64, lo: 10, hi: 30 });
    let o = call(&mut client, on, &rows).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (n as u64, 2));
    db.drop().await;
}

#[tokio::test]
async fn exclusion_constraint_short() {
    exclusion(SHORT, On::Client, false).await;
    exclusion(SHORT, On::Tx, false).await;
    exclusion(SHORT, On::Client, true).await;
    exclusion(PLAIN, On::Client, false).await;
    exclusion(PLAIN, On::Tx, false).await;
    exclusion(PLAIN, On::Client, true).await;
}
#[tokio::test]
async fn exclusion_constraint_copy() {
    exclusion(long(), On::Client, false).await;
    exclusion(long(), On::Tx, false).await;
    exclusion(long(), On::Client, true).await;
}

// ---------------------------------------------------------------------------
// CHECK, NOT NULL, defaults, generated and identity columns
// ---------------------------------------------------------------------------

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "item", unique(k))]
pub struct Item {
    pub k: i64,
    pub qty: i32,
}

fn items(base: i64, n: usize) -> Vec<Item> {
    (0..n as i64).map(|i| Item { k: base + i, qty: 1 }).collect()
}

async fn item_table(name: &str, extra: &str) -> (TestDb, Client) {
    let db = TestDb::new(name).await;
    let client = db.connect().await;
    client.batch_execute(&Item::model().migration_sql()).await.unwrap();
    client.batch_execute(extra).await.unwrap();
    (db, client)
}

/// Columns the model does not write: a generated column, an identity
/// column `GENERATED ALWAYS`, a default; with a CHECK on the generated one.
async fn columns_the_table_fills(n: usize, on: On) {
    let (db, mut client) = item_table(
        &format!("table_fills_{n}_{on:?}").to_lowercase(),
        "ALTER TABLE item ADD COLUMN double int GENERATED ALWAYS AS (qty * 2) STORED CHECK (double < 100),
         ADD COLUMN serial_no bigint GENERATED ALWAYS AS IDENTITY,
         ADD COLUMN created timestamptz NOT NULL DEFAULT now(),
         ADD COLUMN status text NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'old'))",
    )
    .await;
    let o = call(&mut client, on, &items(0, n)).await.unwrap();
    assert_eq!(o.inserted, n as u64);
    let (d, s): (i64, i64) = {
        let r = client.query_one("SELECT sum(double)::bigint, count(DISTINCT serial_no) FROM item", &[]).await.unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((d, s), (2 * n as i64, n as i64));
    // The generated column's CHECK refuses a row: error, nothing written.
    let mut rows = items(n as i64, n);
    rows[n - 1].qty = 60;
    let e = call(&mut client, on, &rows).await.unwrap_err();
    assert_eq!(code(&e), "23514", "{e}");
    println!("generated CHECK: {e}; row {:?} field {:?}", e.row(), e.field());
    assert_eq!(count(&client, "item").await, n as i64);
    // returning_keys' id is the table's id, not the identity column.
    let r = Item::bulk(&mut client).returning_keys().run(&items(n as i64, n)).await.unwrap();
    assert_eq!(r.returned.len(), n);
    let ids: Vec<i64> = client
        .query("SELECT id FROM item WHERE k >= $1 ORDER BY k", &[&(n as i64)])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut got: Vec<(i64, i64)> = r.returned.iter().map(|x| (x.key.0, x.id.unwrap())).collect();
    got.sort();
    assert_eq!(got.iter().map(|x| x.1).collect::<Vec<_>>(), ids);
    db.drop().await;
}

#[tokio::test]
async fn columns_the_table_fills_short() {
    columns_the_table_fills(SHORT, On::Client).await;
    columns_the_table_fills(PLAIN, On::Tx).await;
}
#[tokio::test]
async fn columns_the_table_fills_copy() {
    columns_the_table_fills(long(), On::Client).await;
    columns_the_table_fills(long(), On::Tx).await;
}

/// A default the table's own CHECK refuses: every row fails, clearly.
#[tokio::test]
async fn default_refused_by_check() {
    let (db, mut client) = item_table(
        "default_refused",
        "ALTER TABLE item ADD COLUMN status text NOT NULL DEFAULT 'x' CHECK (status <> 'x')",
    )
    .await;
    for n in [SHORT, PLAIN, long()] {
        for on in [On::Client, On::Tx] {
            let e = call(&mut client, on, &items(0, n)).await.unwrap_err();
            assert_eq!(code(&e), "23514", "{n} {on:?}: {e}");
            assert!(e.connection_usable());
        }
    }
    assert_eq!(count(&client, "item").await, 0);
    db.drop().await;
}

/// A `NOT NULL` column the model lacks, without a default: refused by the
/// check up front (not a bare 23502 from some rows).
#[tokio::test]
async fn not_null_column_without_default_is_refused_up_front() {
    let (db, mut client) = item_table("not_null_no_default", "ALTER TABLE item ADD COLUMN owner text NOT NULL").await;
    for n in [SHORT, PLAIN, long()] {
        let e = Item::bulk_create_new(&mut client, &items(0, n)).await.unwrap_err();
        assert!(matches!(e, Error::SchemaMismatch { .. }), "{n}: {e:?}");
        assert!(e.to_string().contains("owner"), "{e}");
    }
    db.drop().await;
}

// ---------------------------------------------------------------------------
// Triggers
// ---------------------------------------------------------------------------

/// An AFTER ROW trigger that raises for some rows.
async fn after_row_raises(n: usize, on: On) {
    let (db, mut client) = item_table(
        &format!("after_row_raises_{n}_{on:?}").to_lowercase(),
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.qty = 13 THEN RAISE EXCEPTION 'qty 13 refused for k=%', NEW.k; END IF; RETURN NULL; END $$;
         CREATE TRIGGER refuse AFTER INSERT ON item FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .await;
    let mut rows = items(0, n);
    rows[n / 3].qty = 13;
    let e = call(&mut client, on, &rows).await.unwrap_err();
    assert_eq!(code(&e), "P0001", "{e}");
    assert!(e.to_string().contains("qty 13 refused"), "{e}");
    assert!(e.connection_usable());
    assert_eq!(count(&client, "item").await, 0);
    // A stored key's row with qty 13: skipped, the trigger never sees it.
    call(&mut client, on, &items(0, n)).await.unwrap();
    let mut rows = items(n as i64, n);
    rows.push(Item { k: 0, qty: 13 });
    let o = call(&mut client, on, &rows).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (n as u64, 1));
    db.drop().await;
}

#[tokio::test]
async fn after_row_trigger_raises_short() {
    after_row_raises(SHORT, On::Client).await;
    after_row_raises(SHORT, On::Tx).await;
    after_row_raises(PLAIN, On::Client).await;
    after_row_raises(PLAIN, On::Tx).await;
}
#[tokio::test]
async fn after_row_trigger_raises_copy() {
    after_row_raises(long(), On::Client).await;
    after_row_raises(long(), On::Tx).await;
}

/// A statement-level AFTER INSERT trigger with a transition table sees
/// exactly the inserted rows, once per call.
async fn transition_table(n: usize, on: On) {
    let (db, mut client) = item_table(
        &format!("transition_{n}_{on:?}").to_lowercase(),
        "CREATE TABLE log (rows bigint, keys bigint[]);
         CREATE FUNCTION log_rows() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO log SELECT count(*), array_agg(k ORDER BY k) FROM new_rows; RETURN NULL; END $$;
         CREATE TRIGGER log_rows AFTER INSERT ON item REFERENCING NEW TABLE AS new_rows
             FOR EACH STATEMENT EXECUTE FUNCTION log_rows();",
    )
    .await;
    call(&mut client, on, &items(0, n / 2)).await.unwrap();
    client.batch_execute("DELETE FROM log").await.unwrap();
    // Half stored, and repeats.
    let mut rows = items(0, n);
    rows.extend(items(0, 5));
    let o = call(&mut client, on, &rows).await.unwrap();
    assert_eq!(o.inserted, (n - n / 2) as u64);
    let log = client.query("SELECT rows, keys FROM log", &[]).await.unwrap();
    let seen: Vec<(i64, Vec<i64>)> = log.iter().map(|r| (r.get(0), r.get(1))).collect();
    let nonempty: Vec<_> = seen.iter().filter(|s| s.0 > 0).collect();
    assert_eq!(
        nonempty.len(),
        1,
        "one statement inserted the rows: {:?}",
        seen.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    assert_eq!(nonempty[0].0, o.inserted as i64);
    assert_eq!(nonempty[0].1, ((n / 2) as i64..n as i64).collect::<Vec<_>>());
    println!("{n} {on:?}: statement trigger fired {} times", seen.len());
    db.drop().await;
}

#[tokio::test]
async fn statement_trigger_transition_table_short() {
    transition_table(SHORT, On::Client).await;
    transition_table(SHORT, On::Tx).await;
    transition_table(PLAIN, On::Client).await;
    transition_table(PLAIN, On::Tx).await;
}
#[tokio::test]
async fn statement_trigger_transition_table_copy() {
    transition_table(long(), On::Client).await;
    transition_table(long(), On::Tx).await;
}

/// A BEFORE INSERT trigger that inserts another row into the same table
/// (key + 1,000,000), also a key that comes later in the same batch.
async fn trigger_inserts_same_table(n: usize, on: On) {
    let (db, mut client) = item_table(
        &format!("trigger_same_table_{n}_{on:?}").to_lowercase(),
        "CREATE FUNCTION shadow() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.k < 1000000 THEN INSERT INTO item (k, qty) VALUES (NEW.k + 1000000, -1); END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER shadow BEFORE INSERT ON item FOR EACH ROW EXECUTE FUNCTION shadow();",
    )
    .await;
    let o = call(&mut client, on, &items(0, n)).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (n as u64, 0));
    assert_eq!(count(&client, "item").await, 2 * n as i64);
    // The shadow keys offered: stored, skipped.
    let o = call(&mut client, on, &items(1_000_000, n)).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (0, n as u64));
    // New keys, with the shadow key of one of them offered too (after it in key order).
    let mut rows = items(n as i64, n);
    rows.push(Item { k: 1_000_000 + n as i64, qty: 5 });
    let o = call(&mut client, on, &rows).await.unwrap();
    println!("{n} {on:?}: {o:?}");
    assert_eq!(o.offered, n as u64 + 1);
    let stored = count(&client, "item").await;
    assert_eq!(stored, 4 * n as i64, "{o:?}");
    // The counts add up to the offered rows of the batch that are stored.
    let offered_stored: i64 = client
        .query_one("SELECT count(*) FROM item WHERE k >= $1 AND k < $2 AND qty = 1", &[&(n as i64), &(2 * n as i64)])
        .await
        .unwrap()
        .get(0);
    assert_eq!(o.inserted as i64, offered_stored, "{o:?}");
    db.drop().await;
}

#[tokio::test]
async fn before_trigger_inserts_into_same_table_short() {
    trigger_inserts_same_table(SHORT, On::Client).await;
    trigger_inserts_same_table(SHORT, On::Tx).await;
    trigger_inserts_same_table(PLAIN, On::Client).await;
    trigger_inserts_same_table(PLAIN, On::Tx).await;
}
#[tokio::test]
async fn before_trigger_inserts_into_same_table_copy() {
    trigger_inserts_same_table(long(), On::Client).await;
    trigger_inserts_same_table(long(), On::Tx).await;
}

/// An AFTER INSERT trigger that updates other rows of the table (a
/// counter on the row of key 0): counts stay exact, the plain call and an
/// upsert.
async fn trigger_updates_other_rows(n: usize) {
    let (db, mut client) = item_table(
        &format!("trigger_updates_{n}"),
        "ALTER TABLE item ADD COLUMN hits int NOT NULL DEFAULT 0;
         CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN UPDATE item SET hits = hits + 1 WHERE k = 0 AND NEW.k <> 0; RETURN NULL; END $$;
         CREATE TRIGGER bump AFTER INSERT ON item FOR EACH ROW EXECUTE FUNCTION bump();",
    )
    .await;
    Item::bulk_create_new(&mut client, [Item { k: 0, qty: 0 }]).await.unwrap();
    let o = Item::bulk_create_new(&mut client, &items(0, n)).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (n as u64 - 1, 1));
    let hits: i32 = client.query_one("SELECT hits FROM item WHERE k = 0", &[]).await.unwrap().get(0);
    assert_eq!(hits, n as i32 - 1);
    // An upsert that also updates key 0 (stored), and inserts new keys.
    let mut rows = items(0, 2 * n);
    for r in &mut rows {
        r.qty = 7;
    }
    let o = Item::bulk(&mut client).upsert(Upsert::all_columns()).run(&rows).await.unwrap();
    println!("{n}: upsert with a trigger updating a stored row: {o:?}");
    assert_eq!((o.inserted, o.updated), (n as u64, n as u64));
    let sevens: i64 = client.query_one("SELECT count(*) FROM item WHERE qty = 7", &[]).await.unwrap().get(0);
    assert_eq!(sevens, 2 * n as i64);
    db.drop().await;
}

#[tokio::test]
async fn after_trigger_updates_other_rows_short() {
    trigger_updates_other_rows(SHORT).await;
    trigger_updates_other_rows(PLAIN).await;
}
#[tokio::test]
async fn after_trigger_updates_other_rows_copy() {
    trigger_updates_other_rows(long()).await;
}

/// A deferred constraint trigger that raises at commit.
async fn deferred_constraint_trigger(n: usize) {
    let (db, mut client) = item_table(
        &format!("constraint_trigger_{n}"),
        "CREATE FUNCTION late() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.qty = 13 THEN RAISE EXCEPTION 'late refusal of k=%', NEW.k; END IF; RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER late AFTER INSERT ON item DEFERRABLE INITIALLY DEFERRED
             FOR EACH ROW EXECUTE FUNCTION late();",
    )
    .await;
    let mut rows = items(0, n);
    rows[n - 2].qty = 13;
    let e = Item::bulk_create_new(&mut client, &rows).await.unwrap_err();
    assert_eq!(code(&e), "P0001", "{e}");
    assert!(e.connection_usable());
    assert_eq!(count(&client, "item").await, 0);
    let o = Item::bulk_create_new(&mut client, &items(0, n)).await.unwrap();
    assert_eq!(o.inserted, n as u64);
    // A deferred trigger raising unique_violation (as a deferred unique
    // constraint on another column does) at the call's own commit.
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION late() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.qty = 13 THEN RAISE unique_violation USING MESSAGE = 'late duplicate'; END IF;
             RETURN NULL; END $$",
        )
        .await
        .unwrap();
    let mut rows = items(n as i64, n);
    rows[1].qty = 13;
    let e = Item::bulk_create_new(&mut client, &rows).await.unwrap_err();
    assert_eq!(code(&e), "23505", "{e}");
    assert!(e.to_string().contains("late duplicate"), "{e}");
    assert!(e.connection_usable());
    assert_eq!(count(&client, "item").await, n as i64);
    let o = Item::bulk_create_new(&mut client, &items(n as i64, n)).await.unwrap();
    assert_eq!(o.inserted, n as u64);
    db.drop().await;
}

#[tokio::test]
async fn deferred_constraint_trigger_short() {
    deferred_constraint_trigger(SHORT).await;
    deferred_constraint_trigger(PLAIN).await;
}
#[tokio::test]
async fn deferred_constraint_trigger_copy() {
    deferred_constraint_trigger(long()).await;
}

/// Triggers raising the SQLSTATEs the library reads as its own signals
/// (22012: the plain form's guard; 22P02: a cast; 42703: a name gone;
/// 55000: a deferrable key): the call returns the trigger's error, nothing
/// written, the connection usable; the trigger's side effects of the
/// attempts are not kept.
async fn trigger_sqlstates(n: usize, on: On) {
    let (db, mut client) = item_table(
        &format!("trigger_sqlstates_{n}_{on:?}").to_lowercase(),
        "CREATE TABLE attempts (n int);
         CREATE FUNCTION odd() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO attempts VALUES (1);
             IF NEW.qty = 1 THEN RAISE division_by_zero USING MESSAGE = 'trigger 22012'; END IF;
             IF NEW.qty = 2 THEN RAISE invalid_text_representation USING MESSAGE = 'trigger 22P02'; END IF;
             IF NEW.qty = 3 THEN RAISE undefined_column USING MESSAGE = 'trigger 42703'; END IF;
             IF NEW.qty = 4 THEN RAISE object_not_in_prerequisite_state USING MESSAGE = 'trigger 55000'; END IF;
             IF NEW.qty = 5 THEN RAISE numeric_value_out_of_range USING MESSAGE = 'trigger 22003'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER odd BEFORE INSERT ON item FOR EACH ROW EXECUTE FUNCTION odd();",
    )
    .await;
    for (qty, state) in [(1, "22012"), (2, "22P02"), (3, "42703"), (4, "55000"), (5, "22003")] {
        let mut rows: Vec<Item> = (0..n as i64).map(|k| Item { k, qty: 0 }).collect();
        rows[n / 2].qty = qty;
        let e = call(&mut client, on, &rows).await.unwrap_err();
        assert!(matches!(e, Error::Database { .. }), "{state}: not the trigger's error: {e:?}");
        assert_eq!(code(&e), state, "{e}");
        assert!(e.to_string().contains(&format!("trigger {state}")), "{e}");
        assert!(e.connection_usable());
        assert_eq!(count(&client, "item").await, 0);
        assert_eq!(count(&client, "attempts").await, 0);
    }
    db.drop().await;
}

#[tokio::test]
async fn trigger_raising_library_sqlstates_short() {
    trigger_sqlstates(SHORT, On::Client).await;
    trigger_sqlstates(PLAIN, On::Client).await;
    trigger_sqlstates(PLAIN, On::Tx).await;
}
#[tokio::test]
async fn trigger_raising_library_sqlstates_copy() {
    trigger_sqlstates(long(), On::Client).await;
    trigger_sqlstates(long(), On::Tx).await;
}

// --- Rows a BEFORE trigger suppresses, and repeats the table refuses -------

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "tagged", unique(name))]
pub struct Tagged {
    pub name: String,
    pub body: String,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "tagged_i", unique(k))]
pub struct TaggedI {
    pub k: i64,
    pub body: String,
}

/// `n` rows of distinct keys, then key "a" / 0 offered twice: first with
/// body `first`, then with body `second`.
fn tagged(n: usize, first: &str, second: &str) -> Vec<Tagged> {
    let mut rows = vec![Tagged { name: "a".into(), body: first.into() }];
    rows.extend((1..n - 1).map(|i| Tagged { name: format!("k{i:06}"), body: "x".into() }));
    rows.push(Tagged { name: "a".into(), body: second.into() });
    rows
}

fn tagged_i(n: usize, first: &str, second: &str) -> Vec<TaggedI> {
    let mut rows = vec![TaggedI { k: 0, body: first.into() }];
    rows.extend((1..n as i64 - 1).map(|k| TaggedI { k, body: "x".into() }));
    rows.push(TaggedI { k: 0, body: second.into() });
    rows
}

const SUPPRESS: &str = "CREATE FUNCTION suppress() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN IF NEW.body = 'drop' THEN RETURN NULL; END IF; RETURN NEW; END $$;";

/// The first offered row of key "a" is suppressed by a BEFORE trigger:
/// every path must agree on what is stored for "a" and on the counts. (The
/// COPY path and the plain form drop the repeat before inserting, so "a"
/// is not stored; a path that lets the repeat meet the table stores the
/// second offered row instead.)
async fn suppressed_first_offered(n: usize, on: On, text_key: bool) -> (Option<String>, u64, u64) {
    let db = TestDb::new(&format!("suppressed_first_{n}_{on:?}_{text_key}").to_lowercase()).await;
    let mut client = db.connect().await;
    let (table, sql) = if text_key {
        ("tagged", Tagged::model().migration_sql())
    } else {
        ("tagged_i", TaggedI::model().migration_sql())
    };
    client
        .batch_execute(&format!(
            "{sql} {SUPPRESS} CREATE TRIGGER suppress BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION suppress();"
        ))
        .await
        .unwrap();
    let o = if text_key {
        call(&mut client, on, &tagged(n, "drop", "second")).await.unwrap()
    } else {
        call(&mut client, on, &tagged_i(n, "drop", "second")).await.unwrap()
    };
    let key_a = if text_key { "name = 'a'" } else { "k = 0" };
    let stored: Option<String> =
        client.query_opt(&format!("SELECT body FROM {table} WHERE {key_a}"), &[]).await.unwrap().map(|r| r.get(0));
    assert_eq!(o.inserted as i64, count(&client, table).await);
    db.drop().await;
    (stored, o.inserted, o.skipped)
}

// A BEFORE trigger that suppresses (RETURN NULL) the first offered row of a
// key: nothing is stored for that key on any path, with a text or an integer
// key (the short path's `ON CONFLICT` form once sent the repeats too, and
// stored the second row).
#[tokio::test]
async fn suppressed_first_offered_row_same_on_every_path() {
    let mut seen = Vec::new();
    for text_key in [true, false] {
        for n in [SHORT, PLAIN, long()] {
            for on in [On::Client, On::Tx] {
                let got = suppressed_first_offered(n, on, text_key).await;
                println!(
                    "text_key={text_key} n={n} {on:?}: key a stored as {:?}, inserted {} skipped {}",
                    got.0, got.1, got.2
                );
                seen.push(((text_key, n, on), got));
            }
        }
    }
    for ((text_key, n, on), (stored, inserted, skipped)) in &seen {
        assert_eq!(
            stored.as_deref(),
            None,
            "text_key={text_key} n={n} {on:?}: the first offered row of key a was suppressed, yet its repeat was stored \
             (inserted {inserted}, skipped {skipped}); other paths store nothing for it"
        );
    }
}

/// The repeat of a key (offered after the first row of that key) breaks a
/// CHECK or a validating BEFORE trigger: the first offered row wins, the
/// repeat is skipped, on every path.
async fn refused_repeat(n: usize, on: On, text_key: bool, by_trigger: bool) -> Result<Report, Error> {
    let db = TestDb::new(&format!("refused_repeat_{n}_{on:?}_{text_key}_{by_trigger}").to_lowercase()).await;
    let mut client = db.connect().await;
    let (table, sql) = if text_key {
        ("tagged", Tagged::model().migration_sql())
    } else {
        ("tagged_i", TaggedI::model().migration_sql())
    };
    client.batch_execute(&sql).await.unwrap();
    if by_trigger {
        client
            .batch_execute(&format!(
                "CREATE FUNCTION validate() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN IF NEW.body = 'bad' THEN RAISE EXCEPTION 'bad body'; END IF; RETURN NEW; END $$;
                 CREATE TRIGGER validate BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION validate();"
            ))
            .await
            .unwrap();
    } else {
        client.batch_execute(&format!("ALTER TABLE {table} ADD CHECK (body <> 'bad')")).await.unwrap();
    }
    let r = if text_key {
        call(&mut client, on, &tagged(n, "good", "bad")).await
    } else {
        call(&mut client, on, &tagged_i(n, "good", "bad")).await
    };
    db.drop().await;
    r
}

// A repeat of a key inside the batch, which the table's CHECK constraints or
// BEFORE triggers would refuse, is skipped on every path: it never reaches
// the table.
#[tokio::test]
async fn refused_repeat_is_skipped_on_every_path() {
    let mut failures = Vec::new();
    for text_key in [true, false] {
        for by_trigger in [false, true] {
            for n in [SHORT, PLAIN, long()] {
                for on in [On::Client, On::Tx] {
                    match refused_repeat(n, on, text_key, by_trigger).await {
                        Ok(o) => assert_eq!((o.inserted, o.skipped), (n as u64 - 1, 1)),
                        Err(e) => failures.push(format!("text_key={text_key} trigger={by_trigger} n={n} {on:?}: {e}")),
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "a repeat the call should skip failed the call:\n{}", failures.join("\n"));
}

/// Rows a BEFORE trigger suppresses are counted as skipped, and
/// `returning_skipped` lists them.
async fn suppressed_rows_counted(n: usize, on: On) {
    let db = TestDb::new(&format!("suppressed_counted_{n}_{on:?}").to_lowercase()).await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!(
            "{} {SUPPRESS} CREATE TRIGGER suppress BEFORE INSERT ON tagged_i FOR EACH ROW EXECUTE FUNCTION suppress();",
            TaggedI::model().migration_sql()
        ))
        .await
        .unwrap();
    let rows: Vec<TaggedI> =
        (0..n as i64).map(|k| TaggedI { k, body: if k % 7 == 3 { "drop".into() } else { "x".into() } }).collect();
    let dropped: Vec<usize> = (0..n).filter(|k| k % 7 == 3).collect();
    let o = call(&mut client, on, &rows).await.unwrap();
    assert_eq!((o.inserted, o.skipped), ((n - dropped.len()) as u64, dropped.len() as u64));
    client.batch_execute("TRUNCATE tagged_i").await.unwrap();
    let r = TaggedI::bulk(&mut client).returning_skipped().run(&rows).await.unwrap();
    let mut got = r.returned.clone();
    got.sort();
    assert_eq!(got, dropped);
    client.batch_execute("TRUNCATE tagged_i").await.unwrap();
    let r = TaggedI::bulk(&mut client).returning_keys().run(&rows).await.unwrap();
    assert_eq!(r.returned.len(), n - dropped.len());
    assert_eq!(count(&client, "tagged_i").await, (n - dropped.len()) as i64);
    db.drop().await;
}

#[tokio::test]
async fn suppressed_rows_counted_as_skipped() {
    suppressed_rows_counted(SHORT, On::Client).await;
    suppressed_rows_counted(PLAIN, On::Tx).await;
    suppressed_rows_counted(long(), On::Client).await;
}

// --- A BEFORE trigger that redirects rows elsewhere (RETURN NULL) ----------

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "routed", unique(k))]
pub struct Routed {
    pub k: i64,
    pub v: i64,
}

/// The old trigger-based partitioning: a BEFORE INSERT trigger puts every
/// row into another table and suppresses it in the target (`RETURN NULL`).
/// The plain call counts the rows as skipped and the trigger's rows are
/// stored. A new connection's first call must do the same.
async fn redirect_trigger(n: usize, isolation: &str) -> (i64, i64) {
    let db = TestDb::new(&format!("redirect_{n}_{}", isolation.replace(' ', "_"))).await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!(
            "{} CREATE TABLE routed_archive (k bigint, v bigint);
             CREATE FUNCTION route() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.k >= 0 THEN INSERT INTO routed_archive VALUES (NEW.k, NEW.v); RETURN NULL; END IF;
             RETURN NEW; END $$;
             CREATE TRIGGER route BEFORE INSERT ON routed FOR EACH ROW EXECUTE FUNCTION route();",
            Routed::model().migration_sql()
        ))
        .await
        .unwrap();
    // A warm connection (its first call stores a row, so it checks): the rows reach the archive.
    Routed::bulk_create_new(&mut client, [Routed { k: -1, v: 0 }]).await.unwrap();
    Routed::bulk_create_new(&mut client, [Routed { k: -2, v: 0 }]).await.unwrap();
    let o = Routed::bulk_create_new(&mut client, (0..n as i64).map(|k| Routed { k, v: k })).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (0, n as u64));
    let warm = count(&client, "routed_archive").await;
    // A new connection's first call (the process has checked the table).
    let mut fresh = db.connect().await;
    fresh.batch_execute(&format!("SET default_transaction_isolation = '{isolation}'")).await.unwrap();
    let o = Routed::bulk_create_new(&mut fresh, (n as i64..2 * n as i64).map(|k| Routed { k, v: k })).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (0, n as u64));
    let first = count(&client, "routed_archive").await - warm;
    db.drop().await;
    (warm, first)
}

// A new connection's first call (the process already checked the table)
// whose insert returns no row keeps what the table's triggers wrote, as a
// warm connection's call does: rows a BEFORE trigger redirected to another
// table (RETURN NULL) are stored there; also under a session default of
// `REPEATABLE READ`, where the first call runs as usual instead.
#[tokio::test]
async fn redirect_trigger_rows_kept_on_a_first_call() {
    let mut seen = Vec::new();
    for isolation in ["read committed", "repeatable read", "serializable"] {
        for n in [SHORT, PLAIN] {
            let (warm, first) = redirect_trigger(n, isolation).await;
            println!("{n}, {isolation}: warm call archived {warm}, first call archived {first}");
            seen.push((n, isolation, warm, first));
        }
    }
    for (n, isolation, warm, first) in seen {
        assert_eq!(warm, n as i64);
        assert_eq!(first, n as i64, "{n}, {isolation}: the first call's redirected rows were rolled back");
    }
}

async fn a_body(c: &Client) -> Option<String> {
    c.query_opt("SELECT body FROM tagged WHERE name = 'a'", &[]).await.unwrap().map(|r| r.get::<_, String>(0))
}

/// The returning variants on the same batch as
/// `suppressed_first_offered_row_same_on_every_path` (text key, short):
/// what they store and report for key "a".
async fn suppressed_first_offered_variants(n: usize) -> Vec<String> {
    let db = TestDb::new(&format!("suppressed_first_variants_{n}")).await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!(
            "{} {SUPPRESS} CREATE TRIGGER suppress BEFORE INSERT ON tagged FOR EACH ROW EXECUTE FUNCTION suppress();",
            Tagged::model().migration_sql()
        ))
        .await
        .unwrap();
    let rows = tagged(n, "drop", "second");
    let mut out = Vec::new();
    let r = Tagged::bulk(&mut client).returning_keys().run(&rows).await;
    out.push(format!(
        "returning_keys: {:?} / a stored as {:?}",
        r.map(|r| r.returned.iter().filter(|x| x.key.0 == "a").map(|x| x.index).collect::<Vec<_>>()),
        a_body(&client).await
    ));
    client.batch_execute("TRUNCATE tagged").await.unwrap();
    let r = Tagged::bulk(&mut client).returning_skipped().run(&rows).await;
    out.push(format!("returning_skipped: {:?} / a stored as {:?}", r.map(|r| r.returned), a_body(&client).await));
    client.batch_execute("TRUNCATE tagged").await.unwrap();
    let r = Tagged::bulk(&mut client).upsert(Upsert::all_columns().keep(bulk_runtime::Keep::First)).run(&rows).await;
    out.push(format!(
        "upsert keep first: {:?} / a stored as {:?}",
        r.map(|r| (r.inserted, r.unchanged, r.skipped)),
        a_body(&client).await
    ));
    db.drop().await;
    out
}

#[tokio::test]
async fn suppressed_first_offered_row_variants() {
    for n in [SHORT, PLAIN, long()] {
        for line in suppressed_first_offered_variants(n).await {
            println!("n={n}: {line}");
            assert!(line.ends_with("a stored as None"), "n={n}: {line}");
        }
    }
}

/// The COPY path with keys the table holds equal though their binary forms
/// differ (`0.0` and `-0.0` in a float key, `A` and `a` under a
/// case-insensitive collation): a `BEFORE` trigger drops the first offered
/// row of such a key, and its repeat is not stored either (the client's
/// repeat filter cannot see it, so the insert keeps `DISTINCT ON`).
#[tokio::test]
async fn byte_distinct_repeats_never_reach_the_table_on_the_copy_path() {
    #[derive(BulkCreateNew, Debug, Clone)]
    #[bulk(table = "floaty", unique(k), id = false)]
    struct Floaty {
        k: f64,
        body: String,
    }
    #[derive(BulkCreateNew, Debug, Clone)]
    #[bulk(table = "casey", unique(name), id = false)]
    struct Casey {
        name: String,
        body: String,
    }
    let db = TestDb::new("byte_distinct_repeats").await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!(
            "{} CREATE COLLATION nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
             CREATE TABLE casey (name text COLLATE nocase PRIMARY KEY, body text NOT NULL);
             CREATE FUNCTION drop_marked() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.body = 'drop' THEN RETURN NULL; END IF; RETURN NEW; END $$;
             CREATE TRIGGER drop_marked BEFORE INSERT ON floaty FOR EACH ROW EXECUTE FUNCTION drop_marked();
             CREATE TRIGGER drop_marked BEFORE INSERT ON casey FOR EACH ROW EXECUTE FUNCTION drop_marked();",
            Floaty::model().migration_sql()
        ))
        .await
        .unwrap();
    let n = COPY_BATCH + 10;
    let mut floats = vec![Floaty { k: 0.0, body: "drop".into() }];
    floats.extend((1..n).map(|i| Floaty { k: i as f64, body: "new".into() }));
    floats.push(Floaty { k: -0.0, body: "repeat".into() });
    let o = Floaty::bulk_create_new(&mut client, &floats).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (n as u64 - 1, 2), "floats");
    let zero: i64 = client.query_one("SELECT count(*) FROM floaty WHERE k = 0", &[]).await.unwrap().get(0);
    assert_eq!(zero, 0, "the repeat -0.0 of the dropped 0.0 is not stored");

    let mut names = vec![Casey { name: "A".into(), body: "drop".into() }];
    names.extend((1..n).map(|i| Casey { name: format!("n{i}"), body: "new".into() }));
    names.push(Casey { name: "a".into(), body: "repeat".into() });
    let o = Casey::bulk_create_new(&mut client, &names).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (n as u64 - 1, 2), "names");
    let a: i64 = client.query_one("SELECT count(*) FROM casey WHERE name = 'a'", &[]).await.unwrap().get(0);
    assert_eq!(a, 0, "the repeat 'a' of the dropped 'A' is not stored");
    db.drop().await;
}
