use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(a))]
struct Row {
    a: i64,
    #[bulk(rename = "id")]
    b: i64,
}

#[derive(BulkCreateNew)]
#[bulk(unique(a), id = "a")]
struct Other {
    #[bulk(rename = "z")]
    a: i64,
    #[bulk(rename = "a")]
    b: i64,
}

fn main() {}
