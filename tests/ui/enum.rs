use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet))]
enum Retweet {
    Tweet { tweet: i64 },
}

fn main() {}
