//! Schema-per-tenant and role switches on one connection: a `search_path`
//! that leads to another tenant's same-named table (another key collation,
//! its own enum type) after a `SET ROLE`, and a table with rules. Every
//! schema and role these tests make is named `revb_*` and dropped at the
//! end.

use bulk_runtime::BulkCreateNew;
use bulk_tests::{COPY_BATCH, TestDb, count};
use tokio_postgres::Client;

/// A schema of this file's own (`revb_<name>_<pid>`).
async fn revb_db(name: &str) -> TestDb {
    TestDb::with_schema(format!("revb_{name}_{}", std::process::id())).await
}

fn q(name: &str) -> String {
    bulk_runtime::quote_ident(name)
}

/// A role allowed to write every table of `schemas` (roles belong to the
/// whole server: named `revb_*`).
async fn make_role(admin: &Client, role: &str, schemas: &[&str]) {
    let r = q(role);
    let mut sql = format!("DROP ROLE IF EXISTS {r}; CREATE ROLE {r};");
    for s in schemas {
        let s = q(s);
        sql.push_str(&format!(
            " GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA {s} TO {r};"
        ));
    }
    admin.batch_execute(&sql).await.unwrap();
}

async fn drop_role(admin: &Client, role: &str, schemas: &[&str]) {
    let r = q(role);
    let mut sql = String::new();
    for s in schemas {
        let s = q(s);
        sql.push_str(&format!("REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {r}; REVOKE ALL ON SCHEMA {s} FROM {r}; "));
    }
    sql.push_str(&format!("DROP ROLE {r}"));
    admin.batch_execute(&sql).await.unwrap();
}

const CASE_INSENSITIVE: &str = "CREATE COLLATION IF NOT EXISTS case_insensitive \
     (provider = icu, locale = 'und-u-ks-level2', deterministic = false)";

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "ci_role", unique(email), id = false)]
struct CiRole {
    email: String,
    name: String,
}

/// `ann@x` offered as "first", `Ann@x` as "second", then `pad` other keys.
fn ci_batch(pad: usize) -> Vec<CiRole> {
    let mut rows = vec![
        CiRole { email: "ann@x".into(), name: "first".into() },
        CiRole { email: "Ann@x".into(), name: "second".into() },
    ];
    rows.extend((0..pad).map(|i| CiRole { email: format!("f{i}@y"), name: "pad".into() }));
    rows
}

/// A schema of its own with `ci_role`, a second schema (`<schema>_ci`) with
/// a `ci_role` whose key compares case-insensitively, and a role
/// (`<schema>_writer`) that may write both: the database, an admin
/// connection, the second schema and the role.
async fn two_collations(name: &str) -> (TestDb, Client, String, String) {
    let db = revb_db(name).await;
    let other = format!("{}_ci", db.schema);
    let role = format!("{}_writer", db.schema);
    let admin = db.connect().await;
    admin
        .batch_execute(&format!(
            "{CASE_INSENSITIVE}; CREATE TABLE ci_role (email text NOT NULL UNIQUE, name text NOT NULL); \
             CREATE SCHEMA {o}; \
             CREATE TABLE {o}.ci_role (email text COLLATE case_insensitive NOT NULL UNIQUE, name text NOT NULL)",
            o = q(&other)
        ))
        .await
        .unwrap();
    make_role(&admin, &role, &[&db.schema, &other]).await;
    (db, admin, other, role)
}

/// The session made its scratch table as its login role, then `SET ROLE`
/// to a role allowed to write both tables, then its `search_path` leads to
/// a same-named table whose key compares case-insensitively: the COPY call
/// makes the scratch table again (dropping the old one as the role that
/// made it, which the session may take) and writes there, the first offered
/// of `ann@x`/`Ann@x` kept. (Before: 42501 "must be owner of table
/// __bulk_...".)
#[tokio::test]
async fn a_copy_call_after_set_role_and_a_search_path_switch_to_another_collation() {
    let (db, admin, other, role) = two_collations("role_collation").await;

    let mut client = db.connect().await;
    // The session's scratch table, made by its login role.
    let report = CiRole::bulk_create_new(&mut client, &ci_batch(COPY_BATCH)[2..]).await.unwrap();
    assert_eq!(report.inserted, COPY_BATCH as u64);
    // The application switches role, then its search_path.
    client.batch_execute(&format!("SET ROLE {}; SET search_path = {}", q(&role), q(&other))).await.unwrap();
    let result = CiRole::bulk_create_new(&mut client, &ci_batch(COPY_BATCH)).await;
    client.batch_execute("RESET ROLE").await.unwrap();
    let outcome = match &result {
        Ok(report) => format!("{report:?}"),
        Err(e) => format!("error: {e}"),
    };
    let stored = count(&client, "ci_role").await;
    // (The scratch table the writer role made keeps the role from being
    // dropped while the session lives.)
    client.batch_execute("DISCARD TEMP").await.unwrap();
    admin.batch_execute(&format!("DROP SCHEMA {} CASCADE", q(&other))).await.unwrap();
    drop(client);
    drop_role(&admin, &role, &[&db.schema]).await;
    db.drop().await;
    let report = result.unwrap_or_else(|e| panic!("the COPY call after SET ROLE and a search_path switch failed: {e}"));
    assert_eq!((report.inserted, report.skipped), (COPY_BATCH as u64 + 1, 1), "{outcome}");
    assert_eq!(stored, COPY_BATCH as i64 + 1);
}

/// As `a_copy_call_after_set_role_and_a_search_path_switch_to_another_collation`,
/// after `SET SESSION AUTHORIZATION` instead of `SET ROLE`: the session's
/// role is now the writer, which may not take the role that made the
/// scratch table, so the scratch table cannot be made again. The call fails
/// with a clear reason (`SchemaProblem::ScratchTableOfAnotherRole`) and
/// writes nothing; the short path still writes.
#[tokio::test]
async fn a_copy_call_after_set_session_authorization_and_a_search_path_switch_fails_clearly() {
    let (db, admin, other, role) = two_collations("authorization").await;
    let mut client = db.connect().await;
    let report = CiRole::bulk_create_new(&mut client, &ci_batch(COPY_BATCH)[2..]).await.unwrap();
    assert_eq!(report.inserted, COPY_BATCH as u64);
    client
        .batch_execute(&format!("SET SESSION AUTHORIZATION {}; SET search_path = {}", q(&role), q(&other)))
        .await
        .unwrap();
    let long = CiRole::bulk_create_new(&mut client, &ci_batch(COPY_BATCH)).await;
    let short = CiRole::bulk_create_new(&mut client, &ci_batch(10)).await;
    let stored = count(&client, "ci_role").await;
    client.batch_execute("RESET SESSION AUTHORIZATION; DISCARD TEMP").await.unwrap();
    admin.batch_execute(&format!("DROP SCHEMA {} CASCADE", q(&other))).await.unwrap();
    drop(client);
    drop_role(&admin, &role, &[&db.schema]).await;
    db.drop().await;
    match long {
        Err(bulk_runtime::Error::SchemaMismatch { problems, .. }) => match problems.as_slice() {
            [bulk_runtime::SchemaProblem::ScratchTableOfAnotherRole { role: current, .. }] => {
                assert_eq!(current, &role);
            }
            other => panic!("{other:?}"),
        },
        other => panic!("the COPY call: {other:?}"),
    }
    let short = short.expect("the short path");
    assert_eq!((short.inserted, short.skipped), (11, 1), "ann@x and Ann@x are one key there: {short:?}");
    assert_eq!(stored, 11, "the COPY call wrote nothing");
}

#[derive(bulk_runtime::BulkType, Debug, Clone, Copy, PartialEq)]
#[bulk(type = "revb_mood")]
enum RevbMood {
    Happy,
    #[bulk(rename = "so-so")]
    SoSo,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "feeling", unique(person))]
struct Feeling {
    person: i64,
    mood: RevbMood,
}

fn feelings(from: i64, len: usize) -> Vec<Feeling> {
    (from..from + len as i64)
        .map(|person| Feeling { person, mood: if person % 2 == 0 { RevbMood::Happy } else { RevbMood::SoSo } })
        .collect()
}

/// Schema-per-tenant: every tenant's schema has its own enum type and its
/// own table, made by the same migration, and the application switches
/// `search_path` between calls. Both paths write the other tenant's table:
/// the COPY path makes its scratch table again, whose enum column took the
/// first tenant's type (before: 42804 on every COPY call of the connection).
#[tokio::test]
async fn a_copy_call_after_a_search_path_switch_to_a_tenant_with_its_own_enum_type() {
    use bulk_runtime::PgEnum;
    let db = revb_db("tenant_enum").await;
    let other = format!("{}_b", db.schema);
    let admin = db.connect().await;
    let migration = format!("{}; {}", RevbMood::create_type_sql(), Feeling::model().migration_sql());
    admin.batch_execute(&migration).await.unwrap();
    admin
        .batch_execute(&format!("CREATE SCHEMA {o}; SET search_path = {o}; {migration}", o = q(&other)))
        .await
        .unwrap();

    let mut client = db.connect().await;
    let first = Feeling::bulk_create_new(&mut client, &feelings(0, COPY_BATCH)).await.unwrap();
    assert_eq!(first.inserted, COPY_BATCH as u64);
    client.batch_execute(&format!("SET search_path = {}", q(&other))).await.unwrap();
    let short = Feeling::bulk_create_new(&mut client, &feelings(0, 10)).await;
    let long = Feeling::bulk_create_new(&mut client, &feelings(100_000, COPY_BATCH)).await;
    let again = Feeling::bulk_create_new(&mut client, &feelings(200_000, COPY_BATCH)).await;
    let stored = count(&client, "feeling").await;
    admin.batch_execute(&format!("DROP SCHEMA {} CASCADE", q(&other))).await.unwrap();
    db.drop().await;

    assert_eq!(short.expect("the short path after the switch").inserted, 10);
    match (&long, &again) {
        (Ok(long), Ok(again)) => assert_eq!((long.inserted, again.inserted), (COPY_BATCH as u64, COPY_BATCH as u64)),
        _ => panic!(
            "the COPY calls after the switch failed:\n  first: {:?}\n  next:  {:?}",
            long.as_ref().map_err(ToString::to_string),
            again.as_ref().map_err(ToString::to_string)
        ),
    }
    assert_eq!(stored, 10 + 2 * COPY_BATCH as i64);
}

/// A migration that drops the enum type with `CASCADE` (which strips the
/// enum column from an idle session's scratch table) and makes the type and
/// the table again: that session's next COPY call makes its scratch table
/// again and writes, and the connection stays usable for the calls after.
#[tokio::test]
async fn an_enum_type_dropped_with_cascade_and_made_again_leaves_the_copy_path_working() {
    use bulk_runtime::PgEnum;
    let db = revb_db("enum_cascade").await;
    let admin = db.connect().await;
    let migration = format!("{}; {}", RevbMood::create_type_sql(), Feeling::model().migration_sql());
    admin.batch_execute(&migration).await.unwrap();
    let mut client = db.connect().await;
    let first = Feeling::bulk_create_new(&mut client, &feelings(0, COPY_BATCH)).await.unwrap();
    assert_eq!(first.inserted, COPY_BATCH as u64);
    admin.batch_execute(&format!("DROP TABLE feeling; DROP TYPE revb_mood CASCADE; {migration}")).await.unwrap();
    let long = Feeling::bulk_create_new(&mut client, &feelings(0, COPY_BATCH)).await;
    let short = Feeling::bulk_create_new(&mut client, &feelings(100_000, 10)).await;
    let again = Feeling::bulk_create_new(&mut client, &feelings(200_000, COPY_BATCH)).await;
    let stored = count(&admin, "feeling").await;
    db.drop().await;
    assert_eq!(long.expect("the COPY call after the migration").inserted, COPY_BATCH as u64);
    assert_eq!(short.expect("a short call after it").inserted, 10);
    assert_eq!(again.expect("the next COPY call").inserted, COPY_BATCH as u64);
    assert_eq!(stored, 10 + 2 * COPY_BATCH as i64);
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "ruled", unique(k))]
struct Ruled {
    k: i64,
    payload: String,
}

/// A table with an `ON INSERT ... DO ALSO` rule (an audit trail): PostgreSQL
/// refuses `ON CONFLICT` on it, and the rule's action would run the plain
/// form's `INSERT ... SELECT ... WHERE NOT EXISTS (stored key)` again after
/// it, when every key is stored (before: short batches failed with 0A000,
/// longer ones stored every row and the audit table none). The schema
/// check refuses the table on every path, naming the rule, and nothing is
/// written.
#[tokio::test]
async fn a_table_with_an_insert_rule_is_refused_by_the_check() {
    let db = revb_db("rule").await;
    let admin = db.connect().await;
    admin.batch_execute(&Ruled::model().migration_sql()).await.unwrap();
    admin
        .batch_execute(
            "CREATE TABLE ruled_audit (k bigint NOT NULL); \
             CREATE RULE ruled_audit AS ON INSERT TO ruled DO ALSO INSERT INTO ruled_audit VALUES (NEW.k)",
        )
        .await
        .unwrap();
    let mut client = db.connect().await;
    for (from, len) in [(0i64, 10usize), (1_000, 300), (100_000, COPY_BATCH)] {
        let rows: Vec<Ruled> = (from..from + len as i64).map(|k| Ruled { k, payload: format!("p{k}") }).collect();
        match Ruled::bulk_create_new(&mut client, &rows).await {
            Err(bulk_runtime::Error::SchemaMismatch { problems, .. }) => assert_eq!(
                problems,
                vec![bulk_runtime::SchemaProblem::InsertRules { rules: vec!["ruled_audit".into()] }],
                "{len} rows"
            ),
            other => panic!("{len} rows: {other:?}"),
        }
    }
    let (stored, audited) = (count(&admin, "ruled").await, count(&admin, "ruled_audit").await);
    db.drop().await;
    assert_eq!((stored, audited), (0, 0), "nothing written");
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "shared_item", unique(k), id = false)]
struct SharedItem {
    k: i64,
    payload: String,
}

/// One table shared by tenants under row-level security: a tenant's role
/// sees only its own rows, so the anti-join cannot see a key another tenant
/// stored. The plain call, `returning_keys` and `returning_skipped` still
/// skip such keys with exact counts on every path (the unique index refuses
/// the key and the call falls back to `ON CONFLICT DO NOTHING`, which does
/// not apply the policies to the stored row), and the other tenant's rows
/// stay as stored. An upsert fails with PostgreSQL's 42501 (`ON CONFLICT
/// DO UPDATE` must see the stored row) and writes nothing.
#[tokio::test]
async fn keys_another_tenant_stored_under_row_level_security_are_skipped() {
    let db = revb_db("rls").await;
    let admin = db.connect().await;
    admin.batch_execute(&SharedItem::model().migration_sql()).await.unwrap();
    let role = format!("revb_rls_{}", std::process::id());
    make_role(&admin, &role, &[&db.schema]).await;
    admin
        .batch_execute(&format!(
            "GRANT UPDATE ON shared_item TO {r}; \
             ALTER TABLE shared_item ADD COLUMN owner text NOT NULL DEFAULT current_user; \
             ALTER TABLE shared_item ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY own_rows ON shared_item USING (owner = current_user)",
            r = q(&role)
        ))
        .await
        .unwrap();
    let mut tenant = db.connect().await;
    tenant.batch_execute(&format!("SET ROLE {}", q(&role))).await.unwrap();
    let mut from = 0i64;
    let mut outcomes = Vec::new();
    for len in [10usize, 300, COPY_BATCH] {
        for returning in [None, Some(true), Some(false)] {
            let rows: Vec<SharedItem> =
                (from..from + len as i64).map(|k| SharedItem { k, payload: "tenant".into() }).collect();
            // The other tenant (the table's owner here) stored the even keys.
            let theirs: Vec<SharedItem> =
                rows.iter().filter(|r| r.k % 2 == 0).map(|r| SharedItem { k: r.k, payload: "other".into() }).collect();
            SharedItem::bulk_create_new(&mut db.connect().await, &theirs).await.unwrap();
            let report = match returning {
                None => SharedItem::bulk_create_new(&mut tenant, &rows).await.map(|r| (r.inserted, r.skipped, 0)),
                Some(true) => SharedItem::bulk(&mut tenant)
                    .returning_keys()
                    .run(&rows)
                    .await
                    .map(|r| (r.inserted, r.skipped, r.returned.len())),
                Some(false) => SharedItem::bulk(&mut tenant)
                    .returning_skipped()
                    .run(&rows)
                    .await
                    .map(|r| (r.inserted, r.skipped, r.returned.len())),
            };
            let (half, other) = (len as u64 / 2, len - len / 2);
            let returned = if returning.is_some() { len / 2 } else { 0 };
            outcomes.push((len, returning, report.unwrap(), (half, other as u64, returned)));
            from += 1_000_000;
        }
    }
    // Over keys of the 300- and the COPY_BATCH-row calls, half the other tenant's.
    let mut upserts = Vec::new();
    for (from, len) in [(4_000_000, 300), (7_000_000, COPY_BATCH as i64)] {
        let rows = (from..from + len).map(|k| SharedItem { k, payload: "upserted".into() });
        upserts.push(SharedItem::bulk(&mut tenant).upsert(bulk_runtime::Upsert::all_columns()).run(rows).await);
    }
    let stored = count(&admin, "shared_item").await;
    let other: i64 = admin
        .query_one("SELECT count(*) FROM shared_item WHERE payload = 'other' AND owner = current_user", &[])
        .await
        .unwrap()
        .get(0);
    // (The role owns the session's scratch table: dropped before the role.)
    tenant.batch_execute("RESET ROLE; DISCARD TEMP").await.unwrap();
    admin.batch_execute("DROP TABLE shared_item").await.unwrap();
    drop_role(&admin, &role, &[&db.schema]).await;
    db.drop().await;
    for (len, returning, got, wanted) in outcomes {
        assert_eq!(got, wanted, "{len} rows, returning {returning:?}: (inserted, skipped, returned)");
    }
    for upsert in upserts {
        let err = upsert.unwrap_err();
        assert_eq!(err.sqlstate(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    }
    let offered = 3 * (10 + 300 + COPY_BATCH) as i64;
    assert_eq!((stored, other), (offered, offered / 2), "every key once, the other tenant's rows as stored");
}
