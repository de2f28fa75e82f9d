//! The plain call: insert a batch, skipping every row whose unique key is
//! already stored or repeats in the batch.
//!
//! ```sh
//! cargo run -p bulk-runtime --example plain
//! ```
//!
//! It needs the test server (`BULK_TEST_DATABASE_URL`, by default
//! `host=127.0.0.1 user=postgres`) and works in a schema of its own, dropped
//! at the end.

mod common;

use bulk_runtime::BulkCreateNew;

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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = common::ExampleDb::create("plain").await?;
    let mut client = db.connect().await?;

    // Once, or written into a migration file: the table, its unique key and indexes.
    client.batch_execute(&Retweet::model().migration_sql()).await?;

    // The first poll: every row is new.
    let first = vec![retweet(1, 10, 100), retweet(1, 11, 100)];
    let outcome = Retweet::bulk_create_new(&mut client, &first).await?;
    println!("first poll: {outcome}");
    assert_eq!((outcome.offered, outcome.inserted, outcome.skipped), (2, 2, 0));

    // The next poll overlaps the first: (1, 11) is stored already and (1, 12)
    // comes twice, so two of the four rows are skipped, without an error.
    let second = vec![retweet(1, 11, 100), retweet(1, 12, 100), retweet(1, 12, 100), retweet(2, 10, 200)];
    let outcome = Retweet::bulk_create_new(&mut client, &second).await?;
    println!("second poll: {outcome}");
    assert_eq!(outcome.to_string(), "2 of 4 records added");

    // `rows` is any iterator of rows or references to rows, consumed lazily:
    // map API records into rows without collecting them first.
    let api_records = [(3_i64, 20_i64, 300_i64), (3, 21, 300)];
    let rows = api_records.iter().map(|&(tweet, retweeter, author)| retweet(tweet, retweeter, author));
    let outcome = Retweet::bulk_create_new(&mut client, rows).await?;
    println!("mapped records: {outcome}");
    assert_eq!(outcome.inserted, 2);

    // Inside the caller's transaction, the call runs in a savepoint: the
    // caller's rollback undoes it.
    let mut tx = client.transaction().await?;
    let outcome = Retweet::bulk_create_new(&mut tx, [retweet(4, 30, 400)]).await?;
    assert_eq!(outcome.inserted, 1);
    tx.rollback().await?;

    let stored: i64 = client.query_one("SELECT count(*) FROM retweeter", &[]).await?.get(0);
    println!("{stored} retweets stored");
    assert_eq!(stored, 6);

    drop(client);
    db.drop().await?;
    Ok(())
}
