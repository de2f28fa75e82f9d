//! Regression tests of field types at their edges, key equality, collations
//! and type modifiers: every test runs a batch on the short path (under 128
//! rows, the `ON CONFLICT` form), the short path's plain form (128 rows and
//! more) and the COPY path (`COPY_BATCH` rows), and checks what README
//! promises: exact counts, the first offered row of a key wins, repeats
//! found as the table compares keys, key columns that round or convert the
//! model's values refused by the schema check, nothing written when a call
//! fails, and bad input (dates, timestamps and times outside PostgreSQL's
//! range, NUL bytes) refused on the client with its row and field.
//!
//! Each test works in a schema of its own (`TestDb`) and drops it at the end.

use bulk_runtime::{BulkCreateNew, BulkType, Error, Keep, SchemaProblem, Upsert};
use bulk_tests::{PADS, TestDb, count, path};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use rust_decimal::Decimal;
use serde_json::json;
use tokio_postgres::Client;

/// The `(key columns as text, pos)` stored rows that are not filler
/// (`pos >= 0`), ordered by pos.
async fn stored_positions(client: &Client, table: &str, key_sql: &str) -> Vec<(String, i32)> {
    client
        .query(&format!("SELECT ({key_sql})::text, pos FROM {table} WHERE pos >= 0 ORDER BY pos"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, Option<String>>(0).unwrap_or_else(|| "NULL".into()), r.get(1)))
        .collect()
}

async fn create_extension_citext(db: &TestDb) {
    let admin = db.connect_plain().await;
    if let Err(e) = admin.batch_execute("CREATE EXTENSION IF NOT EXISTS citext SCHEMA public").await {
        let there = admin.query_opt("SELECT 1 FROM pg_extension WHERE extname = 'citext'", &[]).await.unwrap();
        assert!(there.is_some(), "{e:?}");
    }
}

// ---------------------------------------------------------------------------
// Integer extremes in a packed (client-ordered) composite key, nullable too.

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "ints", unique(a, b, c), id = false)]
struct Ints {
    a: i16,
    b: i32,
    c: i64,
    pos: i32,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "nints", unique(a, c), nulls_not_distinct, id = false)]
struct NInts {
    a: Option<i16>,
    c: Option<i64>,
    pos: i32,
}

/// Keys of every combination of extremes, offered twice (in order, then
/// reversed, so the first offered is the earlier position); half stored
/// first. Exactly the new keys go in, each from its first offered row.
async fn int_extremes(pad: usize) {
    let db = TestDb::new(&format!("edge_ints_{pad}")).await;
    let mut client = db.connect().await;
    client.batch_execute(&Ints::model().migration_sql()).await.unwrap();
    client.batch_execute(&NInts::model().migration_sql()).await.unwrap();
    let a_vals = [i16::MIN, -1, 0, 1, i16::MAX];
    let b_vals = [i32::MIN, -1, 0, i32::MAX];
    let c_vals = [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX];
    let mut keys = Vec::new();
    for &a in &a_vals {
        for &b in &b_vals {
            for &c in &c_vals {
                keys.push((a, b, c));
            }
        }
    }
    let stored: Vec<Ints> = keys.iter().step_by(2).map(|&(a, b, c)| Ints { a, b, c, pos: -1 }).collect();
    Ints::bulk_create_new(&mut client, &stored).await.unwrap();
    let mut batch: Vec<Ints> = keys
        .iter()
        .chain(keys.iter().rev())
        .enumerate()
        .map(|(pos, &(a, b, c))| Ints { a, b, c, pos: pos as i32 })
        .collect();
    batch.extend((0..pad as i64).map(|i| Ints { a: 7, b: 7, c: 1_000_000 + i, pos: -2 }));
    let o = Ints::bulk_create_new(&mut client, &batch).await.unwrap();
    let new = keys.len() - stored.len();
    assert_eq!((o.inserted, o.skipped), ((new + pad) as u64, (batch.len() - new - pad) as u64), "{}", path(pad));
    let got = stored_positions(&client, "ints", "a, b, c").await;
    let want: Vec<(String, i32)> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(i, &(a, b, c))| (format!("({a},{b},{c})"), i as i32))
        .collect();
    assert_eq!(got, want, "{}", path(pad));

    // Nullable, NULLS NOT DISTINCT: NULL beside the extremes.
    let nkeys: Vec<(Option<i16>, Option<i64>)> = [None, Some(i16::MIN), Some(i16::MAX), Some(0)]
        .into_iter()
        .flat_map(|a| [None, Some(i64::MIN), Some(i64::MAX), Some(0)].into_iter().map(move |c| (a, c)))
        .collect();
    NInts::bulk_create_new(&mut client, [&NInts { a: None, c: None, pos: -1 }]).await.unwrap();
    let mut batch: Vec<NInts> =
        nkeys.iter().chain(nkeys.iter()).enumerate().map(|(pos, &(a, c))| NInts { a, c, pos: pos as i32 }).collect();
    batch.extend((0..pad as i64).map(|i| NInts { a: Some(7), c: Some(1_000_000 + i), pos: -2 }));
    let r = NInts::bulk(&mut client).returning_skipped().run(&batch).await.unwrap();
    assert_eq!(r.inserted, (nkeys.len() - 1 + pad) as u64, "{}", path(pad));
    let mut skipped = r.returned.clone();
    skipped.sort_unstable();
    let want_skipped: Vec<usize> = std::iter::once(0).chain(nkeys.len()..2 * nkeys.len()).collect();
    assert_eq!(skipped, want_skipped, "{}", path(pad));
    let positions: Vec<i32> = client
        .query("SELECT pos FROM nints WHERE pos >= 0 ORDER BY pos", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(positions, (1..nkeys.len() as i32).collect::<Vec<_>>(), "{}", path(pad));
    db.drop().await;
}

#[tokio::test]
async fn integer_extremes_in_packed_keys() {
    for pad in PADS {
        int_extremes(pad).await;
    }
}

// ---------------------------------------------------------------------------
// Every path refuses the same batches: a row left out as a repeat of its key
// that holds a value PostgreSQL cannot store (a date before 4714-11-24 BC),
// and a model enum with a label the PostgreSQL type lacks.

#[derive(BulkType, Debug, Clone, Copy, PartialEq)]
#[bulk(type = "mood")]
enum Mood {
    Happy,
    Missing,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "dated", unique(k), id = false)]
struct Dated {
    k: i64,
    day: NaiveDate,
    mood: Mood,
}

/// The batch `ok(1), ok(2), spoiled ok(1), filler` into a table whose enum
/// type has `labels`; the call's result and the rows stored.
async fn repeat_with_a_refused_value(
    tag: &str,
    pad: usize,
    labels: &str,
    spoil: fn(&mut Dated),
) -> (Result<u64, Error>, i64) {
    let db = TestDb::new(&format!("edge_refused_{tag}_{pad}")).await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!(
            "CREATE TYPE mood AS ENUM ({labels});
             CREATE TABLE dated (k bigint PRIMARY KEY, day date NOT NULL, mood mood NOT NULL)"
        ))
        .await
        .unwrap();
    let ok = |k: i64| Dated { k, day: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(), mood: Mood::Happy };
    let mut bad = ok(1);
    spoil(&mut bad);
    let mut batch = vec![ok(1), ok(2), bad];
    batch.extend((0..pad as i64).map(|i| ok(1000 + i)));
    let r = Dated::bulk_create_new(&mut client, &batch).await.map(|o| o.inserted);
    let n = count(&client, "dated").await;
    db.drop().await;
    (r, n)
}

/// Runs the batch with its row 2 (a repeat of row 0's key) spoiled on every
/// path: each call fails as `refused` checks, with nothing written.
async fn refused_on_every_path(
    tag: &str,
    labels: &str,
    spoil: fn(&mut Dated),
    what: &str,
    refused: fn(&Error) -> bool,
) {
    let mut wrong = Vec::new();
    for pad in PADS {
        let (r, n) = repeat_with_a_refused_value(tag, pad, labels, spoil).await;
        match r {
            Err(e) if refused(&e) && n == 0 => {}
            Err(e) => wrong.push(format!("{}: {e:?} ({n} rows written)", path(pad))),
            Ok(inserted) => wrong.push(format!("{}: Ok({inserted} inserted)", path(pad))),
        }
    }
    assert!(wrong.is_empty(), "{what}:\n{}", wrong.join("\n"));
}

// A date before 4714-11-24 BC is refused on the client, with its row and
// field, on every path, even in a repeated key's later row (which the short
// path, ordering an integer key on the client, never sends).
#[tokio::test]
async fn a_repeat_row_with_an_out_of_range_date_is_refused_on_every_path() {
    refused_on_every_path(
        "date",
        "'happy', 'missing'",
        |d| d.day = NaiveDate::from_ymd_opt(-5000, 1, 1).unwrap(),
        "date -5000 in a repeat",
        |e| matches!(e, Error::InvalidValue { row: 2, field: "day", .. }),
    )
    .await;
}

// A model enum with a label the PostgreSQL type lacks is refused by the
// schema check (`EnumLabelsMissing`, naming the label) on every path,
// whether or not a row holds that label.
#[tokio::test]
async fn a_repeat_row_with_an_unknown_enum_label_is_refused_on_every_path() {
    fn missing_label(e: &Error) -> bool {
        matches!(e, Error::SchemaMismatch { problems, .. } if matches!(
            &problems[..],
            [SchemaProblem::EnumLabelsMissing { column, labels, .. }] if column == "mood" && labels == &["missing"]
        ))
    }
    let what = "enum label missing in a repeat";
    refused_on_every_path("enum", "'happy'", |d| d.mood = Mood::Missing, what, missing_label).await;
    let what = "enum label missing, no row holds it";
    refused_on_every_path("enum_unused", "'happy'", |_| {}, what, missing_label).await;
}

// ---------------------------------------------------------------------------
// Key columns of a type that converts what the model offers with loss, named
// with `sql_type`: two offered keys would become one stored key, so the
// schema check refuses the column (`KeyConverted`), as it refuses a column
// that rounds (`timestamptz(0)`, `KeyRounded`).

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "lossy_i64", unique(k), id = false)]
struct LossyI64 {
    #[bulk(sql_type = "double precision")]
    k: i64,
    pos: i32,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "lossy_f64", unique(k), id = false)]
struct LossyF64 {
    #[bulk(sql_type = "numeric")]
    k: f64,
    pos: i32,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "lossy_day", unique(k), id = false)]
struct LossyDay {
    #[bulk(sql_type = "date")]
    k: NaiveDateTime,
    pos: i32,
}

/// The outcome of one lossy-key batch: `None` when the schema check refused
/// the key column (`KeyConverted`) with nothing written, else what went wrong.
fn lossy_verdict(r: Result<bulk_runtime::Report, Error>, stored: Option<i32>, what: &str) -> Option<String> {
    match r {
        Err(Error::SchemaMismatch { problems, .. }) => {
            assert!(
                problems.iter().any(|p| matches!(p, SchemaProblem::KeyConverted { column, .. } if column == "k")),
                "{what}: {problems:?}"
            );
            assert_eq!(stored, None, "{what}: refused, nothing written");
            None
        }
        Err(e) => Some(format!("{what}: error {e}")),
        Ok(o) => Some(format!("{what}: {o:?}, stored row is pos {stored:?}: the check must refuse the key column")),
    }
}

// An `i64` key on a `double precision` column (named by `sql_type`): 2^53 + 1
// and 2^53 would be one stored key, so the check refuses the column
// (`KeyConverted`), nothing written.
#[tokio::test]
async fn an_i64_key_on_a_double_column_is_refused() {
    let mut failures = Vec::new();
    for pad in PADS {
        let db = TestDb::new(&format!("edge_lossy_i64_{pad}")).await;
        let mut client = db.connect().await;
        client.batch_execute(&LossyI64::model().migration_sql()).await.unwrap();
        let mut batch = vec![LossyI64 { k: (1 << 53) + 1, pos: 0 }, LossyI64 { k: 1 << 53, pos: 1 }];
        batch.extend((0..pad as i64).map(|i| LossyI64 { k: 1_000_000 + i, pos: -1 }));
        let r = LossyI64::bulk_create_new(&mut client, &batch).await.map(|o| o.outcome());
        let r = r.map(|mut o| {
            o.inserted -= pad as u64;
            o
        });
        let stored = client.query_opt("SELECT pos FROM lossy_i64 WHERE pos >= 0", &[]).await.unwrap().map(|r| r.get(0));
        failures.extend(lossy_verdict(r, stored, path(pad)));
        db.drop().await;
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// An `f64` key on a `numeric` column: float8 -> numeric keeps 15 significant
// digits, so 0.1 + 0.2 and 0.3 would be one stored key: refused.
#[tokio::test]
async fn an_f64_key_on_a_numeric_column_is_refused() {
    let mut failures = Vec::new();
    for pad in PADS {
        let db = TestDb::new(&format!("edge_lossy_f64_{pad}")).await;
        let mut client = db.connect().await;
        client.batch_execute(&LossyF64::model().migration_sql()).await.unwrap();
        let mut batch = vec![LossyF64 { k: 0.1 + 0.2, pos: 0 }, LossyF64 { k: 0.3, pos: 1 }];
        batch.extend((0..pad).map(|i| LossyF64 { k: 1e6 + i as f64, pos: -1 }));
        let r = LossyF64::bulk_create_new(&mut client, &batch).await.map(|o| o.outcome());
        let r = r.map(|mut o| {
            o.inserted -= pad as u64;
            o
        });
        let stored = client.query_opt("SELECT pos FROM lossy_f64 WHERE pos >= 0", &[]).await.unwrap().map(|r| r.get(0));
        failures.extend(lossy_verdict(r, stored, path(pad)));
        db.drop().await;
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// A `NaiveDateTime` key on a `date` column: two times of one day would be
// one stored key: refused.
#[tokio::test]
async fn a_timestamp_key_on_a_date_column_is_refused() {
    let mut failures = Vec::new();
    for pad in PADS {
        let db = TestDb::new(&format!("edge_lossy_day_{pad}")).await;
        let mut client = db.connect().await;
        client.batch_execute(&LossyDay::model().migration_sql()).await.unwrap();
        let day = NaiveDate::from_ymd_opt(2024, 5, 1).unwrap();
        let mut batch = vec![
            LossyDay { k: day.and_hms_opt(18, 0, 0).unwrap(), pos: 0 },
            LossyDay { k: day.and_hms_opt(6, 0, 0).unwrap(), pos: 1 },
        ];
        batch.extend(
            (0..pad as i64).map(|i| LossyDay {
                k: (day + chrono::Days::new(1 + i as u64)).and_hms_opt(0, 0, 0).unwrap(),
                pos: -1,
            }),
        );
        let r = LossyDay::bulk_create_new(&mut client, &batch).await.map(|o| o.outcome());
        let r = r.map(|mut o| {
            o.inserted -= pad as u64;
            o
        });
        let stored = client.query_opt("SELECT pos FROM lossy_day WHERE pos >= 0", &[]).await.unwrap().map(|r| r.get(0));
        failures.extend(lossy_verdict(r, stored, path(pad)));
        db.drop().await;
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------
// Type modifiers the check must refuse on a key: `time(0)`, a domain over
// `numeric(5, 2)`, `timestamp(3)`.

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "clock", unique(at), id = false)]
struct Clock {
    at: NaiveTime,
    pos: i32,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "money", unique(amount), id = false)]
struct Money {
    #[bulk(sql_type = "cents")]
    amount: Decimal,
    pos: i32,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "stamp", unique(at), id = false)]
struct Stamp {
    at: NaiveDateTime,
    pos: i32,
}

fn assert_key_rounded(r: Result<bulk_runtime::Report, Error>, column: &str, what: &str) {
    match r {
        Err(Error::SchemaMismatch { problems, .. }) => assert!(
            problems.iter().any(|p| matches!(p, SchemaProblem::KeyRounded { column: c, .. } if c == column)),
            "{what}: {problems:?}"
        ),
        other => panic!("{what}: expected KeyRounded, got {other:?}"),
    }
}

#[tokio::test]
async fn key_columns_that_round_are_refused() {
    for pad in PADS {
        let db = TestDb::new(&format!("edge_rounding_{pad}")).await;
        let mut client = db.connect().await;
        client
            .batch_execute(
                "CREATE TABLE clock (at time(0) PRIMARY KEY, pos int NOT NULL);
                 CREATE DOMAIN cents AS numeric(5, 2);
                 CREATE TABLE money (amount cents PRIMARY KEY, pos int NOT NULL);
                 CREATE TABLE stamp (at timestamp(3) PRIMARY KEY, pos int NOT NULL)",
            )
            .await
            .unwrap();
        let t = |us: i64, pos| Clock {
            at: NaiveTime::from_num_seconds_from_midnight_opt((us / 1_000_000) as u32, (us % 1_000_000) as u32 * 1000)
                .unwrap(),
            pos,
        };
        let mut batch = vec![t(3_600_400_000, 0), t(3_600_000_000, 1)];
        batch.extend((0..pad as i64).map(|i| t(7_200_000_000 + i * 1_000_000, -1)));
        assert_key_rounded(Clock::bulk_create_new(&mut client, &batch).await.map(|o| o.outcome()), "at", "time(0)");

        let mut batch =
            vec![Money { amount: Decimal::new(1004, 3), pos: 0 }, Money { amount: Decimal::new(1001, 3), pos: 1 }];
        batch.extend((0..pad as i64).map(|i| Money { amount: Decimal::new(200 + i, 2), pos: -1 }));
        assert_key_rounded(
            Money::bulk_create_new(&mut client, &batch).await.map(|o| o.outcome()),
            "amount",
            "domain numeric(5,2)",
        );

        let base = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap();
        let mut batch = vec![
            Stamp { at: base + chrono::Duration::microseconds(1_400), pos: 0 },
            Stamp { at: base + chrono::Duration::microseconds(1_100), pos: 1 },
        ];
        batch.extend((0..pad as i64).map(|i| Stamp { at: base + chrono::Duration::seconds(10 + i), pos: -1 }));
        assert_key_rounded(
            Stamp::bulk_create_new(&mut client, &batch).await.map(|o| o.outcome()),
            "at",
            "timestamp(3)",
        );
        for t in ["clock", "money", "stamp"] {
            assert_eq!(count(&client, t).await, 0, "{t}: nothing written");
        }
        db.drop().await;
    }
}

// ---------------------------------------------------------------------------
// jsonb keys: object key order and number forms do not count.

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "jkey", unique(doc), id = false)]
struct JKey {
    doc: serde_json::Value,
    pos: i32,
}

async fn jsonb_keys(pad: usize) {
    let db = TestDb::new(&format!("edge_jsonb_{pad}")).await;
    let mut client = db.connect().await;
    client.batch_execute(&JKey::model().migration_sql()).await.unwrap();
    let ab: serde_json::Value = serde_json::from_str(r#"{"a":1,"b":2}"#).unwrap();
    let ba: serde_json::Value = serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap();
    let one_f: serde_json::Value = serde_json::from_str("1.0").unwrap();
    let one_i: serde_json::Value = serde_json::from_str("1").unwrap();
    let one_e: serde_json::Value = serde_json::from_str("1e0").unwrap();
    let nested_f: serde_json::Value = serde_json::from_str(r#"{"x":[1.50,{"y":null}]}"#).unwrap();
    let nested_i: serde_json::Value = serde_json::from_str(r#"{"x":[1.5,{"y":null}]}"#).unwrap();
    let filler = |from: usize| (from..from + pad).map(|i| JKey { doc: json!({ "filler": i }), pos: -1 });
    // Stored first: `{"a":1,"b":2}`.
    JKey::bulk_create_new(&mut client, [&JKey { doc: ab.clone(), pos: -5 }]).await.unwrap();
    let batch: Vec<JKey> = [
        JKey { doc: ba.clone(), pos: 0 },       // stored (key order)
        JKey { doc: one_f.clone(), pos: 1 },    // new
        JKey { doc: one_i.clone(), pos: 2 },    // repeat of 1.0
        JKey { doc: one_e.clone(), pos: 3 },    // repeat of 1.0
        JKey { doc: nested_i.clone(), pos: 4 }, // new
        JKey { doc: nested_f.clone(), pos: 5 }, // repeat of it
        JKey { doc: json!("1"), pos: 6 },       // a string: another key
        JKey { doc: json!(null), pos: 7 },      // JSON null: a key of its own
        JKey { doc: json!(null), pos: 8 },      // repeat
    ]
    .into_iter()
    .chain(filler(0))
    .collect();
    let r = JKey::bulk(&mut client).returning_skipped().run(&batch).await.unwrap();
    let mut skipped = r.returned.clone();
    skipped.sort_unstable();
    assert_eq!(skipped, [0, 2, 3, 5, 8], "{}", path(pad));
    assert_eq!(r.inserted, 4 + pad as u64, "{}", path(pad));
    let got: Vec<i32> = client
        .query("SELECT pos FROM jkey WHERE pos >= 0 ORDER BY pos", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, [1, 4, 6, 7], "{}: the first offered of each key", path(pad));

    // returning_keys and upsert Keep::First / Keep::Last over the same equal documents.
    let batch: Vec<JKey> = [
        JKey { doc: json!({"n": 2.0}), pos: 10 },
        JKey { doc: json!({"n": 2}), pos: 11 },
        JKey { doc: one_i.clone(), pos: 12 },
    ]
    .into_iter()
    .chain(filler(pad))
    .collect();
    let r = JKey::bulk(&mut client).returning_keys().run(&batch).await.unwrap();
    assert_eq!(r.inserted, 1 + pad as u64, "{}", path(pad));
    assert_eq!(r.returned.iter().filter(|n| n.index < 3).map(|n| n.index).collect::<Vec<_>>(), [0], "{}", path(pad));
    let up = JKey::bulk(&mut client)
        .upsert(Upsert::all_columns().keep(Keep::Last))
        .run(&[
            JKey { doc: one_e.clone(), pos: 20 },
            JKey { doc: one_f.clone(), pos: 21 },
            JKey { doc: ba.clone(), pos: 22 },
        ])
        .await
        .unwrap();
    assert_eq!((up.inserted, up.updated, up.skipped), (0, 2, 1), "{}: {up:?}", path(pad));
    let p: i32 = client.query_one("SELECT pos FROM jkey WHERE doc = '1'", &[]).await.unwrap().get(0);
    assert_eq!(p, 21, "{}", path(pad));
    let p: i32 = client.query_one(r#"SELECT pos FROM jkey WHERE doc = '{"a":1,"b":2}'"#, &[]).await.unwrap().get(0);
    assert_eq!(p, 22, "{}", path(pad));
    db.drop().await;
}

#[tokio::test]
async fn jsonb_keys_compare_as_jsonb() {
    for pad in PADS {
        jsonb_keys(pad).await;
    }
}

// ---------------------------------------------------------------------------
// A key column's collation changed between calls on one connection.

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "person", unique(name), id = false)]
struct Person {
    name: String,
    pos: i32,
}

/// A distinct name of three characters (it fits a `varchar(3)`) for filler
/// row `i`, equal to no other under any collation the tests use.
fn filler_name(i: usize) -> String {
    let cjk = |n: usize| char::from_u32(0x4E00 + n as u32).unwrap();
    format!("#{}{}", cjk(i / 20_000), cjk(i % 20_000))
}

fn people(names: &[&str], pad: usize, from: usize) -> Vec<Person> {
    names
        .iter()
        .enumerate()
        .map(|(pos, n)| Person { name: (*n).to_owned(), pos: pos as i32 })
        .chain((from..from + pad).map(|i| Person { name: filler_name(i), pos: -1 }))
        .collect()
}

async fn collation_changes(pad: usize) -> Vec<String> {
    let mut failures = Vec::new();
    let db = TestDb::new(&format!("edge_coll_change_{pad}")).await;
    let mut client = db.connect().await;
    client
        .batch_execute(
            "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
             CREATE TABLE person (name text NOT NULL UNIQUE, pos int NOT NULL)",
        )
        .await
        .unwrap();
    // Warm the connection on both paths' statements.
    Person::bulk_create_new(&mut client, &people(&["warm"], pad, 0)).await.unwrap();
    client.batch_execute("TRUNCATE person; ALTER TABLE person ALTER COLUMN name TYPE text COLLATE ci").await.unwrap();
    // Now 'Ann' and 'ANN' are one key.
    match Person::bulk_create_new(&mut client, &people(&["Ann", "ANN", "bob"], pad, 1_000_000)).await {
        Ok(o) if (o.inserted, o.skipped) == (2 + pad as u64, 1) => {}
        Ok(o) => failures.push(format!("{} to ci: {o:?}", path(pad))),
        Err(e) => failures.push(format!("{} to ci: {e}", path(pad))),
    }
    let rows = client.query("SELECT pos FROM person WHERE name = 'ann'", &[]).await.unwrap();
    if rows.len() != 1 || rows[0].get::<_, i32>(0) != 0 {
        failures.push(format!(
            "{} to ci: 'ann' rows: {:?}",
            path(pad),
            rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>()
        ));
    }
    // Against stored: 'BOB' is 'bob'.
    match Person::bulk(&mut client).returning_skipped().run(&people(&["BOB", "cy"], pad, 2_000_000)).await {
        Ok(r) if r.returned == [0] && r.inserted == 1 + pad as u64 => {}
        Ok(r) => failures.push(format!(
            "{} to ci, stored: inserted {} skipped {:?}",
            path(pad),
            r.inserted,
            &r.returned[..r.returned.len().min(4)]
        )),
        Err(e) => failures.push(format!("{} to ci, stored: {e}", path(pad))),
    }
    // And back to the default (deterministic) collation: 'Dee' and 'DEE' are two keys.
    client
        .batch_execute("TRUNCATE person; ALTER TABLE person ALTER COLUMN name TYPE text COLLATE \"default\"")
        .await
        .unwrap();
    match Person::bulk_create_new(&mut client, &people(&["Dee", "DEE"], pad, 3_000_000)).await {
        Ok(o) if (o.inserted, o.skipped) == (2 + pad as u64, 0) => {}
        Ok(o) => failures.push(format!("{} back to deterministic: {o:?}", path(pad))),
        Err(e) => failures.push(format!("{} back to deterministic: {e}", path(pad))),
    }
    db.drop().await;
    failures
}

#[tokio::test]
async fn a_key_collation_changed_between_calls_on_one_connection() {
    let mut failures = Vec::new();
    for pad in PADS {
        failures.extend(collation_changes(pad).await);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------
// char(n) under a case-insensitive collation: 'A' and 'a  ' are one key.
// Accent-insensitive (level1) collation: 'é' and 'E'. Both paths, and
// against stored keys.

async fn odd_text_keys(tag: &str, pad: usize, column: &str, pairs: &[(&str, &str)]) {
    let db = TestDb::new(&format!("edge_odd_text_{tag}_{pad}")).await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!(
            "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
             CREATE COLLATION ai (provider = icu, locale = 'und-u-ks-level1', deterministic = false);
             CREATE TABLE person (name {column} NOT NULL UNIQUE, pos int NOT NULL);
             CREATE TABLE person_ref (name {column} NOT NULL UNIQUE, pos int NOT NULL)"
        ))
        .await
        .unwrap();
    // The second of every other pair stored first; then offered: first, second, first.
    let stored: Vec<&str> = pairs.iter().skip(1).step_by(2).map(|p| p.1).collect();
    Person::bulk_create_new(&mut client, &people(&stored, 0, 0)).await.unwrap();
    client.batch_execute("UPDATE person SET pos = -5; INSERT INTO person_ref SELECT * FROM person").await.unwrap();
    let mut names = Vec::new();
    for (a, b) in pairs {
        names.extend([*a, *b, *a]);
    }
    // The oracle: one row at a time, in offered order, as the table takes it.
    let mut want = Vec::new();
    for (pos, name) in names.iter().enumerate() {
        let n = client
            .execute("INSERT INTO person_ref VALUES ($1, $2) ON CONFLICT DO NOTHING", &[name, &(pos as i32)])
            .await
            .unwrap();
        if n == 1 {
            want.push(pos);
        }
    }
    let batch = people(&names, pad, 0);
    let r = Person::bulk(&mut client).returning_keys().run(&batch).await.unwrap();
    let mut idx: Vec<usize> = r.returned.iter().map(|n| n.index).filter(|&i| i < names.len()).collect();
    idx.sort_unstable();
    let stored_pos: Vec<usize> = client
        .query("SELECT pos FROM person WHERE pos >= 0 ORDER BY pos", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i32>(0) as usize)
        .collect();
    assert_eq!(
        (r.inserted as usize, &idx, &stored_pos),
        (want.len() + pad, &want, &want),
        "{column}, {}: {names:?}",
        path(pad)
    );
    db.drop().await;
}

#[tokio::test]
async fn char_n_keys_under_a_case_insensitive_collation() {
    for pad in PADS {
        odd_text_keys(
            "char_ci",
            pad,
            "char(20) COLLATE ci",
            &[("A", "a  "), ("Bee", "BEE "), ("x y", "X Y"), ("q", "Q")],
        )
        .await;
    }
}

#[tokio::test]
async fn text_keys_under_an_accent_insensitive_collation() {
    for pad in PADS {
        odd_text_keys("text_ai", pad, "text COLLATE ai", &[("é", "E"), ("Straße", "STRASSE"), ("ﬁ", "fi"), ("Å", "a")])
            .await;
    }
}

#[tokio::test]
async fn varchar_n_keys_under_a_case_insensitive_collation_with_multibyte_text() {
    for pad in PADS {
        odd_text_keys(
            "varchar_ci",
            pad,
            "varchar(3) COLLATE ci",
            &[("ÄÖÜ", "äöü "), ("日本", "日本  "), ("ß", "SS"), ("ǅ", "ǆ")],
        )
        .await;
    }
}

// ---------------------------------------------------------------------------
// The same repeat-row batches on a text key (which the server orders): a date
// out of range or a NUL byte in a repeated key's row is refused on the
// client, with its row and field, on every path.

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "tdated", unique(k), id = false)]
struct TDated {
    k: String,
    day: NaiveDate,
    note: String,
}

#[tokio::test]
async fn a_repeat_row_with_a_refused_value_on_a_server_ordered_key_fails_on_every_path() {
    let mut results = Vec::new();
    for pad in PADS {
        for spoil in 0..2 {
            let db = TestDb::new(&format!("edge_text_repeat_{pad}_{spoil}")).await;
            let mut client = db.connect().await;
            client.batch_execute(&TDated::model().migration_sql()).await.unwrap();
            let ok = |k: String| TDated { k, day: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(), note: "n".into() };
            let mut bad = ok("a".into());
            if spoil == 0 {
                bad.day = NaiveDate::from_ymd_opt(-5000, 1, 1).unwrap();
            } else {
                bad.note = "nul \0 byte".into();
            }
            let mut batch = vec![ok("a".into()), ok("b".into()), bad];
            batch.extend((0..pad).map(|i| ok(format!("f{i}"))));
            let r = TDated::bulk_create_new(&mut client, &batch).await;
            assert_eq!(count(&client, "tdated").await, 0, "{}", path(pad));
            let e = r.expect_err(path(pad));
            assert!(matches!(e, Error::InvalidValue { .. }), "{}, spoil {spoil}: {e:?}", path(pad));
            results.push((path(pad), spoil, e.row(), e.field().map(str::to_owned)));
            db.drop().await;
        }
    }
    for (p, spoil, row, field) in results {
        let want = if spoil == 0 { "day" } else { "note" };
        // The NUL byte and the date out of range are both refused on the
        // client, with their row and field, on every path.
        assert_eq!((row, field.as_deref()), (Some(2), Some(want)), "{p}, spoil {spoil}");
    }
}

// ---------------------------------------------------------------------------
// Floats: f32 keys on a `double precision` column; nullable f64 keys with
// NaN, -0.0 and NULL under NULLS NOT DISTINCT.

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "f32key", unique(x), id = false)]
struct F32Key {
    x: f32,
    pos: i32,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "nfkey", unique(x), nulls_not_distinct, id = false)]
struct NFKey {
    x: Option<f64>,
    pos: i32,
}

#[tokio::test]
async fn float_keys_on_wider_columns_and_nullable_float_keys() {
    for pad in PADS {
        let db = TestDb::new(&format!("edge_floats_{pad}")).await;
        let mut client = db.connect().await;
        client
            .batch_execute(
                "CREATE TABLE f32key (x double precision PRIMARY KEY, pos int NOT NULL);
                 CREATE TABLE nfkey (x double precision UNIQUE NULLS NOT DISTINCT, pos int NOT NULL)",
            )
            .await
            .unwrap();
        let vals = [
            0.1f32,
            f32::NAN,
            -0.0,
            0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            -f32::NAN,
            0.1,
        ];
        let mut batch: Vec<F32Key> = vals.iter().enumerate().map(|(pos, &x)| F32Key { x, pos: pos as i32 }).collect();
        batch.extend((0..pad).map(|i| F32Key { x: 1e6 + i as f32, pos: -1 }));
        let o = F32Key::bulk_create_new(&mut client, &batch).await.unwrap();
        assert_eq!(o.inserted, 7 + pad as u64, "{}", path(pad));
        let got: Vec<i32> = client
            .query("SELECT pos FROM f32key WHERE pos >= 0 ORDER BY pos", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(got, [0, 1, 2, 4, 5, 6, 7], "{}", path(pad));
        // Stored 0.1f32 read as double: offering 0.1f32 again is a stored key.
        let again = F32Key::bulk_create_new(&mut client, &batch[..2]).await.unwrap();
        assert_eq!(again.inserted, 0, "{}", path(pad));

        NFKey::bulk_create_new(&mut client, [&NFKey { x: Some(f64::NAN), pos: -5 }]).await.unwrap();
        let vals = [
            None,
            Some(-f64::NAN),
            Some(-0.0),
            None,
            Some(0.0),
            Some(f64::from_bits(f64::NAN.to_bits() | 7)),
            Some(1.5),
        ];
        let mut batch: Vec<NFKey> = vals.iter().enumerate().map(|(pos, &x)| NFKey { x, pos: pos as i32 }).collect();
        batch.extend((0..pad).map(|i| NFKey { x: Some(1e6 + i as f64), pos: -1 }));
        let r = NFKey::bulk(&mut client).returning_keys().run(&batch).await.unwrap();
        let mut idx: Vec<usize> = r.returned.iter().map(|n| n.index).filter(|&i| i < vals.len()).collect();
        idx.sort_unstable();
        assert_eq!(idx, [0, 2, 6], "{}", path(pad));
        assert_eq!(r.inserted, 3 + pad as u64, "{}", path(pad));
        let up =
            NFKey::bulk(&mut client).upsert(Upsert::all_columns().keep(Keep::First)).run(&batch[..6]).await.unwrap();
        assert_eq!((up.inserted, up.updated, up.skipped), (0, 3, 3), "{}: {up:?}", path(pad));
        let null_pos: i32 = client.query_one("SELECT pos FROM nfkey WHERE x IS NULL", &[]).await.unwrap().get(0);
        let nan_pos: i32 = client.query_one("SELECT pos FROM nfkey WHERE x = 'NaN'", &[]).await.unwrap().get(0);
        let zero_pos: i32 = client.query_one("SELECT pos FROM nfkey WHERE x = 0", &[]).await.unwrap().get(0);
        assert_eq!((null_pos, nan_pos, zero_pos), (0, 1, 2), "{}", path(pad));
        db.drop().await;
    }
}

// ---------------------------------------------------------------------------
// bytea keys: the empty value, prefixes, 0x00 and 0xff; bool and uuid keys.

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "bkey", unique(b, flag, id), id = false)]
struct BKey {
    b: Vec<u8>,
    flag: bool,
    id: uuid::Uuid,
    pos: i32,
}

#[tokio::test]
async fn bytea_bool_uuid_keys_at_their_edges() {
    for pad in PADS {
        let db = TestDb::new(&format!("edge_bytea_{pad}")).await;
        let mut client = db.connect().await;
        client.batch_execute(&BKey::model().migration_sql()).await.unwrap();
        let bs: [&[u8]; 7] = [b"", b"\0", b"\0\0", b"\xff", b"\0\xff", b"\xff\0", b"\\x00"];
        let ids = [uuid::Uuid::nil(), uuid::Uuid::max(), uuid::Uuid::from_u128(1 << 127)];
        let mut keys = Vec::new();
        for b in bs {
            for flag in [false, true] {
                for id in ids {
                    keys.push((b.to_vec(), flag, id));
                }
            }
        }
        let stored: Vec<BKey> =
            keys.iter().step_by(3).map(|(b, flag, id)| BKey { b: b.clone(), flag: *flag, id: *id, pos: -5 }).collect();
        BKey::bulk_create_new(&mut client, &stored).await.unwrap();
        let mut batch: Vec<BKey> = keys
            .iter()
            .rev()
            .chain(keys.iter())
            .enumerate()
            .map(|(pos, (b, flag, id))| BKey { b: b.clone(), flag: *flag, id: *id, pos: pos as i32 })
            .collect();
        batch.extend((0..pad as u64).map(|i| BKey {
            b: i.to_be_bytes().to_vec(),
            flag: true,
            id: uuid::Uuid::from_u128(7),
            pos: -1,
        }));
        let o = BKey::bulk_create_new(&mut client, &batch).await.unwrap();
        let new = keys.len() - stored.len();
        assert_eq!(o.inserted, (new + pad) as u64, "{}", path(pad));
        let got: Vec<i32> = client
            .query("SELECT pos FROM bkey WHERE pos >= 0 ORDER BY pos", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let n = keys.len();
        let want: Vec<i32> = (0..n).filter(|&i| (n - 1 - i) % 3 != 0).map(|i| i as i32).collect();
        assert_eq!(got, want, "{}: first offered (the reversed half)", path(pad));
        db.drop().await;
    }
}

// ---------------------------------------------------------------------------
// Timestamps: DateTime<Utc> values that differ below a microsecond are one
// key (the wire carries microseconds); chrono's leap second; extremes.

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "tskey", unique(at), id = false)]
struct TsKey {
    at: DateTime<Utc>,
    pos: i32,
}

#[tokio::test]
async fn timestamptz_keys_below_a_microsecond_and_at_the_edges() {
    for pad in PADS {
        let db = TestDb::new(&format!("edge_ts_{pad}")).await;
        let mut client = db.connect().await;
        client.batch_execute(&TsKey::model().migration_sql()).await.unwrap();
        let ns = |n: i64| DateTime::from_timestamp_nanos(n);
        let y2k = 946_684_800_000_000_000i64; // PostgreSQL's epoch, in Unix nanoseconds
        let vals = [
            ns(1_000_000_001),
            ns(1_000_000_999), // the same microsecond
            ns(y2k - 1),       // just before PostgreSQL's epoch
            ns(y2k - 999),     // the same microsecond (truncated toward zero?)
            ns(y2k),
            ns(y2k - 1_000),
            DateTime::<Utc>::from_naive_utc_and_offset(
                NaiveDate::from_ymd_opt(-4713, 11, 24).unwrap().and_hms_opt(0, 0, 0).unwrap(),
                Utc,
            ),
            DateTime::<Utc>::from_naive_utc_and_offset(
                NaiveDate::from_ymd_opt(262_142, 12, 31).unwrap().and_hms_micro_opt(23, 59, 59, 999_999).unwrap(),
                Utc,
            ),
        ];
        // The oracle: the server's own equality of what went over the wire.
        let mut batch: Vec<TsKey> = vals.iter().enumerate().map(|(pos, &at)| TsKey { at, pos: pos as i32 }).collect();
        batch.extend((0..pad as i64).map(|i| TsKey { at: ns(5_000_000_000_000_000_000 + i * 1000), pos: -1 }));
        let o = TsKey::bulk_create_new(&mut client, &batch).await.unwrap();
        let got: Vec<(i32, DateTime<Utc>)> = client
            .query("SELECT pos, at FROM tskey WHERE pos >= 0 ORDER BY pos", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let distinct: std::collections::BTreeSet<DateTime<Utc>> = got.iter().map(|g| g.1).collect();
        assert_eq!(distinct.len(), got.len());
        // Each stored row is the first offered whose micro-truncated time is its own.
        let trunc = |t: DateTime<Utc>| {
            let d = t.signed_duration_since(ns(y2k));
            ns(y2k) + chrono::Duration::microseconds(d.num_microseconds().unwrap())
        };
        let mut want = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (pos, &v) in vals.iter().enumerate() {
            if seen.insert(trunc(v)) {
                want.push(pos as i32);
            }
        }
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), want, "{}: {got:?}", path(pad));
        assert_eq!(o.inserted, (want.len() + pad) as u64, "{}", path(pad));
        db.drop().await;
    }
}

// ---------------------------------------------------------------------------
// Decimal keys at the edges of rust_decimal: MAX, MIN, 28 decimal places,
// negative zero, trailing zeros.

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "dkey", unique(d), id = false)]
struct DKey {
    d: Decimal,
    pos: i32,
}

#[tokio::test]
async fn decimal_keys_at_the_edges() {
    for pad in PADS {
        let db = TestDb::new(&format!("edge_decimal_{pad}")).await;
        let mut client = db.connect().await;
        client.batch_execute(&DKey::model().migration_sql()).await.unwrap();
        let neg_zero = Decimal::from_parts(0, 0, 0, true, 5);
        let vals = [
            Decimal::MAX,
            Decimal::MIN,
            Decimal::new(1, 28),
            Decimal::from_parts(10, 0, 0, false, 28), // 1e-27 written with 28 places
            Decimal::new(1, 27),                      // the same value
            neg_zero,
            Decimal::ZERO, // equal to -0
            Decimal::new(-1, 28),
            Decimal::from_parts(u32::MAX, u32::MAX, u32::MAX, false, 28), // 7.92...
        ];
        let mut batch: Vec<DKey> = vals.iter().enumerate().map(|(pos, &d)| DKey { d, pos: pos as i32 }).collect();
        batch.extend((0..pad as i64).map(|i| DKey { d: Decimal::new(1_000_000 + i, 0), pos: -1 }));
        let o = DKey::bulk_create_new(&mut client, &batch).await.unwrap();
        let got: Vec<(i32, Decimal)> = client
            .query("SELECT pos, d FROM dkey WHERE pos >= 0 ORDER BY pos", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [0, 1, 2, 3, 5, 7, 8], "{}: {got:?}", path(pad));
        for (pos, d) in &got {
            assert_eq!(*d, vals[*pos as usize], "{}: value of pos {pos}", path(pad));
        }
        assert_eq!(o.inserted, 7 + pad as u64, "{}", path(pad));
        db.drop().await;
    }
}

// ---------------------------------------------------------------------------
// Domains with CHECK constraints: on the key (an integer key the client
// orders, a text key the server orders) and on a value of a repeated row.

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "checked", unique(k), id = false)]
struct Checked {
    #[bulk(sql_type = "pos_id")]
    k: i64,
    #[bulk(sql_type = "short_note")]
    note: String,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "tchecked", unique(k), id = false)]
struct TChecked {
    #[bulk(sql_type = "lower_code")]
    k: String,
    pos: i32,
}

async fn domain_db(pad: usize, tag: &str) -> (TestDb, Client) {
    let db = TestDb::new(&format!("edge_domain_{tag}_{pad}")).await;
    let client = db.connect().await;
    client
        .batch_execute(
            "CREATE DOMAIN pos_id AS bigint CHECK (VALUE > 0);
             CREATE DOMAIN short_note AS text CHECK (length(VALUE) < 10);
             CREATE DOMAIN lower_code AS text COLLATE \"C\" CHECK (VALUE = lower(VALUE));
             CREATE TABLE checked (k pos_id PRIMARY KEY, note short_note NOT NULL);
             CREATE TABLE tchecked (k lower_code PRIMARY KEY, pos int NOT NULL)",
        )
        .await
        .unwrap();
    (db, client)
}

#[tokio::test]
async fn a_domain_check_on_the_key_refuses_the_batch_and_writes_nothing() {
    for pad in PADS {
        let (db, mut client) = domain_db(pad, "key").await;
        let mut batch = vec![Checked { k: 5, note: "a".into() }, Checked { k: -3, note: "b".into() }];
        batch.extend((0..pad as i64).map(|i| Checked { k: 100 + i, note: "f".into() }));
        let e = Checked::bulk_create_new(&mut client, &batch).await.unwrap_err();
        assert_eq!(e.sqlstate().map(|s| s.code()), Some("23514"), "{}: {e}", path(pad));
        assert!(e.to_string().contains("pos_id"), "{}: {e}", path(pad));
        assert_eq!(count(&client, "checked").await, 0, "{}", path(pad));
        // (The server names no row here on any path: the scratch table
        // holds the base type, and the insert's error has no row context.)
        assert!(e.row().is_none() || e.row() == Some(1), "{}: {e}", path(pad));
        let mut batch = vec![TChecked { k: "abc".into(), pos: 0 }, TChecked { k: "ABC".into(), pos: 1 }];
        batch.extend((0..pad).map(|i| TChecked { k: format!("f{i}"), pos: -1 }));
        let e = TChecked::bulk_create_new(&mut client, &batch).await.unwrap_err();
        assert_eq!(e.sqlstate().map(|s| s.code()), Some("23514"), "{}: {e}", path(pad));
        assert_eq!(count(&client, "tchecked").await, 0, "{}", path(pad));
        // The connection takes the next batch.
        batch[1].k = "abd".into();
        assert_eq!(
            TChecked::bulk_create_new(&mut client, &batch).await.unwrap().inserted,
            2 + pad as u64,
            "{}",
            path(pad)
        );
        db.drop().await;
    }
}

/// A value a domain's CHECK refuses, in a row whose key repeats an earlier
/// row's: every path gives the same result for the same batch.
#[tokio::test]
async fn a_domain_check_on_a_value_of_a_repeated_row_gives_one_result_on_every_path() {
    let mut results = Vec::new();
    for pad in PADS {
        let (db, mut client) = domain_db(pad, "repeat").await;
        let mut batch = vec![Checked { k: 5, note: "a".into() }, Checked { k: 5, note: "far too long a note".into() }];
        batch.extend((0..pad as i64).map(|i| Checked { k: 100 + i, note: "f".into() }));
        let r = Checked::bulk_create_new(&mut client, &batch).await;
        let n = count(&client, "checked").await;
        if r.is_err() {
            assert_eq!(n, 0, "{}", path(pad));
        }
        results.push(format!("{}: {:?}", path(pad), r.map(|o| o.inserted).map_err(|e| e.to_string())));
        db.drop().await;
    }
    let oks = results.iter().filter(|r| r.contains(": Ok(")).count();
    assert!(oks == 0 || oks == results.len(), "the paths disagree:\n{}", results.join("\n"));
}

// ---------------------------------------------------------------------------
// A nullable text key under a case-insensitive collation, and a newtype
// over String on a citext key.

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "nperson", unique(name, org), nulls_not_distinct, id = false)]
struct NPerson {
    name: Option<String>,
    org: i32,
    pos: i32,
}

#[derive(BulkType, Debug, Clone, PartialEq)]
struct Email(String);

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "mail", unique(email), id = false)]
struct Mail {
    #[bulk(sql_type = "citext")]
    email: Email,
    pos: i32,
}

#[tokio::test]
async fn nullable_case_insensitive_keys_and_newtype_citext_keys() {
    for pad in PADS {
        let db = TestDb::new(&format!("edge_nci_{pad}")).await;
        create_extension_citext(&db).await;
        let mut client = db.connect().await;
        client
            .batch_execute(
                "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
                 CREATE TABLE nperson (name text COLLATE ci, org int NOT NULL, pos int NOT NULL,
                                       UNIQUE NULLS NOT DISTINCT (name, org));
                 CREATE TABLE mail (email public.citext PRIMARY KEY, pos int NOT NULL)",
            )
            .await
            .unwrap();
        NPerson::bulk_create_new(&mut client, [&NPerson { name: Some("ZED".into()), org: 1, pos: -5 }]).await.unwrap();
        let rows =
            [(None, 1), (Some("Ann"), 1), (Some("ann"), 1), (None, 1), (Some("zed"), 1), (Some("ANN"), 2), (None, 2)];
        let mut batch: Vec<NPerson> = rows
            .iter()
            .enumerate()
            .map(|(pos, (n, org))| NPerson { name: n.map(str::to_owned), org: *org, pos: pos as i32 })
            .collect();
        batch.extend((0..pad as i32).map(|i| NPerson { name: None, org: 100 + i, pos: -1 }));
        let r = NPerson::bulk(&mut client).returning_skipped().run(&batch).await.unwrap();
        let mut skipped = r.returned.clone();
        skipped.sort_unstable();
        assert_eq!(skipped, [2, 3, 4], "{}", path(pad));
        let up = NPerson::bulk(&mut client)
            .upsert(Upsert::all_columns().only_if_changed().keep(Keep::First))
            .run(&batch)
            .await
            .unwrap();
        assert_eq!(
            (up.inserted, up.updated, up.unchanged, up.skipped),
            (0, 1, 4 + pad as u64, 2),
            "{}: {up:?}",
            path(pad)
        );
        let zed: i32 = client.query_one("SELECT pos FROM nperson WHERE name = 'zEd'", &[]).await.unwrap().get(0);
        assert_eq!(zed, 4, "{}", path(pad));

        let mails = ["A@x.org", "a@X.ORG", "b@x.org", "B@x.org"];
        let mut batch: Vec<Mail> =
            mails.iter().enumerate().map(|(pos, m)| Mail { email: Email((*m).into()), pos: pos as i32 }).collect();
        batch.extend((0..pad).map(|i| Mail { email: Email(format!("f{i}@x.org")), pos: -1 }));
        let r = Mail::bulk(&mut client).returning_keys().run(&batch).await.unwrap();
        let mut idx: Vec<usize> = r.returned.iter().map(|n| n.index).filter(|&i| i < 4).collect();
        idx.sort_unstable();
        assert_eq!(idx, [0, 2], "{}", path(pad));
        assert_eq!(r.inserted, 2 + pad as u64, "{}", path(pad));
        db.drop().await;
    }
}

// ---------------------------------------------------------------------------
// A new connection's first call (which skips the check once the process
// passed it) after the key column was altered to round.

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "event", unique(at), id = false)]
struct Event {
    at: NaiveDateTime,
    pos: i32,
}

#[tokio::test]
async fn a_new_connections_first_call_after_the_key_was_altered_to_round() {
    let db = TestDb::new("edge_first_call_round").await;
    let mut client = db.connect().await;
    client.batch_execute(&Event::model().migration_sql()).await.unwrap();
    let base = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap();
    let ev = |us: i64, pos| Event { at: base + chrono::Duration::microseconds(us), pos };
    assert_eq!(Event::bulk_create_new(&mut client, [&ev(0, -5)]).await.unwrap().inserted, 1);
    client.batch_execute("ALTER TABLE event ALTER COLUMN at TYPE timestamp(0)").await.unwrap();
    let mut fresh = db.connect().await;
    let batch = [ev(5_000_100, 0), ev(5_000_200, 1)];
    let r = Event::bulk_create_new(&mut fresh, &batch).await;
    let n = count(&fresh, "event").await;
    db.drop().await;
    match r {
        Err(Error::SchemaMismatch { problems, .. }) => {
            assert!(problems.iter().any(|p| matches!(p, SchemaProblem::KeyRounded { .. })), "{problems:?}");
            assert_eq!(n, 1, "nothing written");
        }
        other => panic!("a new connection must check the table again: {other:?} ({n} rows)"),
    }
}

// ---------------------------------------------------------------------------
// chrono's leap second and 24:00 in a `time` key.

#[tokio::test]
async fn time_keys_with_a_leap_second() {
    for pad in PADS {
        let db = TestDb::new(&format!("edge_leap_{pad}")).await;
        let mut client = db.connect().await;
        client.batch_execute(&Clock::model().migration_sql()).await.unwrap();
        let leap_end = NaiveTime::from_hms_nano_opt(23, 59, 59, 1_000_000_000).unwrap(); // 23:59:60 = 24:00:00 on the wire
        let leap_mid = NaiveTime::from_hms_nano_opt(23, 59, 59, 1_500_000_000).unwrap(); // beyond 24:00
        let mut batch = vec![Clock { at: leap_end, pos: 0 }, Clock { at: NaiveTime::MIN, pos: 1 }];
        batch.extend(
            (0..pad as u32)
                .map(|i| Clock { at: NaiveTime::from_num_seconds_from_midnight_opt(3600 + i, 0).unwrap(), pos: -1 }),
        );
        // 24:00:00 is a valid PostgreSQL time, and another key than 00:00:00.
        let o = Clock::bulk_create_new(&mut client, &batch).await.unwrap();
        assert_eq!(o.inserted, 2 + pad as u64, "{}", path(pad));
        let stored: String = client.query_one("SELECT at::text FROM clock WHERE pos = 0", &[]).await.unwrap().get(0);
        assert_eq!(stored, "24:00:00", "{}", path(pad));
        client.batch_execute("TRUNCATE clock").await.unwrap();
        // A time past 24:00 is refused on the client, with its row and field, on every path.
        batch[0].at = leap_mid;
        let e = Clock::bulk_create_new(&mut client, &batch).await.expect_err("23:59:60.5 is past 24:00");
        assert_eq!(count(&client, "clock").await, 0, "{}: {e}", path(pad));
        assert!(matches!(e, Error::InvalidValue { row: 0, field: "at", .. }), "{}: {e:?}", path(pad));
        db.drop().await;
    }
}

// ---------------------------------------------------------------------------
// A composite key of an integer and a case-insensitive text, checked against
// an oracle: the same rows inserted one at a time in offered order.

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "mixed", unique(team, name), id = false)]
struct Mixed {
    team: i64,
    name: String,
    pos: i32,
}

#[tokio::test]
async fn a_mixed_integer_and_case_insensitive_key_matches_one_row_at_a_time_inserts() {
    for pad in PADS {
        let db = TestDb::new(&format!("edge_mixed_{pad}")).await;
        let mut client = db.connect().await;
        client
            .batch_execute(
                "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
                 CREATE TABLE mixed (team bigint NOT NULL, name text COLLATE ci NOT NULL, pos int NOT NULL, UNIQUE (team, name));
                 CREATE TABLE mixed_ref (LIKE mixed INCLUDING ALL)",
            )
            .await
            .unwrap();
        let names = ["a", "A", "b", "ß", "SS", "ss", "Ǆ", "ǆ", "i", "I", "İ", "ı"];
        let mut rng = bulk_tests::Rng::new(42 + pad as u64);
        let rows: Vec<Mixed> = (0..60)
            .map(|pos| Mixed {
                team: [i64::MIN, 0, i64::MAX][rng.below(3) as usize],
                name: names[rng.below(names.len() as u64) as usize].to_owned(),
                pos,
            })
            .collect();
        // Some stored first, in both tables.
        Mixed::bulk_create_new(&mut client, rows[..5].iter().map(|r| Mixed { pos: -5, ..r.clone() })).await.unwrap();
        client.batch_execute("INSERT INTO mixed_ref SELECT * FROM mixed").await.unwrap();
        let mut want = Vec::new();
        for r in &rows {
            let n = client
                .execute(
                    "INSERT INTO mixed_ref VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&r.team, &r.name, &r.pos],
                )
                .await
                .unwrap();
            if n == 1 {
                want.push(r.pos);
            }
        }
        let mut batch = rows.clone();
        batch.extend((0..pad as i64).map(|i| Mixed { team: 1 + i, name: "f".into(), pos: -1 }));
        let o = Mixed::bulk_create_new(&mut client, &batch).await.unwrap();
        let got: Vec<i32> = client
            .query("SELECT pos FROM mixed WHERE pos >= 0 ORDER BY pos", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(got, want, "{}", path(pad));
        assert_eq!(o.inserted, (want.len() + pad) as u64, "{}", path(pad));
        db.drop().await;
    }
}

// ---------------------------------------------------------------------------
// `time::OffsetDateTime` keys: one instant in two offsets is one key.
// A nullable enum key.

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "instant", unique(at), id = false)]
struct Instant {
    at: time::OffsetDateTime,
    pos: i32,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "moody", unique(mood), nulls_not_distinct, id = false)]
struct Moody {
    mood: Option<Mood>,
    pos: i32,
}

#[tokio::test]
async fn offset_datetime_keys_in_other_offsets_and_nullable_enum_keys() {
    for pad in PADS {
        let db = TestDb::new(&format!("edge_offset_{pad}")).await;
        let mut client = db.connect().await;
        client.batch_execute("CREATE TYPE mood AS ENUM ('happy', 'missing')").await.unwrap();
        client.batch_execute(&Instant::model().migration_sql()).await.unwrap();
        client.batch_execute(&Moody::model().migration_sql()).await.unwrap();
        let t = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let plus2 = t.to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
        let minus = t.to_offset(time::UtcOffset::from_hms(-9, -30, 0).unwrap());
        let mut batch = vec![
            Instant { at: plus2, pos: 0 },
            Instant { at: t, pos: 1 },
            Instant { at: minus, pos: 2 },
            Instant { at: t + time::Duration::nanoseconds(999), pos: 3 }, // the same microsecond
            Instant { at: t + time::Duration::microseconds(1), pos: 4 },
        ];
        batch.extend((0..pad as i64).map(|i| Instant { at: t + time::Duration::seconds(10 + i), pos: -1 }));
        let o = Instant::bulk_create_new(&mut client, &batch).await.unwrap();
        let got: Vec<i32> = client
            .query("SELECT pos FROM instant WHERE pos >= 0 ORDER BY pos", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(got, [0, 4], "{}", path(pad));
        assert_eq!(o.inserted, 2 + pad as u64, "{}", path(pad));

        let mut batch = vec![
            Moody { mood: None, pos: 0 },
            Moody { mood: Some(Mood::Happy), pos: 1 },
            Moody { mood: None, pos: 2 },
            Moody { mood: Some(Mood::Happy), pos: 3 },
            Moody { mood: Some(Mood::Missing), pos: 4 },
        ];
        batch.extend((0..pad).map(|_| Moody { mood: None, pos: -1 }));
        let r = Moody::bulk(&mut client).returning_keys().run(&batch).await.unwrap();
        let mut idx: Vec<usize> = r.returned.iter().map(|n| n.index).collect();
        idx.sort_unstable();
        assert_eq!(idx, [0, 1, 4], "{}", path(pad));
        assert_eq!((r.inserted, r.skipped), (3, 2 + pad as u64), "{}", path(pad));
        db.drop().await;
    }
}

// ---------------------------------------------------------------------------
// A key column's type changed between calls on one warm connection (every
// kind of call prepared first): char(n) <-> text, citext -> text, text ->
// text COLLATE ci. Repeats must then be found under the new equality.

async fn type_change(pad: usize, from: &str, to: &str, pair: [&str; 2], equal_after: bool) -> Vec<String> {
    let mut failures = Vec::new();
    let db = TestDb::new(&format!("edge_type_change_{pad}")).await;
    create_extension_citext(&db).await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!(
            "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
             CREATE TABLE person (name {from} NOT NULL UNIQUE, pos int NOT NULL)"
        ))
        .await
        .unwrap();
    // Warm every kind of call.
    let warm = people(&["warm"], pad, 0);
    Person::bulk_create_new(&mut client, &warm).await.unwrap();
    Person::bulk(&mut client).returning_keys().run(&warm).await.unwrap();
    Person::bulk(&mut client).returning_skipped().run(&warm).await.unwrap();
    Person::bulk(&mut client).upsert(Upsert::all_columns().keep(Keep::First)).run(&warm).await.unwrap();
    client.batch_execute(&format!("TRUNCATE person; ALTER TABLE person ALTER COLUMN name TYPE {to}")).await.unwrap();
    let ctx = format!("{} {from} -> {to}", path(pad));
    let (want_inserted, want_skipped) = if equal_after { (1, 1) } else { (2, 0) };
    let batch = people(&pair, pad, 10_000);
    match Person::bulk_create_new(&mut client, &batch).await {
        Ok(o) if (o.inserted, o.skipped) == (want_inserted + pad as u64, want_skipped) => {}
        Ok(o) => failures.push(format!("{ctx}: plain {o:?}")),
        Err(e) => failures.push(format!("{ctx}: plain {e}")),
    }
    client.batch_execute("TRUNCATE person").await.unwrap();
    match Person::bulk(&mut client).returning_keys().run(&batch).await {
        Ok(r) if r.inserted == want_inserted + pad as u64 => {}
        Ok(r) => failures.push(format!("{ctx}: returning_keys inserted {}", r.inserted)),
        Err(e) => failures.push(format!("{ctx}: returning_keys {e}")),
    }
    client.batch_execute("TRUNCATE person").await.unwrap();
    match Person::bulk(&mut client).returning_skipped().run(&batch).await {
        Ok(r) if r.inserted == want_inserted + pad as u64 => {}
        Ok(r) => failures.push(format!("{ctx}: returning_skipped inserted {}", r.inserted)),
        Err(e) => failures.push(format!("{ctx}: returning_skipped {e}")),
    }
    client.batch_execute("TRUNCATE person").await.unwrap();
    match Person::bulk(&mut client).upsert(Upsert::all_columns().keep(Keep::First)).run(&batch).await {
        Ok(r) if (r.inserted, r.skipped) == (want_inserted + pad as u64, want_skipped) => {}
        Ok(r) => failures.push(format!("{ctx}: upsert {r:?}")),
        Err(e) => failures.push(format!("{ctx}: upsert {e}")),
    }
    db.drop().await;
    failures
}

#[tokio::test]
async fn a_key_columns_type_changed_between_calls_on_one_warm_connection() {
    let mut failures = Vec::new();
    for pad in PADS {
        failures.extend(type_change(pad, "char(10)", "text", ["ab", "ab "], false).await);
        failures.extend(type_change(pad, "text", "char(10)", ["ab", "ab "], true).await);
        failures.extend(type_change(pad, "public.citext", "text", ["Ab", "aB"], false).await);
        failures.extend(type_change(pad, "text", "public.citext", ["Ab", "aB"], true).await);
        failures.extend(type_change(pad, "text", "text COLLATE ci", ["Ab", "aB"], true).await);
        failures.extend(type_change(pad, "text COLLATE ci", "varchar(3)", ["Ab", "aB"], false).await);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

async fn lossy_stored(c: &Client) -> Option<i32> {
    c.query_opt("SELECT pos FROM lossy_i64 WHERE pos >= 0", &[]).await.unwrap().map(|r| r.get::<_, i32>(0))
}

// The calls that map stored rows back to offered ones, on the `i64` key
// stored as `double precision` (see `an_i64_key_on_a_double_column_is_refused`):
// refused by the schema check too.
#[tokio::test]
async fn an_i64_key_on_a_double_column_with_the_builder() {
    let mut failures = Vec::new();
    for pad in PADS {
        let db = TestDb::new(&format!("edge_lossy_builder_{pad}")).await;
        let mut client = db.connect().await;
        client.batch_execute(&LossyI64::model().migration_sql()).await.unwrap();
        let mut batch = vec![LossyI64 { k: (1 << 53) + 1, pos: 0 }, LossyI64 { k: 1 << 53, pos: 1 }];
        batch.extend((0..pad as i64).map(|i| LossyI64 { k: 1_000_000 + i, pos: -1 }));
        match LossyI64::bulk(&mut client).returning_keys().run(&batch).await {
            Err(Error::SchemaMismatch { problems, .. })
                if problems.iter().any(|p| matches!(p, SchemaProblem::KeyConverted { .. })) => {}
            Ok(r) => failures.push(format!(
                "{} returning_keys: inserted {} (rows in the table: {}), indexes {:?}, stored pos {:?}",
                path(pad),
                r.inserted,
                count(&client, "lossy_i64").await,
                r.returned.iter().map(|n| n.index).filter(|&i| i < 2).collect::<Vec<_>>(),
                lossy_stored(&client).await
            )),
            Err(e) => failures.push(format!("{} returning_keys: {e}", path(pad))),
        }
        client.batch_execute("TRUNCATE lossy_i64").await.unwrap();
        match LossyI64::bulk(&mut client).upsert(Upsert::all_columns().keep(Keep::Last)).run(&batch).await {
            Err(Error::SchemaMismatch { problems, .. })
                if problems.iter().any(|p| matches!(p, SchemaProblem::KeyConverted { .. })) => {}
            Ok(r) => failures.push(format!(
                "{} upsert keep last: {r:?}, rows in the table: {}, stored pos {:?}",
                path(pad),
                count(&client, "lossy_i64").await,
                lossy_stored(&client).await
            )),
            Err(e) => failures.push(format!("{} upsert keep last: {e}", path(pad))),
        }
        db.drop().await;
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// An enum type without any label (`CREATE TYPE ... AS ENUM ()`): the check
/// names every label of the Rust enum as missing, before any row is sent.
#[tokio::test]
async fn an_enum_type_without_labels_is_refused_naming_every_label() {
    #[derive(BulkType, Debug, Clone, Copy, PartialEq)]
    #[bulk(type = "bare_mood")]
    enum BareMood {
        Calm,
        #[bulk(rename = "so-so")]
        SoSo,
    }
    #[derive(BulkCreateNew, Debug, Clone)]
    #[bulk(table = "bare", unique(k))]
    struct Bare {
        k: i64,
        mood: Option<BareMood>,
    }
    let db = TestDb::new("edge_bare_enum").await;
    let mut client = db.connect().await;
    client.batch_execute("CREATE TYPE bare_mood AS ENUM ()").await.unwrap();
    client.batch_execute(&Bare::model().migration_sql()).await.unwrap();
    for pad in PADS {
        let rows: Vec<Bare> = (0..pad as i64 + 2).map(|k| Bare { k, mood: None }).collect();
        let found = match Bare::bulk_create_new(&mut client, &rows).await {
            Err(Error::SchemaMismatch { problems, .. }) => problems,
            other => panic!("{}: {other:?}", path(pad)),
        };
        let want = SchemaProblem::EnumLabelsMissing {
            column: "mood".into(),
            found: "bare_mood".into(),
            labels: vec!["calm".into(), "so-so".into()],
        };
        assert_eq!(found, vec![want], "{}", path(pad));
        assert_eq!(count(&client, "bare").await, 0);
    }
    db.drop().await;
}
