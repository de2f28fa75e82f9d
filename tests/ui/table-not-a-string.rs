use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(table = retweeter, unique(tweet))]
struct Retweet {
    tweet: i64,
}

fn main() {}
