use bulk_runtime::BulkCreateNew;

// The runtime's statements name their parts `__bulk_...`: a table of such a
// name would be read in their place.
#[derive(BulkCreateNew)]
#[bulk(table = "__bulk_src", unique(tweet))]
struct Retweet {
    tweet: i64,
}

fn main() {}
