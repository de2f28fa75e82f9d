//! Names stay names: schema, table and column names with quotes, semicolons
//! and SQL in them reach the server only as quoted identifiers, and no value
//! of a row is ever part of a statement's text. A recording proxy captures
//! every statement the library sends (both paths, transactions, the schema
//! check, recreating the scratch table); each is taken apart by a small SQL
//! lexer. The same holds for random names (a property test).
//! (`quoting.rs` checks that such names land in exactly the named objects.)

use std::sync::Mutex;

use bulk_runtime::__private::{ColumnSpec, ModelSpec};
use bulk_runtime::{
    BulkColumn, BulkCreateNew, BulkValue, CitusTable, Column, Model, PgType, quote_ident, verify_schema,
};
use bulk_tests::recorder::{SqlRecorder, lex_sql};
use bulk_tests::{COPY_BATCH, TestDb};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use tokio_postgres::Client;

/// A marker in every hostile name: it may only ever appear inside a quoted identifier.
const MARK: &str = "zqmark";
/// A marker in every value: it may never appear in any statement text.
const VALUE_MARK: &str = "vqmark";

// The marker follows every quote: a name whose quoting broke would leave a
// marker outside the quotes.
#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(schema = r#"zqmark s"zqmark; DROP SCHEMA public; --zqmark"#, table = r#"zqmark t'zqmark; DELETE FROM x; --"#)]
#[bulk(unique(key, kind), id = "zqmark id\"zqmark\"zqmark")]
struct Hostile {
    #[bulk(rename = r#"zqmark "zqmark k"zqmark; SELECT pg_sleep(1); --"#)]
    key: i64,
    #[bulk(rename = r#"zqmark k'zqmark i$1nd\"zqmark"#, index)]
    kind: String,
    #[bulk(rename = "zqmark ); DROP TABLE y; (")]
    value: Option<String>,
}

fn hostile(key: i64) -> Hostile {
    Hostile { key, kind: format!("{VALUE_MARK} '; DROP TABLE z; --"), value: Some(format!("{VALUE_MARK} \"{key}\"")) }
}

/// Checks one statement: hostile names only inside quoted identifiers, and no value.
fn check_statement(sql: &str) -> Result<(), String> {
    if sql.contains(VALUE_MARK) {
        return Err(format!("a value is part of the statement text: {sql}"));
    }
    let (outside, _) = lex_sql(sql);
    if outside.contains(MARK) {
        return Err(format!("a name escaped its quotes: {sql}\noutside quotes: {outside}"));
    }
    Ok(())
}

#[tokio::test]
async fn hostile_names_reach_the_server_only_as_quoted_identifiers() {
    let db = TestDb::new("security_hostile").await;
    let recorder = SqlRecorder::start().await;
    let mut client = recorder.connect(&db.schema).await;
    let schema = Hostile::model().schema().unwrap();
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema))).await.unwrap();
    let before = recorder.statements().len();

    client.batch_execute(&Hostile::model().migration_sql()).await.unwrap();
    assert_eq!(verify_schema::<Hostile>(&client).await.unwrap(), []);
    let short: Vec<Hostile> = (0..10).map(hostile).chain([hostile(3)]).collect();
    let o = Hostile::bulk_create_new(&mut client, &short).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (10, 1));
    let long: Vec<Hostile> = (0..COPY_BATCH as i64).map(hostile).collect();
    let o = Hostile::bulk_create_new(&mut client, &long).await.unwrap();
    assert_eq!(o.inserted, COPY_BATCH as u64 - 10);
    let mut tx = client.transaction().await.unwrap();
    Hostile::bulk_create_new(&mut tx, &short).await.unwrap();
    Hostile::bulk_create_new(&mut tx, &long).await.unwrap();
    tx.commit().await.unwrap();
    client.batch_execute("DISCARD ALL").await.unwrap();
    client.batch_execute(&format!("SET search_path = {}", quote_ident(&db.schema))).await.unwrap();
    Hostile::bulk_create_new(&mut client, &short).await.unwrap();
    Hostile::bulk_create_new(&mut client, &long).await.unwrap();
    // And a failing call, which explains itself with the schema check.
    client
        .batch_execute(&format!(
            "ALTER TABLE {} DROP COLUMN {}",
            Hostile::model().qualified_name(),
            quote_ident(Hostile::model().columns()[2].name())
        ))
        .await
        .unwrap();
    Hostile::bulk_create_new(&mut client, &short).await.unwrap_err();

    let statements = recorder.statements();
    let sent = &statements[before..];
    assert!(sent.len() >= 10, "{sent:#?}");
    assert!(sent.iter().any(|s| s.starts_with("COPY")), "the COPY path was recorded: {sent:#?}");
    assert!(sent.iter().any(|s| s.contains("unnest")), "the one-statement path was recorded: {sent:#?}");
    for sql in sent {
        check_statement(sql).unwrap();
    }
    let stored: i64 = client
        .query_one(&format!("SELECT count(*) FROM {}", Hostile::model().qualified_name()), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, COPY_BATCH as i64);
    client.batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(schema))).await.unwrap();
    db.drop().await;
}

/// A row of a model made at run time, with random names.
struct Dynamic {
    key: i64,
    text: String,
    number: Option<i32>,
}

/// The model `Dynamic` answers with (one property-test case at a time).
static CURRENT: Mutex<Option<&'static Model>> = Mutex::new(None);

impl BulkCreateNew for Dynamic {
    type CopyValues<'r> = [&'r dyn BulkValue; 3];
    type Key = (i64,);
    type Columns = ();

    fn columns() {}

    fn model() -> &'static Model {
        CURRENT.lock().unwrap().expect("a model for this case")
    }

    fn copy_values(&self) -> [&dyn BulkValue; 3] {
        [self.key.__bulk_value(), self.text.__bulk_value(), self.number.__bulk_value()]
    }
}

/// A model with these names, leaked to live as long as the test.
fn dynamic_model(schema: &str, table: &str, columns: &[String; 3]) -> &'static Model {
    let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    let key = ColumnSpec {
        field: "key",
        name: leak(&columns[0]),
        pg_type: PgType::Int8,
        nullable: false,
        sql_type: None,
        index: true,
        labels: &[],
    };
    let text = ColumnSpec { field: "text", name: leak(&columns[1]), pg_type: PgType::Text, index: false, ..key };
    let number = ColumnSpec { field: "number", name: leak(&columns[2]), pg_type: PgType::Int4, nullable: true, ..key };
    let cols: &'static [Column] = Box::leak(Box::new([key.build(), text.build(), number.build()]));
    let spec = ModelSpec {
        struct_name: "Dynamic",
        schema: Some(leak(schema)),
        table: leak(table),
        id: Some("id"),
        nulls_not_distinct: false,
        columns: cols,
        unique: &[0],
        citus: CitusTable::None,
    };
    Box::leak(Box::new(spec.build()))
}

/// Names made of what breaks naive SQL assembly, with the marker in each.
fn name() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("\"".to_owned()),
            Just("'".to_owned()),
            Just(";".to_owned()),
            Just(" ".to_owned()),
            Just("--".to_owned()),
            Just("/*".to_owned()),
            Just("$1".to_owned()),
            Just("\\".to_owned()),
            Just(")".to_owned()),
            Just("é".to_owned()),
            Just("DROP TABLE x".to_owned()),
            "[a-zA-Z0-9_]{1,4}",
        ],
        0..6,
    )
    // The marker after every part: broken quoting would leave one outside.
    .prop_map(|parts| format!("{MARK}{}", parts.iter().map(|p| format!("{p}{MARK}")).collect::<String>()))
    .prop_filter("at most 63 bytes", |n| n.len() <= 63)
}

async fn random_names_case(
    recorder: &SqlRecorder,
    client: &mut Client,
    schema: String,
    table: String,
    columns: [String; 3],
) -> Result<(), TestCaseError> {
    let model = dynamic_model(&schema, &table, &columns);
    *CURRENT.lock().unwrap() = Some(model);
    let before = recorder.statements().len();
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(&schema))).await.unwrap();
    client.batch_execute(&model.migration_sql()).await.unwrap();
    let rows = |n: i64| -> Vec<Dynamic> {
        (0..n)
            .map(|i| Dynamic { key: i % (n - 1).max(1), text: format!("{VALUE_MARK}'\"{i}"), number: Some(i as i32) })
            .collect()
    };
    let short = Dynamic::bulk_create_new(client, rows(20)).await.unwrap();
    let long = Dynamic::bulk_create_new(client, rows(COPY_BATCH as i64)).await.unwrap();
    prop_assert_eq!((short.inserted, long.inserted), (19, COPY_BATCH as u64 - 20));
    let stored: i64 =
        client.query_one(&format!("SELECT count(*) FROM {}", model.qualified_name()), &[]).await.unwrap().get(0);
    prop_assert_eq!(stored, COPY_BATCH as i64 - 1);
    let names: Vec<&str> =
        [schema.as_str(), table.as_str()].into_iter().chain(columns.iter().map(String::as_str)).collect();
    for sql in &recorder.statements()[before..] {
        if let Err(e) = check_statement(sql) {
            return Err(TestCaseError::fail(e));
        }
        // Every identifier with the marker is one of the names, intact, or a
        // generated index name made of safe characters only.
        for ident in lex_sql(sql).1.into_iter().filter(|i| i.contains(MARK)) {
            let safe = ident.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            prop_assert!(names.contains(&ident.as_str()) || safe, "identifier {:?} in {}", ident, sql);
        }
    }
    client.batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(&schema))).await.unwrap();
    Ok(())
}

#[test]
fn random_hostile_names_stay_names() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (db, recorder, client) = rt.block_on(async {
        let db = TestDb::new("security_random").await;
        let recorder = SqlRecorder::start().await;
        let client = recorder.connect(&db.schema).await;
        (db, recorder, client)
    });
    let client = Mutex::new(client);
    let names = (name(), name(), [name(), name(), name()])
        .prop_filter("distinct column names", |(_, _, c)| c[0] != c[1] && c[1] != c[2] && c[0] != c[2])
        .prop_filter("the id column is apart", |(_, _, c)| c.iter().all(|n| n != "id"));
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 64,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..Config::default()
    });
    let result = runner.run(&names, |(schema, table, columns)| {
        let mut client = client.lock().unwrap();
        rt.block_on(random_names_case(&recorder, &mut client, schema, table, columns))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(db.drop());
}
