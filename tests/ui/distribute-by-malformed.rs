use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet, retweeter), distribute_by = "tweet")]
struct Retweet {
    tweet: i64,
    retweeter: i64,
}

#[derive(BulkCreateNew)]
#[bulk(unique(tweet, retweeter), distribute_by(tweet, retweeter))]
struct Retweet2 {
    tweet: i64,
    retweeter: i64,
}

#[derive(BulkCreateNew)]
#[bulk(unique(tweet, retweeter), reference_table = true)]
struct Retweet3 {
    tweet: i64,
    retweeter: i64,
}

fn main() {}
