//! The builder, `T::bulk(&mut conn)`: which rows were new (their batch
//! position, generated id and key), which were skipped, upsert, exactly-once
//! accounting with a batch id, and a stream of rows with progress reports.
//!
//! ```sh
//! cargo run -p bulk-runtime --example builder
//! ```
//!
//! It needs the test server (`BULK_TEST_DATABASE_URL`, by default
//! `host=127.0.0.1 user=postgres`) and works in a schema of its own, dropped
//! at the end.

mod common;

use bulk_runtime::BulkCreateNew;
use bulk_runtime::Ledger;
use bulk_runtime::{Keep, Upsert};
use futures_util::StreamExt;

/// One retweet: stored once per (tweet, retweeter).
#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "retweeter", unique(tweet, retweeter))]
struct Retweet {
    tweet: i64,
    #[bulk(index)]
    retweeter: i64,
    #[bulk(index)]
    original_author: i64,
}

fn retweet(tweet: i64, retweeter: i64, original_author: i64) -> Retweet {
    Retweet { tweet, retweeter, original_author }
}

/// What an application would do with a new row: here, say so.
fn notify_author(tweet: i64, retweeter: i64, id: Option<i64>) {
    println!("  new: tweet {tweet} retweeted by {retweeter}, id {id:?}");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = common::ExampleDb::create("builder").await?;
    let mut client = db.connect().await?;
    client.batch_execute(&Retweet::model().migration_sql()).await?;
    Retweet::bulk_create_new(&mut client, [retweet(1, 10, 100)]).await?;

    // Which rows were new: their position in the batch, generated id and key.
    // The key type is a tuple of the key fields' types, checked before
    // anything is sent.
    let batch = vec![retweet(1, 10, 100), retweet(1, 11, 100), retweet(2, 10, 200)];
    let report = Retweet::bulk(&mut client).returning_keys().run(&batch).await?;
    println!("returning keys: {report}");
    for new in &report.returned {
        // new.index: position in the batch; new.id: the generated id; new.key: (tweet, retweeter)
        notify_author(new.key.0, new.key.1, new.id);
    }
    let new: Vec<(usize, (i64, i64))> = report.returned.iter().map(|row| (row.index, row.key)).collect();
    assert_eq!(new, [(1, (1, 11)), (2, (2, 10))]);
    assert!(report.returned.iter().all(|row| row.id.is_some()));

    // Which rows were skipped (stored already, or repeated in the batch).
    let batch = vec![retweet(1, 11, 100), retweet(3, 10, 300), retweet(3, 10, 300)];
    let report = Retweet::bulk(&mut client).returning_skipped().run(&batch).await?;
    println!("rows {:?} of the batch were already stored or repeated", report.returned);
    assert_eq!(report.returned, [0, 2]);

    // Upsert: insert new keys, update the author of stored ones when it
    // differs; of a key repeated in the batch, the last row wins.
    let batch = vec![
        retweet(1, 10, 101), // stored, author changes: updated
        retweet(1, 11, 100), // stored, same author: unchanged
        retweet(4, 10, 400), // new: inserted
        retweet(4, 10, 401), // same key again: the last row is kept, this one counted skipped
    ];
    let report = Retweet::bulk(&mut client)
        .upsert(Upsert::set([Retweet::columns().original_author]).only_if_changed().keep(Keep::Last))
        .run(&batch)
        .await?;
    println!("{report}"); // "1 of 4 records added, 1 updated, 1 unchanged"
    assert_eq!((report.inserted, report.updated, report.unchanged, report.skipped), (1, 1, 1, 1));
    let author: i64 = client.query_one("SELECT original_author FROM retweeter WHERE tweet = 4", &[]).await?.get(0);
    assert_eq!(author, 401);

    // Exactly-once accounting: the batch id and the counts are recorded in the
    // ledger table in the call's transaction, so a retry of the same batch
    // (say, after the answer to COMMIT was lost) reports the first counts.
    client.batch_execute(&Ledger::of::<Retweet>().migration_sql()).await?; // once: the ledger table
    let batch = vec![retweet(5, 10, 500), retweet(5, 11, 500)];
    let poll_id = 5;
    for attempt in 1..=2 {
        // The second attempt retries the same batch under the same id.
        let report = Retweet::bulk(&mut client).batch_id(format!("poll {poll_id}")).run(&batch).await?;
        if report.replayed {
            println!("an earlier attempt stored this batch: {report}"); // "... (recorded earlier)"
        }
        assert_eq!((report.inserted, report.replayed), (2, attempt == 2));
    }

    // A stream of rows (an API pager, a file), with progress reports: rows
    // are sent as they arrive, never all held in memory.
    let api_pages = futures_util::stream::iter(
        (0..30_i64).map(|page| (0..1_000_i64).map(move |i| retweet(100 + page, i, 7)).collect::<Vec<_>>()),
    );
    let rows = api_pages.flat_map(futures_util::stream::iter); // a Stream of Retweet
    let report = Retweet::bulk(&mut client)
        .on_progress(|p| eprintln!("{} sent, {} inserted", p.sent, p.inserted))
        .run_stream(rows)
        .await?;
    println!("stream: {report}");
    assert_eq!(report.inserted, 30_000);

    drop(client);
    db.drop().await?;
    Ok(())
}
