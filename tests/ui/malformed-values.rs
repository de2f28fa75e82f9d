use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(table = retweeter, id = 3, unique(tweet, "retweeter"), schema)]
struct Retweet {
    tweet: i64,
    #[bulk(index = true, rename = "by")]
    retweeter: i64,
}

fn main() {}
