//! A model-based property test: random sequences of bulk calls (random keys
//! with repeats, sizes from 0 to past the COPY threshold, several
//! connections, inside and outside callers' transactions, and pairs of calls
//! running at the same time) against the real table, with every reported
//! count and the whole table compared after each step with an in-memory model.
//!
//! `PROPTEST_CASES` sets the number of cases (default 24). A failure prints
//! the shrunk sequence of steps and stores its seed in
//! `tests/tests/model_based.proptest-regressions` (commit it), which later
//! runs replay first.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bulk_runtime::__test_hooks::SMALL_BATCH;
use bulk_runtime::BulkCreateNew;
use bulk_tests::TestDb;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use tokio_postgres::Client;

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "modeled", unique(k))]
struct Modeled {
    k: i64,
    payload: String,
    n: Option<i32>,
}

/// Connections the steps choose from.
const CONNECTIONS: usize = 3;

/// How a call runs.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// On the client: the call's own transaction.
    Own,
    /// In a caller's transaction that commits.
    Commit,
    /// In a caller's transaction that rolls back: nothing stays.
    Rollback,
}

#[derive(Debug, Clone)]
enum Step {
    /// A short batch: keys from a small range, so they repeat.
    Short { conn: usize, keys: Vec<u8>, mode: Mode },
    /// A batch around the COPY threshold (`SMALL_BATCH - 3 + extra` rows),
    /// keys drawn by `seed` from a range that covers the short keys.
    Long { conn: usize, extra: u16, seed: u64, mode: Mode },
    /// Two short batches on two connections at the same time.
    Pair { keys: [Vec<u8>; 2] },
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![4 => Just(Mode::Own), 1 => Just(Mode::Commit), 1 => Just(Mode::Rollback)]
}

fn step() -> impl Strategy<Value = Step> {
    let keys = || proptest::collection::vec(0u8..60, 0..40);
    prop_oneof![
        6 => (0..CONNECTIONS, keys(), mode()).prop_map(|(conn, keys, mode)| Step::Short { conn, keys, mode }),
        1 => (0..CONNECTIONS, 0u16..200, any::<u64>(), mode())
            .prop_map(|(conn, extra, seed, mode)| Step::Long { conn, extra, seed, mode }),
        2 => (keys(), keys()).prop_map(|(a, b)| Step::Pair { keys: [a, b] }),
    ]
}

/// The rows of a batch: `tag` and the position in the payload, so the stored
/// row says which offer won.
fn batch(tag: &str, keys: impl IntoIterator<Item = i64>) -> Vec<Modeled> {
    keys.into_iter()
        .enumerate()
        .map(|(i, k)| Modeled { k, payload: format!("{tag} #{i}"), n: (k % 3 != 0).then_some(i as i32) })
        .collect()
}

fn long_keys(extra: u16, seed: u64) -> Vec<i64> {
    let mut rng = bulk_tests::Rng::new(seed);
    let len = SMALL_BATCH - 3 + extra as usize;
    (0..len).map(|_| rng.below(8_000) as i64).collect()
}

/// The model: what the table holds.
type Table = BTreeMap<i64, Modeled>;

/// What a call on `model` inserts: the first offered row of each key not
/// stored yet.
fn expected(model: &Table, rows: &[Modeled]) -> Table {
    let mut new = Table::new();
    for r in rows {
        if !model.contains_key(&r.k) {
            new.entry(r.k).or_insert_with(|| r.clone());
        }
    }
    new
}

async fn stored(client: &Client) -> Table {
    client
        .query("SELECT k, payload, n FROM modeled", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let m = Modeled { k: r.get(0), payload: r.get(1), n: r.get(2) };
            (m.k, m)
        })
        .collect()
}

async fn call(client: &mut Client, rows: &[Modeled], mode: Mode) -> bulk_runtime::Report {
    match mode {
        Mode::Own => Modeled::bulk_create_new(client, rows).await.unwrap(),
        Mode::Commit | Mode::Rollback => {
            let mut tx = client.transaction().await.unwrap();
            let o = Modeled::bulk_create_new(&mut tx, rows).await.unwrap();
            if matches!(mode, Mode::Commit) {
                tx.commit().await.unwrap()
            } else {
                tx.rollback().await.unwrap()
            }
            o
        }
    }
}

fn check(cond: bool, what: String) -> Result<(), TestCaseError> {
    if cond { Ok(()) } else { Err(TestCaseError::fail(what)) }
}

async fn run_case(clients: &mut [Client], steps: Vec<Step>) -> Result<(), TestCaseError> {
    clients[0].batch_execute("TRUNCATE modeled").await.unwrap();
    let mut model = Table::new();
    for (s, step) in steps.into_iter().enumerate() {
        match step {
            Step::Short { conn, keys, mode } => {
                let rows = batch(&format!("s{s}"), keys.iter().map(|&k| i64::from(k)));
                single(&mut clients[conn], &mut model, &rows, mode, s).await?;
            }
            Step::Long { conn, extra, seed, mode } => {
                let rows = batch(&format!("s{s}"), long_keys(extra, seed));
                single(&mut clients[conn], &mut model, &rows, mode, s).await?;
            }
            Step::Pair { keys } => {
                let [a, b] = keys.map(|keys| keys.into_iter().map(i64::from).collect::<Vec<_>>());
                let (rows_a, rows_b) = (batch(&format!("s{s}a"), a), batch(&format!("s{s}b"), b));
                let (first, rest) = clients.split_at_mut(1);
                let (oa, ob) = tokio::join!(
                    Modeled::bulk_create_new(&mut first[0], &rows_a),
                    Modeled::bulk_create_new(&mut rest[0], &rows_b)
                );
                let (oa, ob) = (oa.unwrap(), ob.unwrap());
                let new_a = expected(&model, &rows_a);
                let new_b = expected(&model, &rows_b);
                let mut union = new_a.clone();
                union.extend(new_b.clone());
                check(
                    oa.offered == rows_a.len() as u64 && ob.offered == rows_b.len() as u64,
                    format!("step {s}: offered"),
                )?;
                check(
                    oa.inserted + ob.inserted == union.len() as u64,
                    format!("step {s}: {} + {} inserted, {} new keys", oa.inserted, ob.inserted, union.len()),
                )?;
                let table = stored(&clients[0]).await;
                let mut won = [0u64; 2];
                for k in union.keys() {
                    let Some(row) = table.get(k) else {
                        return Err(TestCaseError::fail(format!("step {s}: key {k} missing")));
                    };
                    let from_a = new_a.get(k) == Some(row);
                    let from_b = new_b.get(k) == Some(row);
                    check(from_a || from_b, format!("step {s}: key {k} holds {row:?}, the first offer of neither"))?;
                    won[usize::from(!from_a)] += 1;
                    model.insert(*k, row.clone());
                }
                check(won == [oa.inserted, ob.inserted], format!("step {s}: won {won:?}, reported {oa:?} {ob:?}"))?;
                check(table == model, format!("step {s}: table differs from the model"))?;
            }
        }
    }
    Ok(())
}

async fn single(
    client: &mut Client,
    model: &mut Table,
    rows: &[Modeled],
    mode: Mode,
    s: usize,
) -> Result<(), TestCaseError> {
    let new = expected(model, rows);
    let o = call(client, rows, mode).await;
    check(
        (o.offered, o.inserted, o.skipped) == (rows.len() as u64, new.len() as u64, (rows.len() - new.len()) as u64),
        format!("step {s} ({mode:?}, {} rows): reported {o:?}, expected {} inserted", rows.len(), new.len()),
    )?;
    if !matches!(mode, Mode::Rollback) {
        model.extend(new);
    }
    let table = stored(client).await;
    check(table.len() == model.len(), format!("step {s}: {} rows stored, model has {}", table.len(), model.len()))?;
    check(table == *model, format!("step {s}: table differs from the model"))
}

#[test]
fn random_batch_sequences_match_the_model() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (db, clients) = rt.block_on(async {
        let db = TestDb::new("model_based").await;
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            clients.push(db.connect().await);
        }
        clients[0].batch_execute(&Modeled::model().migration_sql()).await.unwrap();
        (db, clients)
    });
    let clients = Mutex::new(clients);
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
    let config = Config {
        cases,
        max_shrink_iters: 256,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&proptest::collection::vec(step(), 1..8), |steps| {
        let mut clients = clients.lock().unwrap();
        rt.block_on(run_case(&mut clients, steps))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(db.drop());
}
