//! Keys the table holds equal although their bytes differ (a case-insensitive
//! ICU collation, `citext`, `char(n)` padding), keys the table changes as it
//! stores them (a `BEFORE INSERT` trigger) or rounds (`timestamptz(0)`): every
//! call either counts and reports exactly, or refuses with a clear reason and
//! writes nothing. `offered = inserted + updated + unchanged + skipped` holds.

use bulk_runtime::{BulkCreateNew, Error, Keep, SchemaProblem, Upsert};
use bulk_tests::{COPY_BATCH, TestDb, count};
use tokio_postgres::Client;

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "member", unique(email), id = false)]
struct Member {
    email: String,
    name: String,
}

fn member(email: &str, name: &str) -> Member {
    Member { email: email.into(), name: name.into() }
}

/// Rows `from..from + len` with distinct keys, padding a batch to a path.
fn filler(from: usize, len: usize) -> impl Iterator<Item = Member> {
    (from..from + len).map(|i| member(&format!("filler{i}@example.org"), "filler"))
}

/// A way to declare the key column `email` so that it holds `pair` as one
/// key: the column's declaration, made after the DDL `before` (and the
/// collation `case_insensitive`); whether it also holds `cy@...` and
/// `CY@...` as one.
struct Declared {
    name: &'static str,
    before: &'static str,
    column: &'static str,
    pair: [&'static str; 2],
    folds_case: bool,
}

/// The key column declared three ways that hold `Ann@x` and `ann@x` (or
/// `ann ` and `ann`) as one key.
const TABLES: [Declared; 3] = [
    Declared {
        name: "collation",
        before: "",
        column: "email text COLLATE case_insensitive",
        pair: ["Ann@example.org", "ann@EXAMPLE.org"],
        folds_case: true,
    },
    Declared {
        name: "citext",
        before: "",
        column: "email public.citext",
        pair: ["Ann@example.org", "ann@EXAMPLE.org"],
        folds_case: true,
    },
    Declared {
        name: "char",
        before: "",
        column: "email char(40)",
        pair: ["ann@example.org ", "ann@example.org"],
        folds_case: false,
    },
];

async fn setup(db: &TestDb, column: &str) -> Client {
    setup_after(db, "", column).await
}

/// [`setup`], with the DDL `before` run before the table is made.
async fn setup_after(db: &TestDb, before: &str, column: &str) -> Client {
    let admin = db.connect_plain().await;
    if let Err(e) = admin.batch_execute("CREATE EXTENSION IF NOT EXISTS citext SCHEMA public").await {
        // Another test binary may create it at the same moment.
        let there = admin.query_opt("SELECT 1 FROM pg_extension WHERE extname = 'citext'", &[]).await.unwrap();
        assert!(there.is_some(), "{e:?}");
    }
    let client = db.connect().await;
    client
        .batch_execute(&format!(
            "CREATE COLLATION case_insensitive (provider = icu, locale = 'und-u-ks-level2', deterministic = false); \
             {before}; CREATE TABLE member ({column} NOT NULL, name text NOT NULL, UNIQUE (email))"
        ))
        .await
        .unwrap();
    client
}

/// The stored `name` of the key equal to `email`, and how many rows hold it.
async fn stored(client: &Client, email: &str) -> (i64, Option<String>) {
    // An untyped literal takes the column's type, so it compares as the column does.
    assert!(!email.contains('\''));
    // (citext's `=` lives with the extension, off the search_path here.)
    let citext: bool = client
        .query_one("SELECT atttypid::regtype::text LIKE '%citext' FROM pg_attribute WHERE attrelid = 'member'::regclass AND attname = 'email'", &[])
        .await
        .unwrap()
        .get(0);
    let eq = if citext { "OPERATOR(public.=)" } else { "=" };
    let rows = client.query(&format!("SELECT name FROM member WHERE email {eq} '{email}'"), &[]).await.unwrap();
    (rows.len() as i64, rows.first().map(|r| r.get(0)))
}

async fn equal_keys(pad: usize) {
    equal_keys_of(&TABLES, pad, member).await;
}

/// The calls on each of `tables`, with rows of the model `M` made by
/// `member` (email, name): the first offered of two equal keys wins, counts
/// are exact.
async fn equal_keys_of<M>(tables: &[Declared], pad: usize, member: fn(&str, &str) -> M)
where
    M: BulkCreateNew<Key: std::fmt::Debug> + Clone,
{
    let filler =
        |from: usize, len: usize| (from..from + len).map(move |i| member(&format!("filler{i}@example.org"), "filler"));
    for &Declared { name, before, column, pair: [first, second], folds_case } in tables {
        let db = TestDb::new(&format!("key_equality_{name}")).await;
        let mut client = setup_after(&db, before, column).await;
        let context = format!("{name}, {} rows", 3 + pad);

        // The plain call: the first offered of two equal keys wins.
        let batch: Vec<M> = [member(second, "second"), member(first, "first"), member("bob@example.org", "bob")]
            .into_iter()
            .chain(filler(0, pad))
            .collect();
        let outcome = M::bulk_create_new(&mut client, &batch).await.unwrap();
        assert_eq!((outcome.inserted, outcome.skipped), (2 + pad as u64, 1), "{context}");
        assert_eq!(stored(&client, first).await, (1, Some("second".into())), "{context}");

        // Returning keys: one new row per key, the skipped ones exactly.
        let batch: Vec<M> = [member(first, "again"), member("cy@example.org", "cy"), member("CY@example.org", "cy2")]
            .into_iter()
            .chain(filler(pad, pad))
            .collect();
        let report = M::bulk(&mut client).returning_keys().run(&batch).await.unwrap();
        assert_eq!(report.returned.len() as u64, report.inserted, "{context}");
        let cy_copies = stored(&client, "cy@example.org").await.0;
        let expected_new = pad as u64 + if folds_case { 1 } else { 2 };
        assert_eq!(report.inserted, expected_new, "{context}: {:?}", &report.returned[..report.returned.len().min(3)]);
        assert_eq!(cy_copies, 1, "{context}");
        let skipped = M::bulk(&mut client).returning_skipped().run(&batch).await.unwrap();
        assert_eq!(skipped.returned.len(), batch.len(), "{context}: everything is stored now");

        // Upsert with both rows of one key in the batch: no 21000, Keep honoured.
        for (keep, winner) in [(Keep::First, "kept first"), (Keep::Last, "kept last")] {
            let batch: Vec<M> =
                [member(second, "kept first"), member("dee@example.org", "dee"), member(first, "kept last")]
                    .into_iter()
                    .chain(filler(0, pad))
                    .collect();
            let report = M::bulk(&mut client)
                .upsert(Upsert::columns(["name"]).only_if_changed().keep(keep))
                .run(&batch)
                .await
                .unwrap_or_else(|e| panic!("{context}, {keep:?}: {e}"));
            assert_eq!(
                report.offered,
                report.inserted + report.updated + report.unchanged + report.skipped,
                "{context}: {report:?}"
            );
            assert_eq!(report.skipped, 1, "{context}, {keep:?}: the other row of the repeated key");
            assert_eq!(report.updated, 1, "{context}, {keep:?}: {report:?}");
            assert_eq!(stored(&client, first).await, (1, Some(winner.into())), "{context}, {keep:?}");
        }
        let rows = count(&client, "member").await;
        assert_eq!(rows as u64, 4 + 2 * pad as u64 + u64::from(!folds_case), "{context}");
        db.drop().await;
    }
}

#[tokio::test]
async fn keys_equal_under_the_table_but_not_byte_for_byte() {
    equal_keys(0).await;
}

#[tokio::test]
async fn keys_equal_under_the_table_but_not_byte_for_byte_through_copy() {
    equal_keys(COPY_BATCH).await;
}

/// `Member` on a key column whose type is a domain (`member_email`, which
/// the field names), so that its type, collation and length are the
/// domain's.
#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "member", unique(email), id = false)]
struct DomainMember {
    #[bulk(sql_type = "member_email")]
    email: String,
    name: String,
}

fn domain_member(email: &str, name: &str) -> DomainMember {
    DomainMember { email: email.into(), name: name.into() }
}

/// The key column declared as a domain that compares otherwise than
/// `text`: its collation (a case-insensitive one, also through a domain
/// over a domain, and `"C"`, which differs from the database's default
/// collation) or its base type (`char(40)`).
const DOMAINS: [Declared; 4] = [
    Declared {
        name: "domain_collation",
        before: "CREATE DOMAIN member_email AS text COLLATE case_insensitive",
        column: "email member_email",
        pair: ["Ann@example.org", "ann@EXAMPLE.org"],
        folds_case: true,
    },
    Declared {
        name: "domain_of_domain",
        before: "CREATE DOMAIN inner_email AS text COLLATE case_insensitive; \
                 CREATE DOMAIN member_email AS inner_email",
        column: "email member_email",
        pair: ["Ann@example.org", "ann@EXAMPLE.org"],
        folds_case: true,
    },
    Declared {
        name: "domain_c",
        before: "CREATE DOMAIN member_email AS text COLLATE \"C\"",
        column: "email member_email",
        pair: ["ann@example.org", "ann@example.org"],
        folds_case: false,
    },
    Declared {
        name: "domain_char",
        before: "CREATE DOMAIN member_email AS char(40)",
        column: "email member_email",
        pair: ["ann@example.org ", "ann@example.org"],
        folds_case: false,
    },
];

/// A key column of a domain compares as the domain's base type and
/// collation, exactly as the same column declared without the domain
/// (`TABLES`): the first offered of two equal keys wins, counts are exact.
/// Before the fix the calls read such a key as plain `text` (the column's
/// collation was compared with the domain's own, not the base type's), so
/// that under the domain's case-insensitive collation the second offered
/// of `Ann@` and `ann@` was kept.
#[tokio::test]
async fn keys_of_a_domain_column_compare_as_its_base_type_and_collation() {
    equal_keys_of(&DOMAINS, 0, domain_member).await;
}

#[tokio::test]
async fn keys_of_a_domain_column_compare_as_its_base_type_and_collation_in_the_plain_form() {
    equal_keys_of(&DOMAINS, 200, domain_member).await;
}

#[tokio::test]
async fn keys_of_a_domain_column_compare_as_its_base_type_and_collation_through_copy() {
    equal_keys_of(&DOMAINS, COPY_BATCH, domain_member).await;
}

/// A trigger that normalises the key: the plain call counts exactly; calls
/// that map stored rows back to offered ones refuse, writing nothing.
async fn trigger_changes_the_key(pad: usize) {
    let db = TestDb::new("key_trigger").await;
    let mut client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE member (email text NOT NULL UNIQUE, name text NOT NULL);
             CREATE FUNCTION lower_email() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN NEW.email := lower(NEW.email); RETURN NEW; END $$;
             CREATE TRIGGER lower_email BEFORE INSERT ON member FOR EACH ROW EXECUTE FUNCTION lower_email();",
        )
        .await
        .unwrap();
    let batch: Vec<Member> = [member("Ann@x.org", "a"), member("ann@x.org", "b"), member("Bob@x.org", "c")]
        .into_iter()
        .chain(filler(0, pad))
        .collect();
    let before = count(&client, "member").await;
    let refused = [
        Member::bulk(&mut client).returning_keys().run(&batch).await.map(|r| r.inserted),
        Member::bulk(&mut client).returning_skipped().run(&batch).await.map(|r| r.inserted),
        Member::bulk(&mut client).upsert(Upsert::all_columns()).run(&batch).await.map(|r| r.inserted),
    ];
    for result in refused {
        match result {
            Err(Error::SchemaMismatch { problems, .. }) => {
                assert_eq!(problems, [SchemaProblem::KeyChangedOnInsert { triggers: vec!["lower_email".into()] }]);
            }
            other => panic!("{pad}: expected the table to be refused, got {other:?}"),
        }
        assert_eq!(count(&client, "member").await, before, "nothing written");
    }
    // A trigger that turns one offered key into another key of the batch:
    // every stored row still has a key of the batch, but not its own row.
    let pair = [member("Cy@x.org", "first"), member("cy@x.org", "second")];
    let err = Member::bulk(&mut client).returning_keys().run(&pair).await.unwrap_err();
    assert!(
        matches!(&err, Error::SchemaMismatch { problems, .. } if matches!(problems[..], [SchemaProblem::KeyChangedOnInsert { .. }])),
        "{err}"
    );
    assert_eq!(count(&client, "member").await, before, "nothing written");
    // The plain call: exact counts from the server.
    let outcome = Member::bulk_create_new(&mut client, &batch).await.unwrap();
    assert_eq!((outcome.inserted, outcome.skipped), (2 + pad as u64, 1));
    assert_eq!(count(&client, "member").await, 2 + pad as i64);
    db.drop().await;
}

#[tokio::test]
async fn a_trigger_that_changes_the_key_is_refused_by_the_calls_that_map_rows_back() {
    trigger_changes_the_key(0).await;
}

#[tokio::test]
async fn a_trigger_that_changes_the_key_is_refused_by_the_calls_that_map_rows_back_through_copy() {
    trigger_changes_the_key(COPY_BATCH).await;
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "reading", unique(sensor, at), id = false)]
struct Reading {
    sensor: i64,
    at: chrono::DateTime<chrono::Utc>,
}

/// A key column that rounds what it stores is refused up front.
#[tokio::test]
async fn a_key_column_that_rounds_is_refused_by_the_schema_check() {
    let db = TestDb::new("key_rounds").await;
    let mut client = db.connect().await;
    client
        .batch_execute("CREATE TABLE reading (sensor bigint NOT NULL, at timestamptz(0) NOT NULL, UNIQUE (sensor, at))")
        .await
        .unwrap();
    let at = chrono::DateTime::from_timestamp(1_700_000_000, 400_000_000).unwrap();
    let rows = [Reading { sensor: 1, at }, Reading { sensor: 1, at: at + chrono::Duration::milliseconds(200) }];
    let err = Reading::bulk_create_new(&mut client, &rows).await.unwrap_err();
    match &err {
        Error::SchemaMismatch { problems, .. } => assert_eq!(
            problems,
            &[SchemaProblem::KeyRounded { column: "at".into(), found: "timestamp(0) with time zone".into() }]
        ),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("rounds the values it stores"), "{err}");
    assert_eq!(count(&client, "reading").await, 0);
    db.drop().await;
}

/// `Reading` on a key column of a domain over `timestamptz(0)`.
#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "reading", unique(sensor, at), id = false)]
struct DomainReading {
    sensor: i64,
    #[bulk(sql_type = "reading_at")]
    at: chrono::DateTime<chrono::Utc>,
}

/// A key column of a domain over a type that rounds (`timestamptz(0)`: the
/// domain holds the precision, its column has no type modifier) is refused
/// as the same column declared without the domain is, on every path (before
/// the fix it passed, and two offered keys became one stored key).
#[tokio::test]
async fn a_key_column_of_a_domain_that_rounds_is_refused_by_the_schema_check() {
    let db = TestDb::new("key_domain_rounds").await;
    let mut client = db.connect().await;
    client
        .batch_execute(
            "CREATE DOMAIN reading_at AS timestamptz(0);
             CREATE TABLE reading (sensor bigint NOT NULL, at reading_at NOT NULL, UNIQUE (sensor, at))",
        )
        .await
        .unwrap();
    let at = chrono::DateTime::from_timestamp(1_700_000_000, 400_000_000).unwrap();
    for pad in [0, 200, COPY_BATCH] {
        let rows: Vec<DomainReading> = [at, at + chrono::Duration::milliseconds(200)]
            .into_iter()
            .chain((1..=pad as i64).map(|i| at + chrono::Duration::seconds(i)))
            .map(|at| DomainReading { sensor: 1, at })
            .collect();
        let err = DomainReading::bulk_create_new(&mut client, &rows).await.unwrap_err();
        match &err {
            Error::SchemaMismatch { problems, .. } => assert_eq!(
                problems,
                &[SchemaProblem::KeyRounded {
                    column: "at".into(),
                    found: "reading_at (a domain over timestamp(0) with time zone)".into()
                }],
                "{pad}"
            ),
            other => panic!("{pad}: {other}"),
        }
        assert!(err.to_string().contains("rounds the values it stores"), "{err}");
    }
    assert_eq!(count(&client, "reading").await, 0);
    db.drop().await;
}

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "member", unique(email), id = false)]
struct TaggedMember {
    email: String,
    tags: Vec<String>,
    scores: Option<Vec<Option<i32>>>,
}

fn tagged(email: &str, tags: &[&str], scores: Option<Vec<Option<i32>>>) -> TaggedMember {
    TaggedMember { email: email.into(), tags: tags.iter().map(|t| t.to_string()).collect(), scores }
}

/// Array columns beside a key that the table compares its own way (citext,
/// a case-insensitive collation), on the short path, where the statements
/// read the key as the table's and rebuild the arrays: the first offered of
/// two equal keys wins, and an upsert writes the kept row's arrays.
#[tokio::test]
async fn array_columns_beside_keys_equal_under_the_table() {
    for &Declared { name, column, pair: [first, second], .. } in &TABLES[..2] {
        let db = TestDb::new(&format!("key_equality_arrays_{name}")).await;
        let mut client = setup(&db, column).await;
        client
            .batch_execute(&format!(
                "DROP TABLE member; CREATE TABLE member ({column} NOT NULL UNIQUE, tags text[] NOT NULL, scores int4[])"
            ))
            .await
            .unwrap();
        let batch = [
            tagged(second, &["second", "x"], Some(vec![None, Some(2)])),
            tagged(first, &["first"], None),
            tagged("bob@example.org", &[], Some(vec![])),
        ];
        let outcome = TaggedMember::bulk_create_new(&mut client, &batch).await.unwrap();
        assert_eq!((outcome.inserted, outcome.skipped), (2, 1), "{name}");
        let report = TaggedMember::bulk(&mut client).returning_keys().run(&batch).await.unwrap();
        assert_eq!((report.inserted, report.skipped), (0, 3), "{name}");
        let report = TaggedMember::bulk(&mut client)
            .upsert(Upsert::columns(["tags", "scores"]).keep(Keep::Last))
            .run(&[tagged(first, &["ignored"], None), tagged(second, &["kept", "last"], Some(vec![Some(7), None]))])
            .await
            .unwrap();
        assert_eq!((report.inserted, report.updated, report.skipped), (0, 1, 1), "{name}");
        let rows: Vec<TaggedMember> = client
            .query("SELECT email::text, tags, scores FROM member ORDER BY email::text COLLATE \"C\"", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| TaggedMember { email: r.get(0), tags: r.get(1), scores: r.get(2) })
            .collect();
        let want = [
            tagged(second, &["kept", "last"], Some(vec![Some(7), None])),
            tagged("bob@example.org", &[], Some(vec![])),
        ];
        assert_eq!(rows, want, "{name}");
        db.drop().await;
    }
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "doc", unique(k), id = false)]
struct Doc {
    k: i64,
    body: String,
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// A time with microseconds, which a `timestamptz(3)` column rounds.
fn micros(n: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456 + n).unwrap()
}

/// The table stores a column other than the key otherwise than offered (a
/// trigger that sets `updated_at`, or a `timestamptz(3)` column that rounds):
/// `returning_keys`, `returning_skipped` and upsert still map every stored
/// row to its offered row by its key, and count exactly.
async fn other_columns_stored_otherwise(table: &str, pad: usize) {
    let db = TestDb::new("other_columns_otherwise").await;
    let mut client = db.connect().await;
    client.batch_execute(table).await.unwrap();
    let batch: Vec<Doc> =
        (0..3 + pad as i64).map(|k| Doc { k, body: format!("b{k}"), updated_at: micros(k) }).collect();
    Doc::bulk_create_new(&mut client, &batch[..1]).await.unwrap();
    let keys = Doc::bulk(&mut client).returning_keys().run(&batch[..2 + pad]).await.unwrap();
    assert_eq!((keys.inserted, keys.skipped), (1 + pad as u64, 1), "{table}");
    let returned: Vec<i64> = keys.returned.iter().map(|k| k.key.0).collect();
    assert_eq!(returned, (1..2 + pad as i64).collect::<Vec<_>>(), "{table}");
    let skipped = Doc::bulk(&mut client).returning_skipped().run(&batch).await.unwrap();
    assert_eq!(skipped.inserted, 1, "{table}");
    assert_eq!(skipped.returned.len(), 2 + pad, "{table}");
    let changed: Vec<Doc> = batch.iter().map(|d| Doc { body: format!("{}!", d.body), ..d.clone() }).collect();
    let mut more = changed.clone();
    more.push(Doc { k: 10_000_000, body: "new".into(), updated_at: micros(0) });
    let up = Doc::bulk(&mut client).upsert(Upsert::set([Doc::columns().body])).run(&more).await.unwrap();
    assert_eq!((up.inserted, up.updated), (1, 3 + pad as u64), "{table}");
    let bodies: i64 = client.query_one("SELECT count(*) FROM doc WHERE body LIKE '%!'", &[]).await.unwrap().get(0);
    assert_eq!(bodies, 3 + pad as i64, "{table}");
    assert_eq!(count(&client, "doc").await, 4 + pad as i64);
    db.drop().await;
}

const TOUCHED: &str = "CREATE TABLE doc (k bigint PRIMARY KEY, body text NOT NULL, updated_at timestamptz NOT NULL);
     CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS
       $$ BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END $$;
     CREATE TRIGGER touch BEFORE INSERT OR UPDATE ON doc FOR EACH ROW EXECUTE FUNCTION touch();";
const ROUNDED: &str = "CREATE TABLE doc (k bigint PRIMARY KEY, body text NOT NULL, updated_at timestamptz(3) NOT NULL)";

#[tokio::test]
async fn a_trigger_that_sets_another_column_leaves_the_calls_that_map_rows_back_exact() {
    other_columns_stored_otherwise(TOUCHED, 0).await;
    other_columns_stored_otherwise(TOUCHED, COPY_BATCH).await;
}

#[tokio::test]
async fn a_column_the_table_rounds_outside_the_key_leaves_the_calls_that_map_rows_back_exact() {
    other_columns_stored_otherwise(ROUNDED, 0).await;
    other_columns_stored_otherwise(ROUNDED, COPY_BATCH).await;
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "tag", unique(owner, label), nulls_not_distinct, id = false)]
struct Tag {
    owner: i32,
    label: Option<String>,
    note: String,
}

/// A nullable key in columns of other types than the model's (`varchar`
/// for a `String`, `bigint` for an `i32`): every call that matches stored
/// rows to offered ones works, NULL matching NULL.
async fn nullable_key_in_other_types(pad: usize) {
    let db = TestDb::new("nullable_key_types").await;
    let mut client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE tag (owner bigint NOT NULL, label varchar(50), note text NOT NULL,
                               UNIQUE NULLS NOT DISTINCT (owner, label))",
        )
        .await
        .unwrap();
    let mut batch = vec![
        Tag { owner: 1, label: None, note: "a".into() },
        Tag { owner: 1, label: Some("x".into()), note: "b".into() },
        Tag { owner: 1, label: None, note: "repeat".into() },
    ];
    batch.extend((0..pad as i32).map(|i| Tag { owner: 100 + i, label: None, note: "pad".into() }));
    Tag::bulk_create_new(&mut client, &batch[..1]).await.unwrap();
    let keys = Tag::bulk(&mut client).returning_keys().run(&batch).await.unwrap();
    assert_eq!((keys.inserted, keys.skipped), (1 + pad as u64, 2));
    assert_eq!((keys.returned[0].index, keys.returned[0].key.1.as_deref()), (1, Some("x")));
    let skipped = Tag::bulk(&mut client).returning_skipped().run(&batch).await.unwrap();
    assert_eq!((skipped.inserted, skipped.returned.len()), (0, 3 + pad));
    let up = Tag::bulk(&mut client).upsert(Upsert::all_columns().keep(Keep::Last)).run(&batch).await.unwrap();
    assert_eq!((up.inserted, up.updated, up.skipped), (0, 2 + pad as u64, 1));
    let note: String =
        client.query_one("SELECT note FROM tag WHERE owner = 1 AND label IS NULL", &[]).await.unwrap().get(0);
    assert_eq!(note, "repeat", "the last offered row of the NULL key");
    assert_eq!(count(&client, "tag").await, 2 + pad as i64);
    db.drop().await;
}

/// `Tag` on a nullable key column of a domain (`tag_label`, which the
/// field names).
#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "tag", unique(owner, label), nulls_not_distinct, id = false)]
struct DomainTag {
    owner: i32,
    #[bulk(sql_type = "tag_label")]
    label: Option<String>,
    note: String,
}

/// [`nullable_key_in_other_types`] with the nullable key column of a domain
/// over `text`, `varchar(50)` or `text` under a case-insensitive collation:
/// the calls that match stored rows to offered ones compare the key as
/// `ARRAY[label]`, and an array of a domain has no `=` with an array of
/// its base type (before the fix `returning_keys`, `returning_skipped` and
/// `upsert` failed, 42883 `tag_label[] = text[]`).
async fn nullable_domain_key(pad: usize) {
    for base in ["text", "varchar(50)", "text COLLATE case_insensitive"] {
        let db = TestDb::new("nullable_domain_key").await;
        let mut client = setup_after(&db, "", "email text").await;
        client
            .batch_execute(&format!(
                "CREATE DOMAIN tag_label AS {base};
                 CREATE TABLE tag (owner bigint NOT NULL, label tag_label, note text NOT NULL,
                                   UNIQUE NULLS NOT DISTINCT (owner, label))"
            ))
            .await
            .unwrap();
        let context = format!("{base}, {} rows", 3 + pad);
        let mut batch = vec![
            DomainTag { owner: 1, label: None, note: "a".into() },
            DomainTag { owner: 1, label: Some("x".into()), note: "b".into() },
            DomainTag { owner: 1, label: None, note: "repeat".into() },
        ];
        batch.extend((0..pad as i32).map(|i| DomainTag { owner: 100 + i, label: None, note: "pad".into() }));
        DomainTag::bulk_create_new(&mut client, &batch[..1]).await.unwrap();
        let keys = DomainTag::bulk(&mut client).returning_keys().run(&batch).await;
        let keys = keys.unwrap_or_else(|e| panic!("{context}: {e}"));
        assert_eq!((keys.inserted, keys.skipped), (1 + pad as u64, 2), "{context}");
        assert_eq!((keys.returned[0].index, keys.returned[0].key.1.as_deref()), (1, Some("x")), "{context}");
        let skipped = DomainTag::bulk(&mut client).returning_skipped().run(&batch).await;
        let skipped = skipped.unwrap_or_else(|e| panic!("{context}: {e}"));
        assert_eq!((skipped.inserted, skipped.returned.len()), (0, 3 + pad), "{context}");
        let up = DomainTag::bulk(&mut client).upsert(Upsert::all_columns().keep(Keep::Last)).run(&batch).await;
        let up = up.unwrap_or_else(|e| panic!("{context}: {e}"));
        assert_eq!((up.inserted, up.updated, up.skipped), (0, 2 + pad as u64, 1), "{context}");
        let note: String =
            client.query_one("SELECT note FROM tag WHERE owner = 1 AND label IS NULL", &[]).await.unwrap().get(0);
        assert_eq!(note, "repeat", "{context}: the last offered row of the NULL key");
        assert_eq!(count(&client, "tag").await, 2 + pad as i64, "{context}");
        db.drop().await;
    }
}

#[tokio::test]
async fn a_nullable_key_of_a_domain_matches_stored_rows() {
    nullable_domain_key(0).await;
}

#[tokio::test]
async fn a_nullable_key_of_a_domain_matches_stored_rows_in_the_plain_form() {
    nullable_domain_key(200).await;
}

#[tokio::test]
async fn a_nullable_key_of_a_domain_matches_stored_rows_through_copy() {
    nullable_domain_key(COPY_BATCH).await;
}

#[tokio::test]
async fn a_nullable_key_in_columns_of_other_types_matches_stored_rows() {
    nullable_key_in_other_types(0).await;
}

#[tokio::test]
async fn a_nullable_key_in_columns_of_other_types_matches_stored_rows_through_copy() {
    nullable_key_in_other_types(COPY_BATCH).await;
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "code", unique(name), id = false)]
struct Code {
    name: String,
    who: String,
}

fn code(name: &str, who: &str) -> Code {
    Code { name: name.into(), who: who.into() }
}

/// `len` rows of distinct three-character keys starting with a digit (so
/// never `abc` or `xyz`).
fn codes(len: usize) -> impl Iterator<Item = Code> {
    const A: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    assert!(len <= 10 * 36 * 36);
    (0..len)
        .map(|i| code(&[A[i / 1296], A[i / 36 % 36], A[i % 36]].iter().map(|&c| c as char).collect::<String>(), "pad"))
}

/// The `who` stored under the `varchar(3)` key `name`, and how many rows hold it.
async fn stored_code(client: &Client, name: &str) -> (i64, Option<String>) {
    let rows = client.query("SELECT who FROM code WHERE name = $1::text", &[&name]).await.unwrap();
    (rows.len() as i64, rows.first().map(|r| r.get(0)))
}

/// A `varchar(3)` key: the table stores `abc ` as `abc` (it cuts trailing
/// spaces beyond the length), so the two are one key, and the first
/// offered row wins; a value with more than spaces beyond the length is
/// refused (22001), nothing written, as the table refuses it.
async fn varchar_key(pad: usize) {
    length_key("varchar_key", "", "varchar(3)", pad, code).await;
}

/// [`varchar_key`] on a key column of type `column` (made after the DDL
/// `before`) that holds at most three characters, with rows of the model
/// `M` made by `code` (name, who).
async fn length_key<M>(test: &str, before: &str, column: &str, pad: usize, code: fn(&str, &str) -> M)
where
    M: BulkCreateNew<Key = (String,)> + Clone,
{
    let db = TestDb::new(test).await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!("{before}; CREATE TABLE code (name {column} PRIMARY KEY, who text NOT NULL)"))
        .await
        .unwrap();
    let context = format!("{column}, {} rows", 2 + pad);
    let codes = |len: usize| codes(len).map(move |c| code(&c.name, &c.who));
    let with = |head: Vec<M>| -> Vec<M> { head.into_iter().chain(codes(pad)).collect() };

    // The plain call.
    let batch = with(vec![code("abc ", "first"), code("abc", "second")]);
    let report = M::bulk_create_new(&mut client, &batch).await.unwrap();
    assert_eq!((report.inserted, report.skipped), (1 + pad as u64, 1), "{context}");
    assert_eq!(stored_code(&client, "abc").await, (1, Some("first".into())), "{context}");
    let again = M::bulk_create_new(&mut client, &with(vec![code("abc  ", "third")])).await.unwrap();
    assert_eq!((again.inserted, again.skipped), (0, 1 + pad as u64), "{context}: stored under its cut form");

    // Returning keys (the key as stored) and the skipped rows.
    let batch = vec![code("xyz  ", "first"), code("xyz", "second"), code("abc", "stored")];
    let batch: Vec<M> = batch.into_iter().chain(codes(pad)).collect();
    let keys = M::bulk(&mut client).returning_keys().run(&batch).await.unwrap();
    assert_eq!((keys.inserted, keys.skipped), (1, 2 + pad as u64), "{context}");
    assert_eq!((keys.returned[0].index, keys.returned[0].key.0.as_str()), (0, "xyz"), "{context}");
    assert_eq!(stored_code(&client, "xyz").await, (1, Some("first".into())), "{context}");
    let skipped = M::bulk(&mut client).returning_skipped().run(&batch).await.unwrap();
    assert_eq!((skipped.inserted, skipped.returned.len()), (0, 3 + pad), "{context}");

    // Upsert: one key, Keep honoured.
    for (keep, winner) in [(Keep::First, "kept first"), (Keep::Last, "kept last")] {
        let batch = with(vec![code("abc ", "kept first"), code("abc", "kept last")]);
        let report = M::bulk(&mut client)
            .upsert(Upsert::columns(["who"]).only_if_changed().keep(keep))
            .run(&batch)
            .await
            .unwrap_or_else(|e| panic!("{context}, {keep:?}: {e}"));
        assert_eq!((report.inserted, report.updated, report.skipped), (0, 1, 1), "{context}, {keep:?}: {report:?}");
        assert_eq!(stored_code(&client, "abc").await, (1, Some(winner.into())), "{context}, {keep:?}");
    }
    let rows = count(&client, "code").await;
    assert_eq!(rows, 2 + pad as i64, "{context}");

    // Too long: refused as the table refuses it, by every call.
    let batch = with(vec![code("new", "new"), code("abcd", "too long")]);
    let err = M::bulk_create_new(&mut client, &batch).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some(&tokio_postgres::error::SqlState::STRING_DATA_RIGHT_TRUNCATION), "{err}");
    let err = M::bulk(&mut client).returning_keys().run(&batch).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some(&tokio_postgres::error::SqlState::STRING_DATA_RIGHT_TRUNCATION), "{err}");
    let err = M::bulk(&mut client).upsert(Upsert::all_columns()).run(&batch).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some(&tokio_postgres::error::SqlState::STRING_DATA_RIGHT_TRUNCATION), "{err}");
    assert_eq!(count(&client, "code").await, rows, "{context}: nothing written");
    assert_eq!(stored_code(&client, "new").await.0, 0, "{context}");
    db.drop().await;
}

#[tokio::test]
async fn a_varchar_key_keeps_the_first_offered_row_of_keys_the_length_makes_one() {
    varchar_key(0).await;
}

#[tokio::test]
async fn a_varchar_key_keeps_the_first_offered_row_of_keys_the_length_makes_one_in_the_plain_form() {
    varchar_key(200).await;
}

#[tokio::test]
async fn a_varchar_key_keeps_the_first_offered_row_of_keys_the_length_makes_one_through_copy() {
    varchar_key(COPY_BATCH).await;
}

/// `Code` on a key column whose type is a domain (`code_name`, which the
/// field names).
#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "code", unique(name), id = false)]
struct DomainCode {
    #[bulk(sql_type = "code_name")]
    name: String,
    who: String,
}

fn domain_code(name: &str, who: &str) -> DomainCode {
    DomainCode { name: name.into(), who: who.into() }
}

/// A key column of a domain over `varchar(3)` or `char(3)` (the domain
/// holds the length, its column has no type modifier) keeps the first
/// offered of `abc ` and `abc` and refuses `abcd`, exactly as a `varchar(3)`
/// column does (before the fix the calls read the domain as `text`: two new
/// keys, and the second offered row kept).
async fn domain_length_key(pad: usize) {
    for base in ["varchar(3)", "char(3)"] {
        let before = format!("CREATE DOMAIN code_name AS {base}");
        length_key("domain_length_key", &before, "code_name", pad, domain_code).await;
    }
}

#[tokio::test]
async fn a_key_of_a_domain_over_a_length_keeps_the_first_offered_row_of_keys_the_length_makes_one() {
    domain_length_key(0).await;
}

#[tokio::test]
async fn a_key_of_a_domain_over_a_length_keeps_the_first_offered_row_of_keys_the_length_makes_one_in_the_plain_form() {
    domain_length_key(200).await;
}

#[tokio::test]
async fn a_key_of_a_domain_over_a_length_keeps_the_first_offered_row_of_keys_the_length_makes_one_through_copy() {
    domain_length_key(COPY_BATCH).await;
}

/// A connection checked a `varchar(3)` key; then the column is widened to
/// `varchar(5)`. Its statements, which read the batch's keys as
/// `varchar(3)`, would refuse `abcde` (22001): the guards see the key's
/// shape changed, and the call checks again and goes on, keeping the first
/// offered row of `abcde ` and `abcde`.
#[tokio::test]
async fn a_varchar_key_widened_after_the_check_reads_keys_at_the_new_length() {
    for pad in [0, 200, COPY_BATCH] {
        let db = TestDb::new("varchar_key_widened").await;
        let mut client = db.connect().await;
        client.batch_execute("CREATE TABLE code (name varchar(3) PRIMARY KEY, who text NOT NULL)").await.unwrap();
        let batch: Vec<Code> = [code("abc ", "first")].into_iter().chain(codes(pad)).collect();
        Code::bulk_create_new(&mut client, &batch).await.unwrap();
        Code::bulk(&mut client).returning_keys().run(&batch).await.unwrap();
        client.batch_execute("ALTER TABLE code ALTER name TYPE varchar(5)").await.unwrap();
        let batch: Vec<Code> =
            [code("abcde ", "first"), code("abcde", "second")].into_iter().chain(codes(pad)).collect();
        let report = Code::bulk_create_new(&mut client, &batch).await.unwrap_or_else(|e| panic!("{pad}: {e}"));
        assert_eq!((report.inserted, report.skipped), (1, 1 + pad as u64), "{pad}");
        assert_eq!(stored_code(&client, "abcde").await, (1, Some("first".into())), "{pad}");
        client.batch_execute("DELETE FROM code WHERE name = 'abcde'").await.unwrap();
        let keys = Code::bulk(&mut client).returning_keys().run(&batch).await.unwrap_or_else(|e| panic!("{pad}: {e}"));
        assert_eq!((keys.inserted, keys.skipped), (1, 1 + pad as u64), "{pad}");
        assert_eq!(stored_code(&client, "abcde").await, (1, Some("first".into())), "{pad}");
        db.drop().await;
    }
}
