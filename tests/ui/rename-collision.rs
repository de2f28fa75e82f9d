use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet))]
struct Retweet {
    tweet: i64,
    #[bulk(rename = "tweet")]
    tweet_id: i64,
}

fn main() {}
