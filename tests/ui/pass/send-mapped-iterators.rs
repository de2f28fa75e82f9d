//! Rows mapped from borrowed records by a closure, inside `tokio::spawn`
//! (which requires a `Send` future): the plain call, the builder with each
//! option, and the streams, on a `Client` and on a `Transaction`. Compiling
//! is the test; `main` runs nothing.

use bulk_runtime::tokio_postgres::Client;
use bulk_runtime::{BulkCreateNew, Upsert};
use futures_util::{StreamExt, stream};

#[derive(BulkCreateNew)]
#[bulk(table = "retweeter", unique(tweet, retweeter))]
struct Retweet {
    tweet: i64,
    retweeter: i64,
    original_author: i64,
}

/// A record as an API returns it.
struct ApiRetweet {
    tweet: i64,
    user: i64,
    author: i64,
}

fn row(r: &ApiRetweet) -> Retweet {
    Retweet { tweet: r.tweet, retweeter: r.user, original_author: r.author }
}

#[allow(dead_code)]
fn spawn_calls(mut client: Client, api: Vec<ApiRetweet>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // The plain call, on a closure that borrows each record.
        Retweet::bulk_create_new(&mut client, api.iter().map(|r| Retweet {
            tweet: r.tweet,
            retweeter: r.user,
            original_author: r.author,
        }))
        .await
        .unwrap();
        Retweet::bulk_create_new(&mut client, api.iter().map(row)).await.unwrap();

        // The builder, with each option.
        Retweet::bulk(&mut client).run(api.iter().map(|r| row(r))).await.unwrap();
        Retweet::bulk(&mut client).returning_keys().run(api.iter().map(|r| row(r))).await.unwrap();
        Retweet::bulk(&mut client).returning_keys_with(|_: bulk_runtime::NewRow<(i64, i64)>| {}).run(api.iter().map(|r| row(r))).await.unwrap();
        Retweet::bulk(&mut client).returning_skipped().run(api.iter().map(|r| row(r))).await.unwrap();
        Retweet::bulk(&mut client)
            .upsert(Upsert::columns(["original_author"]).only_if_changed())
            .batch_id("page 1")
            .on_progress(|_| {})
            .run(api.iter().map(|r| row(r)))
            .await
            .unwrap();

        // The streams.
        Retweet::bulk(&mut client).run_stream(stream::iter(&api).map(|r| row(r))).await.unwrap();
        Retweet::bulk(&mut client).returning_skipped().run_stream(stream::iter(api.iter()).map(row)).await.unwrap();
        Retweet::bulk(&mut client)
            .try_run_stream(stream::iter(&api).map(|r| Ok::<_, std::io::Error>(row(r))))
            .await
            .unwrap();

        // Rows as they were always passed: by reference, owned, in a slice,
        // from a stream of references.
        let rows: Vec<Retweet> = api.iter().map(row).collect();
        Retweet::bulk_create_new(&mut client, &rows).await.unwrap();
        Retweet::bulk_create_new(&mut client, &rows[..1]).await.unwrap();
        Retweet::bulk_create_new(&mut client, rows.iter().filter(|r| r.tweet > 0)).await.unwrap();
        Retweet::bulk(&mut client).returning_skipped().run(&rows).await.unwrap();
        Retweet::bulk(&mut client).on_progress(|_| {}).run(rows.iter().chain(&rows)).await.unwrap();
        Retweet::bulk(&mut client).run_stream(stream::iter(&rows)).await.unwrap();
        Retweet::bulk(&mut client).run_stream(stream::iter(rows.iter()).chain(stream::iter(&rows))).await.unwrap();
        Retweet::bulk(&mut client).run(rows).await.unwrap();

        // Inside the caller's transaction.
        let mut tx = client.transaction().await.unwrap();
        Retweet::bulk_create_new(&mut tx, api.iter().map(|r| row(r))).await.unwrap();
        Retweet::bulk(&mut tx).returning_keys().run(api.iter().map(|r| row(r))).await.unwrap();
        Retweet::bulk(&mut tx).run_stream(stream::iter(&api).map(|r| row(r))).await.unwrap();
        tx.commit().await.unwrap();
    })
}

fn main() {}
