use bulk_runtime::{BulkCreateNew, Upsert};

#[derive(BulkCreateNew)]
#[bulk(unique(tweet, retweeter))]
struct Retweet {
    tweet: i64,
    retweeter: i64,
    original_author: i64,
}

fn main() {
    // A misspelt column, and a column of the unique key: both compile errors.
    let _ = Upsert::set([Retweet::columns().original_autor]);
    let _ = Upsert::set([Retweet::columns().tweet]);
}
