use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet, retweeter))]
struct Retweet {
    tweet: i64,
    retweeter: Option<i64>,
}

fn main() {}
