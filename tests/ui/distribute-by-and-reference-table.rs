use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet, retweeter), distribute_by(tweet), reference_table)]
struct Retweet {
    tweet: i64,
    retweeter: i64,
}

fn main() {}
