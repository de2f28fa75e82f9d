use bulk_runtime::BulkCreateNew;

enum Kind {
    Retweet,
    Quote,
}

#[derive(BulkCreateNew)]
#[bulk(unique(tweet))]
struct Share {
    tweet: i64,
    kind: Kind,
}

fn main() {}
