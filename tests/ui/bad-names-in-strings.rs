use bulk_runtime::BulkCreateNew;

// NUL in names, a name starting with the reserved prefix, an `sql_type`
// that is not a type name, and an id spelt with the reserved prefix.
#[derive(BulkCreateNew)]
#[bulk(table = "a\0b", schema = "s\0", unique(a), id = "__bulk_ord")]
struct Row {
    #[bulk(rename = "__bulk_ord")]
    a: i64,
    #[bulk(sql_type = "text COLLATE \"C\"")]
    b: String,
    #[bulk(sql_type = "int --")]
    c: i32,
}

fn main() {}
