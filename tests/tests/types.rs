//! A round trip of every supported field type, with extreme values, read back
//! with plain SELECTs and compared with what was offered.

use std::borrow::Cow;

use bulk_runtime::__test_hooks::{SMALL_BATCH, SMALL_BATCH_ARRAY_ELEMENTS};
use bulk_runtime::BulkCreateNew;
use bulk_tests::recorder::SqlRecorder;
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

// ---------------------------------------------------------------------------
// The types of issue 13 item 5: numeric, the `time` crate, NaiveTime, inet,
// arrays, typed JSON, PostgreSQL enums and newtypes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bulk_runtime::{BulkType, Json, PgEnum};
use chrono::NaiveTime;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// Declared out of label order: PostgreSQL sorts an enum by declaration.
#[derive(BulkType, Debug, Clone, Copy, PartialEq)]
#[bulk(type = "mood")]
enum Mood {
    Sad,
    Happy,
    #[bulk(rename = "so so, 'quoted'")]
    SoSo,
}

#[derive(BulkType, Debug, Clone, PartialEq)]
struct UserId(i64);

#[derive(BulkType, Debug, Clone, PartialEq)]
struct Label(String);

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Payload {
    n: i64,
    text: String,
    tags: Vec<String>,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "more_types", unique(key))]
struct More {
    key: i32,
    decimal: Decimal,
    naive_time: NaiveTime,
    date: time::Date,
    primitive: PrimitiveDateTime,
    instant: OffsetDateTime,
    time: time::Time,
    ip: IpAddr,
    payload: Json<Payload>,
    mood: Mood,
    user: UserId,
    label: Label,
    maybe_decimal: Option<Decimal>,
    maybe_ip: Option<IpAddr>,
    maybe_mood: Option<Mood>,
    maybe_user: Option<UserId>,
    maybe_time: Option<time::Time>,
}

type MoreRead = (
    i32,
    Decimal,
    NaiveTime,
    time::Date,
    PrimitiveDateTime,
    OffsetDateTime,
    time::Time,
    IpAddr,
    Payload,
    (Mood, UserId, Label),
    (Option<Decimal>, Option<IpAddr>, Option<Mood>, Option<UserId>, Option<time::Time>),
);

fn more_read(m: &More) -> MoreRead {
    (
        m.key,
        m.decimal,
        m.naive_time,
        m.date,
        m.primitive,
        m.instant,
        m.time,
        m.ip,
        m.payload.0.clone(),
        (m.mood, m.user.clone(), m.label.clone()),
        (m.maybe_decimal, m.maybe_ip, m.maybe_mood, m.maybe_user.clone(), m.maybe_time),
    )
}

fn time_date(julian: i32) -> time::Date {
    time::Date::from_julian_day(julian).unwrap()
}

fn hms_micro(h: u8, m: u8, s: u8, micro: u32) -> time::Time {
    time::Time::from_hms_micro(h, m, s, micro).unwrap()
}

#[tokio::test]
async fn more_types_round_trip_with_extreme_values() {
    more_types(0).await;
}

#[tokio::test]
async fn more_types_round_trip_with_extreme_values_through_copy() {
    more_types(COPY_BATCH).await;
}

async fn more_types(pad: usize) {
    let db = TestDb::new(&format!("more_types_{pad}")).await;
    let mut client = db.connect().await;
    client.batch_execute(&Mood::create_type_sql()).await.unwrap();
    client.batch_execute(&More::model().migration_sql()).await.unwrap();
    let ts = |julian: i32, t: time::Time| PrimitiveDateTime::new(time_date(julian), t);
    let max = More {
        key: 1,
        decimal: Decimal::MAX,
        naive_time: NaiveTime::from_hms_micro_opt(23, 59, 59, 999_999).unwrap(),
        // 5874897-12-31, PostgreSQL's last date, and 294276-12-31, its last timestamp.
        date: time::Date::MAX,
        primitive: ts(
            time::Date::from_calendar_date(9999, time::Month::December, 31).unwrap().to_julian_day(),
            hms_micro(23, 59, 59, 999_999),
        ),
        instant: OffsetDateTime::from_unix_timestamp_nanos(253_402_300_799_999_999_000).unwrap(),
        time: hms_micro(23, 59, 59, 999_999),
        ip: IpAddr::V6(Ipv6Addr::new(0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff)),
        payload: Json(Payload {
            n: i64::MAX,
            text: "ünïcødé \"q\" \\ 🎉".into(),
            tags: vec!["a".into(), String::new()],
        }),
        mood: Mood::SoSo,
        user: UserId(i64::MAX),
        label: Label("tab\there\nnewline".into()),
        maybe_decimal: Some(Decimal::new(-1, 28)),
        maybe_ip: Some(IpAddr::V4(Ipv4Addr::BROADCAST)),
        maybe_mood: Some(Mood::Happy),
        maybe_user: Some(UserId(-1)),
        maybe_time: Some(hms_micro(0, 0, 0, 1)),
    };
    let min = More {
        key: 2,
        decimal: Decimal::MIN,
        naive_time: NaiveTime::MIN,
        date: time_date(0), // 4713-11-24 BC
        primitive: ts(0, time::Time::MIDNIGHT),
        instant: OffsetDateTime::from_unix_timestamp(-1).unwrap().to_offset(UtcOffset::from_hms(-9, -30, 0).unwrap()),
        time: time::Time::MIDNIGHT,
        ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        payload: Json(Payload { n: i64::MIN, text: String::new(), tags: Vec::new() }),
        mood: Mood::Sad,
        user: UserId(i64::MIN),
        label: Label(String::new()),
        maybe_decimal: None,
        maybe_ip: None,
        maybe_mood: None,
        maybe_user: None,
        maybe_time: None,
    };
    let scaled = More {
        key: 3,
        // Scale is kept: 1.500 reads back as 1.500.
        decimal: Decimal::new(1500, 3),
        ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
        instant: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_000)
            .unwrap()
            .to_offset(UtcOffset::from_hms(5, 45, 0).unwrap()),
        maybe_decimal: Some(Decimal::ZERO),
        ..min.clone()
    };
    let mut rows = vec![max, min, scaled];
    let want: Vec<MoreRead> = rows.iter().map(more_read).collect();
    let filler = rows[1].clone();
    rows.extend((0..pad as i32).map(|i| More { key: FILLER + i, ..filler.clone() }));
    let o = More::bulk_create_new(&mut client, &rows).await.unwrap();
    assert_eq!((o.offered, o.inserted), (rows.len() as u64, rows.len() as u64));

    let got: Vec<MoreRead> = client
        .query(
            &format!(
                "SELECT key, decimal, naive_time, date, primitive, instant, time, ip, payload, mood, \"user\", label, \
                 maybe_decimal, maybe_ip, maybe_mood, maybe_user, maybe_time FROM more_types WHERE key < {FILLER} \
                 ORDER BY key"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
                r.get::<_, Json<Payload>>(8).0,
                (r.get(9), r.get(10), r.get(11)),
                (r.get(12), r.get(13), r.get(14), r.get(15), r.get(16)),
            )
        })
        .collect();
    assert_eq!(got, want);
    // Checked as text on the server, independent of the client's decoding.
    let text: Vec<(String, String, String, String)> = client
        .query(
            "SELECT decimal::text, host(ip), mood::text, instant::text FROM more_types WHERE key IN (1, 3) ORDER BY key",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(text[0].0, "79228162514264337593543950335");
    assert_eq!(text[0].1, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    assert_eq!(text[0].2, "so so, 'quoted'");
    assert_eq!(text[1].0, "1.500");
    assert_eq!(text[1].1, "::1");
    let same_instant: bool = client
        .query_one("SELECT instant = '2023-11-14 22:13:20.123456+00' FROM more_types WHERE key = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert!(same_instant, "{}", text[1].3);
    let types: Vec<String> = client
        .query(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'more_types'::regclass \
             AND attname IN ('decimal', 'time', 'ip', 'payload', 'mood', 'user', 'label') ORDER BY attnum",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(types, ["numeric", "time without time zone", "inet", "jsonb", "mood", "bigint", "text"]);
    db.drop().await;
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "arrays", unique(key))]
struct Arrays {
    key: i32,
    ints: Vec<i64>,
    smalls: Vec<i16>,
    texts: Vec<String>,
    floats: Vec<f64>,
    flags: Vec<bool>,
    blobs: Vec<Vec<u8>>,
    with_nulls: Vec<Option<i32>>,
    maybe: Option<Vec<String>>,
    decimals: Vec<Decimal>,
    ips: Vec<IpAddr>,
    dates: Vec<NaiveDate>,
    times: Vec<time::Time>,
    uuids: Vec<Uuid>,
    docs: Vec<Value>,
    maybe_with_nulls: Option<Vec<Option<String>>>,
}

type ArraysRead = (
    i32,
    (Vec<i64>, Vec<i16>, Vec<String>, Vec<f64>, Vec<bool>, Vec<Vec<u8>>),
    (Vec<Option<i32>>, Option<Vec<String>>, Vec<Decimal>, Vec<IpAddr>, Vec<NaiveDate>, Vec<time::Time>),
    (Vec<Uuid>, Vec<Value>, Option<Vec<Option<String>>>),
);

fn arrays_read(a: &Arrays) -> ArraysRead {
    (
        a.key,
        (a.ints.clone(), a.smalls.clone(), a.texts.clone(), a.floats.clone(), a.flags.clone(), a.blobs.clone()),
        (a.with_nulls.clone(), a.maybe.clone(), a.decimals.clone(), a.ips.clone(), a.dates.clone(), a.times.clone()),
        (a.uuids.clone(), a.docs.clone(), a.maybe_with_nulls.clone()),
    )
}

/// Whether the statements a recorder saw from `from` on include a COPY: the
/// COPY path sends (and parses) `COPY pg_temp.... FROM STDIN` at every call,
/// the short path never does.
fn sent_copy(recorder: &SqlRecorder, from: usize) -> bool {
    recorder.statements()[from..].iter().any(|s| s.starts_with("COPY "))
}

/// Whether the statements a recorder saw include the short path's statement
/// with its array columns rebuilt from their elements (prepared once per
/// connection, so it is sent only by the connection's first short batch).
fn sent_array_rebuild(recorder: &SqlRecorder) -> bool {
    recorder.statements().iter().any(|s| s.contains("unnest(") && s.contains("array_agg(") && !s.starts_with("COPY "))
}

/// The elements of a row's arrays.
fn array_elements(a: &Arrays) -> usize {
    let lens = [a.ints.len(), a.smalls.len(), a.texts.len(), a.floats.len(), a.flags.len(), a.blobs.len()];
    let more = [a.with_nulls.len(), a.maybe.as_ref().map_or(0, Vec::len), a.decimals.len(), a.ips.len()];
    let rest =
        [a.dates.len(), a.times.len(), a.uuids.len(), a.docs.len(), a.maybe_with_nulls.as_ref().map_or(0, Vec::len)];
    lens.iter().chain(&more).chain(&rest).sum()
}

/// A short batch takes the short path while its arrays hold fewer than
/// `SMALL_BATCH_ARRAY_ELEMENTS` elements in all, and COPY from there on;
/// both store the arrays exactly.
#[tokio::test]
async fn short_batches_with_many_array_elements_take_copy() {
    #[derive(BulkCreateNew, Debug, Clone, PartialEq)]
    #[bulk(table = "heavy", unique(key))]
    struct Heavy {
        key: i32,
        ints: Vec<Option<i64>>,
        texts: Option<Vec<String>>,
    }
    let db = TestDb::new("arrays_budget").await;
    let recorder = SqlRecorder::start().await;
    let mut client = recorder.connect(&db.schema).await;
    client.batch_execute(&Heavy::model().migration_sql()).await.unwrap();
    let budget = SMALL_BATCH_ARRAY_ELEMENTS;
    let mut stored = Vec::new();
    // The batch's elements in all: one short of the budget, the budget, a few.
    for (first, elements, copy) in [(0, budget - 1, false), (10, budget, true), (20, 3, false)] {
        // Three rows; the third holds one element (a NULL).
        let n = elements - 1;
        let rows = vec![
            Heavy { key: first, ints: (0..(n / 2) as i64).map(|i| (i % 7 != 0).then_some(i)).collect(), texts: None },
            Heavy { key: first + 1, ints: vec![], texts: Some((0..n - n / 2).map(|i| format!("t{i}")).collect()) },
            Heavy { key: first + 2, ints: vec![None], texts: Some(vec![]) },
        ];
        let before = recorder.statements().len();
        let o = Heavy::bulk_create_new(&mut client, &rows).await.unwrap();
        assert_eq!((o.offered, o.inserted), (3, 3));
        assert_eq!(sent_copy(&recorder, before), copy, "{elements} elements");
        stored.extend(rows);
    }
    let got: Vec<Heavy> = client
        .query("SELECT key, ints, texts FROM heavy ORDER BY key", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| Heavy { key: r.get(0), ints: r.get(1), texts: r.get(2) })
        .collect();
    assert_eq!(got, stored);
    db.drop().await;
}

#[tokio::test]
async fn arrays_round_trip() {
    arrays(600).await;
}

#[tokio::test]
async fn arrays_round_trip_through_copy() {
    arrays(COPY_BATCH).await;
}

/// Every array type, with empty arrays, NULL arrays, NULL elements and long
/// arrays, and `pad` rows of varied arrays after them, on the short path
/// (under `SMALL_BATCH` rows) or the COPY path: every row reads back as its
/// key's first offered row, and the recorder shows which path ran.
async fn arrays(pad: usize) {
    let db = TestDb::new(&format!("arrays_{pad}")).await;
    let recorder = SqlRecorder::start().await;
    let mut client = recorder.connect(&db.schema).await;
    client.batch_execute(&Arrays::model().migration_sql()).await.unwrap();
    let full = Arrays {
        key: 1,
        ints: vec![i64::MIN, 0, i64::MAX],
        smalls: vec![i16::MIN, -1, i16::MAX],
        texts: vec![String::new(), "NULL".into(), "{\"a\",b}".into(), "ünï 🎉".into(), "\\".into()],
        floats: vec![f64::INFINITY, -0.5, f64::MIN_POSITIVE],
        flags: vec![true, false],
        blobs: vec![vec![], vec![0, 0xff]],
        with_nulls: vec![None, Some(1), None],
        maybe: Some(vec!["x".into()]),
        decimals: vec![Decimal::MAX, Decimal::new(-12345, 4)],
        ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::UNSPECIFIED)],
        dates: vec![date(2024, 2, 29), NaiveDate::MAX],
        times: vec![hms_micro(12, 0, 0, 5)],
        uuids: vec![Uuid::max(), Uuid::nil()],
        docs: vec![json!({"a": [1, null]}), Value::Null],
        maybe_with_nulls: Some(vec![None, Some("NULL".into()), None, Some(String::new())]),
    };
    let empty = Arrays {
        key: 2,
        ints: vec![],
        smalls: vec![],
        texts: vec![],
        floats: vec![],
        flags: vec![],
        blobs: vec![],
        with_nulls: vec![],
        maybe: None,
        decimals: vec![],
        ips: vec![],
        dates: vec![],
        times: vec![],
        uuids: vec![],
        docs: vec![],
        maybe_with_nulls: None,
    };
    // Long arrays: thousands of elements in one row, NULLs among them (in
    // all, the batch stays under the short path's element budget).
    let long = Arrays {
        key: 4,
        ints: (0..5_000).map(|i| i * 7919 - 1_000_000).collect(),
        texts: (0..2_000).map(|i| format!("text {i}")).collect(),
        with_nulls: (0..3_000).map(|i| (i % 3 != 0).then_some(i)).collect(),
        maybe_with_nulls: Some((0..1_000usize).map(|i| i.is_multiple_of(2).then(|| "x".repeat(i % 50))).collect()),
        ..empty.clone()
    };
    let varied = |key: i32| {
        let i = key - FILLER;
        Arrays {
            key,
            ints: (0..i64::from(i % 5)).map(|j| j * 1000 + i64::from(i)).collect(),
            texts: (0..i % 3).map(|j| format!("{i}.{j}")).collect(),
            with_nulls: (0..i % 4).map(|j| (j % 2 == 1).then_some(i)).collect(),
            maybe: (i % 5 != 0).then(|| (0..i % 2).map(|_| i.to_string()).collect()),
            maybe_with_nulls: (i % 7 != 0).then(|| vec![None; (i % 3) as usize]),
            ..empty.clone()
        }
    };
    let mut rows = vec![
        full,
        empty.clone(),
        Arrays { key: 3, maybe: Some(vec![]), maybe_with_nulls: Some(vec![]), ..empty.clone() },
        long,
    ];
    rows.extend((0..pad as i32).map(|i| varied(FILLER + i)));
    let mut want: Vec<ArraysRead> = rows.iter().map(arrays_read).collect();
    want.sort_by_key(|r| r.0);
    // Keys 1 and FILLER + 1 again, with other values: the first offered row is kept.
    rows.insert(pad / 2, Arrays { key: 1, ..empty.clone() });
    rows.push(Arrays { key: FILLER + 1, ..varied(FILLER + 4) });
    let before = recorder.statements().len();
    let o = Arrays::bulk_create_new(&mut client, &rows).await.unwrap();
    assert_eq!((o.offered, o.inserted, o.skipped), (rows.len() as u64, rows.len() as u64 - 2, 2));
    let short = rows.len() < SMALL_BATCH;
    assert_eq!(short, pad < COPY_BATCH);
    let elements: usize = rows.iter().map(array_elements).sum();
    assert!(!short || elements < SMALL_BATCH_ARRAY_ELEMENTS, "{elements} elements");
    assert_eq!(sent_copy(&recorder, before), !short, "COPY sent for {} rows", rows.len());
    assert_eq!(sent_array_rebuild(&recorder), short);
    let got: Vec<ArraysRead> = client
        .query(
            "SELECT key, ints, smalls, texts, floats, flags, blobs, with_nulls, maybe, decimals, ips, dates, \
             times, uuids, docs, maybe_with_nulls FROM arrays ORDER BY key",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)),
                (r.get(7), r.get(8), r.get(9), r.get(10), r.get(11), r.get(12)),
                (r.get(13), r.get(14), r.get(15)),
            )
        })
        .collect();
    assert_eq!(got.len(), want.len());
    for (got, want) in got.iter().zip(&want) {
        assert_eq!(got, want, "key {}", want.0);
    }
    let r = client
        .query_one(
            "SELECT pg_typeof(ints)::text, array_length(with_nulls, 1), array_position(with_nulls, NULL), \
             array_lower(with_nulls, 1), array_ndims(texts), array_ndims(maybe_with_nulls) \
             FROM arrays WHERE key = 1",
            &[],
        )
        .await
        .unwrap();
    let dims: (&str, i32, i32, i32, Option<i32>, i32) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
    assert_eq!(dims, ("bigint[]", 3, 1, 1, Some(1), 1));
    // Empty arrays are `'{}'`, not NULL, and NULL arrays NULL.
    let r = client
        .query_one(
            "SELECT ints = '{}', texts IS NOT NULL, cardinality(docs), maybe IS NULL, maybe_with_nulls IS NULL \
             FROM arrays WHERE key = 2",
            &[],
        )
        .await
        .unwrap();
    let empty_and_null: (bool, bool, i32, bool, bool) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
    assert_eq!(empty_and_null, (true, true, 0, true, true));
    // A NUL inside an array's text is refused on the client, as in a text column.
    let bad = Arrays { key: 9, texts: vec!["a\0b".into()], ..empty };
    let err = Arrays::bulk_create_new(&mut client, [&bad]).await.unwrap_err();
    assert!(err.to_string().contains("NUL"), "{err}");
    db.drop().await;
}

/// Array columns beside a key that each short-path encoding handles: the
/// client packs `(i64, i16)` keys into 16 bytes, sorts `(Uuid, i16)` keys on
/// a longer form and `(bytea, i16)` keys on their bytes; the server orders
/// `(text, i16)` keys. Half the keys stored first; then every key offered,
/// every third again (other arrays, later in the batch): exact counts, stored
/// rows untouched, each new key from its first offered row, on both paths.
macro_rules! array_repeats {
    ($module:ident, $ty:ty, $key:expr) => {
        mod $module {
            use super::*;

            #[derive(BulkCreateNew, Debug, Clone, PartialEq)]
            #[bulk(table = "tagged", unique(key, part))]
            struct Tagged {
                key: $ty,
                part: i16,
                tags: Vec<String>,
                nums: Option<Vec<Option<i64>>>,
                pos: i32,
            }

            fn tagged(i: usize, pos: i32, what: &str) -> Tagged {
                let key: fn(usize) -> $ty = $key;
                Tagged {
                    key: key(i),
                    part: (i % 3) as i16,
                    tags: (0..i % 4).map(|j| format!("{what} {i}.{j}")).collect(),
                    nums: (!i.is_multiple_of(5))
                        .then(|| (0..i % 3).map(|j| (j != 1).then_some((i * 10 + j) as i64)).collect()),
                    pos,
                }
            }

            async fn run(n: usize) {
                let db = TestDb::new(&format!("array_repeats_{}_{n}", stringify!($module))).await;
                let recorder = SqlRecorder::start().await;
                let mut client = recorder.connect(&db.schema).await;
                client.batch_execute(&Tagged::model().migration_sql()).await.unwrap();
                let stored: Vec<Tagged> = (0..n).step_by(2).map(|i| tagged(i, -1 - i as i32, "stored")).collect();
                let o = Tagged::bulk_create_new(&mut client, &stored).await.unwrap();
                assert_eq!(o.inserted, stored.len() as u64);
                let mut offered: Vec<Tagged> = (0..n).map(|i| tagged(i, i as i32, "first")).collect();
                offered.extend((0..n).step_by(3).map(|i| Tagged {
                    tags: vec!["repeat".into()],
                    nums: Some(vec![None]),
                    ..tagged(i, (n + i) as i32, "repeat")
                }));
                let before = recorder.statements().len();
                let o = Tagged::bulk_create_new(&mut client, &offered).await.unwrap();
                let new = n - stored.len();
                assert_eq!(
                    (o.offered, o.inserted, o.skipped),
                    (offered.len() as u64, new as u64, (offered.len() - new) as u64)
                );
                assert_eq!(sent_copy(&recorder, before), offered.len() >= SMALL_BATCH);
                assert!(sent_array_rebuild(&recorder), "the stored rows took the short path");
                let mut want: Vec<Tagged> = stored;
                want.extend((1..n).step_by(2).map(|i| tagged(i, i as i32, "first")));
                want.sort_by_key(|t| t.pos);
                let got: Vec<Tagged> = client
                    .query("SELECT key, part, tags, nums, pos FROM tagged ORDER BY pos", &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| Tagged { key: r.get(0), part: r.get(1), tags: r.get(2), nums: r.get(3), pos: r.get(4) })
                    .collect();
                assert_eq!(got.len(), want.len());
                for (got, want) in got.iter().zip(&want) {
                    assert_eq!(got, want);
                }
                db.drop().await;
            }

            #[tokio::test]
            async fn short_batch() {
                run(1200).await;
            }

            #[tokio::test]
            async fn through_copy() {
                run(COPY_BATCH).await;
            }
        }
    };
}

array_repeats!(arrays_packed_key, i64, |i| i as i64 * 7919 - 1_000_000);
array_repeats!(arrays_sorted_key, Uuid, |i| Uuid::from_u128(u128::MAX / 3 - (i as u128) * 0x1_0000_0001));
array_repeats!(arrays_bytea_key, Vec<u8>, |i| i.to_string().into_bytes());
array_repeats!(arrays_text_key, String, |i| format!("k{}", i * 37 % 10_007));

/// A key of one type on both paths: half the values stored first, then all
/// of them offered, each twice (in order, then reversed). Only the new half
/// goes in, each from its first offered row, and reads back as offered.
macro_rules! key_round_trip {
    ($module:ident, $ty:ty, $value:expr) => {
        mod $module {
            use super::*;

            #[derive(BulkCreateNew)]
            #[bulk(table = "typed_key", unique(key, part))]
            struct Keyed {
                key: $ty,
                part: i16,
                pos: i32,
            }

            async fn run(n: usize) {
                let value: fn(usize) -> ($ty, i16) = $value;
                let db = TestDb::new(&format!("key_{}_{n}", stringify!($module))).await;
                let mut client = db.connect().await;
                client.batch_execute(&Mood::create_type_sql()).await.unwrap();
                client.batch_execute(&Keyed::model().migration_sql()).await.unwrap();
                let row = |i: usize, pos: i32| {
                    let (key, part) = value(i);
                    Keyed { key, part, pos }
                };
                let stored: Vec<Keyed> = (0..n / 2).map(|i| row(i, -1 - i as i32)).collect();
                let o = Keyed::bulk_create_new(&mut client, &stored).await.unwrap();
                assert_eq!(o.inserted, (n / 2) as u64);
                let offered: Vec<Keyed> =
                    (0..n).chain((0..n).rev()).enumerate().map(|(pos, i)| row(i, pos as i32)).collect();
                let o = Keyed::bulk_create_new(&mut client, &offered).await.unwrap();
                assert_eq!((o.offered, o.inserted), (2 * n as u64, (n - n / 2) as u64));
                let got = client.query("SELECT key, part, pos FROM typed_key ORDER BY pos", &[]).await.unwrap();
                assert_eq!(got.len(), n);
                let mut new_positions = Vec::new();
                for r in &got {
                    let pos: i32 = r.get(2);
                    let i = if pos < 0 { (-1 - pos) as usize } else { pos as usize };
                    let (key, part) = value(i);
                    assert_eq!((r.get::<_, $ty>(0), r.get::<_, i16>(1)), (key, part), "pos {pos}");
                    if pos >= 0 {
                        new_positions.push(i);
                    }
                }
                assert_eq!(new_positions, (n / 2..n).collect::<Vec<_>>());
                db.drop().await;
            }

            #[tokio::test]
            async fn short_batch() {
                run(40).await;
            }

            #[tokio::test]
            async fn through_copy() {
                run(COPY_BATCH).await;
            }
        }
    };
}

key_round_trip!(decimal, Decimal, |i| (Decimal::new(i as i64 * 1001 - 2_000_000, 3), 0));
key_round_trip!(naive_time, NaiveTime, |i| {
    let t = NaiveTime::from_num_seconds_from_midnight_opt((i * 13 % 86_400) as u32, (i % 997) as u32 * 1000);
    (t.unwrap(), 0)
});
key_round_trip!(time_date, time::Date, |i| (time_date(2_460_000 - 37 * i as i32), 0));
key_round_trip!(time_primitive, PrimitiveDateTime, |i| {
    (PrimitiveDateTime::new(time_date(2_400_000 + i as i32 / 7), hms_micro((i % 7) as u8, 0, 0, i as u32)), 0)
});
key_round_trip!(time_offset, OffsetDateTime, |i| {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i as i128 * 1_000_123_000 - 2_000_000_000_000).unwrap();
    (t.to_offset(UtcOffset::from_hms((i % 13) as i8 - 6, 0, 0).unwrap()), 0)
});
key_round_trip!(time_time, time::Time, |i| {
    (hms_micro((i % 24) as u8, (i / 24 % 60) as u8, (i / 1440) as u8, (i * 7 % 1_000_000) as u32), 0)
});
key_round_trip!(inet, IpAddr, |i| {
    let ip = if i % 2 == 0 {
        IpAddr::V4(Ipv4Addr::from(i as u32 * 65_537))
    } else {
        IpAddr::V6(Ipv6Addr::from(u128::MAX - i as u128))
    };
    (ip, 0)
});
key_round_trip!(json, Json<Payload>, |i| {
    (Json(Payload { n: i as i64 % 100, text: format!("{}", i / 100), tags: vec![] }), 0)
});
key_round_trip!(postgres_enum, Mood, |i| ([Mood::Happy, Mood::SoSo, Mood::Sad][i % 3], (i / 3) as i16));
key_round_trip!(newtype, UserId, |i| (UserId(i as i64 * 7919 - 10_000_000), 0));

/// numeric compares by value: 1.0 and 1.00 are one key, the first offered wins.
#[tokio::test]
async fn decimal_keys_compare_by_value() {
    #[derive(BulkCreateNew)]
    #[bulk(table = "price", unique(amount))]
    struct Price {
        amount: Decimal,
        pos: i32,
    }
    let db = TestDb::new("decimal_equal_keys").await;
    let mut client = db.connect().await;
    client.batch_execute(&Price::model().migration_sql()).await.unwrap();
    let rows = [Price { amount: Decimal::new(10, 1), pos: 0 }, Price { amount: Decimal::new(100, 2), pos: 1 }];
    let o = Price::bulk_create_new(&mut client, &rows).await.unwrap();
    assert_eq!((o.offered, o.inserted), (2, 1));
    let r = client.query_one("SELECT amount::text, pos FROM price", &[]).await.unwrap();
    assert_eq!((r.get::<_, String>(0).as_str(), r.get::<_, i32>(1)), ("1.0", 0));
    db.drop().await;
}

/// The schema check accepts the enum's own type (also schema-qualified, or
/// outside the `search_path`), refuses another, and refuses a `numeric(p, s)`
/// key column for a `Decimal` key (it rounds: 1.004 and 1.001 would meet).
#[tokio::test]
async fn the_schema_check_knows_enums_and_rounding_numerics() {
    use bulk_runtime::{Error, SchemaProblem};

    #[derive(BulkType, Debug, Clone, Copy, PartialEq)]
    #[bulk(type = "bulk_types_elsewhere.level")]
    enum Level {
        Low,
        High,
    }
    #[derive(BulkCreateNew)]
    #[bulk(table = "gauge", unique(level), id = false)]
    struct Gauge {
        level: Level,
        amount: Decimal,
    }
    #[derive(BulkCreateNew)]
    #[bulk(table = "priced", unique(amount), id = false)]
    struct Priced {
        amount: Decimal,
    }
    let db = TestDb::new("schema_enum_numeric").await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS bulk_types_elsewhere CASCADE; CREATE SCHEMA bulk_types_elsewhere; {};
             CREATE TABLE gauge (level bulk_types_elsewhere.level PRIMARY KEY, amount numeric(10, 2) NOT NULL);
             CREATE TABLE priced (amount numeric(10, 2) PRIMARY KEY)",
            Level::create_type_sql()
        ))
        .await
        .unwrap();
    // `format_type` prints `bulk_types_elsewhere.level`: the schema is not on the path.
    let rows = [
        Gauge { level: Level::High, amount: Decimal::new(1234, 3) },
        Gauge { level: Level::Low, amount: Decimal::ONE },
    ];
    let o = Gauge::bulk_create_new(&mut client, &rows).await.unwrap();
    assert_eq!(o.inserted, 2);
    let again = Gauge::bulk_create_new(&mut client, &rows).await.unwrap();
    assert_eq!(again.inserted, 0);
    let levels: Vec<(Level, Decimal)> = client
        .query("SELECT level, amount FROM gauge ORDER BY level", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // Declaration order, and the non-key numeric rounded by its column.
    assert_eq!(levels, [(Level::Low, Decimal::new(100, 2)), (Level::High, Decimal::new(123, 2))]);

    let err = Priced::bulk_create_new(&mut client, [&Priced { amount: Decimal::ONE }]).await.unwrap_err();
    match &err {
        Error::SchemaMismatch { problems, .. } => assert_eq!(
            problems,
            &[SchemaProblem::KeyRounded { column: "amount".into(), found: "numeric(10,2)".into() }]
        ),
        other => panic!("{other}"),
    }

    client
        .batch_execute("DROP TABLE gauge; CREATE TABLE gauge (level text PRIMARY KEY, amount numeric)")
        .await
        .unwrap();
    let mut fresh = db.connect().await;
    let err = Gauge::bulk_create_new(&mut fresh, &rows).await.unwrap_err();
    match &err {
        Error::SchemaMismatch { problems, .. } => assert!(
            matches!(&problems[..], [SchemaProblem::ColumnType { column, found, .. }] if column == "level" && found == "text"),
            "{problems:?}"
        ),
        other => panic!("{other}"),
    }
    client.batch_execute("DROP SCHEMA bulk_types_elsewhere CASCADE").await.unwrap();
    db.drop().await;
}

/// The short path's statements on array columns under a generic plan (which
/// a prepared statement may switch to from its sixth run on): the plain
/// call, `returning_skipped` and an upsert that keeps the last offered row,
/// each run three times on one connection, store what a custom plan does.
#[tokio::test]
async fn arrays_on_a_generic_plan() {
    use bulk_runtime::{Keep, Upsert};

    #[derive(BulkCreateNew, Debug, Clone, PartialEq)]
    #[bulk(table = "generic", unique(name), id = false)]
    struct Generic {
        name: String,
        tags: Vec<String>,
        nums: Option<Vec<Option<i32>>>,
    }
    let db = TestDb::new("arrays_generic_plan").await;
    let recorder = SqlRecorder::start().await;
    let mut client = recorder.connect(&db.schema).await;
    client.batch_execute(&Generic::model().migration_sql()).await.unwrap();
    client.batch_execute("SET plan_cache_mode = force_generic_plan").await.unwrap();
    let row = |k: usize, round: usize| Generic {
        name: format!("n{k}"),
        tags: (0..(k + round) % 4).map(|j| format!("{round}.{j}")).collect(),
        nums: (!k.is_multiple_of(5))
            .then(|| (0..k % 3).map(|j| j.is_multiple_of(2).then_some((k * round) as i32)).collect()),
    };
    let mut want = std::collections::BTreeMap::new();
    let before = recorder.statements().len();
    for round in 0..3 {
        // New keys 0..300 of this round, each offered twice (the first wins).
        let keys = round * 200..round * 200 + 300;
        let rows: Vec<Generic> = keys.clone().map(|k| row(k, round)).chain(keys.clone().map(|k| row(k, 9))).collect();
        let o = Generic::bulk_create_new(&mut client, &rows).await.unwrap();
        let new = keys.clone().filter(|k| !want.contains_key(&format!("n{k}"))).count();
        assert_eq!((o.offered, o.inserted), (600, new as u64));
        for k in keys.clone() {
            want.entry(format!("n{k}")).or_insert_with(|| row(k, round));
        }
        let report = Generic::bulk(&mut client).returning_skipped().run(&rows[..300]).await.unwrap();
        assert_eq!(report.returned, (0..300).collect::<Vec<_>>());
        // Every stored key again, twice: the last offered row's arrays are kept.
        let all: Vec<Generic> =
            want.values().map(|g| Generic { tags: vec![], ..g.clone() }).chain(want.values().cloned()).collect();
        let report = Generic::bulk(&mut client)
            .upsert(Upsert::columns(["tags", "nums"]).only_if_changed().keep(Keep::Last))
            .run(&all)
            .await
            .unwrap();
        assert_eq!((report.inserted, report.updated, report.skipped), (0, 0, want.len() as u64), "{report:?}");
        let changed: Vec<Generic> =
            want.values().map(|g| Generic { tags: vec![format!("{round}")], ..g.clone() }).collect();
        let report = Generic::bulk(&mut client)
            .upsert(Upsert::columns(["tags"]).keep(Keep::Last))
            .run(want.values().chain(&changed))
            .await
            .unwrap();
        assert_eq!((report.inserted, report.updated), (0, want.len() as u64), "{report:?}");
        for g in want.values_mut() {
            g.tags = vec![format!("{round}")];
        }
    }
    assert!(!sent_copy(&recorder, before));
    let got: Vec<Generic> = client
        .query("SELECT name, tags, nums FROM generic ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| Generic { name: r.get(0), tags: r.get(1), nums: r.get(2) })
        .collect();
    assert_eq!(got, want.into_values().collect::<Vec<_>>());
    db.drop().await;
}

#[tokio::test]
async fn arrays_enums_and_newtypes_with_the_builder() {
    arrays_with_the_builder(0).await;
}

#[tokio::test]
async fn arrays_enums_and_newtypes_with_the_builder_through_copy() {
    arrays_with_the_builder(COPY_BATCH).await;
}

/// The builder on a model with array, enum and newtype columns (an enum key:
/// the server orders it), each statement on the short path (no `pad`) or
/// the COPY path (`pad` more rows in every batch): `returning_skipped`,
/// `returning_keys`, and upserts that keep the last or the first offered row
/// and set an array column.
async fn arrays_with_the_builder(pad: usize) {
    use bulk_runtime::{Keep, Upsert};

    #[derive(BulkCreateNew, Debug, Clone)]
    #[bulk(table = "tagged", unique(owner, mood))]
    struct Tagged {
        owner: UserId,
        mood: Mood,
        tags: Vec<String>,
        scores: Option<Vec<Decimal>>,
    }
    let db = TestDb::new(&format!("arrays_builder_{pad}")).await;
    let recorder = SqlRecorder::start().await;
    let mut client = recorder.connect(&db.schema).await;
    client.batch_execute(&Mood::create_type_sql()).await.unwrap();
    client.batch_execute(&Tagged::model().migration_sql()).await.unwrap();
    let row = |owner: i64, mood: Mood, tags: &[&str]| Tagged {
        owner: UserId(owner),
        mood,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        scores: (owner % 2 == 0).then(|| vec![Decimal::new(owner, 1)]),
    };
    const FILL: i64 = 1000;
    let fill = |tags: &'static [&'static str]| (0..pad as i64).map(move |i| row(FILL + i, Mood::SoSo, tags));
    let pad64 = pad as u64;
    let path = |from: usize| sent_copy(&recorder, from);

    let first: Vec<Tagged> = [row(1, Mood::Happy, &["a"]), row(2, Mood::Sad, &[]), row(1, Mood::Sad, &["b", "c"])]
        .into_iter()
        .chain(fill(&["first"]))
        .collect();
    let before = recorder.statements().len();
    let report = Tagged::bulk(&mut client).returning_skipped().run(&first).await.unwrap();
    assert_eq!((report.offered, report.inserted), (3 + pad64, 3 + pad64));
    assert!(report.returned.is_empty());
    assert_eq!(path(before), pad > 0);

    let keyed: Vec<Tagged> =
        [row(4, Mood::Happy, &["k"]), row(1, Mood::Happy, &["stored"]), row(4, Mood::Happy, &["k2"])]
            .into_iter()
            .chain(fill(&["stored"]))
            .collect();
    let before = recorder.statements().len();
    let report = Tagged::bulk(&mut client).returning_keys().run(&keyed).await.unwrap();
    assert_eq!((report.offered, report.inserted, report.skipped), (3 + pad64, 1, 2 + pad64));
    let returned: Vec<(usize, (UserId, Mood))> = report.returned.into_iter().map(|r| (r.index, r.key)).collect();
    assert_eq!(returned, [(0, (UserId(4), Mood::Happy))]);
    assert_eq!(path(before), pad > 0);

    let second: Vec<Tagged> = [
        row(1, Mood::Happy, &["a"]),     // unchanged
        row(2, Mood::Sad, &["new"]),     // updated
        row(3, Mood::SoSo, &["x", "y"]), // inserted
        row(3, Mood::SoSo, &["repeat"]), // repeat: the last offered is kept
    ]
    .into_iter()
    .chain(fill(&["second", ""]))
    .collect();
    let before = recorder.statements().len();
    let report = Tagged::bulk(&mut client)
        .upsert(Upsert::columns(["tags"]).only_if_changed().keep(Keep::Last))
        .run(&second)
        .await
        .unwrap();
    assert_eq!(
        (report.offered, report.inserted, report.updated, report.unchanged, report.skipped),
        (4 + pad64, 1, 1 + pad64, 1, 1),
        "{report:?}"
    );
    assert_eq!(path(before), pad > 0);

    let with_scores =
        |owner: i64, mood: Mood, scores: Option<Vec<Decimal>>| Tagged { scores, ..row(owner, mood, &["ignored"]) };
    let third: Vec<Tagged> = [
        with_scores(1, Mood::Sad, Some(vec![Decimal::new(7, 0)])), // stored: updated
        with_scores(5, Mood::Happy, Some(vec![])),                 // inserted
        with_scores(5, Mood::Happy, None),                         // repeat: the first offered is kept
        with_scores(1, Mood::Sad, None),                           // repeat of a stored key
    ]
    .into_iter()
    .chain((0..pad as i64).map(|i| with_scores(FILL + i, Mood::SoSo, Some(vec![Decimal::new(i, 0), Decimal::ZERO]))))
    .collect();
    let before = recorder.statements().len();
    let report = Tagged::bulk(&mut client)
        .upsert(Upsert::set([Tagged::columns().scores]).keep(Keep::First))
        .run(&third)
        .await
        .unwrap();
    assert_eq!(
        (report.offered, report.inserted, report.updated, report.unchanged, report.skipped),
        (4 + pad64, 1, 1 + pad64, 0, 2),
        "{report:?}"
    );
    assert_eq!(path(before), pad > 0);
    assert_eq!(sent_array_rebuild(&recorder), pad == 0);

    type Stored = (UserId, Mood, Vec<String>, Option<Vec<Decimal>>);
    let stored: Vec<Stored> = client
        .query("SELECT owner, mood, tags, scores FROM tagged ORDER BY owner, mood", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let want: Vec<Stored> = [
        Tagged { scores: Some(vec![Decimal::new(7, 0)]), ..row(1, Mood::Sad, &["b", "c"]) },
        row(1, Mood::Happy, &["a"]),
        row(2, Mood::Sad, &["new"]),
        row(3, Mood::SoSo, &["repeat"]),
        row(4, Mood::Happy, &["k"]),
        with_scores(5, Mood::Happy, Some(vec![])),
    ]
    .into_iter()
    .map(|t| (t.owner, t.mood, t.tags, t.scores))
    .chain((0..pad as i64).map(|i| {
        (
            UserId(FILL + i),
            Mood::SoSo,
            vec!["second".into(), String::new()],
            Some(vec![Decimal::new(i, 0), Decimal::ZERO]),
        )
    }))
    .collect();
    assert_eq!(stored.len(), want.len());
    for (got, want) in stored.iter().zip(&want) {
        assert_eq!(got, want, "enum keys sort by declaration order (sad, happy, so so)");
    }
    db.drop().await;
}
