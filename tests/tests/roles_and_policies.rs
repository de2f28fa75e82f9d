//! Roles, privileges and row-level security: policies that hide stored keys
//! or refuse new rows, write-only roles, column privileges, a sequence or a
//! schema without `USAGE`, databases without `TEMPORARY` for `PUBLIC`,
//! `SET ROLE` / `SET LOCAL ROLE` / `SET SESSION AUTHORIZATION` between
//! calls, a role's own `search_path`, `SECURITY DEFINER` triggers, and the
//! ledger's privileges and policies. Every role is named
//! `aud_role_<test>_<pid>` and dropped at the end of its test by a guard
//! ([`Roles`]), also when the test fails.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulk_runtime::{BulkCreateNew, Error, Ledger, SchemaProblem, Upsert};
use bulk_tests::{COPY_BATCH, TestDb, count};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

fn q(name: &str) -> String {
    bulk_runtime::quote_ident(name)
}

// ------------------------------------------------------------------ harness

/// Roles (and databases) of one test, dropped when this is dropped: the
/// tracked sessions are ended first, then what the roles own is reassigned
/// and their grants dropped.
struct Roles {
    names: Vec<String>,
    databases: Vec<String>,
    pids: Arc<Mutex<Vec<i32>>>,
}

impl Roles {
    fn new() -> Roles {
        Roles { names: Vec::new(), databases: Vec::new(), pids: Arc::new(Mutex::new(Vec::new())) }
    }

    /// A role of the test: `aud_role_<test>_<suffix>_<pid>` (LOGIN).
    async fn role(&mut self, admin: &Client, test: &str, suffix: &str) -> String {
        let name = format!("aud_role_{test}_{suffix}_{}", std::process::id());
        let r = q(&name);
        self.names.push(name.clone());
        let _ = admin.batch_execute(&format!("DROP OWNED BY {r}; DROP ROLE IF EXISTS {r}")).await;
        admin.batch_execute(&format!("CREATE ROLE {r} LOGIN")).await.unwrap();
        name
    }

    async fn track(&self, client: &Client) {
        let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
        self.pids.lock().unwrap().push(pid);
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.names);
        let databases = std::mem::take(&mut self.databases);
        let pids = std::mem::take(&mut *self.pids.lock().unwrap());
        if names.is_empty() && databases.is_empty() {
            return;
        }
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let admin = bulk_tests::connect_to(bulk_tests::DATABASE, None).await;
                admin
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                          WHERE (pid = ANY($1) OR usename = ANY($2)) AND pid <> pg_backend_pid()",
                        &[&pids, &names],
                    )
                    .await
                    .unwrap();
                for d in &databases {
                    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", q(d))).await.unwrap();
                }
                for name in &names {
                    let r = q(name);
                    let mut last = None;
                    for _ in 0..200 {
                        let exists = admin
                            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[name])
                            .await
                            .unwrap()
                            .is_some();
                        if !exists {
                            last = None;
                            break;
                        }
                        match admin
                            .batch_execute(&format!(
                                "SET lock_timeout = '5s'; REASSIGN OWNED BY {r} TO CURRENT_USER; DROP OWNED BY {r}; \
                                 DROP ROLE {r}"
                            ))
                            .await
                        {
                            Ok(()) => {
                                last = None;
                                break;
                            }
                            Err(e) => {
                                last = Some(e);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                    if let Some(e) = last {
                        eprintln!("could not drop role {name}: {e:?}");
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A connection to the test's schema as `role`.
async fn connect_as(db: &TestDb, roles: &Roles, role: &str) -> Client {
    let mut config = db.config();
    config.user(role);
    let (client, connection) = config.connect(NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    roles.track(&client).await;
    client
}

/// Collects failed expectations, so that cleanup runs before the assert.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.0.push(what.into());
        }
    }
    fn assert_none(self) {
        assert!(self.0.is_empty(), "{} finding(s):\n{}", self.0.len(), self.0.join("\n"));
    }
}

// ------------------------------------------------------------------ models

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "aud_item", unique(k), id = false)]
struct Item {
    k: i64,
    payload: String,
}

fn items(from: i64, len: usize, payload: &str) -> Vec<Item> {
    (from..from + len as i64).map(|k| Item { k, payload: payload.to_owned() }).collect()
}

/// With an id column: a hand-made table whose id is a `bigserial`.
#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "aud_serial", unique(k))]
struct Serial {
    k: i64,
    payload: String,
}

fn serials(from: i64, len: usize) -> Vec<Serial> {
    (from..from + len as i64).map(|k| Serial { k, payload: "p".into() }).collect()
}

const LENGTHS: [usize; 3] = [10, 300, COPY_BATCH];

#[derive(Debug, Clone, Copy, PartialEq)]
enum How {
    Plain,
    Keys,
    Skipped,
    Upsert,
    BatchId,
}

const HOWS: [How; 5] = [How::Plain, How::Keys, How::Skipped, How::Upsert, How::BatchId];

/// (inserted, updated, unchanged, skipped, returned) of one call of `how`.
type Counts = (u64, u64, u64, u64, usize);

async fn run_item(client: &mut Client, how: How, rows: &[Item], id: &str) -> Result<Counts, Error> {
    match how {
        How::Plain => {
            Item::bulk_create_new(client, rows).await.map(|r| (r.inserted, r.updated, r.unchanged, r.skipped, 0))
        }
        How::Keys => Item::bulk(client)
            .returning_keys()
            .run(rows)
            .await
            .map(|r| (r.inserted, r.updated, r.unchanged, r.skipped, r.returned.len())),
        How::Skipped => Item::bulk(client)
            .returning_skipped()
            .run(rows)
            .await
            .map(|r| (r.inserted, r.updated, r.unchanged, r.skipped, r.returned.len())),
        How::Upsert => Item::bulk(client)
            .upsert(Upsert::all_columns())
            .run(rows)
            .await
            .map(|r| (r.inserted, r.updated, r.unchanged, r.skipped, 0)),
        How::BatchId => {
            Item::bulk(client).batch_id(id).run(rows).await.map(|r| (r.inserted, r.updated, r.unchanged, r.skipped, 0))
        }
    }
}

async fn run_serial(client: &mut Client, how: How, rows: &[Serial], id: &str) -> Result<Counts, Error> {
    match how {
        How::Plain => {
            Serial::bulk_create_new(client, rows).await.map(|r| (r.inserted, r.updated, r.unchanged, r.skipped, 0))
        }
        How::Keys => Serial::bulk(client)
            .returning_keys()
            .run(rows)
            .await
            .map(|r| (r.inserted, r.updated, r.unchanged, r.skipped, r.returned.len())),
        How::Skipped => Serial::bulk(client)
            .returning_skipped()
            .run(rows)
            .await
            .map(|r| (r.inserted, r.updated, r.unchanged, r.skipped, r.returned.len())),
        How::Upsert => Serial::bulk(client)
            .upsert(Upsert::all_columns())
            .run(rows)
            .await
            .map(|r| (r.inserted, r.updated, r.unchanged, r.skipped, 0)),
        How::BatchId => Serial::bulk(client)
            .batch_id(id)
            .run(rows)
            .await
            .map(|r| (r.inserted, r.updated, r.unchanged, r.skipped, 0)),
    }
}

/// Runs a trivial statement to see that the connection takes the next request.
async fn usable(client: &Client) -> bool {
    client.simple_query("SELECT 1").await.is_ok()
}

/// Sets up `aud_item` (owned by postgres) with a ledger, a role with
/// `grants` on both and `USAGE` on the schema.
async fn item_fixture(test: &str, grants: &str) -> (TestDb, Client, Roles, String) {
    let db = TestDb::new(test).await;
    let admin = db.connect().await;
    admin.batch_execute(&Item::model().migration_sql()).await.unwrap();
    admin.batch_execute(&Ledger::of::<Item>().migration_sql()).await.unwrap();
    let mut roles = Roles::new();
    let role = roles.role(&admin, test, "w").await;
    let r = q(&role);
    admin
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA {s} TO {r}; GRANT {grants} ON aud_item TO {r}; \
             GRANT SELECT, INSERT, UPDATE ON bulk_batches TO {r}",
            s = q(&db.schema)
        ))
        .await
        .unwrap();
    (db, admin, roles, role)
}

// ------------------------------------------------------------------ RLS: WITH CHECK refuses some new rows

/// An `INSERT` policy whose `WITH CHECK` refuses one new row (the last of
/// the batch, a new key): every kind of call on every path fails with
/// 42501, writes nothing (no row, no ledger row), is not retryable, and the
/// connection takes the next batch.
#[tokio::test]
async fn rls_with_check_refusing_a_new_row_writes_nothing() {
    let test = "rls_check";
    let (db, admin, roles, role) = item_fixture(test, "SELECT, INSERT, UPDATE").await;
    admin
        .batch_execute(
            "ALTER TABLE aud_item ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY sel ON aud_item FOR SELECT USING (true); \
             CREATE POLICY upd ON aud_item FOR UPDATE USING (true) WITH CHECK (payload <> 'bad'); \
             CREATE POLICY ins ON aud_item FOR INSERT WITH CHECK (payload <> 'bad')",
        )
        .await
        .unwrap();
    let mut client = connect_as(&db, &roles, &role).await;
    let mut f = Findings::default();
    let mut from = 0i64;
    for len in LENGTHS {
        for how in HOWS {
            // Half of the keys stored already (visible, accepted values).
            let stored = items(from, len / 2, "old");
            Item::bulk_create_new(&mut admin_clone(&db).await, &stored).await.unwrap();
            let mut rows = items(from, len, "new");
            rows.last_mut().unwrap().payload = "bad".into();
            let before = count(&admin, "aud_item").await;
            let result = run_item(&mut client, how, &rows, &format!("b{from}")).await;
            let after = count(&admin, "aud_item").await;
            let ledger = count(&admin, "bulk_batches").await;
            let ctx = format!("{len} rows, {how:?}");
            match &result {
                Ok(c) => f.check(false, format!("{ctx}: a refused row, yet Ok {c:?}")),
                Err(e) => {
                    f.check(e.sqlstate() == Some(&SqlState::INSUFFICIENT_PRIVILEGE), format!("{ctx}: {e}"));
                    f.check(e.to_string().contains("row-level security"), format!("{ctx}: unclear: {e}"));
                    f.check(!e.is_retryable(), format!("{ctx}: retryable: {e}"));
                    f.check(e.connection_usable(), format!("{ctx}: connection not usable: {e}"));
                }
            }
            f.check(before == after, format!("{ctx}: rows written: {before} -> {after}"));
            f.check(ledger == 0, format!("{ctx}: ledger rows {ledger}"));
            f.check(usable(&client).await, format!("{ctx}: the connection is gone"));
            // The same batch without the refused row goes in.
            rows.last_mut().unwrap().payload = "good".into();
            let again = run_item(&mut client, how, &rows, &format!("c{from}")).await;
            match again {
                Ok((ins, upd, _, sk, _)) => {
                    let want_ins = (len - len / 2) as u64;
                    let ok = if how == How::Upsert {
                        ins == want_ins && upd == (len / 2) as u64
                    } else {
                        ins == want_ins && sk == (len / 2) as u64
                    };
                    f.check(ok, format!("{ctx}: then {:?}", again));
                }
                Err(e) => f.check(false, format!("{ctx}: the good batch failed: {e}")),
            }
            admin.batch_execute("DELETE FROM bulk_batches").await.unwrap();
            from += 100_000;
        }
    }
    drop(client);
    drop(admin);
    drop(roles);
    db.drop().await;
    f.assert_none();
}

async fn admin_clone(db: &TestDb) -> Client {
    db.connect().await
}

// ------------------------------------------------------------------ RLS: hidden keys repeated, returning_skipped positions

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "aud_shared", unique(k), id = false)]
struct Shared {
    k: i64,
    payload: String,
}

/// A tenant table: `owner text DEFAULT current_user`, each role sees its
/// own rows. The owner (postgres, no FORCE) stores some keys.
async fn shared_fixture(test: &str, force: bool) -> (TestDb, Client, Roles, String) {
    let db = TestDb::new(test).await;
    let admin = db.connect().await;
    admin.batch_execute(&Shared::model().migration_sql()).await.unwrap();
    admin.batch_execute(&Ledger::of::<Shared>().migration_sql()).await.unwrap();
    let mut roles = Roles::new();
    let role = roles.role(&admin, test, "t").await;
    let r = q(&role);
    admin
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT, INSERT, UPDATE ON aud_shared, bulk_batches TO {r}; \
             ALTER TABLE aud_shared ADD COLUMN owner text NOT NULL DEFAULT current_user; \
             ALTER TABLE aud_shared ENABLE ROW LEVEL SECURITY; {force} \
             CREATE POLICY own ON aud_shared USING (owner = current_user)",
            s = q(&db.schema),
            force = if force { "ALTER TABLE aud_shared FORCE ROW LEVEL SECURITY;" } else { "" }
        ))
        .await
        .unwrap();
    (db, admin, roles, role)
}

/// Rows `[hidden, hidden, new(first), new(second), own, ...pad]`: key
/// `from` is stored by the other tenant, `from+1` is new and offered twice,
/// `from+2` is stored by the tenant itself, and `pad` new keys follow.
fn tenant_batch(from: i64, pad: usize) -> Vec<Shared> {
    let mut rows = vec![
        Shared { k: from, payload: "mine-a".into() },
        Shared { k: from, payload: "mine-b".into() },
        Shared { k: from + 1, payload: "first".into() },
        Shared { k: from + 1, payload: "second".into() },
        Shared { k: from + 2, payload: "again".into() },
    ];
    rows.extend((0..pad as i64).map(|i| Shared { k: from + 10 + i, payload: "pad".into() }));
    rows
}

/// Hidden stored keys offered twice, a new key offered twice and an own
/// stored key: exact counts, exact skipped positions, the first offered
/// row of the new key stored, the other tenant's row untouched; on both
/// paths, as a login role and after `SET ROLE` on a connection warmed up
/// as the table's owner (prepared statements built while RLS was bypassed).
#[tokio::test]
async fn rls_hidden_keys_repeated_exact_positions_and_first_row() {
    let test = "rls_pos";
    let (db, admin, roles, role) = shared_fixture(test, false).await;
    let mut tenant = connect_as(&db, &roles, &role).await;
    // A connection warmed as the owner, then switched to the tenant role.
    let mut switched = db.connect().await;
    roles.track(&switched).await;
    Shared::bulk_create_new(&mut switched, &[Shared { k: -1, payload: "warm".into() }]).await.unwrap();
    Shared::bulk_create_new(
        &mut switched,
        (0..COPY_BATCH as i64).map(|k| Shared { k: -10 - k, payload: "warm".into() }),
    )
    .await
    .unwrap();
    switched.batch_execute(&format!("SET ROLE {}", q(&role))).await.unwrap();
    let mut f = Findings::default();
    let mut from = 1_000_000i64;
    for which in ["login", "set role"] {
        for pad in [5usize, 300, COPY_BATCH] {
            for how in [How::Plain, How::Keys, How::Skipped] {
                let client = if which == "login" { &mut tenant } else { &mut switched };
                // The other tenant stores `from`; the tenant itself `from + 2`.
                admin
                    .execute("INSERT INTO aud_shared (k, payload, owner) VALUES ($1, 'theirs', 'someone')", &[&from])
                    .await
                    .unwrap();
                client
                    .execute("INSERT INTO aud_shared (k, payload) VALUES ($1, 'mine')", &[&(from + 2)])
                    .await
                    .unwrap();
                let rows = tenant_batch(from, pad);
                let ctx = format!("{which}, {} rows, {how:?}", rows.len());
                let result = match how {
                    How::Skipped => Shared::bulk(client)
                        .returning_skipped()
                        .run(&rows)
                        .await
                        .map(|r| (r.inserted, r.skipped, r.returned.clone())),
                    How::Keys => Shared::bulk(client)
                        .returning_keys()
                        .run(&rows)
                        .await
                        .map(|r| (r.inserted, r.skipped, r.returned.iter().map(|n| n.index).collect())),
                    _ => Shared::bulk_create_new(client, &rows).await.map(|r| (r.inserted, r.skipped, Vec::new())),
                };
                match result {
                    Ok((ins, sk, mut returned)) => {
                        f.check(
                            (ins, sk) == (1 + pad as u64, 4),
                            format!("{ctx}: (inserted, skipped) = ({ins}, {sk})"),
                        );
                        returned.sort_unstable();
                        let want: Vec<usize> = match how {
                            How::Skipped => vec![0, 1, 3, 4],
                            How::Keys => std::iter::once(2).chain(5..5 + pad).collect(),
                            _ => Vec::new(),
                        };
                        f.check(returned == want, format!("{ctx}: returned {:?}", &returned[..returned.len().min(8)]));
                    }
                    Err(e) => f.check(false, format!("{ctx}: failed: {e}")),
                }
                let stored: Vec<(i64, String, String)> = admin
                    .query(
                        "SELECT k, payload, owner FROM aud_shared WHERE k IN ($1, $2, $3) ORDER BY k",
                        &[&from, &(from + 1), &(from + 2)],
                    )
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect();
                let want = vec![
                    (from, "theirs".to_owned(), "someone".to_owned()),
                    (from + 1, "first".to_owned(), role.clone()),
                    (from + 2, "mine".to_owned(), role.clone()),
                ];
                f.check(stored == want, format!("{ctx}: stored {stored:?}"));
                from += 1_000_000;
            }
        }
    }
    switched.batch_execute("RESET ROLE; DISCARD TEMP").await.unwrap();
    tenant.batch_execute("DISCARD TEMP").await.unwrap();
    drop((tenant, switched, admin));
    drop(roles);
    db.drop().await;
    f.assert_none();
}

/// As above with `FORCE ROW LEVEL SECURITY` and the table's owner itself
/// as the tenant (the owner may not see another owner's rows): exact counts.
#[tokio::test]
async fn rls_forced_on_the_owner_counts_exactly() {
    let test = "rls_force";
    let (db, admin, roles, role) = shared_fixture(test, true).await;
    admin.batch_execute(&format!("ALTER TABLE aud_shared OWNER TO {}", q(&role))).await.unwrap();
    let mut owner = connect_as(&db, &roles, &role).await;
    let mut f = Findings::default();
    let mut from = 1_000_000i64;
    for pad in [5usize, 300, COPY_BATCH] {
        // postgres (a superuser) bypasses RLS even when forced: store as another owner.
        admin
            .execute("INSERT INTO aud_shared (k, payload, owner) VALUES ($1, 'theirs', 'someone')", &[&from])
            .await
            .unwrap();
        owner.execute("INSERT INTO aud_shared (k, payload) VALUES ($1, 'mine')", &[&(from + 2)]).await.unwrap();
        let rows = tenant_batch(from, pad);
        let r = Shared::bulk(&mut owner).returning_skipped().run(&rows).await;
        match r {
            Ok(r) => {
                let mut s = r.returned.clone();
                s.sort_unstable();
                f.check(
                    (r.inserted, r.skipped, s.clone()) == (1 + pad as u64, 4, vec![0, 1, 3, 4]),
                    format!("{pad}: {} {} {s:?}", r.inserted, r.skipped),
                );
            }
            Err(e) => f.check(false, format!("{pad}: {e}")),
        }
        from += 1_000_000;
    }
    owner.batch_execute("DISCARD TEMP").await.unwrap();
    drop((owner, admin));
    drop(roles);
    db.drop().await;
    f.assert_none();
}

// ------------------------------------------------------------------ RLS: upsert meets a hidden key whose values equal the offered ones

/// README, "Row-level security": "An upsert that meets such a key [hidden
/// by the role's policies] fails with SQLSTATE 42501 ... and writes
/// nothing". With `only_if_changed()`, a hidden stored row whose values
/// equal the offered row's is not refused: PostgreSQL evaluates the
/// `ON CONFLICT DO UPDATE ... WHERE` before the policies' check of the
/// stored row.
#[tokio::test]
async fn rls_upsert_only_if_changed_meeting_a_hidden_key_fails() {
    let test = "rls_upsert_eq";
    let (db, admin, roles, role) = shared_fixture(test, false).await;
    let mut tenant = connect_as(&db, &roles, &role).await;
    let mut f = Findings::default();
    let mut from = 1_000_000i64;
    for len in LENGTHS {
        // The other tenant's row of key `from`, payload "same".
        admin
            .execute("INSERT INTO aud_shared (k, payload, owner) VALUES ($1, 'same', 'someone')", &[&from])
            .await
            .unwrap();
        let mut rows: Vec<Shared> = (0..len as i64).map(|i| Shared { k: from + i, payload: "new".into() }).collect();
        rows[0].payload = "same".into();
        let before = count(&admin, "aud_shared").await;
        let result = Shared::bulk(&mut tenant).upsert(Upsert::all_columns().only_if_changed()).run(&rows).await;
        let after = count(&admin, "aud_shared").await;
        match result {
            Ok(r) => f.check(
                false,
                format!(
                    "{len} rows: a hidden key met by an upsert, yet Ok: inserted {}, updated {}, unchanged {}, skipped {} \
                     (the other tenant's row counted as 'unchanged'); rows {before} -> {after}",
                    r.inserted, r.updated, r.unchanged, r.skipped
                ),
            ),
            Err(e) => {
                f.check(e.sqlstate() == Some(&SqlState::INSUFFICIENT_PRIVILEGE), format!("{len}: {e}"));
                f.check(before == after, format!("{len}: written {before} -> {after}"));
            }
        }
        from += 1_000_000;
    }
    tenant.batch_execute("DISCARD TEMP").await.unwrap();
    drop((tenant, admin));
    drop(roles);
    db.drop().await;
    f.assert_none();
}

/// Upsert where the stored key is visible but the `UPDATE` policy refuses
/// it (`USING (false)`): the new keys the first statement inserted must be
/// rolled back with the failing update, on both paths (also with
/// `only_if_changed` and a stored row equal to the offered one).
#[tokio::test]
async fn rls_update_policy_refusing_a_stored_row_rolls_back_the_new_keys() {
    let test = "rls_upd";
    let (db, admin, roles, role) = item_fixture(test, "SELECT, INSERT, UPDATE").await;
    admin
        .batch_execute(
            "ALTER TABLE aud_item ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY sel ON aud_item FOR SELECT USING (true); \
             CREATE POLICY ins ON aud_item FOR INSERT WITH CHECK (true); \
             CREATE POLICY upd ON aud_item FOR UPDATE USING (payload <> 'locked')",
        )
        .await
        .unwrap();
    let mut client = connect_as(&db, &roles, &role).await;
    let mut f = Findings::default();
    let mut from = 0i64;
    for len in LENGTHS {
        for changed in [false, true] {
            admin.execute("INSERT INTO aud_item (k, payload) VALUES ($1, 'locked')", &[&from]).await.unwrap();
            let mut rows = items(from, len, "new");
            if !changed {
                rows[0].payload = "locked".into();
            }
            let before = count(&admin, "aud_item").await;
            let upsert = if changed { Upsert::all_columns() } else { Upsert::all_columns().only_if_changed() };
            let result = Item::bulk(&mut client).upsert(upsert).run(&rows).await;
            let after = count(&admin, "aud_item").await;
            let ctx = format!("{len} rows, changed {changed}");
            // (With `only_if_changed` and equal values PostgreSQL still checks the
            // UPDATE policy's USING on the stored row before the WHERE: an
            // error there is PostgreSQL's rule; what matters is that nothing
            // of the batch is written.)
            match &result {
                Err(e) => {
                    println!("{ctx}: {e}");
                    f.check(e.sqlstate() == Some(&SqlState::INSUFFICIENT_PRIVILEGE), format!("{ctx}: {e}"));
                    f.check(before == after, format!("{ctx}: written {before} -> {after}"));
                    f.check(usable(&client).await, format!("{ctx}: connection"));
                }
                Ok(r) => f.check(
                    !changed && (r.inserted, r.unchanged) == (len as u64 - 1, 1) && after == before + len as i64 - 1,
                    format!("{ctx}: {r:?} {before} -> {after}"),
                ),
            }
            from += 100_000;
        }
    }
    drop((client, admin));
    drop(roles);
    db.drop().await;
    f.assert_none();
}

/// A write-only tenant (an inbox): the role's `SELECT` policy hides the
/// rows it inserts (their owner is not the role), its `INSERT` policy lets
/// them in. The `ON CONFLICT (key)` form needs `SELECT` on the arbiter
/// columns, so PostgreSQL checks each of its new rows against the `SELECT`
/// policies: a plain call that uses it (under 128 rows, or after meeting a
/// stored key) fails with 42501, writing nothing, as the README says; the
/// others count exactly. (`returning_*` need to read what they insert:
/// their failure is expected and only checked to write nothing.)
#[tokio::test]
async fn rls_new_rows_hidden_from_the_writer() {
    let test = "rls_wo";
    let (db, admin, roles, role) = item_fixture(test, "SELECT, INSERT, UPDATE").await;
    admin
        .batch_execute(
            "ALTER TABLE aud_item ADD COLUMN owner text NOT NULL DEFAULT 'inbox'; \
             ALTER TABLE aud_item ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY sel ON aud_item FOR SELECT USING (owner = current_user); \
             CREATE POLICY ins ON aud_item FOR INSERT WITH CHECK (true)",
        )
        .await
        .unwrap();
    // Prime the process's passed check (for the first-call path).
    Item::bulk_create_new(&mut db.connect().await, &items(-5, 3, "x")).await.unwrap();
    let mut f = Findings::default();
    let mut from = 0i64;
    for stored in [false, true] {
        for len in LENGTHS {
            for how in [How::Plain, How::Keys, How::Skipped] {
                for warm in [false, true] {
                    let mut client = connect_as(&db, &roles, &role).await;
                    if warm {
                        // A warm connection: checked and prepared (a plain COPY batch of its own).
                        let _ = Item::bulk_create_new(&mut client, &items(from + 50_000, COPY_BATCH, "w")).await;
                    }
                    let n_stored = if stored { len / 2 } else { 0 };
                    Item::bulk_create_new(&mut admin_clone(&db).await, &items(from, n_stored, "old")).await.unwrap();
                    let rows = items(from, len, "new");
                    let before = count(&admin, "aud_item").await;
                    let result = run_item(&mut client, how, &rows, "x").await;
                    let after = count(&admin, "aud_item").await;
                    let ctx = format!("stored {stored}, warm {warm}, {len} rows, {how:?}");
                    let want = (len - n_stored) as u64;
                    match (how, &result) {
                        (How::Plain, Ok((ins, _, _, sk, _))) => f.check(
                            (*ins, *sk) == (want, n_stored as u64) && after - before == want as i64,
                            format!("{ctx}: ({ins}, {sk}), {before} -> {after}"),
                        ),
                        (How::Plain, Err(e)) => {
                            f.check(before == after, format!("{ctx}: written {before} -> {after}"));
                            f.check(
                                e.sqlstate() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) && (len < 128 || stored),
                                format!("{ctx}: {e}"),
                            );
                            f.check(e.connection_usable() && usable(&client).await, format!("{ctx}: connection"));
                        }
                        (_, Ok(c)) => f.check(
                            c.0 == want && after - before == want as i64,
                            format!("{ctx}: Ok {c:?}, {before} -> {after}"),
                        ),
                        (_, Err(e)) => {
                            f.check(before == after, format!("{ctx}: written {before} -> {after}"));
                            f.check(e.sqlstate() == Some(&SqlState::INSUFFICIENT_PRIVILEGE), format!("{ctx}: {e}"));
                            f.check(e.connection_usable() && usable(&client).await, format!("{ctx}: connection"));
                        }
                    }
                    client.batch_execute("DISCARD TEMP").await.unwrap();
                    from += 100_000;
                }
            }
        }
    }
    drop(admin);
    drop(roles);
    db.drop().await;
    f.assert_none();
}

/// A caller's transaction that switches with `SET LOCAL ROLE` to a tenant
/// of a table under row-level security: hidden stored keys skipped with
/// exact counts on both paths (the COPY path's plain form fails inside its
/// savepoint and the `ON CONFLICT` form runs), the caller's earlier work
/// kept, and the caller's rollback undoes every call.
#[tokio::test]
async fn rls_set_local_role_in_a_callers_transaction() {
    let test = "rls_local";
    let (db, admin, roles, role) = shared_fixture(test, false).await;
    let mut client = db.connect().await;
    roles.track(&client).await;
    let mut f = Findings::default();
    let mut from = 1_000_000i64;
    for commit in [false, true] {
        let before = count(&admin, "aud_shared").await;
        let mut offered_new = 0i64;
        let mut tx = client.transaction().await.unwrap();
        tx.batch_execute("CREATE TEMP TABLE IF NOT EXISTS aud_marker (x int); INSERT INTO aud_marker VALUES (1)")
            .await
            .unwrap();
        tx.batch_execute(&format!("SET LOCAL ROLE {}", q(&role))).await.unwrap();
        for pad in [5usize, 300, COPY_BATCH] {
            for how in [How::Plain, How::Keys, How::Skipped] {
                admin
                    .execute("INSERT INTO aud_shared (k, payload, owner) VALUES ($1, 'theirs', 'someone')", &[&from])
                    .await
                    .unwrap();
                tx.execute("INSERT INTO aud_shared (k, payload) VALUES ($1, 'mine')", &[&(from + 2)]).await.unwrap();
                let rows = tenant_batch(from, pad);
                let ctx = format!("commit {commit}, {pad}, {how:?}");
                let result = match how {
                    How::Skipped => {
                        Shared::bulk(&mut tx).returning_skipped().run(&rows).await.map(|r| (r.inserted, r.skipped))
                    }
                    How::Keys => {
                        Shared::bulk(&mut tx).returning_keys().run(&rows).await.map(|r| (r.inserted, r.skipped))
                    }
                    _ => Shared::bulk_create_new(&mut tx, &rows).await.map(|r| (r.inserted, r.skipped)),
                };
                match result {
                    Ok(c) => f.check(c == (1 + pad as u64, 4), format!("{ctx}: {c:?}")),
                    Err(e) => f.check(false, format!("{ctx}: {e}")),
                }
                offered_new += 2 + pad as i64;
                from += 1_000_000;
            }
        }
        let who: String = tx.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
        f.check(who == role, format!("current_user {who}"));
        tx.batch_execute("RESET ROLE").await.unwrap();
        let mark: i64 = tx.query_one("SELECT count(*) FROM aud_marker", &[]).await.unwrap().get(0);
        f.check(mark >= 1, "caller's work lost");
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        let after = count(&admin, "aud_shared").await;
        let theirs = 9; // one row of the other tenant per call
        let want = if commit { offered_new + theirs } else { theirs };
        f.check(after - before == want, format!("commit {commit}: {before} -> {after}, want +{want}"));
    }
    client.batch_execute("DISCARD TEMP").await.unwrap();
    drop((client, admin));
    drop(roles);
    db.drop().await;
    f.assert_none();
}

// ------------------------------------------------------------------ privileges on the table

/// `INSERT` without `SELECT`: every call either counts exactly or fails
/// with 42501 naming the table, nothing written, not retryable, the
/// connection usable. (README: the role needs both.)
#[tokio::test]
async fn insert_without_select() {
    let test = "no_select";
    let (db, admin, roles, role) = item_fixture(test, "INSERT, UPDATE").await;
    Item::bulk_create_new(&mut db.connect().await, &items(-5, 3, "x")).await.unwrap();
    let mut f = Findings::default();
    let mut from = 0i64;
    for fresh in [true, false] {
        let mut client = connect_as(&db, &roles, &role).await;
        for len in LENGTHS {
            for how in HOWS {
                if fresh && how != How::Plain {
                    continue;
                }
                let mut client2;
                let c = if fresh {
                    client2 = connect_as(&db, &roles, &role).await;
                    &mut client2
                } else {
                    &mut client
                };
                Item::bulk_create_new(&mut admin_clone(&db).await, &items(from, len / 2, "old")).await.unwrap();
                let before = count(&admin, "aud_item").await;
                let result = run_item(c, how, &items(from, len, "new"), &format!("b{from}")).await;
                let after = count(&admin, "aud_item").await;
                let ctx = format!("fresh {fresh}, {len} rows, {how:?}");
                match &result {
                    Ok(c) => {
                        println!("{ctx}: Ok {c:?}");
                        f.check(
                            after - before == (len - len / 2) as i64 && c.0 == (len - len / 2) as u64,
                            format!("{ctx}: Ok {c:?} but {before} -> {after}"),
                        );
                    }
                    Err(e) => {
                        println!("{ctx}: {e}");
                        f.check(before == after, format!("{ctx}: written {before} -> {after}"));
                        f.check(e.sqlstate() == Some(&SqlState::INSUFFICIENT_PRIVILEGE), format!("{ctx}: {e}"));
                        f.check(e.to_string().contains("aud_item"), format!("{ctx}: does not name the table: {e}"));
                        f.check(!e.is_retryable(), format!("{ctx}: retryable"));
                        f.check(e.connection_usable() && usable(c).await, format!("{ctx}: connection"));
                    }
                }
                f.check(count(&admin, "bulk_batches").await == 0, format!("{ctx}: ledger row"));
                admin.batch_execute("DELETE FROM bulk_batches").await.unwrap();
                from += 100_000;
            }
        }
        client.batch_execute("DISCARD TEMP").await.unwrap();
    }
    drop(admin);
    drop(roles);
    db.drop().await;
    f.assert_none();
}

/// Column privileges: `INSERT` on every column but `SELECT` on the key
/// only (the plain call needs no more: README); `INSERT` on the key only.
#[tokio::test]
async fn column_level_privileges() {
    let test = "columns";
    let db = TestDb::new(test).await;
    let admin = db.connect().await;
    admin
        .batch_execute(
            "CREATE TABLE aud_serial (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, k bigint NOT NULL UNIQUE, \
             payload text NOT NULL)",
        )
        .await
        .unwrap();
    admin.batch_execute(&Ledger::of::<Serial>().migration_sql()).await.unwrap();
    let mut roles = Roles::new();
    let narrow = roles.role(&admin, test, "sel_k").await;
    let keyonly = roles.role(&admin, test, "ins_k").await;
    admin
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA {s} TO {a}, {b}; GRANT SELECT, INSERT, UPDATE ON bulk_batches TO {a}, {b}; \
             GRANT INSERT, SELECT (k) ON aud_serial TO {a}; GRANT UPDATE (payload) ON aud_serial TO {a}; \
             GRANT SELECT, INSERT (k) ON aud_serial TO {b}",
            s = q(&db.schema),
            a = q(&narrow),
            b = q(&keyonly)
        ))
        .await
        .unwrap();
    let mut f = Findings::default();
    let mut from = 0i64;
    for (role, plain_ok) in [(&narrow, true), (&keyonly, false)] {
        let mut client = connect_as(&db, &roles, role).await;
        for len in LENGTHS {
            for how in HOWS {
                Serial::bulk_create_new(&mut admin_clone(&db).await, &serials(from, len / 2)).await.unwrap();
                let before = count(&admin, "aud_serial").await;
                let result = run_serial(&mut client, how, &serials(from, len), &format!("b{from}")).await;
                let after = count(&admin, "aud_serial").await;
                let ctx = format!("{role}, {len} rows, {how:?}");
                match &result {
                    Ok(c) => {
                        println!("{ctx}: Ok {c:?}");
                        let want = (len - len / 2) as u64;
                        f.check(
                            c.0 == want && after - before == want as i64,
                            format!("{ctx}: {c:?} {before}->{after}"),
                        );
                    }
                    Err(e) => {
                        println!("{ctx}: {e}");
                        f.check(
                            !(plain_ok && matches!(how, How::Plain | How::BatchId)),
                            format!("{ctx}: plain failed: {e}"),
                        );
                        f.check(before == after, format!("{ctx}: written"));
                        f.check(e.sqlstate() == Some(&SqlState::INSUFFICIENT_PRIVILEGE), format!("{ctx}: {e}"));
                        f.check(e.connection_usable() && usable(&client).await, format!("{ctx}: connection"));
                    }
                }
                admin.batch_execute("DELETE FROM bulk_batches").await.unwrap();
                from += 100_000;
            }
        }
        client.batch_execute("DISCARD TEMP").await.unwrap();
    }
    drop(admin);
    drop(roles);
    db.drop().await;
    f.assert_none();
}

/// A `bigserial` id whose sequence the role may not use: every call fails
/// with 42501 naming the sequence, nothing written; once granted, the same
/// connection's next calls write and count exactly.
#[tokio::test]
async fn no_usage_on_the_id_sequence() {
    let test = "no_seq";
    let db = TestDb::new(test).await;
    let admin = db.connect().await;
    admin
        .batch_execute(
            "CREATE TABLE aud_serial (id bigserial PRIMARY KEY, k bigint NOT NULL UNIQUE, payload text NOT NULL)",
        )
        .await
        .unwrap();
    admin.batch_execute(&Ledger::of::<Serial>().migration_sql()).await.unwrap();
    let mut roles = Roles::new();
    let role = roles.role(&admin, test, "w").await;
    admin
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT, INSERT, UPDATE ON aud_serial, bulk_batches TO {r}",
            s = q(&db.schema),
            r = q(&role)
        ))
        .await
        .unwrap();
    let mut client = connect_as(&db, &roles, &role).await;
    let mut f = Findings::default();
    let mut from = 0i64;
    for len in LENGTHS {
        for how in HOWS {
            Serial::bulk_create_new(&mut admin_clone(&db).await, &serials(from, len / 2)).await.unwrap();
            let before = count(&admin, "aud_serial").await;
            let result = run_serial(&mut client, how, &serials(from, len), &format!("b{from}")).await;
            let after = count(&admin, "aud_serial").await;
            let ctx = format!("{len} rows, {how:?}");
            match &result {
                Ok(c) => f.check(false, format!("{ctx}: Ok {c:?} without USAGE on the sequence")),
                Err(e) => {
                    f.check(before == after, format!("{ctx}: written"));
                    f.check(e.sqlstate() == Some(&SqlState::INSUFFICIENT_PRIVILEGE), format!("{ctx}: {e}"));
                    f.check(e.to_string().contains("aud_serial_id_seq"), format!("{ctx}: unclear {e}"));
                    f.check(
                        !e.is_retryable() && e.connection_usable() && usable(&client).await,
                        format!("{ctx}: flags"),
                    );
                }
            }
            f.check(count(&admin, "bulk_batches").await == 0, format!("{ctx}: ledger row"));
            from += 100_000;
        }
    }
    admin.batch_execute(&format!("GRANT USAGE ON SEQUENCE aud_serial_id_seq TO {}", q(&role))).await.unwrap();
    for len in LENGTHS {
        for how in HOWS {
            Serial::bulk_create_new(&mut admin_clone(&db).await, &serials(from, len / 2)).await.unwrap();
            let result = run_serial(&mut client, how, &serials(from, len), &format!("g{from}")).await;
            let ctx = format!("granted, {len} rows, {how:?}");
            match result {
                Ok(c) => f.check(c.0 == (len - len / 2) as u64, format!("{ctx}: {c:?}")),
                Err(e) => f.check(false, format!("{ctx}: {e}")),
            }
            from += 100_000;
        }
    }
    client.batch_execute("DISCARD TEMP").await.unwrap();
    drop((client, admin));
    drop(roles);
    db.drop().await;
    f.assert_none();
}

// ------------------------------------------------------------------ TEMPORARY

/// A database of this test's own that does not grant `TEMPORARY` to
/// `PUBLIC`, with `aud_item` in `public`, and a role that may write it but
/// not create temporary tables.
async fn no_temp_database(roles: &mut Roles, test: &str) -> (String, Client, String) {
    let admin = bulk_tests::connect_to("postgres", None).await;
    let name = format!("aud_role_{test}_{}", std::process::id());
    roles.databases.push(name.clone());
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", q(&name))).await.unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {}", q(&name))).await.unwrap();
    let owner = bulk_tests::connect_to(&name, None).await;
    let role = roles.role(&owner, test, "w").await;
    owner
        .batch_execute(&format!(
            "REVOKE TEMPORARY ON DATABASE {d} FROM PUBLIC; {m}; {l}; \
             GRANT SELECT, INSERT, UPDATE ON aud_item, bulk_batches TO {r}",
            d = q(&name),
            m = Item::model().migration_sql(),
            l = Ledger::of::<Item>().migration_sql(),
            r = q(&role)
        ))
        .await
        .unwrap();
    (name, owner, role)
}

fn is_no_temp(e: &Error, role: &str) -> bool {
    matches!(e, Error::SchemaMismatch { problems, .. }
        if problems.iter().any(|p| matches!(p, SchemaProblem::TemporaryTablesNotAllowed { role: r, .. } if r == role)))
}

/// Without `TEMPORARY`: every call is refused with
/// `TemporaryTablesNotAllowed` naming the role, nothing written; once
/// granted, the same connection writes (no refusal cached). Then: `TEMP`
/// revoked after the connection checked, before its scratch table exists
/// (short calls only so far): the first COPY call says so clearly.
#[tokio::test]
async fn no_temporary_privilege() {
    let test = "no_temp";
    let mut roles = Roles::new();
    let (name, owner, role) = no_temp_database(&mut roles, test).await;
    let mut f = Findings::default();
    let connect = |user: &str| {
        let (name, user) = (name.clone(), user.to_owned());
        async move { bulk_tests::connect_to(&name, Some(&user)).await }
    };
    let mut client = connect(&role).await;
    roles.track(&client).await;
    let mut from = 0i64;
    for len in LENGTHS {
        for how in HOWS {
            let result = run_item(&mut client, how, &items(from, len, "n"), &format!("b{from}")).await;
            let ctx = format!("{len} rows, {how:?}");
            match &result {
                Ok(c) => f.check(false, format!("{ctx}: Ok {c:?} without TEMPORARY")),
                Err(e) => f.check(is_no_temp(e, &role), format!("{ctx}: {e}")),
            }
            from += 100_000;
        }
    }
    f.check(count(&owner, "aud_item").await == 0, "written without TEMPORARY");
    owner.batch_execute(&format!("GRANT TEMPORARY ON DATABASE {} TO {}", q(&name), q(&role))).await.unwrap();
    for len in LENGTHS {
        let result = run_item(&mut client, How::Plain, &items(from, len, "n"), "x").await;
        match result {
            Ok(c) => f.check(c.0 == len as u64, format!("granted, {len}: {c:?}")),
            Err(e) => f.check(false, format!("granted, {len}: still refused on the same connection: {e}")),
        }
        from += 100_000;
    }
    // A new connection checks (short call), then TEMP is revoked, then a COPY call.
    let mut late = connect(&role).await;
    roles.track(&late).await;
    run_item(&mut late, How::Plain, &items(from, 10, "n"), "x").await.unwrap();
    from += 100_000;
    owner.batch_execute(&format!("REVOKE TEMPORARY ON DATABASE {} FROM {}", q(&name), q(&role))).await.unwrap();
    let before = count(&owner, "aud_item").await;
    for how in HOWS {
        let result = run_item(&mut late, how, &items(from, COPY_BATCH, "n"), &format!("r{from}")).await;
        match &result {
            Ok(c) => f.check(false, format!("revoked, COPY, {how:?}: Ok {c:?}")),
            Err(e) => {
                f.check(is_no_temp(e, &role), format!("revoked, COPY, {how:?}: unclear: {e}"));
                f.check(e.connection_usable() && usable(&late).await, format!("revoked, {how:?}: connection"));
            }
        }
        from += 100_000;
    }
    f.check(count(&owner, "aud_item").await == before, "revoked: written");
    // A SET ROLE from a login that may create temporary tables to one that
    // may not, before any scratch table exists: the check refuses clearly.
    let mut via_set_role = connect("postgres").await;
    roles.track(&via_set_role).await;
    via_set_role.batch_execute(&format!("SET ROLE {}", q(&role))).await.unwrap();
    let result = run_item(&mut via_set_role, How::Plain, &items(from, COPY_BATCH, "n"), "x").await;
    match &result {
        Ok(c) => f.check(false, format!("set role: Ok {c:?}")),
        Err(e) => f.check(is_no_temp(e, &role), format!("set role: {e}")),
    }
    drop((client, late, via_set_role, owner));
    drop(roles);
    f.assert_none();
}

// ------------------------------------------------------------------ SET ROLE / SET LOCAL ROLE / SET SESSION AUTHORIZATION

/// A warm connection (prepared statements, scratch table) switches with
/// `SET ROLE` to a role without `SELECT`, then `SET LOCAL ROLE` inside a
/// caller's transaction, then `SET SESSION AUTHORIZATION`: each call fails
/// clearly and writes nothing (the caller's transaction intact), and after
/// switching back the connection writes and counts exactly.
#[tokio::test]
async fn role_switches_on_a_warm_connection() {
    let test = "switch";
    let (db, admin, mut roles, role) = item_fixture(test, "INSERT").await;
    let reader = roles.role(&admin, test, "r").await;
    admin
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT, INSERT ON aud_item TO {r}",
            s = q(&db.schema),
            r = q(&reader)
        ))
        .await
        .unwrap();
    let mut client = db.connect().await;
    roles.track(&client).await;
    let mut f = Findings::default();
    let mut from = 0i64;
    for len in LENGTHS {
        run_item(&mut client, How::Plain, &items(from, len, "warm"), "x").await.unwrap();
        from += 100_000;
    }
    for switch in ["SET ROLE", "SET LOCAL ROLE", "SET SESSION AUTHORIZATION"] {
        for len in LENGTHS {
            Item::bulk_create_new(&mut admin_clone(&db).await, &items(from, len / 2, "old")).await.unwrap();
            let before = count(&admin, "aud_item").await;
            let rows = items(from, len, "new");
            let ctx = format!("{switch}, {len}");
            if switch == "SET LOCAL ROLE" {
                let mut tx = client.transaction().await.unwrap();
                tx.batch_execute(
                    "CREATE TEMP TABLE IF NOT EXISTS aud_marker (x int); INSERT INTO aud_marker VALUES (1)",
                )
                .await
                .unwrap();
                tx.batch_execute(&format!("SET LOCAL ROLE {}", q(&role))).await.unwrap();
                let result = Item::bulk_create_new(&mut tx, &rows).await;
                match &result {
                    Ok(c) => f.check(false, format!("{ctx}: Ok {c:?}")),
                    Err(e) => f.check(
                        e.sqlstate() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) && !e.is_retryable(),
                        format!("{ctx}: {e}"),
                    ),
                }
                // The caller's transaction goes on, as the role it chose.
                let who: String =
                    tx.query_one("SELECT current_user::text", &[]).await.map(|r| r.get(0)).unwrap_or_default();
                f.check(who == role, format!("{ctx}: current_user in the caller's transaction is {who:?}"));
                tx.batch_execute("RESET ROLE").await.unwrap();
                let mark: i64 =
                    tx.query_one("SELECT count(*) FROM aud_marker", &[]).await.map(|r| r.get(0)).unwrap_or(-1);
                f.check(mark >= 1, format!("{ctx}: caller's work lost ({mark})"));
                // A call as the reader in the same transaction, after the failure.
                tx.batch_execute(&format!("SET LOCAL ROLE {}", q(&reader))).await.unwrap();
                match Item::bulk_create_new(&mut tx, &rows).await {
                    Ok(r) => f.check(r.inserted == (len - len / 2) as u64, format!("{ctx}: reader {r:?}")),
                    Err(e) => f.check(false, format!("{ctx}: reader in the same tx: {e}")),
                }
                tx.rollback().await.unwrap();
            } else {
                client.batch_execute(&format!("{switch} {}", q(&role))).await.unwrap();
                let result = Item::bulk_create_new(&mut client, &rows).await;
                match &result {
                    Ok(c) => f.check(false, format!("{ctx}: Ok {c:?}")),
                    Err(e) => f.check(
                        e.sqlstate() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)
                            && !e.is_retryable()
                            && e.connection_usable(),
                        format!("{ctx}: {e}"),
                    ),
                }
                client
                    .batch_execute(if switch == "SET ROLE" { "RESET ROLE" } else { "RESET SESSION AUTHORIZATION" })
                    .await
                    .unwrap();
            }
            f.check(count(&admin, "aud_item").await == before, format!("{ctx}: written"));
            match Item::bulk_create_new(&mut client, &rows).await {
                Ok(r) => f.check(
                    (r.inserted, r.skipped) == ((len - len / 2) as u64, (len / 2) as u64),
                    format!("{ctx}: back: {r:?}"),
                ),
                Err(e) => f.check(false, format!("{ctx}: back: {e}")),
            }
            from += 100_000;
        }
    }
    client.batch_execute("DISCARD TEMP").await.unwrap();
    drop((client, admin));
    drop(roles);
    db.drop().await;
    f.assert_none();
}

// ------------------------------------------------------------------ search_path per role, schema USAGE

/// A role whose default `search_path` (`ALTER ROLE ... SET`) leads to
/// another schema's same-named table, first without a unique key, then
/// with one: a new connection of that role, in a process that passed the
/// check of the first schema's table moments ago, never writes the other
/// table without its key, and counts exactly once it has one.
#[tokio::test]
async fn role_search_path_leads_to_another_table() {
    let test = "sp";
    let db = TestDb::new(test).await;
    let other = format!("{}_other", db.schema);
    let admin = db.connect().await;
    admin.batch_execute(&Item::model().migration_sql()).await.unwrap();
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {o} CASCADE; CREATE SCHEMA {o}; \
             CREATE TABLE {o}.aud_item (k bigint NOT NULL, payload text NOT NULL)",
            o = q(&other)
        ))
        .await
        .unwrap();
    let mut roles = Roles::new();
    let role = roles.role(&admin, test, "w").await;
    admin
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA {s}, {o} TO {r}; GRANT SELECT, INSERT ON aud_item, {o}.aud_item TO {r}; \
             ALTER ROLE {r} SET search_path = {o}",
            s = q(&db.schema),
            o = q(&other),
            r = q(&role)
        ))
        .await
        .unwrap();
    let mut f = Findings::default();
    let mut from = 0i64;
    let connect_role = || async {
        let c = bulk_tests::connect_to(bulk_tests::DATABASE, Some(&role)).await;
        roles.track(&c).await;
        c
    };
    for indexed in [false, true] {
        if indexed {
            admin.batch_execute(&format!("CREATE UNIQUE INDEX ON {}.aud_item (k)", q(&other))).await.unwrap();
        }
        for len in [10usize, 60, 300, COPY_BATCH] {
            // The process passes the check of the first schema's table.
            Item::bulk_create_new(&mut admin_clone(&db).await, &items(from, len / 2, "first")).await.unwrap();
            let mut c = connect_role().await;
            let sp: String = c.query_one("SHOW search_path", &[]).await.unwrap().get(0);
            f.check(sp.contains(&other), format!("search_path {sp}"));
            // Half the keys are stored in the other table too, twice when unindexed.
            let n_other: i64 =
                admin.query_one(&format!("SELECT count(*) FROM {}.aud_item", q(&other)), &[]).await.unwrap().get(0);
            let rows = items(from, len, "second");
            let result = Item::bulk_create_new(&mut c, &rows).await;
            let again = Item::bulk_create_new(&mut c, &rows).await;
            let n_after: i64 =
                admin.query_one(&format!("SELECT count(*) FROM {}.aud_item", q(&other)), &[]).await.unwrap().get(0);
            let ctx = format!("indexed {indexed}, {len}");
            if indexed {
                match (&result, &again) {
                    (Ok(a), Ok(b)) => f.check(
                        a.inserted == len as u64 && b.inserted == 0 && n_after - n_other == len as i64,
                        format!("{ctx}: {a:?} {b:?} {n_other}->{n_after}"),
                    ),
                    _ => f.check(false, format!("{ctx}: {:?} {:?}", result.err(), again.err())),
                }
            } else {
                f.check(
                    n_after == n_other,
                    format!("{ctx}: wrote {} rows to a table without the key", n_after - n_other),
                );
                match &result {
                    Ok(r) => f.check(false, format!("{ctx}: Ok {r:?}")),
                    Err(e) => f.check(
                        matches!(e, Error::SchemaMismatch { problems, .. } if problems.iter().any(|p| matches!(p, SchemaProblem::UniqueKeyMissing { .. }))),
                        format!("{ctx}: {e}"),
                    ),
                }
            }
            drop(c);
            from += 100_000;
        }
    }
    admin.batch_execute(&format!("DROP SCHEMA {} CASCADE", q(&other))).await.unwrap();
    drop(admin);
    drop(roles);
    db.drop().await;
    f.assert_none();
}

/// A role without `USAGE` on the table's schema (the table exists, the
/// role has `SELECT, INSERT` on it). PostgreSQL leaves that schema out of
/// the effective `search_path`, so the name finds no table: the check says
/// so (`SchemaNotUsable`, with the `GRANT`), not that the table is missing.
#[tokio::test]
async fn no_usage_on_the_schema() {
    let test = "no_usage";
    let db = TestDb::new(test).await;
    let admin = db.connect().await;
    admin.batch_execute(&Item::model().migration_sql()).await.unwrap();
    let mut roles = Roles::new();
    let role = roles.role(&admin, test, "w").await;
    admin.batch_execute(&format!("GRANT SELECT, INSERT ON aud_item TO {}", q(&role))).await.unwrap();
    let mut c = connect_as(&db, &roles, &role).await;
    let mut f = Findings::default();
    for len in [10usize, COPY_BATCH] {
        let result = Item::bulk_create_new(&mut c, &items(0, len, "x")).await;
        match &result {
            Ok(r) => f.check(false, format!("{len}: Ok {r:?}")),
            Err(e) => {
                println!("{len}: {e}");
                f.check(e.connection_usable() && usable(&c).await, format!("{len}: connection"));
                let text = e.to_string();
                f.check(
                    !text.contains("does not exist") && text.contains("GRANT USAGE ON SCHEMA"),
                    format!("{len}: the table exists, the role lacks USAGE on its schema; the error says: {e}"),
                );
                f.check(
                    matches!(e, Error::SchemaMismatch { problems, .. }
                        if matches!(problems.as_slice(), [SchemaProblem::SchemaNotUsable { role: r, .. }] if *r == role)),
                    format!("{len}: {e:?}"),
                );
            }
        }
    }
    f.check(count(&admin, "aud_item").await == 0, "written");
    // The same in a schema whose name needs quotes, and one named in the
    // path without them (which PostgreSQL folds to lower case).
    let mixed = format!("No Usage {}", db.schema);
    let folded = format!("nousage_{}", db.schema);
    for (schema, in_path) in [(mixed.clone(), q(&mixed)), (folded.clone(), folded.to_uppercase())] {
        admin
            .batch_execute(&format!(
                "CREATE SCHEMA {s}; CREATE TABLE {s}.aud_item (LIKE aud_item INCLUDING ALL); \
                 GRANT SELECT, INSERT ON {s}.aud_item TO {r}",
                s = q(&schema),
                r = q(&role)
            ))
            .await
            .unwrap();
        c.batch_execute(&format!("SET search_path = {in_path}")).await.unwrap();
        let result = Item::bulk_create_new(&mut c, &items(0, 10, "x")).await;
        f.check(
            matches!(&result, Err(Error::SchemaMismatch { problems, .. })
                if matches!(problems.as_slice(), [SchemaProblem::SchemaNotUsable { schema: s, .. }] if *s == schema)),
            format!("{in_path}: {result:?}"),
        );
        admin.batch_execute(&format!("DROP SCHEMA {} CASCADE", q(&schema))).await.unwrap();
    }
    drop((c, admin));
    drop(roles);
    db.drop().await;
    f.assert_none();
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(schema = "aud_role_fixed_schema", table = "aud_fixed", unique(k), id = false)]
struct Fixed {
    k: i64,
    payload: String,
}

/// The same with a model that names its schema: the error names the schema
/// and the missing privilege (PostgreSQL's "permission denied for schema").
#[tokio::test]
async fn no_usage_on_the_models_own_schema() {
    let test = "no_usage_fixed";
    let db = TestDb::new(test).await;
    let admin = db.connect().await;
    admin.batch_execute("DROP SCHEMA IF EXISTS aud_role_fixed_schema CASCADE").await.unwrap();
    admin.batch_execute(&Fixed::model().migration_sql()).await.unwrap();
    let mut roles = Roles::new();
    let role = roles.role(&admin, test, "w").await;
    admin
        .batch_execute(&format!("GRANT SELECT, INSERT ON aud_role_fixed_schema.aud_fixed TO {}", q(&role)))
        .await
        .unwrap();
    let mut c = connect_as(&db, &roles, &role).await;
    let mut f = Findings::default();
    for len in [10usize, COPY_BATCH] {
        let rows: Vec<Fixed> = (0..len as i64).map(|k| Fixed { k, payload: "x".into() }).collect();
        match Fixed::bulk_create_new(&mut c, &rows).await {
            Ok(r) => f.check(false, format!("{len}: Ok {r:?}")),
            Err(e) => {
                println!("{len}: {e}");
                f.check(e.connection_usable() && usable(&c).await, format!("{len}: connection"));
                let text = e.to_string();
                f.check(
                    !text.contains("does not exist") && text.contains("aud_role_fixed_schema"),
                    format!("{len}: unclear: {e}"),
                );
            }
        }
    }
    let n: i64 = admin.query_one("SELECT count(*) FROM aud_role_fixed_schema.aud_fixed", &[]).await.unwrap().get(0);
    f.check(n == 0, "written");
    admin.batch_execute("DROP SCHEMA aud_role_fixed_schema CASCADE").await.unwrap();
    drop((c, admin));
    drop(roles);
    db.drop().await;
    f.assert_none();
}

/// In a database without `TEMPORARY` for `PUBLIC`: a session whose login
/// may create temporary tables makes its scratch table (a COPY call), then
/// `SET ROLE` to a role that may not. The scratch table is opened to every
/// role, so every call keeps working, short and COPY, with exact counts.
#[tokio::test]
async fn set_role_to_a_role_without_temporary_after_the_scratch_table_exists() {
    let test = "temp_setrole";
    let mut roles = Roles::new();
    let (name, owner, role) = no_temp_database(&mut roles, test).await;
    let mut f = Findings::default();
    let mut c = bulk_tests::connect_to(&name, None).await;
    roles.track(&c).await;
    run_item(&mut c, How::Plain, &items(0, COPY_BATCH, "login"), "x").await.unwrap();
    c.batch_execute(&format!("SET ROLE {}", q(&role))).await.unwrap();
    let mut from = 1_000_000i64;
    for len in LENGTHS {
        for how in HOWS {
            let before = count(&owner, "aud_item").await;
            let result = run_item(&mut c, how, &items(from, len, "n"), &format!("b{from}")).await;
            let after = count(&owner, "aud_item").await;
            let ctx = format!("{len}, {how:?}");
            match &result {
                Ok(r) => {
                    println!("{ctx}: Ok {r:?}");
                    f.check(r.0 == len as u64 && after - before == len as i64, format!("{ctx}: {r:?}"))
                }
                Err(e) => {
                    println!("{ctx}: {e}");
                    f.check(before == after, format!("{ctx}: written"));
                    f.check(false, format!("{ctx}: refused although the session has its scratch table: {e}"));
                }
            }
            from += 100_000;
        }
    }
    // Once the session's scratch table is gone (a pool's `DISCARD TEMP`),
    // the role may not make it again: a COPY call is refused up front,
    // nothing written (a short one needs no scratch table).
    c.batch_execute("DISCARD TEMP").await.unwrap();
    for len in [10usize, COPY_BATCH] {
        let before = count(&owner, "aud_item").await;
        let result = run_item(&mut c, How::Plain, &items(from, len, "gone"), "x").await;
        let written = count(&owner, "aud_item").await - before;
        if len < COPY_BATCH {
            f.check(matches!(result, Ok((10, ..))) && written == 10, format!("{len} after DISCARD TEMP: {result:?}"));
        } else {
            let refused = matches!(&result, Err(Error::SchemaMismatch { problems, .. })
                if matches!(problems.as_slice(), [SchemaProblem::TemporaryTablesNotAllowed { .. }]));
            f.check(refused && written == 0, format!("{len} after DISCARD TEMP: {result:?}, {written} written"));
        }
        from += 100_000;
    }
    c.batch_execute("RESET ROLE; DISCARD TEMP").await.unwrap();
    drop((c, owner));
    drop(roles);
    f.assert_none();
}

// ------------------------------------------------------------------ SECURITY DEFINER triggers

/// An `AFTER INSERT` row trigger, `SECURITY DEFINER`, writing an audit
/// table the role may not touch: exact counts on every path; and a
/// `SECURITY DEFINER` `BEFORE INSERT` trigger that suppresses rows as the
/// definer decides: counted as skipped.
#[tokio::test]
async fn security_definer_triggers() {
    let test = "secdef";
    let (db, admin, roles, role) = item_fixture(test, "SELECT, INSERT, UPDATE").await;
    admin
        .batch_execute(
            "CREATE TABLE aud_audit (k bigint, who text); \
             CREATE FUNCTION aud_audit_fn() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$ \
             BEGIN INSERT INTO aud_audit VALUES (NEW.k, session_user); RETURN NULL; END $$; \
             CREATE TRIGGER aud_audit_t AFTER INSERT ON aud_item FOR EACH ROW EXECUTE FUNCTION aud_audit_fn(); \
             CREATE FUNCTION aud_drop_fn() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$ \
             BEGIN IF NEW.payload = 'drop' THEN RETURN NULL; END IF; RETURN NEW; END $$; \
             CREATE TRIGGER aud_drop_t BEFORE INSERT ON aud_item FOR EACH ROW EXECUTE FUNCTION aud_drop_fn();",
        )
        .await
        .unwrap();
    let mut client = connect_as(&db, &roles, &role).await;
    let mut f = Findings::default();
    let mut from = 0i64;
    for len in LENGTHS {
        for how in [How::Plain, How::Keys, How::Skipped, How::BatchId] {
            Item::bulk_create_new(&mut admin_clone(&db).await, &items(from, len / 2, "old")).await.unwrap();
            let audit_before = count(&admin, "aud_audit").await;
            let mut rows = items(from, len, "new");
            rows.last_mut().unwrap().payload = "drop".into();
            let result = run_item(&mut client, how, &rows, &format!("b{from}")).await;
            let audit = count(&admin, "aud_audit").await - audit_before;
            let ctx = format!("{len}, {how:?}");
            let want = (len - len / 2 - 1) as u64;
            match result {
                Ok(c) => f.check(
                    c.0 == want && c.3 == (len / 2 + 1) as u64 && audit == want as i64,
                    format!("{ctx}: {c:?}, audited {audit}"),
                ),
                Err(e) => f.check(false, format!("{ctx}: {e}")),
            }
            from += 100_000;
        }
    }
    client.batch_execute("DISCARD TEMP").await.unwrap();
    drop((client, admin));
    drop(roles);
    db.drop().await;
    f.assert_none();
}

// ------------------------------------------------------------------ ledger privileges and RLS

/// The ledger without `UPDATE` (the record), without `SELECT` (the claim's
/// `RETURNING`), without anything: the call fails naming the ledger, not as
/// `LedgerMissing`, nothing written (rows or ledger), connection usable.
#[tokio::test]
async fn ledger_privileges_missing() {
    let test = "ledger_priv";
    let (db, admin, roles, role) = item_fixture(test, "SELECT, INSERT, UPDATE").await;
    let r = q(&role);
    let mut client = connect_as(&db, &roles, &role).await;
    let mut f = Findings::default();
    let mut from = 0i64;
    for (grants, name) in [("SELECT, INSERT", "no update"), ("INSERT, UPDATE", "no select"), ("", "nothing")] {
        admin.batch_execute(&format!("REVOKE ALL ON bulk_batches FROM {r}")).await.unwrap();
        if !grants.is_empty() {
            admin.batch_execute(&format!("GRANT {grants} ON bulk_batches TO {r}")).await.unwrap();
        }
        for len in LENGTHS {
            for how in [How::BatchId, How::Upsert] {
                let rows = items(from, len, "n");
                let before = count(&admin, "aud_item").await;
                let result = match how {
                    How::Upsert => Item::bulk(&mut client)
                        .upsert(Upsert::all_columns())
                        .batch_id(format!("u{from}"))
                        .run(&rows)
                        .await
                        .map(|r| r.inserted),
                    _ => Item::bulk(&mut client).batch_id(format!("b{from}")).run(&rows).await.map(|r| r.inserted),
                };
                let ctx = format!("{name}, {len}, {how:?}");
                match &result {
                    Ok(n) => f.check(false, format!("{ctx}: Ok {n}")),
                    Err(e) => {
                        println!("{ctx}: {e}");
                        f.check(!matches!(e, Error::LedgerMissing { .. }), format!("{ctx}: said missing: {e}"));
                        f.check(e.sqlstate() == Some(&SqlState::INSUFFICIENT_PRIVILEGE), format!("{ctx}: {e}"));
                        f.check(e.to_string().contains("bulk_batches"), format!("{ctx}: unclear: {e}"));
                        f.check(e.connection_usable() && usable(&client).await, format!("{ctx}: connection"));
                    }
                }
                f.check(count(&admin, "aud_item").await == before, format!("{ctx}: rows written"));
                f.check(count(&admin, "bulk_batches").await == 0, format!("{ctx}: ledger written"));
                from += 100_000;
            }
        }
    }
    client.batch_execute("DISCARD TEMP").await.unwrap();
    drop((client, admin));
    drop(roles);
    db.drop().await;
    f.assert_none();
}

/// A ledger shared by tenants under row-level security (each sees its own
/// ledger rows), like the target table of the README's RLS section: another
/// tenant recorded the same batch id on the same target. The call cannot
/// claim the id (the primary key refuses it) nor see the recorded row: it
/// must fail clearly, naming the id and that the role cannot read its row,
/// and write nothing.
#[tokio::test]
async fn ledger_under_rls_with_another_tenants_batch_id() {
    let test = "ledger_rls";
    let (db, admin, roles, role) = shared_fixture(test, false).await;
    admin
        .batch_execute(
            "ALTER TABLE bulk_batches ADD COLUMN owner text NOT NULL DEFAULT current_user; \
             ALTER TABLE bulk_batches ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY own ON bulk_batches USING (owner = current_user)",
        )
        .await
        .unwrap();
    let other = db.connect().await;
    other.batch_execute("SET ROLE NONE").await.unwrap();
    let mut tenant = connect_as(&db, &roles, &role).await;
    let mut f = Findings::default();
    let mut from = 0i64;
    for len in [10usize, COPY_BATCH] {
        // The other tenant (postgres: bypasses RLS, but stores owner = postgres).
        let theirs: Vec<Shared> = (0..len as i64).map(|i| Shared { k: from + i, payload: "theirs".into() }).collect();
        let mut oc = admin_clone(&db).await;
        Shared::bulk(&mut oc).batch_id("poll 1").run(&theirs).await.unwrap();
        admin.batch_execute("UPDATE bulk_batches SET owner = 'someone'").await.unwrap();
        let mine: Vec<Shared> =
            (0..len as i64).map(|i| Shared { k: from + 500_000 + i, payload: "mine".into() }).collect();
        let before = count(&admin, "aud_shared").await;
        let result = Shared::bulk(&mut tenant).batch_id("poll 1").run(&mine).await;
        let after = count(&admin, "aud_shared").await;
        let ctx = format!("{len}");
        match &result {
            Ok(r) => f.check(false, format!("{ctx}: Ok {r:?} ({before} -> {after})")),
            Err(e) => {
                println!("{ctx}: {e:?}");
                f.check(
                    e.to_string().contains("\"poll 1\" is taken") && e.to_string().contains("cannot read its row"),
                    format!("{ctx}: misleading error for a batch id held by a row the role cannot see: {e}"),
                );
                f.check(before == after, format!("{ctx}: written"));
            }
        }
        admin.batch_execute("DELETE FROM bulk_batches").await.unwrap();
        from += 1_000_000;
    }
    tenant.batch_execute("DISCARD TEMP").await.unwrap();
    drop((tenant, admin, other));
    drop(roles);
    db.drop().await;
    f.assert_none();
}
