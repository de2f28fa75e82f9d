use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet, retweter))]
struct Retweet {
    tweet: i64,
    retweeter: i64,
}

fn main() {}
