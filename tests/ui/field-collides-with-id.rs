use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet))]
struct Retweet {
    id: i64,
    tweet: i64,
}

fn main() {}
