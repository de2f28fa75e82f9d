//! Calls inside a caller's transaction, and the session-local scratch table
//! across transactions and `DISCARD ALL`.

use bulk_runtime::{BulkCreateNew, Error};
use bulk_tests::{COPY_BATCH, TestDb, count};
use tokio_postgres::Client;

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "event", unique(source, seq))]
pub struct Event {
    pub source: String,
    pub seq: i64,
    pub body: String,
}

fn ev(source: &str, seq: i64, body: &str) -> Event {
    Event { source: source.into(), seq, body: body.into() }
}

async fn setup(name: &str) -> (TestDb, Client) {
    let db = TestDb::new(name).await;
    let client = db.connect().await;
    client.batch_execute(&Event::model().migration_sql()).await.unwrap();
    (db, client)
}

/// `rows`, then `pad` rows of their own keys (source `filler`), so that a
/// batch padded to [`COPY_BATCH`] takes the COPY path.
fn padded(rows: impl IntoIterator<Item = Event>, call: u32, pad: usize) -> impl Iterator<Item = Event> {
    rows.into_iter().chain((0..pad as i64).map(move |i| ev(&format!("filler {call}"), i, "f")))
}

async fn body(client: &impl tokio_postgres::GenericClient, source: &str, seq: i64) -> Option<String> {
    client
        .query_opt("SELECT body FROM event WHERE source = $1 AND seq = $2", &[&source, &seq])
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// Rows in the session's scratch tables (there is at most one here).
async fn scratch_rows(client: &impl tokio_postgres::GenericClient) -> Option<i64> {
    let name: Option<String> = client
        .query_opt(
            "SELECT relname::text FROM pg_class WHERE relnamespace = pg_my_temp_schema() AND relname LIKE '\\_\\_bulk\\_%'",
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get(0));
    let name = name?;
    let n = client
        .query_one(&format!("SELECT count(*) FROM pg_temp.{}", bulk_runtime::quote_ident(&name)), &[])
        .await
        .unwrap()
        .get(0);
    Some(n)
}

#[tokio::test]
async fn two_calls_in_one_transaction_count_correctly() {
    two_calls_in_one_transaction(0).await;
}

#[tokio::test]
async fn two_calls_in_one_transaction_count_correctly_through_copy() {
    two_calls_in_one_transaction(COPY_BATCH).await;
}

async fn two_calls_in_one_transaction(pad: usize) {
    let (db, mut client) = setup(&format!("two_calls_one_tx_{pad}")).await;
    let pad_u = pad as u64;
    let mut tx = client.transaction().await.unwrap();
    let first = [ev("a", 1, "one"), ev("a", 2, "two"), ev("a", 1, "dupe")];
    let o = Event::bulk_create_new(&mut tx, padded(first, 1, pad)).await.unwrap();
    assert_eq!((o.offered, o.inserted, o.skipped), (3 + pad_u, 2 + pad_u, 1));
    // Short batches take the one-statement path and need no scratch table.
    let emptied = if pad == 0 { None } else { Some(0) };
    assert_eq!(scratch_rows(&tx).await, emptied, "the scratch table is emptied inside the transaction");

    // The caller deletes a row between the calls: if the first call's rows were
    // still in the scratch table, its "one" (ordinal 0) would beat "uno"
    // (ordinal 1) below.
    tx.execute("DELETE FROM event WHERE source = 'a' AND seq = 1", &[]).await.unwrap();
    let second = [ev("a", 3, "tres"), ev("a", 1, "uno"), ev("a", 2, "dos")];
    let o = Event::bulk_create_new(&mut tx, padded(second, 2, pad)).await.unwrap();
    assert_eq!((o.offered, o.inserted, o.skipped), (3 + pad_u, 2 + pad_u, 1));
    assert_eq!(body(&tx, "a", 1).await.as_deref(), Some("uno"));
    assert_eq!(body(&tx, "a", 2).await.as_deref(), Some("two"));
    tx.commit().await.unwrap();
    assert_eq!(count(&client, "event").await, 3 + 2 * pad as i64);
    db.drop().await;
}

#[tokio::test]
async fn caller_rollback_undoes_the_call() {
    let (db, mut client) = setup("tx_rollback").await;
    let mut tx = client.transaction().await.unwrap();
    let o = Event::bulk_create_new(&mut tx, [ev("r", 1, "x"), ev("r", 2, "x")]).await.unwrap();
    assert_eq!(o.inserted, 2);
    let other = db.connect().await;
    assert_eq!(count(&other, "event").await, 0, "not visible outside before commit");
    tx.rollback().await.unwrap();
    assert_eq!(count(&client, "event").await, 0);
    assert_eq!(count(&other, "event").await, 0);

    // The same rows again, now without a transaction: all new.
    let o = Event::bulk_create_new(&mut client, [ev("r", 1, "y"), ev("r", 2, "y")]).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (2, 0));
    assert_eq!(body(&client, "r", 1).await.as_deref(), Some("y"));
    db.drop().await;
}

#[tokio::test]
async fn caller_commit_keeps_the_rows() {
    let (db, mut client) = setup("tx_commit").await;
    let mut tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO event (source, seq, body) VALUES ('c', 0, 'plain')", &[]).await.unwrap();
    let o = Event::bulk_create_new(&mut tx, [ev("c", 0, "bulk"), ev("c", 1, "bulk")]).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (1, 1), "the call sees the caller's uncommitted row");
    tx.commit().await.unwrap();
    let other = db.connect().await;
    assert_eq!(count(&other, "event").await, 2);
    assert_eq!(body(&other, "c", 0).await.as_deref(), Some("plain"));
    assert_eq!(body(&other, "c", 1).await.as_deref(), Some("bulk"));
    db.drop().await;
}

#[tokio::test]
async fn failed_call_leaves_the_callers_transaction_usable() {
    failed_call_leaves_the_transaction_usable(0).await;
}

#[tokio::test]
async fn failed_call_leaves_the_callers_transaction_usable_through_copy() {
    failed_call_leaves_the_transaction_usable(COPY_BATCH).await;
}

async fn failed_call_leaves_the_transaction_usable(pad: usize) {
    let (db, mut client) = setup(&format!("tx_failed_call_{pad}")).await;
    client.batch_execute("ALTER TABLE event ADD CONSTRAINT body_short CHECK (length(body) < 10)").await.unwrap();
    let mut tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO event (source, seq, body) VALUES ('f', 0, 'before')", &[]).await.unwrap();
    let o = Event::bulk_create_new(&mut tx, [ev("f", 1, "ok")]).await.unwrap();
    assert_eq!(o.inserted, 1);

    // A server-side failure (CHECK violation at the insert step).
    let err = Event::bulk_create_new(&mut tx, padded([ev("f", 2, "fine"), ev("f", 3, "much too long")], 1, pad))
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION), "{err}");
    // A client-side failure in the middle of COPY.
    let err = Event::bulk_create_new(&mut tx, padded([ev("f", 4, "fine")], 2, pad).chain([ev("f", 5, "nul\0")]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidValue { row, field: "body", .. } if row == pad + 1), "{err:?}");

    // The transaction goes on: plain statements and further calls work.
    tx.execute("INSERT INTO event (source, seq, body) VALUES ('f', 9, 'after')", &[]).await.unwrap();
    let o =
        Event::bulk_create_new(&mut tx, [ev("f", 1, "dupe"), ev("f", 2, "again"), ev("f", 4, "again")]).await.unwrap();
    assert_eq!((o.offered, o.inserted, o.skipped), (3, 2, 1));
    tx.commit().await.unwrap();

    let seqs: Vec<(i64, String)> = client
        .query("SELECT seq, body FROM event WHERE source = 'f' ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want: Vec<(i64, String)> =
        [(0, "before"), (1, "ok"), (2, "again"), (4, "again"), (9, "after")].map(|(s, b)| (s, b.to_owned())).into();
    assert_eq!(seqs, want, "none of the failed batches' rows, all of the others");
    assert_eq!(count(&client, "event").await, 5, "no filler row of the failed batches either");
    db.drop().await;
}

#[tokio::test]
async fn failed_first_call_in_a_transaction_recreates_the_scratch_table_later() {
    // The first call of the session fails inside the caller's transaction,
    // after creating the scratch table: the rollback to the savepoint removes
    // the table again, and the next call must notice and create it anew.
    let (db, mut client) = setup("tx_failed_first").await;
    let mut tx = client.transaction().await.unwrap();
    // Long enough for the COPY path, so the bad row comes after the scratch
    // table was created and rows were streamed.
    let err = Event::bulk_create_new(&mut tx, padded([], 1, COPY_BATCH).chain([ev("s", 1, "\0")])).await.unwrap_err();
    assert!(matches!(err, Error::InvalidValue { row, .. } if row == COPY_BATCH), "{err:?}");
    let o = Event::bulk_create_new(&mut tx, [ev("s", 1, "ok")]).await.unwrap();
    assert_eq!(o.inserted, 1);
    tx.rollback().await.unwrap();
    // And after the caller's rollback, which also removed the table.
    let o = Event::bulk_create_new(&mut client, [ev("s", 1, "ok"), ev("s", 2, "ok")]).await.unwrap();
    assert_eq!(o.inserted, 2);
    db.drop().await;
}

#[tokio::test]
async fn discard_all_then_the_next_call_still_works() {
    discard_all_then_next_call(0).await;
}

#[tokio::test]
async fn discard_all_then_the_next_call_still_works_through_copy() {
    discard_all_then_next_call(COPY_BATCH).await;
}

async fn discard_all_then_next_call(pad: usize) {
    let (db, mut client) = setup(&format!("discard_all_{pad}")).await;
    let pad_u = pad as u64;
    let o = Event::bulk_create_new(&mut client, padded([ev("d", 1, "x")], 1, pad)).await.unwrap();
    assert_eq!(o.inserted, 1 + pad_u);
    // Short batches take the one-statement path and need no scratch table.
    let emptied = if pad == 0 { None } else { Some(0) };
    assert_eq!(scratch_rows(&client).await, emptied, "the scratch table exists, empty");
    client.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(scratch_rows(&client).await, None, "DISCARD ALL dropped the scratch table");
    let o = Event::bulk_create_new(&mut client, padded([ev("d", 1, "y"), ev("d", 2, "y")], 2, pad)).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (1 + pad_u, 1));
    assert_eq!(scratch_rows(&client).await, emptied, "recreated");
    // DISCARD TEMP as well, and a call in a transaction right after it.
    client.batch_execute("DISCARD TEMP").await.unwrap();
    let mut tx = client.transaction().await.unwrap();
    let o = Event::bulk_create_new(&mut tx, padded([ev("d", 3, "z")], 3, pad)).await.unwrap();
    assert_eq!(o.inserted, 1 + pad_u);
    tx.commit().await.unwrap();
    assert_eq!(count(&client, "event").await, 3 + 3 * pad as i64);
    db.drop().await;
}

#[tokio::test]
async fn a_dropped_transaction_rolls_back_the_call() {
    let (db, mut client) = setup("tx_dropped").await;
    {
        let mut tx = client.transaction().await.unwrap();
        let o = Event::bulk_create_new(&mut tx, [ev("x", 1, "x")]).await.unwrap();
        assert_eq!(o.inserted, 1);
        // Dropped without commit.
    }
    assert_eq!(count(&client, "event").await, 0);
    let o = Event::bulk_create_new(&mut client, [ev("x", 1, "x")]).await.unwrap();
    assert_eq!(o.inserted, 1);
    db.drop().await;
}

#[tokio::test]
async fn nested_savepoint_of_the_caller() {
    // A call inside the caller's own savepoint: releasing keeps, rolling back drops.
    let (db, mut client) = setup("tx_nested").await;
    let mut tx = client.transaction().await.unwrap();
    {
        let mut sp = tx.savepoint("mine").await.unwrap();
        Event::bulk_create_new(&mut sp, [ev("n", 1, "kept")]).await.unwrap();
        sp.commit().await.unwrap();
    }
    {
        let mut sp = tx.savepoint("mine").await.unwrap();
        Event::bulk_create_new(&mut sp, [ev("n", 2, "dropped")]).await.unwrap();
        sp.rollback().await.unwrap();
    }
    let o = Event::bulk_create_new(&mut tx, [ev("n", 1, "x"), ev("n", 2, "again")]).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (1, 1));
    tx.commit().await.unwrap();
    assert_eq!(body(&client, "n", 1).await.as_deref(), Some("kept"));
    assert_eq!(body(&client, "n", 2).await.as_deref(), Some("again"));
    db.drop().await;
}

/// A call in a transaction that an earlier statement of the caller aborted
/// fails at its first statement (25P02, not retryable, the connection
/// usable), with every option and on both paths, and leaves the
/// transaction as it was: aborted, its rollback undoing everything.
#[tokio::test]
async fn a_call_in_an_aborted_transaction_fails_and_leaves_it_aborted() {
    use bulk_runtime::{Ledger, Step, Upsert};
    use tokio_postgres::error::SqlState;
    let (db, mut client) = setup("tx_aborted").await;
    client.batch_execute(&Ledger::of::<Event>().migration_sql()).await.unwrap();
    for pad in [0, COPY_BATCH] {
        let mut tx = client.transaction().await.unwrap();
        tx.execute("INSERT INTO event (source, seq, body) VALUES ('a', 0, 'before')", &[]).await.unwrap();
        tx.batch_execute("SELECT 1/0").await.unwrap_err();
        let rows = || padded([ev("a", 1, "x")], 1, pad);
        let errors = [
            Event::bulk_create_new(&mut tx, rows()).await.unwrap_err(),
            Event::bulk(&mut tx).upsert(Upsert::all_columns()).batch_id("id").run(rows()).await.unwrap_err(),
            Event::bulk(&mut tx).returning_keys().run(rows()).await.unwrap_err(),
            Event::bulk(&mut tx).returning_skipped().run(rows()).await.unwrap_err(),
        ];
        for err in errors {
            assert_eq!(err.sqlstate(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION), "{err}");
            assert_eq!(err.step(), Some(Step::Begin), "{err}");
            assert!(!err.is_retryable() && err.connection_usable(), "{err}");
            assert!(err.to_string().contains(r#"bulk insert into "event" failed at begin"#), "{err}");
        }
        let still = tx.execute("SELECT 1", &[]).await.unwrap_err();
        assert_eq!(still.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
        tx.rollback().await.unwrap();
    }
    assert_eq!((count(&client, "event").await, count(&client, "bulk_batches").await), (0, 0));
    // The connection takes the next batch.
    assert_eq!(Event::bulk_create_new(&mut client, [ev("a", 1, "x")]).await.unwrap().inserted, 1);
    db.drop().await;
}

/// The model's id column is optional (`NewRow::id` is `None` without it),
/// so `returning_keys` in a caller's transaction works on a table made
/// without it, also on a connection that prepares (it checked before),
/// and leaves the caller's transaction usable.
#[tokio::test]
async fn returning_keys_in_a_transaction_on_a_table_without_the_id_column() {
    let db = TestDb::new("tx_keys_no_id").await;
    let mut client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE event (source text NOT NULL, seq bigint NOT NULL, body text NOT NULL, UNIQUE (source, seq))",
        )
        .await
        .unwrap();
    // A checked connection: its next statements are prepared.
    let o = Event::bulk_create_new(&mut client, [ev("k", 1, "one")]).await.unwrap();
    assert_eq!(o.inserted, 1);
    let mut tx = client.transaction().await.unwrap();
    let r = Event::bulk(&mut tx)
        .returning_keys()
        .run([ev("k", 1, "again"), ev("k", 2, "two"), ev("k", 3, "three")])
        .await
        .unwrap_or_else(|e| panic!("{e} ({:?})", e.sqlstate()));
    assert_eq!((r.offered, r.inserted, r.skipped), (3, 2, 1));
    let got: Vec<_> = r.returned.iter().map(|n| (n.index, n.id, n.key.clone())).collect();
    assert_eq!(got, [(1, None, ("k".to_owned(), 2)), (2, None, ("k".to_owned(), 3))]);
    // The caller's transaction goes on.
    let o = Event::bulk_create_new(&mut tx, [ev("k", 4, "four")]).await.unwrap();
    assert_eq!(o.inserted, 1);
    tx.commit().await.unwrap();
    assert_eq!(count(&client, "event").await, 4);
    db.drop().await;
}

/// The id column dropped between two `returning_keys` calls on one
/// connection (the first prepared its statement with the id), in a
/// caller's transaction: the second returns the rows without ids, and
/// writes them.
#[tokio::test]
async fn returning_keys_in_a_transaction_after_the_id_column_was_dropped() {
    returning_keys_after_the_id_column_was_dropped(true).await;
}

/// As above, on the `Client`.
#[tokio::test]
async fn returning_keys_after_the_id_column_was_dropped_on_the_client() {
    returning_keys_after_the_id_column_was_dropped(false).await;
}

async fn returning_keys_after_the_id_column_was_dropped(in_transaction: bool) {
    let (db, mut client) = setup(&format!("keys_id_dropped_{in_transaction}")).await;
    Event::bulk_create_new(&mut client, [ev("d", 0, "zero")]).await.unwrap();
    let r = Event::bulk(&mut client).returning_keys().run([ev("d", 1, "one")]).await.unwrap();
    assert_eq!(r.inserted, 1);
    assert!(r.returned[0].id.is_some(), "{:?}", r.returned);
    client.batch_execute("ALTER TABLE event DROP COLUMN id").await.unwrap();
    let rows = [ev("d", 1, "again"), ev("d", 2, "two")];
    let r = if in_transaction {
        let mut tx = client.transaction().await.unwrap();
        let r = Event::bulk(&mut tx).returning_keys().run(&rows).await;
        tx.commit().await.unwrap();
        r
    } else {
        Event::bulk(&mut client).returning_keys().run(&rows).await
    };
    let r = r.unwrap_or_else(|e| panic!("{e} ({:?})", e.sqlstate()));
    assert_eq!((r.inserted, r.skipped), (1, 1));
    let got: Vec<_> = r.returned.iter().map(|n| (n.index, n.id, n.key.clone())).collect();
    assert_eq!(got, [(1, None, ("d".to_owned(), 2))]);
    assert_eq!(count(&client, "event").await, 3);
    // The connection's next call runs the statement it prepared then.
    let r = Event::bulk(&mut client).returning_keys().run([ev("d", 3, "three")]).await.unwrap();
    assert_eq!((r.inserted, r.returned[0].id), (1, None));
    db.drop().await;
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "tag", unique(label), id = false)]
pub struct Tag {
    pub label: String,
    pub uses: i64,
}

fn tag(label: &str, uses: i64) -> Tag {
    Tag { label: label.into(), uses }
}

/// A statement the connection prepares for the first time inside a
/// caller's transaction, on a table whose key the check reads otherwise
/// than the model (`varchar(20)`: the guess prepared with the check is
/// not the statement the call runs), while another session holds a lock
/// on the table: the call fails with its lock timeout (55P03), the
/// cause, not with the 25P02 of the statement prepared after it; the
/// caller's transaction goes on, and the next call counts exactly.
#[tokio::test]
async fn a_lock_timeout_while_preparing_in_a_transaction_is_the_error() {
    let db = TestDb::new("tx_prepare_lock_timeout").await;
    let mut client = db.connect().await;
    client.batch_execute("CREATE TABLE tag (label varchar(20) NOT NULL UNIQUE, uses bigint NOT NULL)").await.unwrap();
    // A checked connection: its next statements are prepared.
    let o = Tag::bulk_create_new(&mut client, [tag("a", 1)]).await.unwrap();
    assert_eq!(o.inserted, 1);
    let locker = db.connect().await;
    locker.batch_execute("BEGIN; LOCK TABLE tag IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let mut tx = client.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL lock_timeout = '200ms'").await.unwrap();
    let rows = [tag("a", 2), tag("b", 1), tag("c", 1)];
    let e = Tag::bulk(&mut tx).returning_skipped().run(&rows).await.unwrap_err();
    assert_eq!(e.sqlstate(), Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE), "{e}");
    assert!(matches!(e, Error::Database { .. }), "{e:?}");
    assert!(e.connection_usable());
    locker.batch_execute("ROLLBACK").await.unwrap();
    // The caller's transaction is usable, and nothing was written.
    let n: i64 = tx.query_one("SELECT count(*) FROM tag", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    let r = Tag::bulk(&mut tx).returning_skipped().run(&rows).await.unwrap();
    assert_eq!((r.offered, r.inserted, r.skipped), (3, 2, 1));
    assert_eq!(r.returned, [0]);
    tx.commit().await.unwrap();
    assert_eq!(count(&client, "tag").await, 3);
    db.drop().await;
}
