//! The call has two paths behind one API: batches under `SMALL_BATCH` rows go
//! in one statement with array parameters, longer ones through binary COPY
//! into the scratch table. Both must give the same results.

use bulk_runtime::__test_hooks::SMALL_BATCH;
use bulk_runtime::BulkCreateNew;
use bulk_tests::{TestDb, count};

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(unique(k), id = false)]
struct Item {
    k: i64,
    label: String,
    note: Option<String>,
}

fn item(k: i64, label: &str) -> Item {
    Item { k, label: label.to_owned(), note: (k % 3 == 0).then(|| format!("note {k}")) }
}

/// A batch of `n` rows: keys 0..n/2 stored before (even keys only), and every
/// tenth row repeating the key of the row before it with another label.
fn batch(n: usize) -> Vec<Item> {
    (0..n as i64).map(|i| if i % 10 == 9 { item(i - 1, "repeat") } else { item(i, "first") }).collect()
}

async fn run(n: usize) -> (bulk_runtime::Report, Vec<(i64, String, Option<String>)>) {
    let db = TestDb::new(&format!("paths_{n}")).await;
    let mut client = db.connect().await;
    client.batch_execute(&Item::model().migration_sql()).await.unwrap();
    let stored: Vec<Item> = (0..n as i64 / 2).filter(|k| k % 2 == 0).map(|k| item(k, "stored")).collect();
    Item::bulk_create_new(&mut client, &stored).await.unwrap();
    let outcome = Item::bulk_create_new(&mut client, &batch(n)).await.unwrap();
    let rows = client
        .query("SELECT k, label, note FROM item ORDER BY k", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(count(&client, "item").await as u64, stored.len() as u64 + outcome.inserted);
    db.drop().await;
    (outcome, rows)
}

fn expected(n: usize) -> (u64, Vec<(i64, String, Option<String>)>) {
    let mut rows = std::collections::BTreeMap::new();
    for k in (0..n as i64 / 2).filter(|k| k % 2 == 0) {
        rows.insert(k, item(k, "stored"));
    }
    let before = rows.len();
    for it in batch(n) {
        rows.entry(it.k).or_insert(it);
    }
    let inserted = (rows.len() - before) as u64;
    (inserted, rows.into_values().map(|i| (i.k, i.label, i.note)).collect())
}

#[tokio::test]
async fn small_and_copy_paths_agree_with_the_model() {
    for n in [1, SMALL_BATCH - 1, SMALL_BATCH, SMALL_BATCH + 1, 3 * SMALL_BATCH] {
        let (outcome, rows) = run(n).await;
        let (inserted, want) = expected(n);
        assert_eq!(outcome.offered, n as u64, "offered, n = {n}");
        assert_eq!(outcome.inserted, inserted, "inserted, n = {n}");
        assert_eq!(outcome.skipped, n as u64 - inserted, "skipped, n = {n}");
        assert_eq!(rows, want, "table contents, n = {n}");
    }
}

#[tokio::test]
async fn the_call_is_send_and_runs_in_spawned_tasks() {
    let db = TestDb::new("paths_spawn").await;
    let mut client = db.connect().await;
    client.batch_execute(&Item::model().migration_sql()).await.unwrap();
    let rows: Vec<Item> = (0..(2 * SMALL_BATCH) as i64).map(|k| item(k, "x")).collect();
    // Borrowed rows, both paths, inside tokio::spawn (which requires Send).
    let handle = tokio::spawn(async move {
        let small = Item::bulk_create_new(&mut client, &rows[..10]).await.unwrap();
        let large = Item::bulk_create_new(&mut client, rows.iter()).await.unwrap();
        (small, large)
    });
    let (small, large) = handle.await.unwrap();
    assert_eq!(small.inserted, 10);
    assert_eq!(large.inserted, 2 * SMALL_BATCH as u64 - 10);
    db.drop().await;
}

/// A record as an API returns it, mapped into `Item` rows by a closure.
struct ApiRecord {
    id: i64,
    name: String,
}

/// Rows mapped from borrowed records by a closure, inside `tokio::spawn`:
/// the plain call, the builder and a stream, each on both paths (the future
/// must be `Send`, and the rows are still read lazily from the iterator).
#[tokio::test]
async fn mapped_rows_run_in_spawned_tasks() {
    use futures_util::StreamExt;

    let db = TestDb::new("paths_spawn_mapped").await;
    let mut client = db.connect().await;
    client.batch_execute(&Item::model().migration_sql()).await.unwrap();
    let n = bulk_tests::COPY_BATCH as i64;
    let api: Vec<ApiRecord> = (0..6 * n).map(|id| ApiRecord { id, name: format!("record {id}") }).collect();
    let handle = tokio::spawn(async move {
        let to_row = |r: &ApiRecord| Item { k: r.id, label: r.name.clone(), note: None };
        let page = |p: i64| &api[(p * n) as usize..((p + 1) * n) as usize];
        let mut counts = Vec::new();
        for (p, short) in [(0, true), (1, false)] {
            let records = if short { &page(p)[..10] } else { page(p) };
            let o = Item::bulk_create_new(
                &mut client,
                records.iter().map(|r| Item { k: r.id, label: r.name.clone(), note: None }),
            )
            .await
            .unwrap();
            counts.push((o.offered, o.inserted));
        }
        for (p, short) in [(2, true), (3, false)] {
            let records = if short { &page(p)[..10] } else { page(p) };
            let r = Item::bulk(&mut client).returning_keys().run(records.iter().map(to_row)).await.unwrap();
            counts.push((r.offered, r.returned.len() as u64));
            let r = Item::bulk(&mut client)
                .upsert(bulk_runtime::Upsert::columns(["note"]))
                .run(records.iter().map(|r| Item { note: Some(format!("seen {}", r.id)), ..to_row(r) }))
                .await
                .unwrap();
            counts.push((r.offered, r.updated));
        }
        for (p, short) in [(4, true), (5, false)] {
            let records = if short { &page(p)[..10] } else { page(p) };
            let rows = futures_util::stream::iter(records).map(|r| Item { k: r.id, label: r.name.clone(), note: None });
            let r = Item::bulk(&mut client).run_stream(rows).await.unwrap();
            counts.push((r.offered, r.inserted));
        }
        counts
    });
    let counts = handle.await.unwrap();
    let (n, short) = (n as u64, 10);
    assert_eq!(
        counts,
        [(short, short), (n, n), (short, short), (short, short), (n, n), (n, n), (short, short), (n, n)]
    );
    let client = db.connect().await;
    let notes: i64 = client.query_one("SELECT count(*) FROM item WHERE note LIKE 'seen %'", &[]).await.unwrap().get(0);
    assert_eq!(notes as u64, short + n);
    db.drop().await;
}

/// The small path keeps a prepared statement per connection; when the server
/// forgets it (`DEALLOCATE ALL`, `DISCARD ALL`, a new connection that took the
/// old client's place), the call must still work, with exact counts.
#[tokio::test]
async fn forgotten_prepared_statements_are_replaced() {
    let db = TestDb::new("paths_stale").await;
    let mut client = db.connect().await;
    client.batch_execute(&Item::model().migration_sql()).await.unwrap();
    let mut next = 0i64;
    let mut fresh = |n: i64| {
        let rows: Vec<Item> = (next..next + n).map(|k| item(k, "x")).collect();
        next += n;
        rows
    };
    for reset in ["DEALLOCATE ALL", "DISCARD ALL", "DISCARD PLANS", "SELECT 1"] {
        let o = Item::bulk_create_new(&mut client, &fresh(5)).await.unwrap();
        assert_eq!(o.inserted, 5, "before {reset}");
        client.batch_execute(reset).await.unwrap();
        let o = Item::bulk_create_new(&mut client, &fresh(7)).await.unwrap();
        assert_eq!(o.inserted, 7, "first call after {reset}");
        let o = Item::bulk_create_new(&mut client, &fresh(3)).await.unwrap();
        assert_eq!(o.inserted, 3, "second call after {reset}");
        // Inside a caller's transaction too (the call runs in a savepoint).
        client.batch_execute(reset).await.unwrap();
        let tx = client.transaction().await.unwrap();
        let mut tx = tx;
        let o = Item::bulk_create_new(&mut tx, &fresh(4)).await.unwrap();
        assert_eq!(o.inserted, 4, "in a transaction after {reset}");
        tx.commit().await.unwrap();
    }
    // New clients, likely reusing the address of a dropped one.
    drop(client);
    for _ in 0..5 {
        let mut client = db.connect().await;
        let o = Item::bulk_create_new(&mut client, &fresh(2)).await.unwrap();
        assert_eq!(o.inserted, 2);
    }
    let client = db.connect().await;
    assert_eq!(count(&client, "item").await, next);
    db.drop().await;
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "blob", unique(k), id = false)]
struct Blob {
    k: i64,
    data: Vec<u8>,
}

/// A batch of few rows but more than 1 GB of values (1,100 rows of 1 MiB):
/// as one statement's parameters the server would refuse the message and
/// close the connection (an error a retry would only meet again). The call
/// sends it through COPY, row by row, and stores it all; the connection
/// takes the next batch.
#[tokio::test]
async fn a_short_batch_of_more_than_a_gigabyte_goes_through_copy() {
    let db = TestDb::new("paths_gigabyte").await;
    let mut client = db.connect().await;
    client.batch_execute("CREATE TABLE blob (k bigint PRIMARY KEY, data bytea NOT NULL)").await.unwrap();
    let data = vec![7u8; 1 << 20];
    let rows: Vec<Blob> = (0..1100).map(|k| Blob { k, data: data.clone() }).collect();
    let o = Blob::bulk_create_new(&mut client, &rows).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (1100, 0));
    drop(rows);
    let (n, bytes): (i64, i64) = client
        .query_one("SELECT count(*), sum(length(data))::int8 FROM blob", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((n, bytes), (1100, 1100 << 20));
    let o = Blob::bulk_create_new(&mut client, &[Blob { k: 0, data: vec![1] }, Blob { k: 5000, data: vec![2] }])
        .await
        .unwrap();
    assert_eq!((o.inserted, o.skipped), (1, 1));
    db.drop().await;
}
