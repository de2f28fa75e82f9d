//! Every struct and field attribute at once, on a borrowed row.

use std::borrow::Cow;

use bulk_runtime::{BulkCreateNew, PgType};

#[derive(BulkCreateNew)]
#[bulk(table = "log line", schema = "audit", unique(source, external_id), nulls_not_distinct, id = "row id")]
struct LogLine<'a> {
    source: &'a str,
    #[bulk(rename = "external id", index)]
    external_id: Option<i64>,
    #[bulk(sql_type = "varchar(200)")]
    message: Cow<'a, str>,
    #[bulk(skip)]
    #[allow(dead_code)]
    parsed: std::collections::HashMap<String, String>,
    r#type: std::option::Option<Vec<u8>>,
}

fn main() {
    let model = LogLine::model();
    assert_eq!(model.table(), "log line");
    assert_eq!(model.schema(), Some("audit"));
    assert_eq!(model.id_column(), Some("row id"));
    assert!(model.nulls_not_distinct());
    let names: Vec<_> = model.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["source", "external id", "message", "type"]);
    let key: Vec<_> = model.unique_key().map(|c| c.name()).collect();
    assert_eq!(key, ["source", "external id"]);
    assert!(model.columns()[1].nullable() && model.columns()[1].indexed());
    assert_eq!(model.columns()[2].sql_type(), Some("varchar(200)"));
    assert_eq!(model.columns()[3].pg_type(), PgType::Bytea);

    let owned = String::from("borrowed");
    let row = LogLine {
        source: &owned,
        external_id: None,
        message: Cow::Borrowed("hello"),
        parsed: Default::default(),
        r#type: Some(vec![1]),
    };
    assert_eq!(row.copy_values().len(), 4);
}
