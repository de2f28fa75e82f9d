use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet))]
struct Retweet {
    tweet: i64,
    author: std::rc::Rc<str>,
}

fn main() {}
