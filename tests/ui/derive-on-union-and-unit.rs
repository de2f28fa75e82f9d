use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(a))]
union U {
    a: i64,
}

#[derive(BulkCreateNew)]
#[bulk(unique(a))]
struct Unit;

#[derive(BulkCreateNew)]
#[bulk(unique(a))]
struct Empty {}

fn main() {}
