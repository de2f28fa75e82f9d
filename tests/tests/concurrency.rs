//! Many writers at once: 8 connections offer overlapping batches of the same
//! keys in their own random orders, round after round, under every plan the
//! planner can pick for the insert's anti-join, and from two OS processes.
//! No call fails or deadlocks, every reported count is exact, and no table
//! lock keeps other sessions from reading or writing meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bulk_runtime::{BulkCreateNew, Report};
use bulk_tests::{
    COPY_BATCH, Contended, TestDb, contended_batch, count, distinct_keys, gate_at, lock_key, wait_for_backend,
};
use tokio_postgres::Client;

const WRITERS: u64 = 8;

/// How the writers' sessions steer the planner for the insert's anti-join.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// Whatever the planner picks.
    Default,
    Hash,
    Merge,
    NestedLoop,
}

impl Plan {
    fn settings(self) -> &'static str {
        match self {
            Plan::Default => "",
            Plan::Hash => "SET enable_mergejoin = off; SET enable_nestloop = off;",
            Plan::Merge => "SET enable_hashjoin = off; SET enable_nestloop = off;",
            Plan::NestedLoop => "SET enable_hashjoin = off; SET enable_mergejoin = off;",
        }
    }

    /// The join node `EXPLAIN` shows for the COPY path's insert.
    fn join_node(self) -> Option<&'static str> {
        match self {
            Plan::Default => None,
            Plan::Hash => Some("Hash Anti Join"),
            Plan::Merge => Some("Merge Anti Join"),
            Plan::NestedLoop => Some("Nested Loop Anti Join"),
        }
    }
}

async fn setup(name: &str) -> TestDb {
    let db = TestDb::new(name).await;
    db.connect().await.batch_execute(&Contended::model().migration_sql()).await.unwrap();
    db
}

/// Writers' connections: deadlocks would be detected after 50 ms (and fail
/// the call) instead of the default second.
async fn writers(db: &TestDb, plan: Plan) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..WRITERS {
        let client = db.connect().await;
        client.batch_execute(&format!("SET deadlock_timeout = '50ms'; {}", plan.settings())).await.unwrap();
        clients.push(client);
    }
    clients
}

/// Runs `rounds` (each a list of batch lengths, one per writer): all writers
/// start each round together. Returns the writers, and every call's batch and
/// outcome by `(round, writer)`.
async fn run_rounds(
    clients: Vec<Client>,
    seed: u64,
    first_round: u64,
    rounds: &[[usize; WRITERS as usize]],
    universe: u64,
) -> (Vec<Client>, BTreeMap<(u64, u64), (Vec<Contended>, Report)>) {
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS as usize));
    let rounds: Arc<Vec<[usize; WRITERS as usize]>> = Arc::new(rounds.to_vec());
    let mut tasks = Vec::new();
    for (w, mut client) in clients.into_iter().enumerate() {
        let (barrier, rounds) = (barrier.clone(), rounds.clone());
        let w = w as u64;
        tasks.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            for (i, lens) in rounds.iter().enumerate() {
                let round = first_round + i as u64;
                let batch = contended_batch(seed, round, w, lens[w as usize], universe);
                barrier.wait().await;
                match Contended::bulk_create_new(&mut client, &batch).await {
                    Ok(o) => calls.push(((round, w), (batch, o))),
                    Err(e) => panic!("writer {w}, round {round} ({} rows): {e}", batch.len()),
                }
            }
            (client, calls)
        }));
    }
    let mut clients = Vec::new();
    let mut calls = BTreeMap::new();
    for t in tasks {
        let (client, mine) = t.await.unwrap();
        clients.push(client);
        calls.extend(mine);
    }
    (clients, calls)
}

/// Checks every call's counts against the stored rows: the sum of the
/// inserted counts is the row count is the number of distinct keys offered;
/// each call inserted exactly the stored rows whose payload names it; each
/// stored row is the first row of its key in the batch that stored it.
async fn check(client: &Client, calls: &BTreeMap<(u64, u64), (Vec<Contended>, Report)>) {
    let keys = distinct_keys(calls.values().map(|(b, _)| b));
    let mut total = Report::default();
    for (batch, o) in calls.values() {
        assert_eq!(o.offered, batch.len() as u64);
        assert_eq!(o.inserted + o.skipped, o.offered);
        total += *o;
    }
    assert_eq!(total.inserted, keys.len() as u64, "inserted counts add up to the distinct keys offered");
    assert_eq!(count(client, "contended").await, keys.len() as i64, "one row per distinct key offered");

    let stored: Vec<Contended> = client
        .query("SELECT a, b, payload FROM contended", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| Contended { a: r.get(0), b: r.get(1), payload: r.get(2) })
        .collect();
    // The position of each key's first row, per call.
    let firsts: BTreeMap<(u64, u64), std::collections::HashMap<u64, usize>> = calls
        .iter()
        .map(|(call, (batch, _))| {
            let mut first = std::collections::HashMap::new();
            for (i, c) in batch.iter().enumerate() {
                first.entry(c.number()).or_insert(i);
            }
            (*call, first)
        })
        .collect();
    let mut per_call: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for row in &stored {
        let mut parts = row.payload.split(' ');
        let w: u64 = parts.next().and_then(|p| p.strip_prefix('w')).and_then(|p| p.parse().ok()).unwrap();
        let r: u64 = parts.next().and_then(|p| p.strip_prefix('r')).and_then(|p| p.parse().ok()).unwrap();
        let i: usize = parts.next().and_then(|p| p.strip_prefix('#')).and_then(|p| p.parse().ok()).unwrap();
        let (batch, _) = &calls[&(r, w)];
        assert_eq!(batch[i], *row, "stored exactly as offered");
        assert_eq!(firsts[&(r, w)][&row.number()], i, "the first offered row of the key in its batch: {row:?}");
        *per_call.entry((r, w)).or_default() += 1;
    }
    for (call, (_, o)) in calls {
        assert_eq!(o.inserted, per_call.get(call).copied().unwrap_or(0), "call {call:?} reported what it stored");
    }
}

/// Batch lengths per writer for a round: long (COPY) and short (one
/// statement) batches side by side, rotating with the round.
fn mixed(round: usize) -> [usize; WRITERS as usize] {
    std::array::from_fn(|w| if (w + round).is_multiple_of(3) { 1_500 } else { COPY_BATCH + 400 * w })
}

/// Two rounds on the fresh table (no statistics), `ANALYZE`, two more.
async fn writers_under_plan(name: &str, plan: Plan) {
    let db = setup(name).await;
    let seed = bulk_tests::seed(name);
    let universe = 12_000;
    let clients = writers(&db, plan).await;
    let (clients, mut calls) = run_rounds(clients, seed, 0, &[mixed(0), mixed(1)], universe).await;
    let admin = db.connect().await;
    admin.batch_execute("ANALYZE contended").await.unwrap();
    // Rounds overlap by half their keys: the later ones also offer keys the
    // earlier ones stored.
    let (clients, more) = run_rounds(clients, seed, 2, &[mixed(2), mixed(3)], universe).await;
    calls.extend(more);
    check(&admin, &calls).await;

    if let Some(node) = plan.join_node() {
        // Every form of the insert: the plain first attempt (with and
        // without DISTINCT ON), and the ON CONFLICT one a conflict falls back to.
        let sql = bulk_runtime::__test_hooks::protocol_sql(Contended::model());
        for insert in [sql.insert_plain, sql.insert_plain_distinct_keys, sql.insert_on_conflict] {
            let plan_text = explain(&clients[0], insert).await;
            assert!(plan_text.contains(node), "expected {node}:\n{plan_text}");
        }
    }
    db.drop().await;
}

/// `EXPLAIN` of a COPY path's insert on a writer's session (whose scratch
/// table exists after its first long batch), with the session's settings.
async fn explain(client: &Client, insert: &str) -> String {
    client
        .simple_query(&format!("EXPLAIN {insert}"))
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_default_plan() {
    writers_under_plan("conc_default", Plan::Default).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_hash_anti_join() {
    writers_under_plan("conc_hash", Plan::Hash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_merge_anti_join() {
    writers_under_plan("conc_merge", Plan::Merge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_nested_loop_anti_join() {
    writers_under_plan("conc_nestloop", Plan::NestedLoop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_with_batches_too_large_to_tempt_splitting() {
    // 8 x 40,000 rows over 100,000 keys in one round: each call is one
    // statement over its whole batch, and still nothing conflicts.
    let db = setup("conc_large").await;
    let seed = bulk_tests::seed("conc_large");
    let clients = writers(&db, Plan::Default).await;
    let (_, calls) = run_rounds(clients, seed, 0, &[[40_000; WRITERS as usize]], 100_000).await;
    check(&db.connect().await, &calls).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_in_two_os_processes() {
    let db = setup("conc_processes").await;
    let seed = bulk_tests::seed("conc_processes");
    let (per_process, rounds, len, universe) = (4u64, 4u64, COPY_BATCH + 1_000, 15_000u64);
    let mut children = Vec::new();
    for p in 0..2u64 {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_bulk-writer"))
            .args([&db.schema, &seed.to_string(), &(p * per_process).to_string(), &per_process.to_string()])
            .args([rounds.to_string(), len.to_string(), universe.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start bulk-writer");
        children.push(child);
    }
    // Both processes connect first; then both start at once.
    let mut outputs = Vec::new();
    for child in &mut children {
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout);
        let mut ready = String::new();
        std::io::BufRead::read_line(&mut lines, &mut ready).unwrap();
        assert_eq!(ready.trim(), "ready");
        outputs.push(lines);
    }
    for child in &mut children {
        use std::io::Write;
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
    let mut inserted = 0u64;
    let mut offered = 0u64;
    for (child, mut out) in children.into_iter().zip(outputs) {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        let status = tokio::task::spawn_blocking(move || {
            let mut child = child;
            child.wait()
        })
        .await
        .unwrap()
        .unwrap();
        assert!(status.success(), "bulk-writer failed: {rest}");
        let words: Vec<&str> = rest.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"offered"), "{rest}");
        offered += words[1].parse::<u64>().unwrap();
        inserted += words[3].parse::<u64>().unwrap();
    }
    let batches: Vec<Vec<Contended>> = (0..rounds)
        .flat_map(|r| (0..2 * per_process).map(move |w| contended_batch(seed, r, w, len, universe)))
        .collect();
    let keys = distinct_keys(&batches);
    assert_eq!(offered, batches.iter().map(|b| b.len() as u64).sum::<u64>());
    assert_eq!(inserted, keys.len() as u64, "the processes' inserted counts add up to the distinct keys");
    assert_eq!(count(&db.connect().await, "contended").await, keys.len() as i64);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_table_lock_while_a_call_runs() {
    no_table_lock(0, 3_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_table_lock_while_a_call_runs_through_copy() {
    no_table_lock(1, COPY_BATCH).await;
}

/// A bulk call stopped in the middle of its insert (a CHECK function waits on
/// an advisory lock at one row): meanwhile another session reads the table,
/// inserts a row of its own and sees the writer hold no lock stronger than
/// an ordinary INSERT's. Then the call completes with exact counts.
async fn no_table_lock(n: i64, len: usize) {
    let db = setup(&format!("no_table_lock_{n}")).await;
    let admin = db.connect().await;
    let lock = lock_key(n);
    gate_at(&admin, len as u64 / 2, lock).await;
    admin.query_one("SELECT pg_advisory_lock($1)", &[&lock]).await.unwrap();

    let mut writer = db.connect().await;
    let pid: i32 = writer.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let batch: Vec<Contended> = (0..len as u64).rev().map(|k| Contended::key(k, format!("bulk {k}"))).collect();
    let call = tokio::spawn(async move {
        let o = Contended::bulk_create_new(&mut writer, &batch).await;
        (writer, o)
    });
    let query = wait_for_backend(&admin, pid, "%", true).await;
    assert!(query.contains("INSERT INTO"), "stopped in the insert: {query}");

    // Another session: a lock wait would fail after 10 s instead of hanging.
    let other = db.connect().await;
    other.batch_execute("SET lock_timeout = '10s'").await.unwrap();
    assert_eq!(count(&other, "contended").await, 0, "a plain SELECT proceeds (and sees nothing yet)");
    other
        .execute("INSERT INTO contended (a, b, payload) VALUES (6, 1000000, 'plain')", &[])
        .await
        .expect("an ordinary single-row INSERT proceeds");
    let modes: BTreeSet<String> = admin
        .query(
            "SELECT mode FROM pg_locks WHERE pid = $1 AND locktype = 'relation' AND relation = 'contended'::regclass",
            &[&pid],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(modes.contains("RowExclusiveLock"), "{modes:?}");
    assert!(modes.iter().all(|m| m == "RowExclusiveLock" || m == "AccessShareLock"), "no table lock: {modes:?}");

    admin.query_one("SELECT pg_advisory_unlock($1)", &[&lock]).await.unwrap();
    let (_, outcome) = call.await.unwrap();
    let o = outcome.unwrap();
    assert_eq!((o.offered, o.inserted, o.skipped), (len as u64, len as u64, 0));
    assert_eq!(count(&admin, "contended").await, len as i64 + 1);
    db.drop().await;
}
