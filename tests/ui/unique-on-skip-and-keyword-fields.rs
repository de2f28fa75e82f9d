use bulk_runtime::BulkCreateNew;

// `unique` names a raw identifier that is no field, and a keyword spelt
// without `r#`; `distribute_by` names a field twice in the key.
#[derive(BulkCreateNew)]
#[bulk(unique(r#typ, r#type, r#type), distribute_by(r#type))]
struct Row {
    r#type: i64,
    #[bulk(skip, rename = "x", sql_type = "text", index)]
    cache: i64,
}

fn main() {}
