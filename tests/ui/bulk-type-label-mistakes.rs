use bulk_runtime::BulkType;

// Two variants with one label, a label PostgreSQL would cut (64 bytes),
// an empty label and an empty type name.
#[derive(BulkType, Debug, Clone, Copy)]
#[bulk(type = "")]
enum Mood {
    Happy,
    #[bulk(rename = "happy")]
    Glad,
    #[bulk(rename = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")]
    Long,
    #[bulk(rename = "")]
    Empty,
}

fn main() {}
