use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(table = "retweeter")]
struct Retweet {
    #[bulk(unique)]
    tweet: i64,
}

fn main() {}
