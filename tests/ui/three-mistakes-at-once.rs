use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(table = "", unique(tweet, retweter))]
struct Retweet {
    tweet: i64,
    #[bulk(indx)]
    retweeter: i64,
}

fn main() {}
