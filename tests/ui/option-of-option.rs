use bulk_runtime::BulkCreateNew;

// `Option<Option<T>>` would store `Some(None)` and `None` alike as NULL.
#[derive(BulkCreateNew)]
#[bulk(unique(k))]
struct Row {
    k: i64,
    v: Option<Option<i64>>,
}

fn main() {}
