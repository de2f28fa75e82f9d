use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(uniqe(tweet))]
struct Retweet {
    tweet: i64,
}

fn main() {}
