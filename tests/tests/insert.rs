//! Counting, in-batch duplicates, batch sizes and the ways rows can be passed.

use std::collections::BTreeSet;

use bulk_runtime::BulkCreateNew;
use bulk_tests::{COPY_BATCH, TestDb, count};
use tokio_postgres::Client;

/// Key `(feed, item)`; `title` and `score` show which offered row was stored.
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "entry", unique(feed, item))]
pub struct Entry {
    pub feed: i32,
    pub item: i64,
    pub title: String,
    pub score: Option<f64>,
}

fn entry(feed: i32, item: i64, title: &str) -> Entry {
    Entry { feed, item, title: title.to_owned(), score: None }
}

async fn setup(name: &str) -> (TestDb, Client) {
    let db = TestDb::new(name).await;
    let client = db.connect().await;
    client.batch_execute(&Entry::model().migration_sql()).await.unwrap();
    (db, client)
}

/// All stored rows, in key order.
async fn stored(client: &Client) -> Vec<Entry> {
    client
        .query("SELECT feed, item, title, score FROM entry ORDER BY feed, item", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| Entry { feed: r.get(0), item: r.get(1), title: r.get(2), score: r.get(3) })
        .collect()
}

#[tokio::test]
async fn in_batch_duplicates_first_offered_wins() {
    // Short batches: the one-statement path (the 200,000-row test below covers
    // in-batch duplicates on the COPY path).
    let (db, mut client) = setup("in_batch_dupes").await;
    let batch = vec![
        entry(1, 1, "first of 1/1"),
        entry(2, 5, "first of 2/5"),
        entry(1, 1, "second of 1/1"),
        entry(1, 2, "only 1/2"),
        entry(2, 5, "second of 2/5"),
        entry(1, 1, "third of 1/1"),
    ];
    let o = Entry::bulk_create_new(&mut client, &batch).await.unwrap();
    assert_eq!((o.offered, o.inserted, o.skipped), (6, 3, 3));
    assert_eq!(
        stored(&client).await,
        vec![entry(1, 1, "first of 1/1"), entry(1, 2, "only 1/2"), entry(2, 5, "first of 2/5")]
    );

    // A stored key beats an in-batch first: nothing of the stored row changes.
    let o = Entry::bulk_create_new(&mut client, [entry(1, 1, "late"), entry(1, 3, "new"), entry(1, 3, "newer")])
        .await
        .unwrap();
    assert_eq!((o.offered, o.inserted, o.skipped), (3, 1, 2));
    let titles: Vec<String> = stored(&client).await.into_iter().map(|e| e.title).collect();
    assert_eq!(titles, ["first of 1/1", "only 1/2", "new", "first of 2/5"]);
    db.drop().await;
}

#[tokio::test]
async fn first_offered_wins_even_when_the_winner_sorts_last() {
    first_offered_wins(500).await;
}

#[tokio::test]
async fn first_offered_wins_even_when_the_winner_sorts_last_through_copy() {
    first_offered_wins(COPY_BATCH).await;
}

/// `n` rows of one key, the first offered the largest by every other column:
/// the choice must follow the batch order, not the values.
async fn first_offered_wins(n: usize) {
    let (db, mut client) = setup(&format!("first_wins_{n}")).await;
    let batch: Vec<Entry> =
        (0..n).rev().map(|i| Entry { feed: 7, item: 7, title: format!("{i:06}"), score: Some(i as f64) }).collect();
    let o = Entry::bulk_create_new(&mut client, &batch).await.unwrap();
    assert_eq!((o.offered, o.inserted, o.skipped), (n as u64, 1, n as u64 - 1));
    assert_eq!(stored(&client).await, vec![batch[0].clone()]);
    db.drop().await;
}

#[tokio::test]
async fn empty_batch_writes_nothing() {
    let (db, mut client) = setup("empty_batch").await;
    let o = Entry::bulk_create_new(&mut client, Vec::<Entry>::new()).await.unwrap();
    assert_eq!((o.offered, o.inserted, o.skipped), (0, 0, 0));
    assert_eq!(o.to_string(), "0 of 0 records added");
    assert_eq!(count(&client, "entry").await, 0);
    // And an empty batch after a non-empty one.
    Entry::bulk_create_new(&mut client, [entry(1, 1, "a")]).await.unwrap();
    let o = Entry::bulk_create_new(&mut client, std::iter::empty::<Entry>()).await.unwrap();
    assert_eq!(o, bulk_runtime::Report::default());
    assert_eq!(count(&client, "entry").await, 1);
    db.drop().await;
}

#[tokio::test]
async fn batch_of_stored_rows_inserts_nothing() {
    let (db, mut client) = setup("all_stored").await;
    let batch: Vec<Entry> = (0..50).map(|i| entry(i % 3, i64::from(i), "x")).collect();
    let o = Entry::bulk_create_new(&mut client, &batch).await.unwrap();
    assert_eq!(o.inserted, 50);
    let changed: Vec<Entry> = batch.iter().map(|e| Entry { title: "changed".into(), ..e.clone() }).collect();
    let o = Entry::bulk_create_new(&mut client, &changed).await.unwrap();
    assert_eq!((o.offered, o.inserted, o.skipped), (50, 0, 50));
    assert_eq!(o.to_string(), "0 of 50 records added");
    assert!(stored(&client).await.iter().all(|e| e.title == "x"));
    assert_eq!(count(&client, "entry").await, 50);
    db.drop().await;
}

#[tokio::test]
async fn large_lazy_batch_counts_exactly() {
    const N: i64 = 200_000;
    let (db, mut client) = setup("large_batch").await;
    // Pre-store every 7th item with plain SQL (not through the code under test).
    client
        .execute(
            "INSERT INTO entry (feed, item, title) SELECT 1, g, 'old' FROM generate_series(0, $1::bigint - 1, 7) AS g",
            &[&N],
        )
        .await
        .unwrap();
    let pre_stored = (0..N).filter(|i| i % 7 == 0).count() as u64;
    assert_eq!(count(&client, "entry").await as u64, pre_stored);

    // Produced lazily by an adaptor chain; never collected. Every 10th item is
    // offered twice in a row (an in-batch duplicate).
    let rows = (0..N).flat_map(|i| {
        let e = Entry { feed: 1, item: i, title: format!("new {i}"), score: Some(i as f64 / 2.0) };
        let dupe = (i % 10 == 0).then(|| Entry { title: "dupe".into(), ..e.clone() });
        std::iter::once(e).chain(dupe)
    });
    let o = Entry::bulk_create_new(&mut client, rows).await.unwrap();

    let dupes = (0..N).filter(|i| i % 10 == 0).count() as u64;
    assert_eq!(o.offered, N as u64 + dupes);
    assert_eq!(o.inserted, N as u64 - pre_stored);
    assert_eq!(o.skipped, pre_stored + dupes);
    assert_eq!(count(&client, "entry").await, N);
    let (old, dupe_titles, bad_score): (i64, i64, i64) = {
        let r = client
            .query_one(
                "SELECT count(*) FILTER (WHERE title = 'old'), count(*) FILTER (WHERE title = 'dupe'),
                        count(*) FILTER (WHERE title <> 'old' AND (title <> 'new ' || item OR score <> item / 2.0))
                   FROM entry",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(old as u64, pre_stored, "stored rows untouched");
    assert_eq!(dupe_titles, 0, "the first offered of a duplicated key wins");
    assert_eq!(bad_score, 0, "values arrive intact");
    db.drop().await;
}

#[tokio::test]
async fn rows_can_be_passed_in_many_shapes() {
    let (db, mut client) = setup("row_shapes").await;
    let mut expected = 0;
    let mut next = |n: i64| {
        let rows: Vec<Entry> = (expected..expected + n).map(|i| entry(1, i, "t")).collect();
        expected += n;
        rows
    };

    let by_value: Vec<Entry> = next(3);
    let o = Entry::bulk_create_new(&mut client, by_value).await.unwrap();
    assert_eq!(o.inserted, 3);

    let owned = next(4);
    let slice: &[Entry] = &owned;
    let o = Entry::bulk_create_new(&mut client, slice).await.unwrap();
    assert_eq!(o.inserted, 4);

    let vec_ref = next(5);
    let o = Entry::bulk_create_new(&mut client, &vec_ref).await.unwrap();
    assert_eq!(o.inserted, 5);

    let refs = next(6);
    let o = Entry::bulk_create_new(&mut client, refs.iter().filter(|e| e.item % 2 == 0)).await.unwrap();
    assert_eq!((o.offered, o.inserted), (3, 3));

    let array = next(2);
    let array: [Entry; 2] = [array[0].clone(), array[1].clone()];
    let o = Entry::bulk_create_new(&mut client, array).await.unwrap();
    assert_eq!(o.inserted, 2);

    let vec_of_refs_source = next(2);
    let vec_of_refs: Vec<&Entry> = vec_of_refs_source.iter().collect();
    let o = Entry::bulk_create_new(&mut client, vec_of_refs).await.unwrap();
    assert_eq!(o.inserted, 2);

    assert_eq!(count(&client, "entry").await, 3 + 4 + 5 + 3 + 2 + 2);
    // The borrowed batches are still usable afterwards.
    assert_eq!(owned.len() + vec_ref.len() + refs.len(), 15);
    db.drop().await;
}

#[tokio::test]
async fn nulls_in_nullable_columns() {
    #[derive(BulkCreateNew, Debug, PartialEq)]
    #[bulk(table = "reading", unique(sensor))]
    struct Reading {
        sensor: i64,
        value: Option<f64>,
        unit: Option<String>,
        raw: Option<Vec<u8>>,
        ok: Option<bool>,
    }
    let db = TestDb::new("nullable_values").await;
    let mut client = db.connect().await;
    client.batch_execute(&Reading::model().migration_sql()).await.unwrap();
    // A short batch, then one long enough for the COPY path, each with rows
    // of all NULLs, of all values, and of empty values.
    for (base, n) in [(0i64, 3i64), (100, COPY_BATCH as i64)] {
        let rows: Vec<Reading> = (0..n)
            .map(|i| match i % 3 {
                0 => Reading { sensor: base + i, value: None, unit: None, raw: None, ok: None },
                1 => Reading {
                    sensor: base + i,
                    value: Some(1.5),
                    unit: Some("°C".into()),
                    raw: Some(vec![0, 1]),
                    ok: Some(false),
                },
                _ => Reading {
                    sensor: base + i,
                    value: Some(0.0),
                    unit: Some(String::new()),
                    raw: Some(vec![]),
                    ok: None,
                },
            })
            .collect();
        let o = Reading::bulk_create_new(&mut client, &rows).await.unwrap();
        assert_eq!(o.inserted, n as u64);
        let got: Vec<Reading> = client
            .query("SELECT sensor, value, unit, raw, ok FROM reading WHERE sensor >= $1 ORDER BY sensor", &[&base])
            .await
            .unwrap()
            .iter()
            .map(|r| Reading { sensor: r.get(0), value: r.get(1), unit: r.get(2), raw: r.get(3), ok: r.get(4) })
            .collect();
        assert_eq!(got, rows);
        // Really SQL NULL, not an empty value.
        let nulls: i64 = client
            .query_one(
                "SELECT count(*) FROM reading WHERE sensor >= $1 AND value IS NULL AND unit IS NULL AND raw IS NULL",
                &[&base],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(nulls, (0..n).filter(|i| i % 3 == 0).count() as i64);
    }
    db.drop().await;
}

#[tokio::test]
async fn id_false_creates_no_surrogate_key() {
    #[derive(BulkCreateNew)]
    #[bulk(table = "plain", unique(code), id = false)]
    struct Plain {
        code: String,
        n: i32,
    }
    let db = TestDb::new("id_false").await;
    let mut client = db.connect().await;
    client.batch_execute(&Plain::model().migration_sql()).await.unwrap();
    assert_eq!(columns(&client, "plain").await, ["code", "n"]);
    let pk: i64 = client
        .query_one("SELECT count(*) FROM pg_constraint WHERE conrelid = 'plain'::regclass AND contype = 'p'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pk, 0);
    let o = Plain::bulk_create_new(
        &mut client,
        [Plain { code: "a".into(), n: 1 }, Plain { code: "b".into(), n: 2 }, Plain { code: "a".into(), n: 3 }],
    )
    .await
    .unwrap();
    assert_eq!((o.inserted, o.skipped), (2, 1));
    let sum: i64 = client.query_one("SELECT sum(n) FROM plain", &[]).await.unwrap().get(0);
    assert_eq!(sum, 3);
    db.drop().await;
}

#[tokio::test]
async fn custom_id_name_is_an_identity_primary_key() {
    #[derive(BulkCreateNew)]
    #[bulk(table = "numbered", unique(code), id = "row_no")]
    struct Numbered {
        code: String,
    }
    let db = TestDb::new("custom_id").await;
    let mut client = db.connect().await;
    client.batch_execute(&Numbered::model().migration_sql()).await.unwrap();
    assert_eq!(Numbered::model().id_column(), Some("row_no"));
    assert_eq!(columns(&client, "numbered").await, ["row_no", "code"]);
    let (pk_cols, identity): (Vec<String>, String) = {
        let r = client
            .query_one(
                "SELECT ARRAY(SELECT a.attname::text FROM unnest(c.conkey) k JOIN pg_attribute a
                                ON a.attrelid = c.conrelid AND a.attnum = k),
                        (SELECT attidentity::text FROM pg_attribute WHERE attrelid = c.conrelid AND attname = 'row_no')
                   FROM pg_constraint c WHERE c.conrelid = 'numbered'::regclass AND c.contype = 'p'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(pk_cols, ["row_no"]);
    assert_eq!(identity, "d", "GENERATED BY DEFAULT AS IDENTITY");
    let batch: Vec<Numbered> = ["c", "a", "b", "a"].iter().map(|c| Numbered { code: (*c).into() }).collect();
    let o = Numbered::bulk_create_new(&mut client, &batch).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (3, 1));
    let ids: BTreeSet<i64> =
        client.query("SELECT row_no FROM numbered", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ids.len(), 3, "the identity numbers every row: {ids:?}");
    db.drop().await;
}

#[tokio::test]
async fn nulls_not_distinct_key_deduplicates_null_keys() {
    nulls_not_distinct(0).await;
}

#[tokio::test]
async fn nulls_not_distinct_key_deduplicates_null_keys_through_copy() {
    nulls_not_distinct(COPY_BATCH).await;
}

/// With `pad` filler rows (owners from 1000 on, non-NULL labels) after each batch.
async fn nulls_not_distinct(pad: usize) {
    #[derive(BulkCreateNew)]
    #[bulk(table = "tag", unique(owner, label), nulls_not_distinct)]
    struct Tag {
        owner: i64,
        label: Option<String>,
        note: String,
    }
    let tag = |owner, label: Option<&str>, note: &str| Tag { owner, label: label.map(Into::into), note: note.into() };
    let filler = move |round: i64| (0..pad as i64).map(move |i| tag(1000 + i, Some(&format!("{round}")), "filler"));
    let pad_u = pad as u64;
    let db = TestDb::new(&format!("nulls_not_distinct_{pad}")).await;
    let mut client = db.connect().await;
    client.batch_execute(&Tag::model().migration_sql()).await.unwrap();
    let nnd: bool = client
        .query_one(
            "SELECT bool_and(indnullsnotdistinct) FROM pg_index WHERE indrelid = 'tag'::regclass AND indisunique AND NOT indisprimary",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(nnd, "the migration's unique index is NULLS NOT DISTINCT");

    let batch = [
        tag(1, None, "first null"),
        tag(1, Some("x"), "x"),
        tag(1, None, "second null"),
        tag(2, None, "other owner"),
        tag(1, Some("x"), "x again"),
    ];
    let o = Tag::bulk_create_new(&mut client, batch.into_iter().chain(filler(1))).await.unwrap();
    assert_eq!((o.offered, o.inserted, o.skipped), (5 + pad_u, 3 + pad_u, 2));
    let note: String =
        client.query_one("SELECT note FROM tag WHERE owner = 1 AND label IS NULL", &[]).await.unwrap().get(0);
    assert_eq!(note, "first null");

    // A NULL key already stored is recognised by the anti-join.
    let again = [tag(1, None, "late"), tag(2, None, "late"), tag(3, None, "new")];
    let o = Tag::bulk_create_new(&mut client, again.into_iter().chain(filler(1))).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (1, 2 + pad_u));
    assert_eq!(count(&client, "tag").await, 4 + pad as i64);
    db.drop().await;
}

/// The keys worker `w` offers in `round`: overlapping other rounds and
/// workers; short batches (one statement) and long ones (COPY) alternate.
fn batch_range(w: i64, round: i64) -> std::ops::Range<i64> {
    let start = w * 1_000 + round * 500;
    let len = if (w + round) % 2 == 0 { 3_000 } else { COPY_BATCH as i64 };
    start..start + len
}

#[tokio::test]
async fn concurrent_overlapping_batches_insert_each_key_once() {
    let (db, client) = setup("concurrent").await;
    drop(client);
    // Four workers, overlapping ranges, two of them in reverse order, each in
    // several batches: no unique violation, no deadlock, every key once.
    let mut tasks = Vec::new();
    for w in 0..4i64 {
        let mut client = db.connect().await;
        tasks.push(tokio::spawn(async move {
            let mut total = bulk_runtime::Report::default();
            for round in 0..5i64 {
                let range = batch_range(w, round);
                let rows: Vec<Entry> = if w % 2 == 0 {
                    range.map(|i| entry(1, i, "w")).collect()
                } else {
                    range.rev().map(|i| entry(1, i, "w")).collect()
                };
                total += Entry::bulk_create_new(&mut client, &rows).await.unwrap();
            }
            total
        }));
    }
    let mut total = bulk_runtime::Report::default();
    for t in tasks {
        total += t.await.unwrap();
    }
    let keys: BTreeSet<i64> = (0..4i64).flat_map(|w| (0..5i64).flat_map(move |r| batch_range(w, r))).collect();
    let offered: usize = (0..4i64).flat_map(|w| (0..5i64).map(move |r| batch_range(w, r).count())).sum();
    assert_eq!(total.offered, offered as u64);
    assert_eq!(total.inserted, keys.len() as u64);
    assert_eq!(total.skipped, total.offered - keys.len() as u64);
    let client = db.connect().await;
    assert_eq!(count(&client, "entry").await, keys.len() as i64);
    db.drop().await;
}

#[tokio::test]
async fn hash_partitioned_target_table() {
    let db = TestDb::new("partitioned").await;
    let mut client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE entry (feed integer NOT NULL, item bigint NOT NULL, title text NOT NULL,
                                 score double precision, UNIQUE (feed, item)) PARTITION BY HASH (feed);
             CREATE TABLE entry_0 PARTITION OF entry FOR VALUES WITH (MODULUS 2, REMAINDER 0);
             CREATE TABLE entry_1 PARTITION OF entry FOR VALUES WITH (MODULUS 2, REMAINDER 1);",
        )
        .await
        .unwrap();
    let batch: Vec<Entry> = (0..100).map(|i| entry(i % 10, i64::from(i / 10), "p")).collect();
    let o = Entry::bulk_create_new(&mut client, &batch).await.unwrap();
    assert_eq!(o.inserted, 100);
    let o = Entry::bulk_create_new(&mut client, batch.iter().chain([&entry(11, 0, "n")])).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (1, 100));
    let (p0, p1): (i64, i64) = {
        let r = client.query_one("SELECT (SELECT count(*) FROM entry_0), (SELECT count(*) FROM entry_1)", &[]).await;
        let r = r.unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(p0 + p1, 101);
    assert!(p0 > 0 && p1 > 0, "rows spread over both partitions: {p0} / {p1}");
    db.drop().await;
}

#[tokio::test]
async fn scratch_table_is_created_once_per_session() {
    let (db, mut client) = setup("scratch_reuse").await;
    // Short batches take the one-statement path: no scratch table at all.
    for i in 1..6 {
        Entry::bulk_create_new(&mut client, [entry(1, i, "a")]).await.unwrap();
    }
    assert_eq!(scratch_tables(&client).await, Vec::new(), "no scratch table for short batches");
    // Long batches (the COPY path) create it once and reuse it.
    Entry::bulk_create_new(&mut client, (0..COPY_BATCH as i64).map(|i| entry(2, i, "long"))).await.unwrap();
    let first = scratch_tables(&client).await;
    assert_eq!(first.len(), 1, "{first:?}");
    Entry::bulk_create_new(&mut client, (0..COPY_BATCH as i64).map(|i| entry(3, i, "long"))).await.unwrap();
    assert_eq!(scratch_tables(&client).await, first, "same table (same oid) reused");
    // Emptied by ON COMMIT DELETE ROWS after each call.
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM pg_temp.{}", bulk_runtime::quote_ident(&first[0].1)), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    // A second connection has its own scratch table and sees the stored rows.
    let mut other = db.connect().await;
    let o = Entry::bulk_create_new(&mut other, [entry(1, 1, "b"), entry(1, 9, "b")]).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (1, 1));
    db.drop().await;
}

/// `(oid, name)` of the session's scratch tables.
async fn scratch_tables(client: &Client) -> Vec<(u32, String)> {
    client
        .query(
            "SELECT oid, relname::text FROM pg_class
              WHERE relnamespace = pg_my_temp_schema() AND relname LIKE '\\_\\_bulk\\_%' ORDER BY oid",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The live columns of a table in the test's schema, in order.
async fn columns(client: &Client, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0
                AND NOT attisdropped ORDER BY attnum",
            &[&bulk_runtime::quote_ident(table)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}
