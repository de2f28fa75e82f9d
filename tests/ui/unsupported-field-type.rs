use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet))]
struct Retweet {
    tweet: i64,
    views: u64,
}

fn main() {}
