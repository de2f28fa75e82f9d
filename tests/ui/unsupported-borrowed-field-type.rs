use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet))]
struct Retweet<'a> {
    tweet: i64,
    mentions: &'a [i64],
}

fn main() {}
