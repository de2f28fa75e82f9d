use bulk_runtime::BulkCreateNew;

// The same key in two separate `#[bulk(...)]` lists.
#[derive(BulkCreateNew)]
#[bulk(unique(a))]
#[bulk(unique(b), table = "x")]
#[bulk(table = "y")]
struct Row {
    a: i64,
    #[bulk(index)]
    #[bulk(index)]
    b: i64,
    #[bulk(rename = "c1")]
    #[bulk(rename = "c2")]
    c: i64,
}

fn main() {}
