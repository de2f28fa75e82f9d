//! A round trip of every supported field type, with extreme values, read back
//! with plain SELECTs and compared with what was offered.

use std::borrow::Cow;

use bulk_runtime::BulkCreateNew;
use bulk_tests::{COPY_BATCH, TestDb};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde_json::{Value, json};
use tokio_postgres::Client;
use uuid::Uuid;

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "every_type", unique(key))]
struct Every<'a> {
    key: i32,
    small: i16,
    int: i32,
    big: i64,
    real: f32,
    double: f64,
    flag: bool,
    owned: String,
    borrowed: &'a str,
    cow: Cow<'a, str>,
    boxed: Box<str>,
    bytes: Vec<u8>,
    byte_slice: &'a [u8],
    byte_cow: Cow<'a, [u8]>,
    date: NaiveDate,
    timestamp: NaiveDateTime,
    timestamptz: DateTime<Utc>,
    uuid: Uuid,
    json: Value,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "every_option", unique(key))]
struct EveryOption<'a> {
    key: i32,
    small: Option<i16>,
    int: Option<i32>,
    big: Option<i64>,
    real: Option<f32>,
    double: Option<f64>,
    flag: Option<bool>,
    owned: Option<String>,
    borrowed: Option<&'a str>,
    cow: Option<Cow<'a, str>>,
    boxed: Option<Box<str>>,
    bytes: Option<Vec<u8>>,
    byte_slice: Option<&'a [u8]>,
    byte_cow: Option<Cow<'a, [u8]>>,
    date: Option<NaiveDate>,
    timestamp: Option<NaiveDateTime>,
    timestamptz: Option<DateTime<Utc>>,
    uuid: Option<Uuid>,
    json: Option<Value>,
}

const SELECT: &str = "SELECT key, small, int, big, real, double, flag, owned, borrowed, cow, boxed, bytes, \
                      byte_slice, byte_cow, date, timestamp, timestamptz, uuid, json FROM ";

/// What is read back, as owned values.
#[derive(Debug, PartialEq)]
struct Read {
    key: i32,
    small: Option<i16>,
    int: Option<i32>,
    big: Option<i64>,
    real: Option<F32>,
    double: Option<F64>,
    flag: Option<bool>,
    texts: [Option<String>; 4],
    bytes: [Option<Vec<u8>>; 3],
    date: Option<NaiveDate>,
    timestamp: Option<NaiveDateTime>,
    timestamptz: Option<DateTime<Utc>>,
    uuid: Option<Uuid>,
    json: Option<Value>,
}

/// Floats compared bit for bit, so NaN equals NaN and -0.0 differs from 0.0.
#[derive(Debug)]
struct F32(f32);
impl PartialEq for F32 {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits() || (self.0.is_nan() && other.0.is_nan())
    }
}
#[derive(Debug)]
struct F64(f64);
impl PartialEq for F64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits() || (self.0.is_nan() && other.0.is_nan())
    }
}

impl From<&Every<'_>> for Read {
    fn from(e: &Every<'_>) -> Read {
        Read {
            key: e.key,
            small: Some(e.small),
            int: Some(e.int),
            big: Some(e.big),
            real: Some(F32(e.real)),
            double: Some(F64(e.double)),
            flag: Some(e.flag),
            texts: [
                Some(e.owned.clone()),
                Some(e.borrowed.to_owned()),
                Some(e.cow.to_string()),
                Some(e.boxed.to_string()),
            ],
            bytes: [Some(e.bytes.clone()), Some(e.byte_slice.to_vec()), Some(e.byte_cow.to_vec())],
            date: Some(e.date),
            timestamp: Some(e.timestamp),
            timestamptz: Some(e.timestamptz),
            uuid: Some(e.uuid),
            json: Some(e.json.clone()),
        }
    }
}

impl From<&EveryOption<'_>> for Read {
    fn from(e: &EveryOption<'_>) -> Read {
        Read {
            key: e.key,
            small: e.small,
            int: e.int,
            big: e.big,
            real: e.real.map(F32),
            double: e.double.map(F64),
            flag: e.flag,
            texts: [
                e.owned.clone(),
                e.borrowed.map(str::to_owned),
                e.cow.as_ref().map(|c| c.to_string()),
                e.boxed.as_ref().map(|b| b.to_string()),
            ],
            bytes: [e.bytes.clone(), e.byte_slice.map(<[u8]>::to_vec), e.byte_cow.as_ref().map(|c| c.to_vec())],
            date: e.date,
            timestamp: e.timestamp,
            timestamptz: e.timestamptz,
            uuid: e.uuid,
            json: e.json.clone(),
        }
    }
}

/// Keys from here on are filler rows that lengthen a batch to the COPY path.
const FILLER: i32 = 1_000_000;

async fn read_back(client: &Client, table: &str) -> Vec<Read> {
    client
        .query(&format!("{SELECT}{table} WHERE key < {FILLER} ORDER BY key"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| Read {
            key: r.get(0),
            small: r.get(1),
            int: r.get(2),
            big: r.get(3),
            real: r.get::<_, Option<f32>>(4).map(F32),
            double: r.get::<_, Option<f64>>(5).map(F64),
            flag: r.get(6),
            texts: [r.get(7), r.get(8), r.get(9), r.get(10)],
            bytes: [r.get(11), r.get(12), r.get(13)],
            date: r.get(14),
            timestamp: r.get(15),
            timestamptz: r.get(16),
            uuid: r.get(17),
            json: r.get(18),
        })
        .collect()
}

/// 1 MiB of pseudo-random bytes, NULs and 0xff included.
fn megabyte() -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn timestamp(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32, micro: u32) -> NaiveDateTime {
    date(y, m, d).and_hms_micro_opt(h, min, s, micro).unwrap()
}

#[tokio::test]
async fn every_type_round_trips_with_extreme_values() {
    every_type(0).await;
}

#[tokio::test]
async fn every_type_round_trips_with_extreme_values_through_copy() {
    every_type(COPY_BATCH).await;
}

async fn every_type(pad: usize) {
    let db = TestDb::new(&format!("every_type_{pad}")).await;
    let mut client = db.connect().await;
    client.batch_execute(&Every::model().migration_sql()).await.unwrap();
    let big_blob = megabyte();
    assert!(big_blob.contains(&0) && big_blob.contains(&0xff));
    let tricky = String::from("tab\there, newline\nand \\N, \"quotes\", 'single', comma, |pipe|\r");
    let json_doc = json!({
        "text": "ünïcødé ✓ 🎉", "null": null, "int": i64::MIN, "uint": u64::MAX, "float": 0.1,
        "nested": {"array": [1, "two", [3.5], {}], "empty": ""}, "bool": true, "quote\"key": "back\\slash"
    });

    let max = Every {
        key: 1,
        small: i16::MAX,
        int: i32::MAX,
        big: i64::MAX,
        real: f32::MAX,
        double: f64::MAX,
        flag: true,
        owned: "非ASCII テキスト — ünïcødé, emoji 🦀🎉, RTL שלום, combining e\u{301}".to_owned(),
        borrowed: &tricky,
        cow: Cow::Owned("x".repeat(100_000)),
        boxed: "boxed".into(),
        bytes: big_blob.clone(),
        byte_slice: &big_blob[..1000],
        byte_cow: Cow::Owned(vec![0xff; 3]),
        date: NaiveDate::MAX,
        timestamp: timestamp(262_142, 12, 31, 23, 59, 59, 999_999),
        timestamptz: Utc.from_utc_datetime(&timestamp(9999, 12, 31, 23, 59, 59, 999_999)),
        uuid: Uuid::max(),
        json: json_doc.clone(),
    };
    let min = Every {
        key: 2,
        small: i16::MIN,
        int: i32::MIN,
        big: i64::MIN,
        real: f32::MIN,
        double: f64::MIN,
        flag: false,
        owned: String::new(),
        borrowed: "",
        cow: Cow::Borrowed(""),
        boxed: "".into(),
        bytes: Vec::new(),
        byte_slice: &[],
        byte_cow: Cow::Borrowed(&[]),
        date: date(-4712, 11, 24),
        timestamp: timestamp(-4712, 11, 24, 0, 0, 0, 0),
        timestamptz: Utc.from_utc_datetime(&timestamp(-4712, 11, 24, 0, 0, 0, 0)),
        uuid: Uuid::nil(),
        json: Value::Null,
    };
    let specials = [
        (f32::INFINITY, f64::INFINITY),
        (f32::NEG_INFINITY, f64::NEG_INFINITY),
        (f32::NAN, f64::NAN),
        (-0.0, -0.0),
        (f32::MIN_POSITIVE, f64::MIN_POSITIVE),
        (f32::from_bits(1), f64::from_bits(1)), // the smallest subnormals
        (f32::EPSILON, 0.1 + 0.2),
    ];
    let mut rows = vec![max, min];
    for (i, (r, d)) in specials.into_iter().enumerate() {
        rows.push(Every {
            key: 3 + i as i32,
            small: 0,
            int: -1,
            big: 0,
            real: r,
            double: d,
            flag: i % 2 == 0,
            owned: format!("special {i}"),
            borrowed: "b",
            cow: Cow::Borrowed("c"),
            boxed: format!("{i}").into_boxed_str(),
            bytes: vec![0],
            byte_slice: b"\0\\x00",
            byte_cow: Cow::Borrowed(b"\\"),
            date: date(2000, 1, 1),
            timestamp: timestamp(1970, 1, 1, 0, 0, 0, 1),
            timestamptz: DateTime::from_timestamp(-1, 999_999_000).unwrap(),
            uuid: Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210 + i as u128),
            json: json!([i, -0.5, "s", [], {}, false]),
        });
    }

    let want: Vec<Read> = rows.iter().map(Read::from).collect();
    let filler = Every { real: 1.0, double: 2.0, ..rows[2].clone() };
    rows.extend((0..pad as i32).map(|i| Every { key: FILLER + i, ..filler.clone() }));
    let o = Every::bulk_create_new(&mut client, &rows).await.unwrap();
    assert_eq!((o.offered, o.inserted), (rows.len() as u64, rows.len() as u64));
    let got = read_back(&client, "every_type").await;
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "row with key {}", w.key);
    }
    // Spot-check on the server side too, independent of the client decoding.
    let inf: i64 = client
        .query_one("SELECT count(*) FROM every_type WHERE real = 'Infinity' AND double = 'Infinity'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(inf, 1);
    let ninf: i64 = client
        .query_one("SELECT count(*) FROM every_type WHERE real = '-Infinity' AND double = '-Infinity'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ninf, 1);
    let nan: i64 = client.query_one("SELECT count(*) FROM every_type WHERE double = 'NaN'", &[]).await.unwrap().get(0);
    assert_eq!(nan, 1);
    let (blob_len, blob_md5, md5): (i32, String, String) = {
        let r = client
            .query_one(
                "SELECT octet_length(bytes), md5(bytes), md5($1::bytea) FROM every_type WHERE key = 1",
                &[&big_blob],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(blob_len, 1 << 20);
    assert_eq!(blob_md5, md5);
    let json_text: String =
        client.query_one("SELECT json ->> 'text' FROM every_type WHERE key = 1", &[]).await.unwrap().get(0);
    assert_eq!(json_text, "ünïcødé ✓ 🎉");
    let kinds: Vec<String> = client
        .query("SELECT jsonb_typeof(json) FROM every_type WHERE key IN (1, 2) ORDER BY key", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kinds, ["object", "null"], "Value::Null is a JSON null, not SQL NULL");
    db.drop().await;
}

#[tokio::test]
async fn every_option_type_round_trips_some_and_none() {
    every_option(0).await;
}

#[tokio::test]
async fn every_option_type_round_trips_some_and_none_through_copy() {
    every_option(COPY_BATCH).await;
}

async fn every_option(pad: usize) {
    let db = TestDb::new(&format!("every_option_{pad}")).await;
    let mut client = db.connect().await;
    client.batch_execute(&EveryOption::model().migration_sql()).await.unwrap();
    let blob = megabyte();
    let none = EveryOption {
        key: 1,
        small: None,
        int: None,
        big: None,
        real: None,
        double: None,
        flag: None,
        owned: None,
        borrowed: None,
        cow: None,
        boxed: None,
        bytes: None,
        byte_slice: None,
        byte_cow: None,
        date: None,
        timestamp: None,
        timestamptz: None,
        uuid: None,
        json: None,
    };
    let some = EveryOption {
        key: 2,
        small: Some(i16::MIN),
        int: Some(i32::MAX),
        big: Some(i64::MIN),
        real: Some(f32::NAN),
        double: Some(f64::NEG_INFINITY),
        flag: Some(false),
        owned: Some(String::new()),
        borrowed: Some("日本語"),
        cow: Some(Cow::Borrowed("\u{7f}\u{1}")),
        boxed: Some("b".into()),
        bytes: Some(blob.clone()),
        byte_slice: Some(&[]),
        byte_cow: Some(Cow::Borrowed(&[0, 0, 0])),
        date: Some(date(1, 1, 1)),
        timestamp: Some(timestamp(2038, 1, 19, 3, 14, 8, 123_456)),
        timestamptz: Some(Utc.from_utc_datetime(&timestamp(1969, 12, 31, 23, 59, 59, 1))),
        uuid: Some(Uuid::from_u128(1)),
        // Some(JSON null) is a JSON null, distinct from SQL NULL.
        json: Some(Value::Null),
    };
    let extreme = EveryOption {
        key: 3,
        small: Some(i16::MAX),
        int: Some(i32::MIN),
        big: Some(i64::MAX),
        real: Some(f32::INFINITY),
        double: Some(f64::NAN),
        flag: Some(true),
        owned: Some("ÿ".repeat(10_000)),
        borrowed: Some(""),
        cow: Some(Cow::Owned(String::new())),
        boxed: Some("".into()),
        bytes: Some(vec![]),
        byte_slice: Some(&blob[blob.len() - 7..]),
        byte_cow: Some(Cow::Owned(vec![])),
        date: Some(date(-4712, 11, 24)),
        timestamp: Some(timestamp(262_142, 12, 31, 23, 59, 59, 999_999)),
        timestamptz: Some(DateTime::<Utc>::UNIX_EPOCH),
        uuid: Some(Uuid::max()),
        json: Some(json!({"k": [null]})),
    };
    let mut rows = vec![none, some, extreme];
    let want: Vec<Read> = rows.iter().map(Read::from).collect();
    // Filler alternates between the all-None row and the all-Some row (with a
    // short blob instead of the megabyte).
    let all_some = EveryOption { bytes: Some(vec![1, 2, 3]), ..rows[1].clone() };
    let fill: Vec<EveryOption<'_>> = (0..pad as i32)
        .map(|i| EveryOption { key: FILLER + i, ..if i % 2 == 0 { rows[0].clone() } else { all_some.clone() } })
        .collect();
    rows.extend(fill);
    let o = EveryOption::bulk_create_new(&mut client, &rows).await.unwrap();
    assert_eq!(o.inserted, rows.len() as u64);
    let got = read_back(&client, "every_option").await;
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "row with key {}", w.key);
    }
    let (all_null, json_null): (bool, bool) = {
        let r = client
            .query_one(
                "SELECT (SELECT num_nulls(small, int, big, real, double, flag, owned, borrowed, cow, boxed, bytes,
                                          byte_slice, byte_cow, date, timestamp, timestamptz, uuid, json) = 18
                           FROM every_option WHERE key = 1),
                        (SELECT json IS NOT NULL AND jsonb_typeof(json) = 'null' FROM every_option WHERE key = 2)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(all_null, "None is stored as SQL NULL in every column");
    assert!(json_null, "Some(Value::Null) is stored as a JSON null");
    db.drop().await;
}

#[tokio::test]
async fn text_and_bytea_keys_round_trip() {
    #[derive(BulkCreateNew)]
    #[bulk(table = "blob_key", unique(name, blob))]
    struct BlobKey<'a> {
        name: &'a str,
        blob: &'a [u8],
    }
    let db = TestDb::new("blob_key").await;
    let mut client = db.connect().await;
    client.batch_execute(&BlobKey::model().migration_sql()).await.unwrap();
    let names = ["", "a", "A", "ä", "a\u{308}", " a", "a ", "🦀"];
    let blobs: [&[u8]; 3] = [b"", b"\0", b"\0\0"];
    let rows: Vec<BlobKey<'_>> =
        names.iter().flat_map(|n| blobs.iter().map(move |b| BlobKey { name: n, blob: b })).collect();
    // Offered twice: byte-distinct keys must not be folded together.
    let o = BlobKey::bulk_create_new(&mut client, rows.iter().chain(&rows)).await.unwrap();
    assert_eq!((o.offered, o.inserted), (2 * rows.len() as u64, rows.len() as u64));
    let mut got: Vec<(String, Vec<u8>)> = client
        .query("SELECT name, blob FROM blob_key", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut want: Vec<(String, Vec<u8>)> = rows.iter().map(|r| (r.name.to_owned(), r.blob.to_vec())).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    db.drop().await;
}
