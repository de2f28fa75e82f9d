use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tags))]
struct Tagged {
    tags: Vec<String>,
}

fn main() {}
