//! Upsert, returning and batch-id edge cases:
//!
//! - a new row that a `BEFORE INSERT` trigger or a rounding column
//!   (`timestamptz(3)`) makes equal to the offered values of a key already
//!   stored is its own row: `upsert`, `returning_keys` and
//!   `returning_skipped` count it inserted, on both paths;
//! - batch ids whose jsonb holds integers beyond 64 bits tell batches apart;
//! - a batch crafted to collide with the old 64-bit fingerprint is refused
//!   (the fingerprint is now SHA-256);
//! - progress reports; `Keep::First` / `Keep::Last` across COPY chunks; odd
//!   batch ids; concurrent calls with one batch id; concurrent overlapping
//!   upserts; a batch id with the plain form's conflict fallback.

use bulk_runtime::{BulkCreateNew, Error, Json, Keep, Ledger, Progress, Report, Upsert};
use bulk_tests::{COPY_BATCH, TestDb, count, eventually};
use chrono::{DateTime, Utc};
use tokio_postgres::Client;

// ---------------------------------------------------------------------------
// A new row stored with the offered values of a stored key. README ("Keys a
// trigger changes"): triggers that leave the key alone change nothing, nor
// does a column outside the key that the table rounds: a stored row is
// matched to its offered row by its key. An upsert always meets stored keys,
// so this is its ordinary case.
// ---------------------------------------------------------------------------

/// Key `k`; no id column.
#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "doc", unique(k), id = false)]
struct Doc {
    k: i64,
    body: String,
    updated_at: DateTime<Utc>,
}

fn at_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap()
}

/// A whole millisecond, in microseconds since the epoch.
const BASE: i64 = 1_700_000_000_123_000;

/// What makes the new key 1 stored with the values key 2 (stored) is offered with.
#[derive(Debug, Clone, Copy)]
enum Equalizer {
    /// `updated_at` is `timestamptz(3)`: key 1's `.123456` is stored as `.123`.
    Rounding,
    /// A `BEFORE INSERT` trigger sets `body` to `'new'`.
    Trigger,
}

impl Equalizer {
    fn name(self) -> &'static str {
        match self {
            Equalizer::Rounding => "rounding",
            Equalizer::Trigger => "trigger",
        }
    }

    /// Table `doc` holding key 2 with other values than it is offered with.
    async fn setup(self, name: &str) -> (TestDb, Client) {
        let db = TestDb::new(name).await;
        let client = db.connect().await;
        let ddl = match self {
            Equalizer::Rounding => {
                "CREATE TABLE doc (k bigint PRIMARY KEY, body text NOT NULL, updated_at timestamptz(3) NOT NULL);"
            }
            Equalizer::Trigger => {
                "CREATE TABLE doc (k bigint PRIMARY KEY, body text NOT NULL, updated_at timestamptz NOT NULL);
                 CREATE FUNCTION set_status() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN NEW.body := 'new'; RETURN NEW; END $$;
                 CREATE TRIGGER set_status BEFORE INSERT ON doc FOR EACH ROW EXECUTE FUNCTION set_status();"
            }
        };
        client.batch_execute(&format!("{ddl} INSERT INTO doc VALUES (2, 'old', '2020-01-01')")).await.unwrap();
        (db, client)
    }

    /// Key 1 (new) at position 0, key 2 (stored) at position 1, then `pad`
    /// new keys from 1000.
    fn batch(self, pad: usize) -> Vec<Doc> {
        let doc = |k: i64, body: &str, us: i64| Doc { k, body: body.to_owned(), updated_at: at_micros(us) };
        match self {
            Equalizer::Rounding => [doc(1, "same", BASE + 456), doc(2, "same", BASE)]
                .into_iter()
                .chain((0..pad as i64).map(|i| doc(1_000 + i, &format!("pad {i}"), BASE + 1_000)))
                .collect(),
            Equalizer::Trigger => [doc(1, "draft", BASE), doc(2, "new", BASE)]
                .into_iter()
                .chain((0..pad as i64).map(|i| doc(1_000 + i, "new", BASE + i)))
                .collect(),
        }
    }

    fn upsert(self) -> Upsert {
        match self {
            Equalizer::Rounding => Upsert::all_columns(),
            Equalizer::Trigger => Upsert::set([Doc::columns().body]),
        }
    }

    /// The stored `(body, updated_at)` of keys 1 and 2.
    async fn stored(client: &Client) -> Vec<(String, DateTime<Utc>)> {
        let rows = client.query("SELECT body, updated_at FROM doc WHERE k IN (1, 2) ORDER BY k", &[]).await.unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    }
}

async fn upsert_equal_to_offered(equalizer: Equalizer, pad: usize) {
    let (db, mut client) = equalizer.setup(&format!("upsert_equal_to_offered_{}_{pad}", equalizer.name())).await;
    let batch = equalizer.batch(pad);
    let r = Doc::bulk(&mut client).upsert(equalizer.upsert()).run(&batch).await;
    let r = r.unwrap_or_else(|e| panic!("{equalizer:?}, pad {pad}: upsert failed: {e}"));
    assert_eq!((r.inserted, r.updated), (1 + pad as u64, 1), "{equalizer:?}, pad {pad}: {r:?}");
    assert_eq!(count(&client, "doc").await, 2 + pad as i64);
    // Key 1 is stored with the values key 2 was offered with (the case this
    // is about); key 2 was updated.
    let stored = Equalizer::stored(&client).await;
    assert_eq!(stored[0].0, batch[1].body, "{equalizer:?}");
    assert_eq!(stored[1].0, batch[1].body, "{equalizer:?}");
    if let Equalizer::Rounding = equalizer {
        assert_eq!(stored[0].1, batch[1].updated_at);
        assert_eq!(stored[1].1, batch[1].updated_at);
    }
    db.drop().await;
}

async fn returning_equal_to_offered(equalizer: Equalizer, pad: usize) {
    let (db, mut client) = equalizer.setup(&format!("returning_equal_to_offered_{}_{pad}", equalizer.name())).await;
    let batch = equalizer.batch(pad);
    let keys = Doc::bulk(&mut client).returning_keys().run(&batch).await;
    let keys = keys.unwrap_or_else(|e| panic!("{equalizer:?}, pad {pad}: returning_keys failed: {e}"));
    assert_eq!(keys.inserted, 1 + pad as u64, "{equalizer:?}, pad {pad}");
    assert_eq!(keys.returned.len(), 1 + pad);
    assert_eq!((keys.returned[0].index, keys.returned[0].key.0), (0, 1), "{equalizer:?}, pad {pad}");
    let stored = Equalizer::stored(&client).await;
    assert_eq!(stored[0].0, batch[1].body, "{equalizer:?}");
    client.batch_execute("DELETE FROM doc WHERE k <> 2").await.unwrap();
    let skipped = Doc::bulk(&mut client).returning_skipped().run(&batch).await;
    let skipped = skipped.unwrap_or_else(|e| panic!("{equalizer:?}, pad {pad}: returning_skipped failed: {e}"));
    assert_eq!(skipped.returned, vec![1], "{equalizer:?}, pad {pad}");
    assert_eq!(skipped.inserted, 1 + pad as u64);
    db.drop().await;
}

#[tokio::test]
async fn upsert_new_row_rounded_equal_to_stored_keys_offered_row() {
    upsert_equal_to_offered(Equalizer::Rounding, 0).await;
}

#[tokio::test]
async fn upsert_new_row_rounded_equal_to_stored_keys_offered_row_through_copy() {
    upsert_equal_to_offered(Equalizer::Rounding, COPY_BATCH).await;
}

#[tokio::test]
async fn returning_new_row_rounded_equal_to_stored_keys_offered_row() {
    returning_equal_to_offered(Equalizer::Rounding, 0).await;
}

#[tokio::test]
async fn returning_new_row_rounded_equal_to_stored_keys_offered_row_through_copy() {
    returning_equal_to_offered(Equalizer::Rounding, COPY_BATCH).await;
}

#[tokio::test]
async fn upsert_new_row_a_trigger_makes_equal_to_stored_keys_offered_row() {
    upsert_equal_to_offered(Equalizer::Trigger, 0).await;
}

#[tokio::test]
async fn upsert_new_row_a_trigger_makes_equal_to_stored_keys_offered_row_through_copy() {
    upsert_equal_to_offered(Equalizer::Trigger, COPY_BATCH).await;
}

#[tokio::test]
async fn returning_new_row_a_trigger_makes_equal_to_stored_keys_offered_row() {
    returning_equal_to_offered(Equalizer::Trigger, 0).await;
}

#[tokio::test]
async fn returning_new_row_a_trigger_makes_equal_to_stored_keys_offered_row_through_copy() {
    returning_equal_to_offered(Equalizer::Trigger, COPY_BATCH).await;
}

// ---------------------------------------------------------------------------
// Batch ids: another batch under a used id is refused (BatchIdReused), never
// replayed, also when the batches differ only in jsonb integers beyond 64
// bits (a `Json<u128>`), which `serde_json` reads as the same `f64`.
// ---------------------------------------------------------------------------

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "big", unique(k))]
struct Big {
    k: i64,
    v: Json<u128>,
}

async fn big_integers(pad: usize) {
    let db = TestDb::new(&format!("batch_id_big_integers_{pad}")).await;
    let mut client = db.connect().await;
    client.batch_execute(&Big::model().migration_sql()).await.unwrap();
    client.batch_execute(&Ledger::of::<Big>().migration_sql()).await.unwrap();
    let batch =
        |v: u128| -> Vec<Big> { (0..1 + pad as i64).map(|k| Big { k, v: Json(v + k as u128 * 1_000_000) }).collect() };
    // Equal as f64.
    let a = 100_000_000_000_000_000_001u128;
    let b = 100_000_000_000_000_000_002u128;
    let first = Big::bulk(&mut client).batch_id("page 1").run(batch(a)).await.unwrap();
    assert_eq!((first.replayed, first.inserted), (false, 1 + pad as u64));
    let second = Big::bulk(&mut client).batch_id("page 1").run(batch(b)).await;
    assert!(matches!(second, Err(Error::BatchIdReused { .. })), "pad {pad}: {second:?}");
    // The table still holds the first batch only.
    let stored: Vec<(i64, String)> = client
        .query("SELECT k, v::text FROM big ORDER BY k", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(i64, String)> = batch(a).iter().map(|r| (r.k, r.v.0.to_string())).collect();
    assert!(stored == expected, "pad {pad}: the table does not hold the first batch alone");
    assert_eq!(count(&client, "bulk_batches").await, 1);
    db.drop().await;
}

#[tokio::test]
async fn batch_id_other_json_big_integers_are_another_batch() {
    big_integers(0).await;
}

#[tokio::test]
async fn batch_id_other_json_big_integers_are_another_batch_through_copy() {
    big_integers(COPY_BATCH).await;
}

// ---------------------------------------------------------------------------
// A batch crafted to collide with the fingerprint as it was (the crate's own
// unkeyed 64-bit multiply-xorshift): refused, since the fingerprint is now
// SHA-256.
// ---------------------------------------------------------------------------

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "note", unique(k))]
struct Note {
    k: i64,
    body: String,
}

/// The binary COPY encoding of `Note { k, body }` at position 0, as the
/// fingerprint reads it: the field count, the position, `k`, `body`.
fn note_row(k: i64, body: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&3i16.to_be_bytes());
    b.extend_from_slice(&8i32.to_be_bytes());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&8i32.to_be_bytes());
    b.extend_from_slice(&k.to_be_bytes());
    b.extend_from_slice(&(body.len() as i32).to_be_bytes());
    b.extend_from_slice(body.as_bytes());
    b
}

/// The old fingerprint's hash of a one-row batch (the runtime's code before
/// SHA-256): a multiply-xorshift over the row's length, its 8-byte
/// little-endian words and its zero-padded tail.
fn old_fingerprint(row: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, w: u64| {
        let h = (h ^ w).wrapping_mul(K);
        h ^ (h >> 29)
    };
    let mut h = mix(0x243f_6a88_85a3_08d3, row.len() as u64);
    let mut words = row.chunks_exact(8);
    for w in &mut words {
        h = mix(h, u64::from_le_bytes(w.try_into().unwrap()));
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    mix(h, u64::from_le_bytes(tail))
}

/// Two bodies whose rows (`k` = 1) collide under the old multiply-xorshift
/// 64-bit fingerprint ([`old_fingerprint`]): printable text differing in
/// bytes 2..18, the two words after the first chosen so that the hash state
/// after them is the same.
const COLLIDING_A: &str = "AAAAAAAAAAAAAAAAAAAAAAAA";
const COLLIDING_B: &str = r"AASXQTZXDXM}\'S9-WAAAAAA";

#[tokio::test]
async fn batch_id_old_fingerprint_collision_is_refused() {
    assert_ne!(COLLIDING_A, COLLIDING_B);
    assert_eq!(old_fingerprint(&note_row(1, COLLIDING_A)), old_fingerprint(&note_row(1, COLLIDING_B)));

    let db = TestDb::new("batch_id_collision").await;
    let mut client = db.connect().await;
    client.batch_execute(&Note::model().migration_sql()).await.unwrap();
    client.batch_execute(&Ledger::of::<Note>().migration_sql()).await.unwrap();
    let note = |body: &str| [Note { k: 1, body: body.to_owned() }];
    let first = Note::bulk(&mut client).batch_id("n").run(note(COLLIDING_A)).await.unwrap();
    assert_eq!((first.replayed, first.inserted), (false, 1));
    let second = Note::bulk(&mut client).batch_id("n").run(note(COLLIDING_B)).await;
    assert!(matches!(second, Err(Error::BatchIdReused { .. })), "{second:?}");
    // Nothing written: the first batch's row alone, one ledger row.
    let stored: Vec<(i64, String)> =
        client.query("SELECT k, body FROM note", &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(stored, vec![(1, COLLIDING_A.to_owned())]);
    assert_eq!(count(&client, "bulk_batches").await, 1);
    db.drop().await;
}

// ---------------------------------------------------------------------------
// Progress: reported finished once, at the end, with the report's counts, also
// on a replay and for upserts and returning_keys, on both paths.
// ---------------------------------------------------------------------------

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "item", unique(k))]
struct Item {
    k: i64,
    v: i64,
}

#[tokio::test]
async fn progress_final_report_matches_for_every_kind_and_replay() {
    let db = TestDb::new("progress_every_kind").await;
    let mut client = db.connect().await;
    client.batch_execute(&Item::model().migration_sql()).await.unwrap();
    client.batch_execute(&Ledger::of::<Item>().migration_sql()).await.unwrap();
    for n in [10usize, COPY_BATCH + 3] {
        let rows: Vec<Item> = (0..n as i64).map(|k| Item { k: k + n as i64 * 10, v: 1 }).collect();
        let check = |ps: &[Progress], r: &Report, what: &str| {
            let last = ps.last().unwrap_or_else(|| panic!("{what} n={n}: no progress"));
            assert!(last.finished, "{what} n={n}: {ps:?}");
            assert_eq!(ps.iter().filter(|p| p.finished).count(), 1, "{what} n={n}");
            assert_eq!((last.sent, last.inserted, last.updated), (r.offered, r.inserted, r.updated), "{what} n={n}");
            assert!(ps.windows(2).all(|w| w[0].sent <= w[1].sent), "{what} n={n}");
        };
        let mut ps = Vec::new();
        let r = Item::bulk(&mut client).batch_id(format!("a{n}")).on_progress(|p| ps.push(p)).run(&rows).await.unwrap();
        assert!(!r.replayed);
        check(&ps, &r, "first");
        let mut ps = Vec::new();
        let r = Item::bulk(&mut client).batch_id(format!("a{n}")).on_progress(|p| ps.push(p)).run(&rows).await.unwrap();
        assert!(r.replayed);
        check(&ps, &r, "replay");
        let mut ps = Vec::new();
        let r = Item::bulk(&mut client)
            .upsert(Upsert::all_columns())
            .on_progress(|p| ps.push(p))
            .run(rows.iter().map(|i| Item { v: 2, ..i.clone() }))
            .await
            .unwrap();
        assert_eq!(r.updated, n as u64);
        check(&ps, &r, "upsert");
        let mut ps = Vec::new();
        let r = Item::bulk(&mut client).returning_keys().on_progress(|p| ps.push(p)).run(&rows).await.unwrap();
        check(&ps, &r.outcome(), "returning_keys");
    }
    db.drop().await;
}

// ---------------------------------------------------------------------------
// Keep::First / Keep::Last with repeats far apart (across the 5,000-row
// boundary and several COPY chunks), and returning_skipped positions.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn keep_first_and_last_across_chunks() {
    let db = TestDb::new("keep_across_chunks").await;
    let mut client = db.connect().await;
    client.batch_execute(&Item::model().migration_sql()).await.unwrap();
    client.batch_execute("INSERT INTO item (k, v) VALUES (1, -1)").await.unwrap();
    let n = 30_000i64;
    // Key 1 (stored) at positions 0 and 5,000; key 2 (new) at 4,999 and
    // 29,999; every other key once. Each row's `v` is its position.
    let rows: Vec<Item> = (0..n)
        .map(|i| match i {
            0 | 4_999 | 5_000 | 29_999 => Item { k: 1 + (i % 2), v: i },
            _ => Item { k: 100 + i, v: i },
        })
        .collect();
    async fn v(client: &Client, k: i64) -> i64 {
        client.query_one("SELECT v FROM item WHERE k = $1", &[&k]).await.unwrap().get(0)
    }
    let r = Item::bulk(&mut client).upsert(Upsert::all_columns().keep(Keep::First)).run(&rows).await.unwrap();
    assert_eq!((r.inserted, r.updated, r.skipped), (n as u64 - 4 + 1, 1, 2));
    assert_eq!((v(&client, 1).await, v(&client, 2).await), (0, 4_999));
    let r = Item::bulk(&mut client).upsert(Upsert::all_columns().keep(Keep::Last)).run(&rows).await.unwrap();
    assert_eq!((r.inserted, r.updated, r.skipped), (0, n as u64 - 2, 2));
    assert_eq!((v(&client, 1).await, v(&client, 2).await), (5_000, 29_999));
    client.batch_execute("DELETE FROM item WHERE k <> 1").await.unwrap();
    let r = Item::bulk(&mut client).returning_skipped().run(&rows).await.unwrap();
    assert_eq!(r.returned, vec![0, 5_000, 29_999]);
    db.drop().await;
}

// ---------------------------------------------------------------------------
// Batch ids with odd characters, multibyte at the 512-byte limit, recorded
// and replayed (also inside a caller's transaction that is rolled back) in a
// custom ledger in another schema with odd names; one byte more is refused.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn odd_batch_ids_record_and_replay() {
    let db = TestDb::new("odd_batch_ids").await;
    let mut client = db.connect().await;
    client.batch_execute(&Item::model().migration_sql()).await.unwrap();
    let ledger_schema = format!("{} other", db.schema);
    let ledger = Ledger::new("Odd \"Ledger\"").in_schema(ledger_schema.as_str());
    client.batch_execute(&ledger.migration_sql()).await.unwrap();
    let ids = [
        "é".repeat(256),
        "'; DROP TABLE item; --".to_owned(),
        "%s %I $1 \\x00".to_owned(),
        " ".to_owned(),
        "\u{202e}tab\there\nnewline".to_owned(),
        "a".to_owned(),
        "A".to_owned(),
        "a ".to_owned(),
    ];
    for (i, id) in ids.iter().enumerate() {
        let rows: Vec<Item> = (0..5).map(|k| Item { k: i as i64 * 100 + k, v: 0 }).collect();
        let r = Item::bulk(&mut client).ledger(ledger.clone()).batch_id(id.as_str()).run(&rows).await.unwrap();
        assert_eq!((r.replayed, r.inserted), (false, 5), "{id:?}");
        let mut tx = client.transaction().await.unwrap();
        let again = Item::bulk(&mut tx).ledger(ledger.clone()).batch_id(id.as_str()).run(&rows).await.unwrap();
        assert_eq!((again.replayed, again.inserted), (true, 5), "{id:?}");
        tx.rollback().await.unwrap();
        let again = Item::bulk(&mut client).ledger(ledger.clone()).batch_id(id.as_str()).run(&rows).await.unwrap();
        assert_eq!((again.replayed, again.inserted), (true, 5), "{id:?}");
    }
    assert_eq!(count(&client, "item").await, 5 * ids.len() as i64);
    let too_long = "é".repeat(256) + "x";
    let err = Item::bulk(&mut client).ledger(ledger.clone()).batch_id(too_long).run([Item { k: 1, v: 1 }]).await;
    assert!(matches!(err, Err(Error::Usage { .. })), "{err:?}");
    let n: i64 =
        client.query_one(&format!("SELECT count(*) FROM {}", ledger.qualified_name()), &[]).await.unwrap().get(0);
    assert_eq!(n, ids.len() as i64);
    client.batch_execute(&format!("DROP SCHEMA {} CASCADE", bulk_runtime::quote_ident(&ledger_schema))).await.unwrap();
    db.drop().await;
}

// ---------------------------------------------------------------------------
// Concurrent upserts with one batch id (no caller transaction), on both
// paths: one call runs, the others replay its counts; nothing is counted or
// written twice.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn concurrent_same_batch_id_upserts() {
    let db = TestDb::new("concurrent_same_batch_id").await;
    let client = db.connect().await;
    client.batch_execute(&Item::model().migration_sql()).await.unwrap();
    client.batch_execute(&Ledger::of::<Item>().migration_sql()).await.unwrap();
    client.batch_execute("INSERT INTO item (k, v) SELECT g, 0 FROM generate_series(0, 99) g").await.unwrap();
    let rounds = [(0i64, 300usize), (1, COPY_BATCH), (2, 40), (3, COPY_BATCH * 2)];
    for (round, n) in rounds {
        // Keys 0..n (each once), in another order.
        let rows: Vec<Item> = (0..n as i64).map(|k| Item { k: k * 7 % n as i64, v: round + 1 }).collect();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let mut c = db.connect().await;
            let rows = rows.clone();
            tasks.push(tokio::spawn(async move {
                let up = Upsert::all_columns().only_if_changed();
                Item::bulk(&mut c).upsert(up).batch_id(format!("round {round}")).run(&rows).await
            }));
        }
        let mut reports = Vec::new();
        for t in tasks {
            reports.push(t.await.unwrap().unwrap());
        }
        let fresh: Vec<_> = reports.iter().filter(|r| !r.replayed).collect();
        assert_eq!(fresh.len(), 1, "round {round}: {reports:?}");
        for r in &reports {
            assert_eq!(r.outcome(), Report { replayed: r.replayed, ..fresh[0].outcome() }, "round {round}");
            assert_eq!(r.offered, r.inserted + r.updated + r.unchanged + r.skipped);
        }
        let written: i64 = client
            .query_one("SELECT count(*) FROM item WHERE k < $1 AND v = $2", &[&(n as i64), &(round + 1)])
            .await
            .unwrap()
            .get(0);
        assert_eq!(written, n as i64, "round {round}");
    }
    assert_eq!(count(&client, "bulk_batches").await, rounds.len() as i64);
    db.drop().await;
}

// ---------------------------------------------------------------------------
// Concurrent overlapping upserts with only_if_changed: each key is counted
// inserted by exactly one call, so the inserted counts add up to the rows
// stored.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn concurrent_upserts_inserted_sum_matches() {
    let db = TestDb::new("concurrent_upserts").await;
    let client = db.connect().await;
    client.batch_execute(&Item::model().migration_sql()).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..4i64 {
        let mut c = db.connect().await;
        tasks.push(tokio::spawn(async move {
            let mut inserted = 0;
            for round in 0..4i64 {
                let len = if (w + round) % 2 == 0 { 700 } else { COPY_BATCH as i64 };
                let start = round * 300 + w * 50;
                let mut rows: Vec<Item> = (start..start + len).map(|k| Item { k, v: (k + w) % 3 }).collect();
                if w % 2 == 1 {
                    rows.reverse();
                }
                let r = Item::bulk(&mut c).upsert(Upsert::all_columns().only_if_changed()).run(&rows).await.unwrap();
                assert_eq!(r.offered, r.inserted + r.updated + r.unchanged + r.skipped);
                assert_eq!(r.skipped, 0);
                inserted += r.inserted;
            }
            inserted
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(count(&client, "item").await as u64, total);
    db.drop().await;
}

// ---------------------------------------------------------------------------
// A batch id on a call whose plain form meets a key another writer stores
// meanwhile (the fallback to ON CONFLICT runs in a new attempt): exact
// counts, one ledger row with those counts, replayed alike.
// ---------------------------------------------------------------------------

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "fallback_item", unique(k))]
struct FallbackItem {
    k: i64,
    v: i64,
}

#[tokio::test]
async fn batch_id_with_plain_form_conflict_fallback() {
    let db = TestDb::new("batch_id_fallback").await;
    let mut client = db.connect().await;
    client.batch_execute(&FallbackItem::model().migration_sql()).await.unwrap();
    client.batch_execute(&Ledger::of::<FallbackItem>().migration_sql()).await.unwrap();
    for (round, n) in [(0i64, 200usize), (1, COPY_BATCH)] {
        let base = round * 1_000_000;
        let met = base + n as i64 / 2;
        let rows: Vec<FallbackItem> = (0..n as i64).map(|k| FallbackItem { k: base + k, v: 1 }).collect();
        let mut other = db.connect().await;
        let tx = other.transaction().await.unwrap();
        tx.execute("INSERT INTO fallback_item (k, v) VALUES ($1, 99)", &[&met]).await.unwrap();
        let mut c = db.connect().await;
        let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
        let id = format!("fb {round}");
        let task = tokio::spawn({
            let (rows, id) = (rows.clone(), id.clone());
            async move { FallbackItem::bulk(&mut c).batch_id(id).run(&rows).await }
        });
        // The call waits for the other writer's uncommitted key.
        let waiting = eventually(2_000, || {
            let client = &client;
            async move {
                client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'transactionid'",
                        &[&pid],
                    )
                    .await
                    .unwrap()
                    .get::<_, i64>(0)
                    == 1
            }
        })
        .await;
        assert!(waiting, "round {round}: the call never waited for the other writer's key");
        tx.commit().await.unwrap();
        let r = task.await.unwrap().unwrap();
        assert_eq!((r.replayed, r.inserted, r.skipped), (false, n as u64 - 1, 1), "round {round}");
        let again = FallbackItem::bulk(&mut client).batch_id(id).run(&rows).await.unwrap();
        assert!(again.replayed);
        assert_eq!((again.inserted, again.skipped), (n as u64 - 1, 1));
        let v: i64 = client.query_one("SELECT v FROM fallback_item WHERE k = $1", &[&met]).await.unwrap().get(0);
        assert_eq!(v, 99);
    }
    assert_eq!(count(&client, "fallback_item").await, (200 + COPY_BATCH) as i64);
    assert_eq!(count(&client, "bulk_batches").await, 2);
    db.drop().await;
}
