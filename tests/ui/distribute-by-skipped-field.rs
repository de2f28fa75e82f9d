use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet, retweeter), distribute_by(shard))]
struct Retweet {
    tweet: i64,
    retweeter: i64,
    #[bulk(skip)]
    shard: i64,
}

fn main() {}
