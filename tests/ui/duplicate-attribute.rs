use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(table = "retweet", unique(tweet))]
#[bulk(table = "retweeter")]
struct Retweet {
    tweet: i64,
}

fn main() {}
