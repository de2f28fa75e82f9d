use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet))]
struct Retweet<T> {
    tweet: i64,
    extra: T,
}

fn main() {}
