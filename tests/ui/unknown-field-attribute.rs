use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet))]
struct Retweet {
    tweet: i64,
    #[bulk(indx)]
    retweeter: i64,
}

fn main() {}
