use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet, retweeter), distribute_by(twet))]
struct Retweet {
    tweet: i64,
    retweeter: i64,
}

fn main() {}
