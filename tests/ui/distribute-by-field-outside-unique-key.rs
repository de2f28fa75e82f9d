use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet, retweeter), distribute_by(original_author))]
struct Retweet {
    tweet: i64,
    retweeter: i64,
    original_author: i64,
}

fn main() {}
