use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(name))]
struct Member<'__bulk_row> {
    name: &'__bulk_row str,
}

fn main() {}
