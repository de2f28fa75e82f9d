//! A web-style handler: each request carries a batch of rows, takes a
//! connection from a pool (deadpool-postgres), stores the batch with one
//! call, and answers with the counts, or with an HTTP-like status that says
//! whether the client should retry.
//!
//! A pooled object is passed as `&mut conn`, like a `Client`: that needs
//! bulk-runtime's `deadpool` feature (`bb8` for a bb8 pool).
//!
//! ```sh
//! cargo run -p bulk-runtime --features deadpool --example pooled_handler
//! ```
//!
//! It needs the test server (`BULK_TEST_DATABASE_URL`, by default
//! `host=127.0.0.1 user=postgres`) and works in a schema of its own, dropped
//! at the end.

mod common;

use bulk_runtime::{BulkCreateNew, Error};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};

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

/// What the handler answers: a status code and a body.
#[derive(Debug)]
struct Response {
    status: u16,
    body: String,
}

/// `POST /retweets` with a batch of rows: store the new ones.
async fn post_retweets(pool: &Pool, rows: Vec<Retweet>) -> Response {
    let mut conn = match pool.get().await {
        Ok(conn) => conn,
        Err(e) => return Response { status: 503, body: format!("no database connection: {e}") },
    };
    // The pooled object itself is the connection (feature `deadpool`).
    match Retweet::bulk_create_new(&mut conn, &rows).await {
        Ok(outcome) => Response {
            status: 200,
            body: format!(
                r#"{{"offered":{},"inserted":{},"skipped":{}}}"#,
                outcome.offered, outcome.inserted, outcome.skipped
            ),
        },
        Err(e) => {
            if !e.connection_usable() {
                // Do not hand a broken connection to the next request.
                drop(Object::take(conn));
            }
            error_response(&e)
        }
    }
}

/// Maps a bulk error to a status: a value the database cannot store is the
/// client's fault (400); a retryable failure (serialization failure,
/// deadlock, lost connection) is 503, so the client sends the batch again,
/// which is always safe: stored keys are skipped.
fn error_response(e: &Error) -> Response {
    let status = match e {
        Error::InvalidValue { .. } => 400,
        _ if e.is_retryable() => 503,
        _ => 500,
    };
    Response { status, body: e.to_string() }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = common::ExampleDb::create("pooled").await?;

    // The pool: every connection's search_path is the example's schema.
    let manager = Manager::from_config(
        db.config(),
        bulk_runtime::tokio_postgres::NoTls,
        ManagerConfig { recycling_method: RecyclingMethod::Fast },
    );
    let pool = Pool::builder(manager).max_size(4).build()?;
    pool.get().await?.batch_execute(&Retweet::model().migration_sql()).await?;

    // Eight concurrent requests with overlapping batches: every key is stored
    // once, and the inserted counts add up to the rows stored.
    let mut requests = Vec::new();
    for request in 0..8_i64 {
        let pool = pool.clone();
        let rows: Vec<Retweet> =
            (0..500_i64).map(|i| Retweet { tweet: 1, retweeter: request * 250 + i, original_author: 100 }).collect();
        requests.push(tokio::spawn(async move { post_retweets(&pool, rows).await }));
    }
    let mut inserted = 0;
    for request in requests {
        let response = request.await?;
        println!("{} {}", response.status, response.body);
        assert_eq!(response.status, 200, "{}", response.body);
        let count = response.body.split(r#""inserted":"#).nth(1).and_then(|s| s.split(',').next());
        inserted += count.expect("a count").parse::<i64>()?;
    }
    let stored: i64 = pool.get().await?.query_one("SELECT count(*) FROM retweeter", &[]).await?.get(0);
    println!("{inserted} inserted by the requests, {stored} stored");
    assert_eq!((inserted, stored), (2_250, 2_250));

    // A value PostgreSQL cannot store is refused before anything is sent: 400.
    #[derive(BulkCreateNew)]
    #[bulk(table = "note", unique(number))]
    struct Note {
        number: i64,
        text: String,
    }
    pool.get().await?.batch_execute(&Note::model().migration_sql()).await?;
    let mut conn = pool.get().await?;
    let err = Note::bulk_create_new(&mut conn, [Note { number: 1, text: "nul \0 byte".into() }]).await.unwrap_err();
    let response = error_response(&err);
    println!("{} {}", response.status, response.body);
    assert_eq!(response.status, 400);
    drop(conn);

    pool.close();
    db.drop().await?;
    Ok(())
}
