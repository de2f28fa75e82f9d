//! Which rows were new: `returning_keys` (position, id, key of each inserted
//! row) and `returning_skipped` (positions of the rows not inserted), on both
//! paths, on a client and inside a caller's transaction, and under
//! concurrent overlapping writers.

use std::collections::{BTreeMap, BTreeSet};

use bulk_runtime::{BulkCreateNew, Error, NewRow};
use bulk_tests::{COPY_BATCH, TestDb, count};
use tokio_postgres::Client;

/// Key `(feed, item)`; the DDL adds the identity column `id`.
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "entry", unique(feed, item))]
pub struct Entry {
    pub feed: i32,
    pub item: i64,
    pub title: String,
}

fn entry(feed: i32, item: i64, title: &str) -> Entry {
    Entry { feed, item, title: title.to_owned() }
}

async fn setup(name: &str) -> (TestDb, Client) {
    let db = TestDb::new(name).await;
    let client = db.connect().await;
    client.batch_execute(&Entry::model().migration_sql()).await.unwrap();
    (db, client)
}

/// `(feed, item) -> (id, title)` of every stored row.
async fn stored(client: &Client) -> BTreeMap<(i32, i64), (i64, String)> {
    client
        .query("SELECT feed, item, id, title FROM entry", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
        .collect()
}

/// A batch of `n` rows (at least 10) over keys `(k % 3, k)`: keys below
/// `n / 4` are stored before, and every 5th row repeats the key of the row
/// before it. Returns the batch and, by position, the rows that must be new.
fn batch(n: usize) -> (Vec<Entry>, Vec<Entry>, Vec<usize>) {
    let key = |k: i64| ((k % 3) as i32, k);
    let pre: Vec<Entry> = (0..n as i64 / 4).map(|k| entry(key(k).0, k, "old")).collect();
    let rows: Vec<Entry> = (0..n as i64)
        .map(|i| {
            let k = if i % 5 == 4 { i - 1 } else { i };
            entry(key(k).0, k, &format!("row {i}"))
        })
        .collect();
    let mut seen: BTreeSet<(i32, i64)> = pre.iter().map(|e| (e.feed, e.item)).collect();
    let new: Vec<usize> = (0..n).filter(|&i| seen.insert((rows[i].feed, rows[i].item))).collect();
    (pre, rows, new)
}

#[tokio::test]
async fn returning_keys_lists_exactly_the_new_rows_with_their_ids() {
    returning_keys(200).await;
}

#[tokio::test]
async fn returning_keys_lists_exactly_the_new_rows_with_their_ids_through_copy() {
    returning_keys(COPY_BATCH + 37).await;
}

async fn returning_keys(n: usize) {
    let (db, mut client) = setup(&format!("returning_keys_{n}")).await;
    let (pre, rows, new) = batch(n);
    Entry::bulk_create_new(&mut client, &pre).await.unwrap();

    let report = Entry::bulk(&mut client).returning_keys().run(&rows).await.unwrap();
    assert_eq!(report.offered, n as u64);
    assert_eq!(report.inserted, new.len() as u64);
    assert_eq!(report.skipped, (n - new.len()) as u64);
    assert!(!report.replayed);
    // In batch order, each the first offered row of its key, with the id
    // the table gave it.
    let table = stored(&client).await;
    let got: Vec<usize> = report.returned.iter().map(|r| r.index).collect();
    assert_eq!(got, new);
    for NewRow { index, id, key } in &report.returned {
        assert_eq!(*key, (rows[*index].feed, rows[*index].item));
        let (stored_id, title) = &table[key];
        assert_eq!(*id, Some(*stored_id), "id of {key:?}");
        assert_eq!(title, &format!("row {index}"));
    }
    assert_eq!(count(&client, "entry").await as usize, pre.len() + new.len());

    // Again: nothing is new.
    let again = Entry::bulk(&mut client).returning_keys().run(&rows).await.unwrap();
    assert_eq!((again.inserted, again.skipped, again.returned.len()), (0, n as u64, 0));
    db.drop().await;
}

#[tokio::test]
async fn returning_skipped_lists_stored_and_repeated_rows() {
    returning_skipped(300).await;
}

#[tokio::test]
async fn returning_skipped_lists_stored_and_repeated_rows_through_copy() {
    returning_skipped(COPY_BATCH + 11).await;
}

async fn returning_skipped(n: usize) {
    let (db, mut client) = setup(&format!("returning_skipped_{n}")).await;
    let (pre, rows, new) = batch(n);
    Entry::bulk_create_new(&mut client, &pre).await.unwrap();
    let report = Entry::bulk(&mut client).returning_skipped().run(rows.iter()).await.unwrap();
    let new: BTreeSet<usize> = new.into_iter().collect();
    let skipped: Vec<usize> = (0..n).filter(|i| !new.contains(i)).collect();
    assert_eq!(report.returned, skipped);
    assert_eq!((report.inserted, report.skipped), (new.len() as u64, skipped.len() as u64));
    // Every skipped row's key is stored, by another row (an old one or an
    // earlier offered one).
    let table = stored(&client).await;
    for &i in &report.returned {
        let (_, title) = &table[&(rows[i].feed, rows[i].item)];
        assert_ne!(title, &format!("row {i}"), "row {i} was reported skipped but is stored");
    }
    db.drop().await;
}

#[tokio::test]
async fn returning_inside_a_callers_transaction() {
    returning_in_transaction(0).await;
}

#[tokio::test]
async fn returning_inside_a_callers_transaction_through_copy() {
    returning_in_transaction(COPY_BATCH).await;
}

async fn returning_in_transaction(pad: usize) {
    let (db, mut client) = setup(&format!("returning_tx_{pad}")).await;
    let rows = |from: i64| -> Vec<Entry> { (from..from + 5 + pad as i64).map(|k| entry(1, k, "t")).collect() };

    // Rolled back with the caller's transaction.
    let mut tx = client.transaction().await.unwrap();
    let report = Entry::bulk(&mut tx).returning_keys().run(rows(0)).await.unwrap();
    assert_eq!(report.returned.len(), 5 + pad);
    tx.rollback().await.unwrap();
    assert_eq!(count(&client, "entry").await, 0);

    // Two calls in one transaction: the second sees the first's rows.
    let mut tx = client.transaction().await.unwrap();
    let first = Entry::bulk(&mut tx).returning_keys().run(rows(0)).await.unwrap();
    let second = Entry::bulk(&mut tx).returning_skipped().run(rows(3)).await.unwrap();
    assert_eq!(first.inserted as usize, 5 + pad);
    assert_eq!(second.returned, (0..2 + pad).collect::<Vec<_>>(), "keys 3.. were inserted by the first call");
    assert_eq!(second.inserted, 3);
    tx.commit().await.unwrap();
    assert_eq!(count(&client, "entry").await as usize, 8 + pad);
    db.drop().await;
}

#[tokio::test]
async fn returning_keys_with_hands_each_new_row_to_a_callback() {
    let (db, mut client) = setup("returning_with").await;
    let (pre, rows, new) = batch(COPY_BATCH * 2);
    Entry::bulk_create_new(&mut client, &pre).await.unwrap();
    let mut seen = Vec::new();
    let report = Entry::bulk(&mut client)
        .returning_keys_with(|row: NewRow<(i32, i64)>| seen.push(row.index))
        .run(&rows)
        .await
        .unwrap();
    assert_eq!(report.inserted, new.len() as u64);
    assert_eq!(seen, new);
    db.drop().await;
}

#[tokio::test]
async fn key_types_are_checked_before_anything_is_sent() {
    let (db, mut client) = setup("returning_key_types").await;
    let rows = [entry(1, 1, "a")];
    let usage = |e: Error| match e {
        Error::Usage { message, .. } => message,
        other => panic!("expected a usage error, got {other:?}"),
    };
    let wrong_arity = Entry::bulk(&mut client).returning_keys_as::<(i32,)>().run(&rows).await.unwrap_err();
    let message = usage(wrong_arity);
    assert!(message.contains("(feed, item) has 2 columns"), "{message}");
    let wrong_type = Entry::bulk(&mut client).returning_keys_as::<(i64, i64)>().run(&rows).await.unwrap_err();
    let message = usage(wrong_type);
    assert!(message.contains("`feed` is int4"), "{message}");
    assert_eq!(count(&client, "entry").await, 0, "nothing was written");

    // A nullable key column must be read as an Option.
    #[derive(BulkCreateNew)]
    #[bulk(table = "tag", unique(owner, label), nulls_not_distinct, id = false)]
    struct Tag {
        owner: i64,
        label: Option<String>,
    }
    client.batch_execute(&Tag::model().migration_sql()).await.unwrap();
    let tags =
        [Tag { owner: 1, label: None }, Tag { owner: 1, label: Some("x".into()) }, Tag { owner: 1, label: None }];
    let err = Tag::bulk(&mut client).returning_keys_as::<(i64, String)>().run(&tags).await.unwrap_err();
    assert!(usage(err).contains("`label` may be NULL"));
    let report = Tag::bulk(&mut client).returning_keys_as::<(i64, Option<String>)>().run(&tags).await.unwrap();
    let keys: Vec<_> = report.returned.into_iter().map(|r| (r.index, r.id, r.key)).collect();
    assert_eq!(keys, [(0, None, (1, None)), (1, None, (1, Some("x".to_owned())))]);
    // NULL keys are matched back to their rows on the COPY path too.
    let many: Vec<Tag> = (0..COPY_BATCH as i64)
        .map(|i| Tag { owner: i % 2, label: (i % 3 != 0).then(|| format!("{}", i / 6)) })
        .collect();
    let report = Tag::bulk(&mut client).returning_skipped().run(&many).await.unwrap();
    let expected: BTreeSet<(i64, Option<String>)> = many
        .iter()
        .map(|t| (t.owner, t.label.clone()))
        .filter(|k| *k != (1, None) && *k != (1, Some("x".into())))
        .collect();
    assert_eq!(report.inserted, expected.len() as u64);
    assert_eq!(report.returned.len() as u64, report.skipped);
    db.drop().await;
}

#[tokio::test]
async fn id_is_none_when_the_table_has_no_usable_id_column() {
    let db = TestDb::new("returning_no_id").await;
    let mut client = db.connect().await;
    // The model expects `id`, the table was made by hand without it.
    client
        .batch_execute("CREATE TABLE entry (feed integer NOT NULL, item bigint NOT NULL, title text NOT NULL, UNIQUE (feed, item))")
        .await
        .unwrap();
    for n in [3, COPY_BATCH] {
        let rows: Vec<Entry> = (0..n as i64).map(|k| entry(n as i32, k, "x")).collect();
        let report = Entry::bulk(&mut client).returning_keys().run(&rows).await.unwrap();
        assert_eq!(report.returned.len(), n);
        assert!(report.returned.iter().all(|r| r.id.is_none()));
    }
    db.drop().await;
}

#[tokio::test]
async fn concurrent_overlapping_calls_each_report_the_rows_they_inserted() {
    let (db, client) = setup("returning_concurrent").await;
    drop(client);
    // Four workers over overlapping ranges (two in reverse order), short and
    // long batches: every key is reported new by exactly one worker.
    let mut tasks = Vec::new();
    for w in 0..4i64 {
        let mut client = db.connect().await;
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for round in 0..3i64 {
                let len = if (w + round) % 2 == 0 { 2_000 } else { COPY_BATCH as i64 };
                let start = w * 1_500 + round * 700;
                let mut rows: Vec<Entry> = (start..start + len).map(|k| entry(1, k, "w")).collect();
                if w % 2 == 1 {
                    rows.reverse();
                }
                let report = Entry::bulk(&mut client).returning_keys().run(&rows).await.unwrap();
                assert_eq!(report.inserted as usize, report.returned.len());
                mine.extend(report.returned.into_iter().map(|r| r.key.1));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let distinct: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "no key reported new twice");
    let client = db.connect().await;
    assert_eq!(count(&client, "entry").await as usize, all.len(), "every stored key was reported once");
    db.drop().await;
}

#[tokio::test]
async fn every_call_future_is_send_with_borrowed_rows() {
    let (db, mut client) = setup("returning_send").await;
    let rows: Vec<Entry> = (0..COPY_BATCH as i64 + 10).map(|k| entry(1, k, "s")).collect();
    let handle = tokio::spawn(async move {
        let a = Entry::bulk(&mut client).returning_keys().run(&rows[..10]).await.unwrap();
        let b = Entry::bulk(&mut client).returning_skipped().run(rows.iter()).await.unwrap();
        let c = Entry::bulk(&mut client)
            .upsert(bulk_runtime::Upsert::all_columns())
            .on_progress(|_| {})
            .run_stream(futures_util::stream::iter(rows.iter()))
            .await
            .unwrap();
        (a.inserted, b.inserted, c.updated)
    });
    assert_eq!(handle.await.unwrap(), (10, COPY_BATCH as u64, COPY_BATCH as u64 + 10));
    db.drop().await;
}

#[tokio::test]
async fn the_builder_without_options_is_the_plain_call() {
    let (db, mut client) = setup("builder_plain").await;
    for n in [7, COPY_BATCH] {
        let (pre, rows, new) = batch(n);
        Entry::bulk_create_new(&mut client, &pre).await.unwrap();
        let report = Entry::bulk(&mut client).run(&rows).await.unwrap();
        assert_eq!(
            (report.offered, report.inserted, report.skipped),
            (n as u64, new.len() as u64, (n - new.len()) as u64)
        );
        assert_eq!((report.updated, report.unchanged, report.replayed), (0, 0, false));
        let outcome = report.outcome();
        assert_eq!(
            (outcome.offered, outcome.inserted, outcome.skipped),
            (report.offered, report.inserted, report.skipped)
        );
        assert_eq!(report.to_string(), format!("{} of {n} records added", new.len()));
        client.batch_execute("TRUNCATE entry").await.unwrap();
    }
    db.drop().await;
}
