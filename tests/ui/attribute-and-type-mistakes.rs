use bulk_runtime::BulkCreateNew;

// Attribute mistakes and unsupported field types are reported in one compile.
// A field whose own `#[bulk(...)]` is malformed is not type-checked: whether
// it is stored is not known.
#[derive(BulkCreateNew)]
#[bulk(unique(tweet, retweeter), tabel = "retweets")]
struct Retweet {
    tweet: u64,
    retweeter: Option<i64>,
    #[bulk(skp)]
    cache: std::collections::HashMap<u64, u64>,
    author: std::time::Duration,
}

fn main() {}
