//! Bad input and value edge cases, panics in the caller's code, and dropped
//! calls, on both paths (the one-statement path of short batches and the
//! COPY path of long ones).
//!
//! - Bad input: a value in a repeated row that fails to encode is refused on
//!   both paths (a repeat is encoded too); the error names the first offered
//!   bad row on both paths; a value over 1 GB is refused on the client,
//!   naming its row and field, with nothing sent; values the server refuses
//!   name their row around the 5,000-row boundary of the COPY path.
//! - Value edge cases: float keys NaN, -0.0 and infinities (under PostgreSQL's
//!   equality every NaN is one key, and -0.0 is 0.0), NULL against empty
//!   strings in a nullable key, and repeats across the 5,000-row boundary.
//! - A row iterator or a progress callback that panics: nothing of the call is
//!   written, on a `Client` and in a caller's transaction, and the connection
//!   takes the next call.
//! - Dropped calls (their future dropped): at every await of a call, on a
//!   `Client` (all or nothing, no transaction left open) and in a caller's
//!   transaction (all or nothing, and all only when dropped once the
//!   savepoint's release was sent); dropped by timeouts across a call; a
//!   stream stalled mid-COPY dropped by a timeout; a new connection's first
//!   call dropped. Each time the connection then counts the next call exactly.
//! - `returning_keys_with`'s callback runs before the commit: another session
//!   does not see the row yet, and a callback that panics leaves nothing.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use bulk_runtime::{BulkCreateNew, BulkType, Connection, Error, Json, Keep, Upsert};
use bulk_tests::recorder::SqlRecorder;
use bulk_tests::{COPY_BATCH, TestDb, count};
use tokio_postgres::Client;

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "item", unique(k))]
struct Item {
    k: i64,
    note: String,
}

fn item(k: i64, note: &str) -> Item {
    Item { k, note: note.into() }
}

async fn item_db(name: &str) -> (TestDb, Client) {
    let db = TestDb::new(name).await;
    let client = db.connect().await;
    client.batch_execute(&Item::model().migration_sql()).await.unwrap();
    (db, client)
}

/// `catch_unwind` for a future (futures-util's needs its `std` feature).
struct CatchPanic<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for CatchPanic<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(p) => std::task::Poll::Ready(Err(p)),
        }
    }
}

trait CatchPanicExt: std::future::Future + Sized {
    fn catch_panic(self) -> CatchPanic<Self> {
        CatchPanic(Box::pin(self))
    }
}
impl<F: std::future::Future> CatchPanicExt for AssertUnwindSafe<F> {}

/// Whether `client`'s session is in a transaction, seen by another session.
async fn in_tx(client: &Client) -> bool {
    // The writer's own requests run in order: once this answers, whatever
    // the call queued (a ROLLBACK) has run.
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let (admin, connection) = tokio_postgres::connect(&bulk_tests::server_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let state: String =
        admin.query_one("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid]).await.unwrap().get(0);
    state != "idle"
}

// ---------------------------------------------------------------------------
// A Json<T> whose serialization fails.

#[derive(Debug, Clone)]
struct Payload(bool);

impl serde::Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 { Err(serde::ser::Error::custom("payload refuses to serialize")) } else { s.serialize_str("fine") }
    }
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "jdoc", unique(k))]
struct JDoc {
    k: i64,
    body: Json<Payload>,
}

/// Both paths give the same result for the same batch: a row whose value
/// cannot be encoded is refused with its row and field, also when its key
/// repeats an earlier row's (a row the insert skips, which the short path,
/// ordering the keys on the client, must still encode).
async fn unencodable_in_repeat(pad: usize) -> Result<bulk_runtime::Report, Error> {
    let db = TestDb::new(&format!("json_repeat_{pad}")).await;
    let mut client = db.connect().await;
    client.batch_execute(&JDoc::model().migration_sql()).await.unwrap();
    let mut batch = vec![JDoc { k: 1, body: Json(Payload(false)) }, JDoc { k: 1, body: Json(Payload(true)) }];
    batch.extend((0..pad as i64).map(|i| JDoc { k: 100 + i, body: Json(Payload(false)) }));
    let r = JDoc::bulk_create_new(&mut client, &batch).await;
    let stored = count(&client, "jdoc").await;
    if r.is_err() {
        assert_eq!(stored, 0);
    }
    db.drop().await;
    r
}

#[tokio::test]
async fn unencodable_value_in_a_repeated_row_is_refused_on_both_paths() {
    let copy = unencodable_in_repeat(COPY_BATCH).await;
    let short = unencodable_in_repeat(0).await;
    assert!(copy.is_err(), "COPY path: {copy:?}");
    let e = copy.unwrap_err();
    assert_eq!((e.row(), e.field()), (Some(1), Some("body")), "{e}");
    assert!(
        short.is_err(),
        "short path accepted a batch the COPY path refuses (row 1 `body` cannot be encoded): {short:?}"
    );
    let e = short.unwrap_err();
    assert_eq!((e.row(), e.field()), (Some(1), Some("body")), "short path: {e}");
}

/// Two unencodable values, the later offered with the key that sorts first:
/// the error names the first bad row offered (row 1, not row 2 of the
/// smaller key), on both paths alike.
async fn first_bad_row(pad: usize) {
    let db = TestDb::new(&format!("json_order_{pad}")).await;
    let mut client = db.connect().await;
    client.batch_execute(&JDoc::model().migration_sql()).await.unwrap();
    let mut batch = vec![
        JDoc { k: 5, body: Json(Payload(false)) },
        JDoc { k: 9, body: Json(Payload(true)) },
        JDoc { k: 2, body: Json(Payload(true)) },
    ];
    batch.extend((0..pad as i64).map(|i| JDoc { k: 100 + i, body: Json(Payload(false)) }));
    let e = JDoc::bulk_create_new(&mut client, &batch).await.unwrap_err();
    assert!(matches!(e, Error::InvalidValue { .. }), "pad {pad}: {e:?}");
    assert_eq!(count(&client, "jdoc").await, 0, "pad {pad}");
    let row = e.row().unwrap();
    assert!(row == 1 || row == 2, "pad {pad}: {e}");
    assert_eq!(row, 1, "pad {pad}: the first offered bad row: {e}");
    assert_eq!(e.field(), Some("body"), "pad {pad}: {e}");
    db.drop().await;
}

#[tokio::test]
async fn unencodable_value_error_names_the_first_bad_row_short_path() {
    first_bad_row(0).await;
}

#[tokio::test]
async fn unencodable_value_error_names_the_first_bad_row_through_copy() {
    first_bad_row(COPY_BATCH).await;
}

// ---------------------------------------------------------------------------
// An iterator that panics mid-batch.

async fn panicking_iterator(at: usize, len: usize, nested: bool) {
    let (db, mut client) = item_db(&format!("panic_{at}_{len}_{nested}")).await;
    // Warm: the scratch table exists, statements prepared.
    Item::bulk_create_new(&mut client, (0..COPY_BATCH as i64).map(|k| item(-1 - k, "warm"))).await.unwrap();
    Item::bulk_create_new(&mut client, [item(-1_000_000, "warm")]).await.unwrap();
    let before = count(&client, "item").await;
    let rows = (0..len).map(move |i| {
        if i == at {
            panic!("iterator panics at row {i}");
        }
        item(i as i64, "p")
    });
    if nested {
        let mut tx = client.transaction().await.unwrap();
        let r = AssertUnwindSafe(Item::bulk_create_new(&mut tx, rows)).catch_panic().await;
        assert!(r.is_err(), "the panic came through");
        let n: i64 = tx.query_one("SELECT count(*) FROM item", &[]).await.unwrap().get(0);
        assert_eq!(n, before, "nothing of the panicked call in the caller's transaction");
        let o = Item::bulk_create_new(&mut tx, (0..len as i64).map(|k| item(k, "again"))).await.unwrap();
        assert_eq!(o.inserted, len as u64, "the transaction takes the next call");
        let o = Item::bulk_create_new(&mut tx, [item(10_000_000, "x")]).await.unwrap();
        assert_eq!(o.inserted, 1);
        tx.commit().await.unwrap();
        assert_eq!(count(&client, "item").await, before + len as i64 + 1);
    } else {
        let r = AssertUnwindSafe(Item::bulk_create_new(&mut client, rows)).catch_panic().await;
        assert!(r.is_err(), "the panic came through");
        assert_eq!(count(&client, "item").await, before, "nothing written");
        assert!(!in_tx(&client).await, "no transaction left open");
        let o = Item::bulk_create_new(&mut client, (0..len as i64).map(|k| item(k, "again"))).await.unwrap();
        assert_eq!(o.inserted, len as u64);
        let o = Item::bulk_create_new(&mut client, [item(10_000_000, "x")]).await.unwrap();
        assert_eq!(o.inserted, 1);
        assert_eq!(count(&client, "item").await, before + len as i64 + 1);
    }
    db.drop().await;
}

#[tokio::test]
async fn panicking_iterator_on_a_client() {
    for (at, len) in [(0, 10), (5, 10), (4_999, 6_000), (5_000, 6_000), (5_001, 6_000), (20_000, 30_000)] {
        panicking_iterator(at, len, false).await;
    }
}

#[tokio::test]
async fn panicking_iterator_in_a_transaction() {
    for (at, len) in [(0, 10), (5, 10), (4_999, 6_000), (5_000, 6_000), (5_001, 6_000), (20_000, 30_000)] {
        panicking_iterator(at, len, true).await;
    }
}

#[tokio::test]
async fn panicking_progress_callback() {
    for nested in [false, true] {
        let (db, mut client) = item_db(&format!("panic_progress_{nested}")).await;
        let len = 3 * COPY_BATCH;
        let rows: Vec<Item> = (0..len as i64).map(|k| item(k, "p")).collect();
        let mut calls = 0;
        if nested {
            let mut tx = client.transaction().await.unwrap();
            let r = AssertUnwindSafe(
                Item::bulk(&mut tx)
                    .on_progress(|_| {
                        calls += 1;
                        if calls == 2 {
                            panic!("progress panics");
                        }
                    })
                    .run(&rows),
            )
            .catch_panic()
            .await;
            assert!(r.is_err());
            let n: i64 = tx.query_one("SELECT count(*) FROM item", &[]).await.unwrap().get(0);
            assert_eq!(n, 0);
            let o = Item::bulk_create_new(&mut tx, &rows).await.unwrap();
            assert_eq!(o.inserted, len as u64);
            tx.commit().await.unwrap();
        } else {
            let r = AssertUnwindSafe(
                Item::bulk(&mut client)
                    .on_progress(|_| {
                        calls += 1;
                        if calls == 2 {
                            panic!("progress panics");
                        }
                    })
                    .run(&rows),
            )
            .catch_panic()
            .await;
            assert!(r.is_err());
            assert_eq!(count(&client, "item").await, 0);
            let o = Item::bulk_create_new(&mut client, &rows).await.unwrap();
            assert_eq!(o.inserted, len as u64);
        }
        assert_eq!(count(&client, "item").await, len as i64);
        db.drop().await;
    }
}

// ---------------------------------------------------------------------------
// Dropped futures: a timeout at many points of the call.

/// The batch of round `r`: `len` rows, new keys from `r * 1_000_000`, every
/// tenth repeated, plus the first 5 keys of the previous round (stored).
fn round_batch(r: i64, len: usize) -> (Vec<Item>, i64) {
    let base = r * 1_000_000;
    let mut rows: Vec<Item> = (0..len as i64).map(|i| item(base + i, "new")).collect();
    for i in (0..len as i64).step_by(10) {
        rows.push(item(base + i, "repeat"));
    }
    if r > 0 {
        for i in 0..5 {
            rows.push(item((r - 1) * 1_000_000 + i, "stored"));
        }
    }
    (rows, len as i64)
}

async fn stored_in_round(client: &Client, r: i64) -> i64 {
    client
        .query_one("SELECT count(*) FROM item WHERE k >= $1 AND k < $2", &[&(r * 1_000_000), &((r + 1) * 1_000_000)])
        .await
        .unwrap()
        .get(0)
}

/// Drops calls by timeouts spread over the length of a warm call (to 1.5
/// times it), on a `Client` or in a caller's transaction: a dropped call is
/// all or nothing, and the connection (or the transaction) takes the next
/// call with exact counts.
async fn drop_sweep(name: &str, len: usize, nested: bool, steps: u32) {
    let (db, mut client) = item_db(name).await;
    // Warm up, then measure a call like the sweep's (round 900: keys of
    // its own).
    Item::bulk_create_new(&mut client, &round_batch(0, len).0).await.unwrap();
    let (measured, _) = round_batch(900, len);
    let t = Instant::now();
    if nested {
        let mut tx = client.transaction().await.unwrap();
        Item::bulk_create_new(&mut tx, &measured).await.unwrap();
        tx.commit().await.unwrap();
    } else {
        Item::bulk_create_new(&mut client, &measured).await.unwrap();
    }
    let whole = t.elapsed();
    let mut dropped = 0;
    for step in 1..=steps {
        let r = i64::from(step);
        let (batch, distinct) = round_batch(r, len);
        let d = whole.mul_f64(f64::from(step) / f64::from(steps) * 1.5);
        if nested {
            let mut tx = client.transaction().await.unwrap();
            let before: i64 = tx.query_one("SELECT count(*) FROM item", &[]).await.unwrap().get(0);
            let res = tokio::time::timeout(d, Item::bulk_create_new(&mut tx, &batch)).await;
            let after: i64 = tx
                .query_one("SELECT count(*) FROM item", &[])
                .await
                .unwrap_or_else(|e| panic!("step {step} ({d:?}): the caller's transaction after the call: {e:?}"))
                .get(0);
            match res {
                Ok(Ok(o)) => {
                    assert_eq!((o.inserted, o.skipped), (distinct as u64, batch.len() as u64 - distinct as u64));
                    assert_eq!(after, before + distinct, "step {step}");
                }
                Ok(Err(e)) => panic!("step {step}: {e:?}"),
                Err(_) => {
                    dropped += 1;
                    assert!(
                        after == before || after == before + distinct,
                        "step {step} ({d:?}): half-written in the caller's transaction: {} of {distinct}",
                        after - before
                    );
                }
            }
            // The next call in the same transaction counts exactly.
            let o = Item::bulk_create_new(&mut tx, &batch)
                .await
                .unwrap_or_else(|e| panic!("step {step} ({d:?}): next call in the transaction: {e:?}"));
            let now: i64 = tx.query_one("SELECT count(*) FROM item", &[]).await.unwrap().get(0);
            assert_eq!(now, before + distinct, "step {step}");
            assert_eq!(o.inserted as i64, before + distinct - after, "step {step}");
            tx.commit().await.unwrap();
        } else {
            let before = count(&client, "item").await;
            let res = tokio::time::timeout(d, Item::bulk_create_new(&mut client, &batch)).await;
            let stored = stored_in_round(&client, r).await;
            match res {
                Ok(Ok(o)) => {
                    assert_eq!((o.inserted, o.skipped), (distinct as u64, batch.len() as u64 - distinct as u64));
                    assert_eq!(stored, distinct);
                }
                Ok(Err(e)) => panic!("step {step}: {e:?}"),
                Err(_) => {
                    dropped += 1;
                    assert!(
                        stored == 0 || stored == distinct,
                        "step {step} ({d:?}): half-written: {stored} of {distinct}"
                    );
                }
            }
            assert!(!in_tx(&client).await, "step {step}: no transaction left open");
            let o = Item::bulk_create_new(&mut client, &batch)
                .await
                .unwrap_or_else(|e| panic!("step {step} ({d:?}): next call: {e:?}"));
            assert_eq!(o.inserted as i64, distinct - stored, "step {step}");
            assert_eq!(count(&client, "item").await, before + distinct, "step {step}");
        }
        // The previous round's rows are of no more use (this round's batch
        // repeated some): the table stays small, and the calls as long.
        client
            .execute("DELETE FROM item WHERE k >= $1 AND k < $2", &[&((r - 1) * 1_000_000), &(r * 1_000_000)])
            .await
            .unwrap();
    }
    assert!(dropped > 0, "{name}: no call of {steps} was dropped (a call takes {whole:?})");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_short_call_on_a_client() {
    drop_sweep("drop_short_client", 1_000, false, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_copy_call_on_a_client() {
    drop_sweep("drop_copy_client", COPY_BATCH, false, 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_short_call_in_a_transaction() {
    drop_sweep("drop_short_tx", 1_000, true, 80).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_copy_call_in_a_transaction() {
    drop_sweep("drop_copy_tx", COPY_BATCH, true, 40).await;
}

// ---------------------------------------------------------------------------
// Float keys: NaN equals NaN, -0.0 equals 0.0 in PostgreSQL.

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "fkey", unique(x))]
struct FKey {
    x: f64,
    tag: String,
}

async fn float_keys(pad: usize) {
    let db = TestDb::new(&format!("float_{pad}")).await;
    let mut client = db.connect().await;
    client.batch_execute(&FKey::model().migration_sql()).await.unwrap();
    let nan2 = f64::from_bits(f64::NAN.to_bits() ^ 1); // another NaN payload
    let neg_nan = -f64::NAN;
    let filler = |from: usize| (from..from + pad).map(|i| FKey { x: 1e9 + i as f64, tag: "filler".into() });
    let batch: Vec<FKey> = [
        FKey { x: -0.0, tag: "negzero".into() },
        FKey { x: f64::NAN, tag: "nan".into() },
        FKey { x: 0.0, tag: "zero".into() },
        FKey { x: nan2, tag: "nan2".into() },
        FKey { x: neg_nan, tag: "negnan".into() },
        FKey { x: f64::INFINITY, tag: "inf".into() },
        FKey { x: f64::NEG_INFINITY, tag: "-inf".into() },
    ]
    .into_iter()
    .chain(filler(0))
    .collect();
    let o = FKey::bulk_create_new(&mut client, &batch).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (4 + pad as u64, 3), "{o:?}");
    let tags: Vec<String> = client
        .query("SELECT tag FROM fkey WHERE tag <> 'filler' ORDER BY x", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tags, ["-inf", "negzero", "inf", "nan"], "first offered of each key");

    // returning_skipped / returning_keys on the same batch again plus new keys.
    let batch2: Vec<FKey> = [
        FKey { x: 0.0, tag: "z2".into() },
        FKey { x: nan2, tag: "n2".into() },
        FKey { x: 5.5, tag: "new".into() },
        FKey { x: 5.5, tag: "new-repeat".into() },
        FKey { x: -0.0, tag: "nz2".into() },
    ]
    .into_iter()
    .chain(filler(pad))
    .collect();
    let r = FKey::bulk(&mut client).returning_skipped().run(&batch2).await.unwrap();
    let mut skipped: Vec<usize> = r.returned.clone();
    skipped.sort_unstable();
    assert_eq!(skipped, vec![0, 1, 3, 4], "{r:?}");
    assert_eq!(r.inserted, 1 + pad as u64);
    let batch3: Vec<FKey> = [
        FKey { x: -7.0, tag: "a".into() },
        FKey { x: f64::NAN, tag: "n".into() },
        FKey { x: -0.0, tag: "b".into() },
        FKey { x: 0.0, tag: "c".into() },
    ]
    .into_iter()
    .chain(filler(2 * pad))
    .collect();
    client.batch_execute("DELETE FROM fkey WHERE x = 0 OR x = 'NaN'").await.unwrap();
    let r = FKey::bulk(&mut client).returning_keys().run(&batch3).await.unwrap();
    let mut got: Vec<(usize, u64)> = r.returned.iter().map(|n| (n.index, n.key.0.to_bits())).collect();
    got.sort_unstable();
    assert_eq!(&got[..3], &[(0, (-7.0f64).to_bits()), (1, f64::NAN.to_bits()), (2, (-0.0f64).to_bits())], "{got:?}");
    assert_eq!(r.inserted, 3 + pad as u64);

    // Upsert keep last over equal float keys.
    let batch4: Vec<FKey> = [
        FKey { x: 0.0, tag: "u1".into() },
        FKey { x: f64::NAN, tag: "u2".into() },
        FKey { x: -0.0, tag: "u3".into() },
        FKey { x: nan2, tag: "u4".into() },
    ]
    .into_iter()
    .chain(filler(3 * pad))
    .collect();
    let r = FKey::bulk(&mut client).upsert(Upsert::columns(["tag"]).keep(Keep::Last)).run(&batch4).await.unwrap();
    assert_eq!((r.updated, r.skipped), (2, 2), "{r:?}");
    let z: String = client.query_one("SELECT tag FROM fkey WHERE x = 0", &[]).await.unwrap().get(0);
    let n: String = client.query_one("SELECT tag FROM fkey WHERE x = 'NaN'", &[]).await.unwrap().get(0);
    assert_eq!((z.as_str(), n.as_str()), ("u3", "u4"));
    db.drop().await;
}

#[tokio::test]
async fn float_keys_nan_and_negative_zero() {
    float_keys(0).await;
}

#[tokio::test]
async fn float_keys_nan_and_negative_zero_through_copy() {
    float_keys(COPY_BATCH).await;
}

// ---------------------------------------------------------------------------
// Server-refused values at batch positions around the path boundary.

#[derive(BulkType, Debug, Clone, Copy, PartialEq)]
#[bulk(type = "edge_mood")]
enum Mood {
    Happy,
    Sad,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "edge", unique(k))]
struct Edge {
    k: i64,
    day: chrono::NaiveDate,
    mood: Mood,
    doc: serde_json::Value,
    #[bulk(sql_type = "varchar(5)")]
    code: String,
    amount: rust_decimal::Decimal,
}

fn edge(k: i64) -> Edge {
    Edge {
        k,
        day: chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
        mood: Mood::Happy,
        doc: serde_json::json!({"a": 1}),
        code: "abc".into(),
        amount: rust_decimal::Decimal::new(12345, 2),
    }
}

async fn edge_db(name: &str) -> (TestDb, Client) {
    let db = TestDb::new(name).await;
    let client = db.connect().await;
    client
        .batch_execute(
            "CREATE TYPE edge_mood AS ENUM ('happy', 'sad');
             CREATE TABLE edge (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, k bigint NOT NULL UNIQUE,
               day date NOT NULL, mood edge_mood NOT NULL, doc jsonb NOT NULL, code varchar(5) NOT NULL,
               amount numeric(7, 2) NOT NULL)",
        )
        .await
        .unwrap();
    (db, client)
}

#[tokio::test]
async fn server_refused_values_name_the_row_around_the_boundary() {
    let (db, mut client) = edge_db("edge_rows").await;
    type Spoil = fn(&mut Edge);
    // (A date before 4714 BC is refused by the client; an enum label the
    // type lacks, by the schema check before any row: see
    // `types_at_the_edges.rs`.)
    let spoilers: [(&str, Spoil); 4] = [
        ("day", |e| e.day = chrono::NaiveDate::from_ymd_opt(-5000, 1, 1).unwrap()),
        ("doc", |e| e.doc = serde_json::json!({"a": "x\u{0}y"})),
        ("code", |e| e.code = "toolong".into()),
        ("amount", |e| e.amount = rust_decimal::Decimal::new(123_456_789, 2)),
    ];
    let mut failures = Vec::new();
    for (field, spoil) in spoilers {
        for (at, len) in
            [(4_999usize, 5_000usize), (4_999, 6_000), (5_000, 6_000), (5_001, 6_000), (20_000, 25_000), (3, 10)]
        {
            let rows = (0..len).map(|i| {
                let mut e = edge(i as i64);
                if i == at {
                    spoil(&mut e);
                }
                e
            });
            let err = Edge::bulk_create_new(&mut client, rows).await.unwrap_err();
            let n = count(&client, "edge").await;
            assert_eq!(n, 0, "{field} at {at} of {len}: nothing written");
            assert!(err.connection_usable(), "{err}");
            let copy_step = err.step() == Some(bulk_runtime::Step::Copy);
            if len >= 5_000 && copy_step && (err.row(), err.field()) != (Some(at), Some(field)) {
                failures.push(format!("{field} at {at}/{len}: row {:?} field {:?}: {err}", err.row(), err.field()));
            }
            if len < 5_000 && err.row().is_some_and(|r| r != at) {
                failures.push(format!("short {field} at {at}/{len}: names row {:?}: {err}", err.row()));
            }
        }
    }
    let o = Edge::bulk_create_new(&mut client, (0..6_000).map(edge)).await.unwrap();
    assert_eq!(o.inserted, 6_000);
    db.drop().await;
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------
// Dropped futures at every await point, deterministically: the call is
// polled until it has returned `Pending` `k` times (a request is out and its
// answer awaited), then dropped.

struct DropAfter<F> {
    fut: std::pin::Pin<Box<F>>,
    pendings: usize,
    limit: usize,
}

impl<F: std::future::Future> std::future::Future for DropAfter<F> {
    type Output = Option<F::Output>;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        match self.fut.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => {
                self.pendings += 1;
                if self.pendings >= self.limit { std::task::Poll::Ready(None) } else { std::task::Poll::Pending }
            }
        }
    }
}

/// `fut`, dropped once it has returned `Pending` `limit` times: `None`, or
/// `Some` of its output if it completed before.
fn drop_after<F: std::future::Future>(limit: usize, fut: F) -> DropAfter<F> {
    DropAfter { fut: Box::pin(fut), pendings: 0, limit }
}

#[derive(Clone, Copy, Debug)]
enum Variant {
    Plain,
    Upsert,
    Keys,
    Skipped,
    BatchId,
}

const VARIANTS: [Variant; 5] = [Variant::Plain, Variant::Upsert, Variant::Keys, Variant::Skipped, Variant::BatchId];

/// A call of `variant` on `conn`, dropped after `k` pendings: `None`, or
/// `Some` of its inserted count (or error) if it completed before.
async fn call_dropped_after<C: Connection + ?Sized>(
    variant: Variant,
    k: usize,
    conn: &mut C,
    batch: &[Item],
    id: &str,
) -> Option<Result<u64, Error>> {
    match variant {
        Variant::Plain => drop_after(k, Item::bulk_create_new(conn, batch)).await.map(|r| r.map(|o| o.inserted)),
        Variant::Upsert => drop_after(k, Item::bulk(conn).upsert(Upsert::columns(["note"])).run(batch))
            .await
            .map(|r| r.map(|o| o.inserted)),
        Variant::Keys => {
            drop_after(k, Item::bulk(conn).returning_keys().run(batch)).await.map(|r| r.map(|o| o.inserted))
        }
        Variant::Skipped => {
            drop_after(k, Item::bulk(conn).returning_skipped().run(batch)).await.map(|r| r.map(|o| o.inserted))
        }
        Variant::BatchId => {
            drop_after(k, Item::bulk(conn).batch_id(id.to_owned()).run(batch)).await.map(|r| r.map(|o| o.inserted))
        }
    }
}

/// A table `item` with a ledger; `client` warmed up on both paths and round
/// 0 of `len` rows stored.
async fn drop_points_db(name: &str, len: usize) -> (TestDb, Client) {
    let (db, mut client) = item_db(name).await;
    client.batch_execute(&bulk_runtime::Ledger::of::<Item>().migration_sql()).await.unwrap();
    warm_up(&mut client, len).await;
    (db, client)
}

async fn warm_up(client: &mut Client, len: usize) {
    Item::bulk_create_new(client, (0..COPY_BATCH as i64).map(|k| item(-1 - k, "warm"))).await.unwrap();
    Item::bulk_create_new(client, [item(-1_000_000, "warm")]).await.unwrap();
    Item::bulk_create_new(client, &round_batch(0, len).0).await.unwrap();
}

/// What ends a call's savepoint when the call succeeds (sent on its own,
/// as the call's last request).
const RELEASE: &str = "RELEASE SAVEPOINT bulk_create_new";

/// Sweeps the drop point over every await of one call inside a caller's
/// transaction (a fresh one per drop point, then committed), on a connection
/// through a proxy that records the statements sent. A dropped call is all
/// or nothing there: the caller's transaction holds either none of its rows
/// (the savepoint rolled back) or all of them, and all only when the call
/// was dropped once its savepoint's release was sent, that is at its very
/// last await. Either way the transaction takes the next call with exact
/// counts.
///
/// (The last await is told by the statements sent, not by the drop point:
/// how many times a call returns `Pending` depends on how its answers arrive,
/// so a call dropped after `k` pendings may be at its last await in one
/// round and complete after `k + 1` or `k + 2` in the next.)
async fn drop_points_in_tx(variant: Variant, len: usize) {
    let (db, _) = drop_points_db(&format!("dp_tx_{variant:?}_{len}").to_lowercase(), len).await;
    let recorder = SqlRecorder::start().await;
    let mut client = recorder.connect(&db.schema).await;
    // Named as the test's sessions, so that a failed test's cleanup ends it.
    let name = db.config().get_application_name().unwrap().to_owned();
    client.execute("SELECT set_config('application_name', $1, false)", &[&name]).await.unwrap();
    warm_up(&mut client, len).await;
    // For each drop point: the rows the dropped call left, of how many, and
    // whether it had sent its release.
    let mut left: Vec<(usize, i64, i64, bool)> = Vec::new();
    let mut k_done = None;
    for k in 1..400usize {
        let r = k as i64;
        let (batch, distinct) = round_batch(r, len);
        let mut tx = client.transaction().await.unwrap();
        let before: i64 = tx.query_one("SELECT count(*) FROM item", &[]).await.unwrap().get(0);
        let id = format!("batch {k}");
        let sent_before = recorder.statements().len();
        let outcome = call_dropped_after(variant, k, &mut tx, &batch, &id).await;
        let after: i64 = tx
            .query_one("SELECT count(*) FROM item", &[])
            .await
            .unwrap_or_else(|e| panic!("{variant:?} k={k}: the caller's transaction after the drop: {e:?}"))
            .get(0);
        // (The connection sends requests in order: the call's, then the
        // rollback its drop queued, then the count, all recorded by now.)
        let sent = recorder.statements().split_off(sent_before);
        let released = sent.iter().position(|s| s == RELEASE).map(|at| &sent[at + 1..]);
        if let Some(then) = released {
            // Sent as the call's last request: its answer was the last await.
            assert_eq!(then, ["SELECT count(*) FROM item"], "{variant:?} k={k}: sent after the release");
        }
        let released = released.is_some();
        match outcome {
            Some(Ok(inserted)) => {
                assert_eq!(inserted as i64, distinct, "{variant:?} k={k}");
                assert_eq!(after, before + distinct, "{variant:?} k={k}");
                assert!(released, "{variant:?} k={k}: the completed call released its savepoint");
                k_done = Some(k);
            }
            Some(Err(e)) => panic!("{variant:?} k={k}: {e:?}"),
            None => left.push((k, after - before, distinct, released)),
        }
        // The transaction takes the next call, with exact counts.
        let o = Item::bulk_create_new(&mut tx, &batch)
            .await
            .unwrap_or_else(|e| panic!("{variant:?} k={k}: next call in the transaction: {e:?}"));
        assert_eq!(o.inserted as i64, before + distinct - after, "{variant:?} k={k}");
        let now: i64 = tx.query_one("SELECT count(*) FROM item", &[]).await.unwrap().get(0);
        assert_eq!(now, before + distinct, "{variant:?} k={k}");
        tx.commit().await.unwrap();
        if k_done.is_some() {
            break;
        }
    }
    let k_done = k_done.unwrap_or_else(|| panic!("{variant:?}, {len} rows: the call never completed"));
    assert!(k_done > 1, "{variant:?}, {len} rows: no drop point before the call completed");
    for &(k, rows, distinct, released) in &left {
        assert!(
            rows == 0 || rows == distinct,
            "{variant:?}, {len} rows, dropped after {k} pendings: {rows} of {distinct} rows in the caller's transaction"
        );
        assert!(
            rows == 0 || released,
            "{variant:?}, {len} rows, dropped after {k} pendings (first completed after {k_done}): its {rows} rows \
             are in the caller's transaction, though it had not sent its savepoint's release"
        );
        assert!(
            rows == distinct || !released,
            "{variant:?}, {len} rows, dropped after {k} pendings (first completed after {k_done}): it had sent its \
             savepoint's release, yet {rows} of its {distinct} rows are in the caller's transaction"
        );
    }
    db.drop().await;
}

#[tokio::test]
async fn a_call_dropped_in_a_transaction_is_all_or_nothing_short() {
    for v in VARIANTS {
        drop_points_in_tx(v, 300).await;
    }
}

#[tokio::test]
async fn a_call_dropped_in_a_transaction_is_all_or_nothing_through_copy() {
    for v in VARIANTS {
        drop_points_in_tx(v, COPY_BATCH).await;
    }
}

/// The same sweep on a `Client`: a dropped call is all or nothing, leaves
/// no transaction open, and the client takes the next call with exact counts
/// (with a batch id, a rerun of a dropped call that committed reports the
/// recorded counts as replayed).
async fn drop_points_on_client(variant: Variant, len: usize) {
    let (db, mut client) = drop_points_db(&format!("dp_cl_{variant:?}_{len}").to_lowercase(), len).await;
    let mut k_done = None;
    for k in 1..400usize {
        let r = k as i64;
        let (batch, distinct) = round_batch(r, len);
        let before = count(&client, "item").await;
        let id = format!("batch {k}");
        let outcome = call_dropped_after(variant, k, &mut client, &batch, &id).await;
        let stored = stored_in_round(&client, r).await;
        assert!(!in_tx(&client).await, "{variant:?} k={k}: no transaction left open");
        match outcome {
            Some(Ok(inserted)) => {
                assert_eq!(inserted as i64, distinct, "{variant:?} k={k}");
                k_done = Some(k);
            }
            Some(Err(e)) => panic!("{variant:?} k={k}: {e:?}"),
            None => {
                assert!(stored == 0 || stored == distinct, "{variant:?} k={k}: half-written {stored} of {distinct}");
            }
        }
        let o = match variant {
            Variant::BatchId => Item::bulk(&mut client).batch_id(id.clone()).run(&batch).await,
            _ => Item::bulk_create_new(&mut client, &batch).await,
        }
        .unwrap_or_else(|e| panic!("{variant:?} k={k}: next call: {e:?}"));
        if matches!(variant, Variant::BatchId) && stored != 0 {
            assert!(o.replayed, "{variant:?} k={k}: the dropped call committed: replayed");
            assert_eq!(o.inserted as i64, distinct, "{variant:?} k={k}: the recorded counts");
        } else {
            assert_eq!(o.inserted as i64, distinct - stored, "{variant:?} k={k}");
        }
        assert_eq!(count(&client, "item").await, before + distinct, "{variant:?} k={k}");
        if k_done.is_some() {
            break;
        }
    }
    assert!(k_done.is_some(), "{variant:?}, {len} rows: the call never completed");
    db.drop().await;
}

#[tokio::test]
async fn a_call_dropped_on_a_client_is_all_or_nothing_short() {
    for v in VARIANTS {
        drop_points_on_client(v, 300).await;
    }
}

#[tokio::test]
async fn a_call_dropped_on_a_client_is_all_or_nothing_through_copy() {
    for v in VARIANTS {
        drop_points_on_client(v, COPY_BATCH).await;
    }
}

// ---------------------------------------------------------------------------
// `returning_keys_with`: "the callback runs before the commit: if the call
// then fails, nothing was written".

/// How many rows of key `k` another session sees in `schema`, asked from a
/// thread of its own (the callback that asks cannot await).
fn visible_elsewhere(schema: String, k: i64) -> i64 {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let db = TestDb::existing(schema);
            let other = db.connect().await;
            other.query_one("SELECT count(*) FROM item WHERE k = $1", &[&k]).await.unwrap().get::<_, i64>(0)
        })
    })
    .join()
    .unwrap()
}

/// Returns (how many rows of the callback's first key another session saw
/// from inside the callback, how many rows of a second batch were stored
/// after its callback panicked at its first row).
async fn callback_before_commit(len: usize) -> (i64, i64) {
    let (db, mut client) = item_db(&format!("keys_with_{len}")).await;
    Item::bulk_create_new(&mut client, [item(-1, "warm")]).await.unwrap();
    let batch: Vec<Item> = (0..len as i64).map(|k| item(k, "n")).collect();
    let schema = db.schema.clone();
    let mut seen_by_other = -1;
    let mut first = true;
    let _ = Item::bulk(&mut client)
        .returning_keys_with(|row| {
            if first {
                first = false;
                seen_by_other = visible_elsewhere(schema.clone(), row.key.0);
            }
        })
        .run(&batch)
        .await
        .unwrap();
    // And a callback that panics at its first row: the call does not complete.
    let batch2: Vec<Item> = (0..len as i64).map(|k| item(1_000_000 + k, "p")).collect();
    let r = AssertUnwindSafe(Item::bulk(&mut client).returning_keys_with(|_| panic!("callback panics")).run(&batch2))
        .catch_panic()
        .await;
    assert!(r.is_err());
    let stored = client.query_one("SELECT count(*) FROM item WHERE k >= 1000000", &[]).await.unwrap().get::<_, i64>(0);
    db.drop().await;
    (seen_by_other, stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_keys_with_callback_runs_before_the_commit() {
    let copy = callback_before_commit(COPY_BATCH).await;
    let short = callback_before_commit(300).await;
    // (rows another session saw from inside the callback, rows stored after
    // a callback that panicked)
    assert_eq!(copy, (0, 0), "COPY path: the callback ran after the commit");
    assert_eq!(short, (0, 0), "short path: the callback ran after the commit");
}

// ---------------------------------------------------------------------------
// A stream that stalls mid-COPY, dropped by a timeout.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_dropped_by_a_timeout() {
    use futures_util::StreamExt;
    let (db, mut client) = item_db("stall").await;
    for nested in [false, true] {
        for stall_at in [10usize, 4_999, 5_000, 7_000] {
            let rows = futures_util::stream::iter(0..stall_at as i64)
                .map(|k| item(k, "s"))
                .chain(futures_util::stream::pending());
            if nested {
                let mut tx = client.transaction().await.unwrap();
                let r = tokio::time::timeout(Duration::from_millis(300), Item::bulk(&mut tx).run_stream(rows)).await;
                assert!(r.is_err());
                let n: i64 = tx.query_one("SELECT count(*) FROM item", &[]).await.unwrap().get(0);
                assert_eq!(n, 0, "{stall_at} nested");
                let o = Item::bulk_create_new(&mut tx, (0..10).map(|k| item(k, "t"))).await.unwrap();
                assert_eq!(o.inserted, 10);
                tx.rollback().await.unwrap();
            } else {
                let r =
                    tokio::time::timeout(Duration::from_millis(300), Item::bulk(&mut client).run_stream(rows)).await;
                assert!(r.is_err());
                assert!(!in_tx(&client).await);
                assert_eq!(count(&client, "item").await, 0, "{stall_at}");
            }
            let o = Item::bulk_create_new(&mut client, (0..COPY_BATCH as i64).map(|k| item(k, "t"))).await.unwrap();
            assert_eq!(o.inserted, COPY_BATCH as u64);
            client.batch_execute("DELETE FROM item").await.unwrap();
        }
    }
    db.drop().await;
}

// ---------------------------------------------------------------------------
// A new connection's first call (no check), dropped at every await point.

#[tokio::test]
async fn a_first_call_dropped_is_all_or_nothing() {
    let (db, mut client) = item_db("first_drop").await;
    // The process passes a check of the model.
    Item::bulk_create_new(&mut client, [item(-1, "warm")]).await.unwrap();
    for len in [3usize, 40, 200] {
        let mut completed = false;
        for k in 1..40usize {
            let base = (len * 1000 + k) as i64 * 1000;
            let batch: Vec<Item> = (0..len as i64).map(|i| item(base + i, "f")).collect();
            let mut fresh = db.connect().await;
            let out = drop_after(k, Item::bulk_create_new(&mut fresh, &batch)).await;
            let stored: i64 = fresh
                .query_one("SELECT count(*) FROM item WHERE k >= $1 AND k < $2", &[&base, &(base + 1000)])
                .await
                .unwrap()
                .get(0);
            assert!(!in_tx(&fresh).await, "len {len} k {k}");
            let finished = out.is_some();
            match out {
                Some(r) => {
                    assert_eq!(r.unwrap().inserted, len as u64);
                    assert_eq!(stored, len as i64);
                }
                None => assert!(stored == 0 || stored == len as i64, "len {len} k {k}: {stored}"),
            }
            let o = Item::bulk_create_new(&mut fresh, &batch).await.unwrap();
            assert_eq!(o.inserted as i64, len as i64 - stored, "len {len} k {k}");
            if finished {
                completed = true;
                break;
            }
        }
        assert!(completed, "len {len}: the call never completed");
    }
    db.drop().await;
}

// ---------------------------------------------------------------------------
// A bytea value larger than PostgreSQL can hold (1 GB).

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "blob", unique(k))]
struct Blob {
    k: i64,
    data: Vec<u8>,
}

/// A value over the 1,073,741,819 bytes PostgreSQL takes in one field is
/// refused on the client, naming its row and field, before anything is sent
/// (sent, it would be refused by the server, or close the connection).
#[tokio::test]
async fn a_value_over_one_gigabyte_is_a_clear_error() {
    let db = TestDb::new("huge").await;
    let mut client = db.connect().await;
    client.batch_execute(&Blob::model().migration_sql()).await.unwrap();
    let huge = vec![7u8; (1 << 30) + 16];
    let batch = vec![
        Blob { k: 1, data: vec![1, 2, 3] },
        Blob { k: 2, data: vec![4] },
        Blob { k: 3, data: huge },
        Blob { k: 4, data: vec![5] },
    ];
    let err = Blob::bulk_create_new(&mut client, &batch).await.unwrap_err();
    drop(batch);
    assert!(matches!(err, Error::InvalidValue { row: 2, field: "data", .. }), "refused on the client: {err:?}");
    assert_eq!((err.row(), err.field()), (Some(2), Some("data")), "names the row and field: {err}");
    assert!(err.to_string().contains("1 GB"), "says why: {err}");
    assert!(!err.is_retryable(), "bad input is not retryable: {err}");
    assert!(err.connection_usable(), "nothing was sent: {err}");
    assert!(!client.is_closed());
    assert_eq!(count(&client, "blob").await, 0, "nothing written");
    let fresh = db.connect().await;
    assert_eq!(count(&fresh, "blob").await, 0, "nothing written");
    // The same connection takes a normal batch.
    let o = Blob::bulk_create_new(&mut client, (1..=4).map(|k| Blob { k, data: vec![k as u8] })).await.unwrap();
    assert_eq!(o.inserted, 4);
    assert_eq!(count(&fresh, "blob").await, 4);
    db.drop().await;
}

// ---------------------------------------------------------------------------
// Repeats across the 5,000-row head, and NULL vs empty string in a nullable key.

#[tokio::test]
async fn repeats_across_the_head_boundary() {
    let (db, mut client) = item_db("repeats_boundary").await;
    // Keys 0..6000, but rows 4999, 5000, 5001 and 5999 (on both sides of the
    // head: the first 5,000 rows, which the call reads to pick its path)
    // repeat key 7.
    let mut batch: Vec<Item> = (0..6_000i64).map(|k| item(k, &format!("first {k}"))).collect();
    for at in [4_999usize, 5_000, 5_001, 5_999] {
        batch[at] = item(7, &format!("repeat at {at}"));
    }
    let report = Item::bulk(&mut client).returning_skipped().run(&batch).await.unwrap();
    assert_eq!(report.returned, vec![4_999, 5_000, 5_001, 5_999]);
    let note: String = client.query_one("SELECT note FROM item WHERE k = 7", &[]).await.unwrap().get(0);
    assert_eq!(note, "first 7");
    let report = Item::bulk(&mut client).upsert(Upsert::columns(["note"]).keep(Keep::Last)).run(&batch).await.unwrap();
    assert_eq!((report.updated, report.skipped), (5_996, 4), "{report:?}");
    let note: String = client.query_one("SELECT note FROM item WHERE k = 7", &[]).await.unwrap().get(0);
    assert_eq!(note, "repeat at 5999");
    client.batch_execute("DELETE FROM item").await.unwrap();
    let report = Item::bulk(&mut client).returning_keys().run(&batch).await.unwrap();
    let idx: Vec<usize> = report.returned.iter().map(|n| n.index).collect();
    assert_eq!(idx.len(), 5_996);
    assert!(idx.contains(&7) && ![4_999, 5_000, 5_001, 5_999].iter().any(|i| idx.contains(i)));
    db.drop().await;
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "nkey", unique(a, b), nulls_not_distinct)]
struct NKey {
    a: Option<String>,
    b: i32,
    tag: String,
}

async fn null_vs_empty(pad: usize) {
    let db = TestDb::new(&format!("null_empty_{pad}")).await;
    let mut client = db.connect().await;
    client.batch_execute(&NKey::model().migration_sql()).await.unwrap();
    let filler = |from: usize| (from..from + pad).map(|i| NKey { a: Some(format!("f{i}")), b: 0, tag: "f".into() });
    let batch: Vec<NKey> = [
        NKey { a: None, b: 1, tag: "null".into() },
        NKey { a: Some(String::new()), b: 1, tag: "empty".into() },
        NKey { a: None, b: 1, tag: "null again".into() },
        NKey { a: Some(String::new()), b: 1, tag: "empty again".into() },
        NKey { a: Some(" ".into()), b: 1, tag: "space".into() },
    ]
    .into_iter()
    .chain(filler(0))
    .collect();
    let r = NKey::bulk(&mut client).returning_keys().run(&batch).await.unwrap();
    let mut got: Vec<(usize, Option<String>)> =
        r.returned.iter().filter(|n| n.index < 5).map(|n| (n.index, n.key.0.clone())).collect();
    got.sort();
    assert_eq!(got, vec![(0, None), (1, Some(String::new())), (4, Some(" ".into()))], "pad {pad}");
    let r = NKey::bulk(&mut client).returning_skipped().run(&batch).await.unwrap();
    assert_eq!(r.returned.len(), batch.len());
    let r = NKey::bulk(&mut client).upsert(Upsert::columns(["tag"]).keep(Keep::Last)).run(&batch).await.unwrap();
    assert_eq!((r.updated, r.skipped), (3 + pad as u64, 2), "{r:?}");
    let tags: Vec<String> = client
        .query("SELECT tag FROM nkey WHERE b = 1 ORDER BY a NULLS FIRST", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tags, ["null again", "empty again", "space"]);
    db.drop().await;
}

#[tokio::test]
async fn null_and_empty_string_in_a_nullable_key() {
    null_vs_empty(0).await;
    null_vs_empty(COPY_BATCH).await;
}
