//! Upsert: insert new keys, update chosen columns of stored ones (optionally
//! only when a value changed), inserted / updated / unchanged / skipped
//! counted apart, repeated keys in a batch kept first or last, on both paths,
//! in a caller's transaction, and under concurrent overlapping writers.

use std::collections::BTreeMap;

use bulk_runtime::{BulkCreateNew, Error, Keep, Report, Upsert};
use bulk_tests::{COPY_BATCH, TestDb, count};
use tokio_postgres::Client;

/// Key `(sku, warehouse)`; `qty` and `note` are updatable, `origin` is not
/// updated unless named.
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "stock", unique(sku, warehouse))]
pub struct Stock {
    pub sku: String,
    pub warehouse: i32,
    pub qty: i64,
    pub note: Option<String>,
    pub origin: String,
}

fn stock(sku: i64, qty: i64, note: Option<&str>, origin: &str) -> Stock {
    Stock {
        sku: format!("sku-{sku:06}"),
        warehouse: (sku % 4) as i32,
        qty,
        note: note.map(Into::into),
        origin: origin.into(),
    }
}

async fn setup(name: &str) -> (TestDb, Client) {
    let db = TestDb::new(name).await;
    let client = db.connect().await;
    client.batch_execute(&Stock::model().migration_sql()).await.unwrap();
    (db, client)
}

/// Every stored row by key.
async fn stored(client: &Client) -> BTreeMap<(String, i32), Stock> {
    client
        .query("SELECT sku, warehouse, qty, note, origin FROM stock", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let s = Stock { sku: r.get(0), warehouse: r.get(1), qty: r.get(2), note: r.get(3), origin: r.get(4) };
            ((s.sku.clone(), s.warehouse), s)
        })
        .collect()
}

/// `pad` filler rows of keys 1_000_000.. (new, never repeated), so that the
/// batch takes the COPY path.
fn filler(pad: usize, round: i64) -> impl Iterator<Item = Stock> {
    (0..pad as i64).map(move |i| stock(1_000_000 + round * 100_000 + i, i, None, "filler"))
}

fn counts(r: &Report) -> (u64, u64, u64, u64, u64) {
    (r.offered, r.inserted, r.updated, r.unchanged, r.skipped)
}

#[tokio::test]
async fn upsert_counts_inserted_updated_unchanged_and_skipped() {
    upsert_counts(0).await;
}

#[tokio::test]
async fn upsert_counts_inserted_updated_unchanged_and_skipped_through_copy() {
    upsert_counts(COPY_BATCH).await;
}

async fn upsert_counts(pad: usize) {
    let (db, mut client) = setup(&format!("upsert_counts_{pad}")).await;
    let p = pad as u64;
    // Stored: keys 1..=4.
    let before = [
        stock(1, 10, Some("a"), "old"),
        stock(2, 20, None, "old"),
        stock(3, 30, Some("c"), "old"),
        stock(4, 40, None, "old"),
    ];
    Stock::bulk_create_new(&mut client, &before).await.unwrap();

    let batch = [
        stock(1, 11, Some("a"), "new"),    // qty changes: updated
        stock(2, 20, None, "new"),         // same qty and note (origin is not updated): unchanged
        stock(3, 30, None, "new"),         // note becomes NULL: updated (IS DISTINCT FROM)
        stock(5, 50, None, "new"),         // new key: inserted
        stock(5, 55, Some("last"), "new"), // repeat of 5: the last offered is kept
        stock(4, 40, None, "new"),         // unchanged
        stock(1, 12, Some("a"), "new"),    // repeat of 1: kept (last), 12 wins over 11
    ];
    let upsert = Upsert::columns(["qty", "note"]).only_if_changed();
    let report =
        Stock::bulk(&mut client).upsert(upsert).run(batch.iter().cloned().chain(filler(pad, 1))).await.unwrap();
    assert_eq!(counts(&report), (7 + p, 1 + p, 2, 2, 2), "{report:?}");
    assert_eq!(report.to_string(), format!("{} of {} records added, 2 updated, 2 unchanged", 1 + p, 7 + p));
    let rows = stored(&client).await;
    let get = |k: i64| &rows[&(format!("sku-{k:06}"), (k % 4) as i32)];
    assert_eq!((get(1).qty, get(1).note.as_deref(), get(1).origin.as_str()), (12, Some("a"), "old"));
    assert_eq!((get(2).qty, get(2).origin.as_str()), (20, "old"));
    assert_eq!((get(3).qty, get(3).note.as_deref()), (30, None));
    assert_eq!((get(5).qty, get(5).note.as_deref(), get(5).origin.as_str()), (55, Some("last"), "new"));
    assert_eq!(rows.len(), 5 + pad);

    // The same batch again: every key stored, nothing changes.
    let upsert = Upsert::columns(["qty", "note"]).only_if_changed();
    let report =
        Stock::bulk(&mut client).upsert(upsert).run(batch.iter().cloned().chain(filler(pad, 1))).await.unwrap();
    assert_eq!(counts(&report), (7 + p, 0, 0, 5 + p, 2));

    // Without only_if_changed every stored key is rewritten.
    let report = Stock::bulk(&mut client)
        .upsert(Upsert::columns(["qty"]))
        .run(batch.iter().cloned().chain(filler(pad, 1)))
        .await
        .unwrap();
    assert_eq!(counts(&report), (7 + p, 0, 5 + p, 0, 2));
    assert_eq!(count(&client, "stock").await as usize, 5 + pad);
    db.drop().await;
}

#[tokio::test]
async fn repeated_keys_keep_the_first_or_the_last_offered_row() {
    repeated_keys(0).await;
}

#[tokio::test]
async fn repeated_keys_keep_the_first_or_the_last_offered_row_through_copy() {
    repeated_keys(COPY_BATCH).await;
}

async fn repeated_keys(pad: usize) {
    let (db, mut client) = setup(&format!("upsert_repeats_{pad}")).await;
    Stock::bulk_create_new(&mut client, [stock(1, 0, None, "old")]).await.unwrap();
    // Key 1 stored, key 2 new; each offered three times, the kept row sorting
    // neither first nor last by value.
    let batch = |tag: &str| {
        vec![
            stock(1, 5, Some(tag), "x"),
            stock(2, 5, Some(tag), "x"),
            stock(1, 9, Some(tag), "x"),
            stock(2, 1, Some(tag), "x"),
            stock(1, 7, Some(tag), "x"),
            stock(2, 3, Some(tag), "x"),
        ]
    };
    let qty = |rows: &BTreeMap<(String, i32), Stock>, k: i64| rows[&(format!("sku-{k:06}"), (k % 4) as i32)].qty;

    let first = Upsert::all_columns().keep(Keep::First);
    let report =
        Stock::bulk(&mut client).upsert(first).run(batch("first").into_iter().chain(filler(pad, 1))).await.unwrap();
    assert_eq!(counts(&report), (6 + pad as u64, 1 + pad as u64, 1, 0, 4));
    let rows = stored(&client).await;
    assert_eq!((qty(&rows, 1), qty(&rows, 2)), (5, 5));

    let last = Upsert::all_columns(); // Keep::Last is the default
    let report =
        Stock::bulk(&mut client).upsert(last).run(batch("last").into_iter().chain(filler(pad, 2))).await.unwrap();
    assert_eq!(counts(&report), (6 + pad as u64, pad as u64, 2, 0, 4));
    let rows = stored(&client).await;
    assert_eq!((qty(&rows, 1), qty(&rows, 2)), (7, 3));
    assert_eq!(rows[&("sku-000001".to_owned(), 1)].origin, "x", "all_columns updates every non-key column");
    db.drop().await;
}

#[tokio::test]
async fn update_columns_are_checked_against_the_model() {
    let (db, mut client) = setup("upsert_columns").await;
    let rows = [stock(1, 1, None, "x")];
    let message = |e: Error| match e {
        Error::Usage { message, .. } => message,
        other => panic!("expected a usage error, got {other:?}"),
    };
    let err = Stock::bulk(&mut client).upsert(Upsert::columns(["qty", "quantity"])).run(&rows).await.unwrap_err();
    let m = message(err);
    assert!(m.contains("`quantity` is not a stored field or column of `Stock`"), "{m}");
    assert!(m.contains("sku, warehouse, qty, note, origin"), "{m}");
    let err = Stock::bulk(&mut client).upsert(Upsert::columns(["warehouse"])).run(&rows).await.unwrap_err();
    assert!(message(err).contains("`warehouse` is part of the unique key"));
    let err = Stock::bulk(&mut client).upsert(Upsert::columns(Vec::<String>::new())).run(&rows).await.unwrap_err();
    assert!(message(err).contains("no column to update"));
    assert_eq!(count(&client, "stock").await, 0, "nothing was written");

    // A renamed field can be named by field or by column; naming it twice is fine.
    #[derive(BulkCreateNew)]
    #[bulk(table = "renamed", unique(k))]
    struct Renamed {
        k: i64,
        #[bulk(rename = "Value Column")]
        value: i64,
    }
    client.batch_execute(&Renamed::model().migration_sql()).await.unwrap();
    Renamed::bulk_create_new(&mut client, [Renamed { k: 1, value: 1 }]).await.unwrap();
    for (name, v) in [("value", 2), ("Value Column", 3)] {
        let report = Renamed::bulk(&mut client)
            .upsert(Upsert::columns([name, "value"]))
            .run([Renamed { k: 1, value: v }])
            .await
            .unwrap();
        assert_eq!(report.updated, 1);
        let got: i64 = client.query_one(r#"SELECT "Value Column" FROM renamed"#, &[]).await.unwrap().get(0);
        assert_eq!(got, v);
    }
    db.drop().await;
}

#[tokio::test]
async fn upsert_inside_a_callers_transaction() {
    upsert_in_transaction(0).await;
}

#[tokio::test]
async fn upsert_inside_a_callers_transaction_through_copy() {
    upsert_in_transaction(COPY_BATCH).await;
}

async fn upsert_in_transaction(pad: usize) {
    let (db, mut client) = setup(&format!("upsert_tx_{pad}")).await;
    Stock::bulk_create_new(&mut client, [stock(1, 1, None, "old")]).await.unwrap();
    let batch = || [stock(1, 2, None, "new"), stock(2, 2, None, "new")].into_iter().chain(filler(pad, 1));

    let mut tx = client.transaction().await.unwrap();
    let report = Stock::bulk(&mut tx).upsert(Upsert::columns(["qty"])).run(batch()).await.unwrap();
    assert_eq!((report.inserted, report.updated), (1 + pad as u64, 1));
    tx.rollback().await.unwrap();
    assert_eq!(stored(&client).await.len(), 1);
    assert_eq!(stored(&client).await[&("sku-000001".to_owned(), 1)].qty, 1, "the update was rolled back");

    // A failed upsert (a NUL byte in the last row) leaves the caller's
    // transaction usable and writes nothing.
    let mut tx = client.transaction().await.unwrap();
    let bad = batch().chain([Stock { note: Some("nul\0".into()), ..stock(3, 3, None, "bad") }]);
    let err = Stock::bulk(&mut tx).upsert(Upsert::columns(["qty"])).run(bad).await.unwrap_err();
    assert_eq!(err.row(), Some(2 + pad));
    let report = Stock::bulk(&mut tx).upsert(Upsert::columns(["qty"])).run(batch()).await.unwrap();
    assert_eq!((report.inserted, report.updated), (1 + pad as u64, 1));
    // Twice in one transaction: the second sees the first's rows.
    let report = Stock::bulk(&mut tx).upsert(Upsert::columns(["qty"]).only_if_changed()).run(batch()).await.unwrap();
    assert_eq!((report.inserted, report.updated, report.unchanged), (0, 0, 2 + pad as u64));
    tx.commit().await.unwrap();
    assert_eq!(stored(&client).await.len(), 2 + pad);
    db.drop().await;
}

#[tokio::test]
async fn concurrent_overlapping_upserts_neither_deadlock_nor_miscount() {
    let (db, client) = setup("upsert_concurrent").await;
    drop(client);
    // Six workers, overlapping key ranges, half of them in reverse order,
    // short and long batches, each key repeated: every call succeeds (no
    // deadlock, no 21000), and every distinct key is inserted exactly once
    // over all workers.
    let mut tasks = Vec::new();
    for w in 0..6i64 {
        let mut client = db.connect().await;
        tasks.push(tokio::spawn(async move {
            let mut total = (0u64, 0u64, 0u64);
            for round in 0..4i64 {
                let len = if (w + round) % 2 == 0 { 1_500 } else { COPY_BATCH as i64 };
                let start = (w % 3) * 800 + round * 400;
                let mut rows: Vec<Stock> = (start..start + len)
                    .flat_map(|k| [stock(k, w * 10 + round, None, "w"), stock(k, -1, None, "r")])
                    .collect();
                if w % 2 == 1 {
                    rows.reverse();
                }
                let upsert = Upsert::columns(["qty"]).keep(if w % 2 == 0 { Keep::First } else { Keep::Last });
                let r = Stock::bulk(&mut client).upsert(upsert).run(&rows).await.unwrap();
                assert_eq!(r.offered, r.inserted + r.updated + r.unchanged + r.skipped);
                assert_eq!(r.skipped, len as u64, "one repeat per key");
                total.0 += r.inserted;
                total.1 += r.updated;
                total.2 += r.offered;
            }
            total
        }));
    }
    let mut inserted = 0;
    for t in tasks {
        inserted += t.await.unwrap().0;
    }
    let client = db.connect().await;
    assert_eq!(count(&client, "stock").await as u64, inserted, "each key inserted by exactly one call");
    let bad: i64 = client.query_one("SELECT count(*) FROM stock WHERE qty < 0", &[]).await.unwrap().get(0);
    assert_eq!(bad, 0, "the kept row of each key is the one the worker chose");
    db.drop().await;
}

/// Another model, for handles that do not fit `Stock`.
#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "other_stock", unique(sku))]
pub struct OtherStock {
    pub sku: String,
    pub qty: i64,
}

/// Columns named by their typed handles update exactly as by name, on both
/// paths; handles of another model are refused before anything is sent.
async fn typed_columns(pad: usize) {
    let (db, mut client) = setup(&format!("upsert_typed_{pad}")).await;
    let first = [stock(1, 10, None, "a"), stock(2, 20, None, "a")];
    Stock::bulk_create_new(&mut client, first.iter().cloned().chain(filler(pad, 0))).await.unwrap();
    let columns = Stock::columns();
    let upsert = Upsert::set([columns.qty, columns.note]).only_if_changed();
    let batch = [stock(1, 11, Some("n"), "b"), stock(2, 20, None, "b"), stock(3, 30, None, "b")];
    let report =
        Stock::bulk(&mut client).upsert(upsert).run(batch.iter().cloned().chain(filler(pad, 0))).await.unwrap();
    assert_eq!(counts(&report), (3 + pad as u64, 1, 1, 1 + pad as u64, 0));
    let rows = stored(&client).await;
    let one = &rows[&("sku-000001".to_owned(), 1)];
    assert_eq!((one.qty, one.note.as_deref(), one.origin.as_str()), (11, Some("n"), "a"), "origin is not updated");

    let foreign = Upsert::set([OtherStock::columns().qty]);
    let err = Stock::bulk(&mut client).upsert(foreign).run(batch.iter().cloned()).await.unwrap_err();
    assert!(matches!(err, Error::Usage { .. }), "{err}");
    assert!(err.to_string().contains("handles of `OtherStock`"), "{err}");
    db.drop().await;
}

#[tokio::test]
async fn columns_named_by_typed_handles() {
    typed_columns(0).await;
}

#[tokio::test]
async fn columns_named_by_typed_handles_through_copy() {
    typed_columns(COPY_BATCH).await;
}

/// Values of every kind a non-key column holds: a float, jsonb, an array and
/// a nullable text.
#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "reading", unique(k))]
pub struct Reading {
    pub k: i64,
    pub f: f64,
    pub j: serde_json::Value,
    pub a: Vec<Option<i32>>,
    pub n: Option<String>,
}

/// `only_if_changed` compares as the column types do (`IS DISTINCT FROM`):
/// -0.0 equals 0.0 and NaN equals NaN, jsonb ignores key order and compares
/// numbers by value, NULL equals NULL; such rows count as unchanged and
/// keep their stored form. An empty array differs from `{NULL}`.
async fn changed_values(pad: usize) {
    use serde_json::json;
    let (db, mut client) = setup(&format!("upsert_values_{pad}")).await;
    client.batch_execute(&Reading::model().migration_sql()).await.unwrap();
    let r = |k, f, j, a, n: Option<&str>| Reading { k, f, j, a, n: n.map(Into::into) };
    let filler = (0..pad as i64).map(|k| r(1000 + k, 0.0, json!(k), vec![], None));
    let stored = [
        r(1, 0.0, json!({"a": 1, "b": 2}), vec![Some(1), None], None),
        r(2, f64::NAN, json!(1.0), vec![], Some("x")),
        r(3, 1.5, json!(null), vec![None], None),
        r(4, 1.5, json!([1]), vec![], None),
    ];
    Reading::bulk_create_new(&mut client, stored.iter().cloned().chain(filler.clone())).await.unwrap();
    let offered = [
        r(1, -0.0, json!({"b": 2, "a": 1}), vec![Some(1), None], None),
        r(2, f64::NAN, json!(1), vec![], Some("x")),
        r(3, 1.5, json!(null), vec![], None),
        r(4, 1.5, json!([1]), vec![], Some("")),
    ];
    let report = Reading::bulk(&mut client)
        .upsert(Upsert::all_columns().only_if_changed())
        .run(offered.iter().cloned().chain(filler))
        .await
        .unwrap();
    assert_eq!(counts(&report), (4 + pad as u64, 0, 2, 2 + pad as u64, 0));
    let rows = client.query("SELECT k, f::text, j::text, a::text, n FROM reading WHERE k < 1000 ORDER BY k", &[]);
    let rows: Vec<(i64, String, String, String, Option<String>)> =
        rows.await.unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect();
    let row = |k: i64, f: &str, j: &str, a: &str, n: Option<&str>| {
        (k, f.to_owned(), j.to_owned(), a.to_owned(), n.map(str::to_owned))
    };
    assert_eq!(
        rows,
        [
            row(1, "0", r#"{"a": 1, "b": 2}"#, "{1,NULL}", None),
            row(2, "NaN", "1.0", "{}", Some("x")),
            row(3, "1.5", "null", "{}", None),
            row(4, "1.5", "[1]", "{}", Some("")),
        ]
    );
    db.drop().await;
}

#[tokio::test]
async fn only_if_changed_compares_as_the_column_types_do() {
    changed_values(0).await;
}

#[tokio::test]
async fn only_if_changed_compares_as_the_column_types_do_through_copy() {
    changed_values(COPY_BATCH).await;
}
