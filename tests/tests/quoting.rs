//! Schema, table and column names that need quoting stay names: the rows land
//! in exactly the named objects and nothing else is created or dropped.

use std::collections::BTreeSet;

use bulk_runtime::{BulkCreateNew, verify_schema};
use bulk_tests::{COPY_BATCH, TestDb};
use tokio_postgres::Client;

const SCHEMA: &str = r#"bulk "quoting"; select"#;
const TABLE: &str = r#"Feed.Items "x"; DROP TABLE decoy; --"#;

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(schema = r#"bulk "quoting"; select"#, table = r#"Feed.Items "x"; DROP TABLE decoy; --"#, unique(key, kind))]
#[bulk(id = "order")]
pub struct Weird {
    #[bulk(rename = "select")]
    pub key: i64,
    #[bulk(rename = r#"Kind "of"; DROP TABLE decoy; --"#, index)]
    pub kind: String,
    #[bulk(rename = "with space")]
    pub value: Option<String>,
    #[bulk(rename = "semi;colon", index)]
    pub n: i32,
}

/// Same column names, no schema: found through `search_path`.
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "a.B \"c\"", unique(key), id = false)]
pub struct WeirdLocal {
    #[bulk(rename = "select")]
    pub key: i64,
    #[bulk(rename = "from")]
    pub value: String,
}

fn weird(key: i64, kind: &str, value: Option<&str>) -> Weird {
    Weird { key, kind: kind.into(), value: value.map(Into::into), n: key as i32 }
}

/// `(kind, name)` of every relation in a schema, by the schema's exact name.
async fn relations(client: &Client, schema: &str) -> BTreeSet<(String, String)> {
    client
        .query(
            "SELECT c.relkind::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Schemas of the database, except the per-test ones other tests create meanwhile.
async fn schemas(client: &Client) -> BTreeSet<String> {
    client
        .query("SELECT nspname::text FROM pg_namespace WHERE nspname NOT LIKE 't\\_%' AND nspname NOT LIKE 'pg\\_temp%' AND nspname NOT LIKE 'pg\\_toast\\_temp%'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn names_that_need_quoting_stay_names() {
    let db = TestDb::new("quoting").await;
    let mut client = db.connect().await;
    assert_eq!(Weird::model().schema(), Some(SCHEMA));
    assert_eq!(Weird::model().table(), TABLE);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", bulk_runtime::quote_ident(SCHEMA)))
        .await
        .unwrap();
    // Decoys an injection through the names would hit.
    client
        .batch_execute("CREATE TABLE decoy (x int); INSERT INTO decoy VALUES (42); CREATE TABLE x (y int)")
        .await
        .unwrap();
    let schemas_before = schemas(&client).await;
    let public_before = relations(&client, "public").await;
    let local_before = relations(&client, &db.schema).await;

    let ddl = Weird::model().migration_sql();
    client.batch_execute(&ddl).await.unwrap();
    client.batch_execute(&ddl).await.expect("applying the migration twice is harmless");

    // Exactly one new schema, with exactly this name.
    let schemas_after = schemas(&client).await;
    let added: Vec<&String> = schemas_after.difference(&schemas_before).collect();
    assert_eq!(added, [SCHEMA]);
    assert!(schemas_before.is_subset(&schemas_after), "no schema dropped");
    assert_eq!(relations(&client, "public").await, public_before);
    assert_eq!(relations(&client, &db.schema).await, local_before);

    // In it: the table, its identity sequence and primary key, the unique
    // index and the two plain indexes; nothing else.
    let rels = relations(&client, SCHEMA).await;
    let tables: Vec<&str> = rels.iter().filter(|(k, _)| k == "r").map(|(_, n)| n.as_str()).collect();
    assert_eq!(tables, [TABLE]);
    let kinds: Vec<&str> = rels.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "i").count(), 4, "{rels:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "S").count(), 1, "{rels:?}");
    assert_eq!(rels.len(), 6, "{rels:?}");

    // The columns under their exact names, in order.
    let columns: Vec<String> = client
        .query(
            "SELECT a.attname::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 ORDER BY a.attnum",
            &[&SCHEMA, &TABLE],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(columns, ["order", "select", r#"Kind "of"; DROP TABLE decoy; --"#, "with space", "semi;colon"]);

    assert_eq!(verify_schema::<Weird>(&client).await.unwrap(), []);
    let batch = [
        weird(1, "a", Some("one")),
        weird(1, "b", None),
        weird(1, "a", Some("dupe")),
        weird(2, "'; --", Some("\"quoted\" value; DROP TABLE x")),
    ];
    let o = Weird::bulk_create_new(&mut client, &batch).await.unwrap();
    assert_eq!((o.offered, o.inserted, o.skipped), (4, 3, 1));
    // Inside a transaction too (savepoint and scratch clearing).
    let mut tx = client.transaction().await.unwrap();
    let o = Weird::bulk_create_new(&mut tx, [weird(1, "a", None), weird(3, "c", None)]).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (1, 1));
    tx.commit().await.unwrap();
    // And a batch long enough for the COPY path (keys from 100 on).
    let long: Vec<Weird> = (0..COPY_BATCH as i64).map(|i| weird(100 + i, "long", None)).collect();
    let o = Weird::bulk_create_new(&mut client, long.iter().chain(&batch)).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (COPY_BATCH as u64, batch.len() as u64));

    let table = Weird::model().qualified_name();
    let got: Vec<Weird> = client
        .query(
            &format!(
                r#"SELECT "select", "Kind ""of""; DROP TABLE decoy; --", "with space", "semi;colon" FROM {table}
                    WHERE "select" < 100 ORDER BY "select", 2"#
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| Weird { key: r.get(0), kind: r.get(1), value: r.get(2), n: r.get(3) })
        .collect();
    assert_eq!(got, [batch[0].clone(), batch[1].clone(), batch[3].clone(), weird(3, "c", None)]);

    // Nothing else was created or dropped along the way.
    let decoy: i32 = client.query_one("SELECT x FROM decoy", &[]).await.unwrap().get(0);
    assert_eq!(decoy, 42);
    assert_eq!(relations(&client, "public").await, public_before);
    assert_eq!(relations(&client, &db.schema).await, local_before);
    assert_eq!(relations(&client, SCHEMA).await, rels);
    assert_eq!(schemas(&client).await, schemas_after);

    client.batch_execute(&format!("DROP SCHEMA {} CASCADE", bulk_runtime::quote_ident(SCHEMA))).await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn quoted_table_found_through_search_path() {
    let db = TestDb::new("quoting_local").await;
    let mut client = db.connect().await;
    client.batch_execute(&WeirdLocal::model().migration_sql()).await.unwrap();
    let local = relations(&client, &db.schema).await;
    assert!(local.contains(&("r".to_owned(), "a.B \"c\"".to_owned())), "{local:?}");
    assert_eq!(verify_schema::<WeirdLocal>(&client).await.unwrap(), []);
    let rows = [
        WeirdLocal { key: 1, value: "x".into() },
        WeirdLocal { key: 1, value: "y".into() },
        WeirdLocal { key: 2, value: "z".into() },
    ];
    let o = WeirdLocal::bulk_create_new(&mut client, &rows).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (2, 1));
    let got: Vec<(i64, String)> = client
        .query(r#"SELECT "select", "from" FROM "a.B ""c""" ORDER BY 1"#, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(got, [(1, "x".to_owned()), (2, "z".to_owned())]);
    assert_eq!(relations(&client, &db.schema).await, local);
    db.drop().await;
}
