use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(table = "retweeter")]
struct Retweet {
    tweet: i64,
    retweeter: i64,
}

fn main() {}
