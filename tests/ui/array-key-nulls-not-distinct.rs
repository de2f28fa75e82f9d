use bulk_runtime::BulkCreateNew;

// `nulls_not_distinct` lets a key field be `Option`, never an array.
#[derive(BulkCreateNew)]
#[bulk(unique(owner, tags), nulls_not_distinct)]
struct Tagged {
    owner: Option<i64>,
    tags: Option<Vec<String>>,
}

fn main() {}
