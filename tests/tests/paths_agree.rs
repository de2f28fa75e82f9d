//! The same input gives the same result on every path and every
//! builder form. A differential harness runs one batch `B` against one
//! pre-stored set `S` at batch sizes that cross each threshold of the
//! runtime (the first call's `VALUES` up to 48 rows, the `ON CONFLICT`
//! forms under 128, the arrays up to 4,999, COPY from 5,000), on a new
//! connection (its first call), a warm one, and inside a caller's
//! transaction, with each builder form, and compares every outcome with a
//! reference computed here in Rust: the stored rows, the counts, the
//! returned keys and positions, the errors.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use bulk_runtime::tokio_postgres::Client;
use bulk_runtime::{BulkCreateNew, Connection, Keep, Ledger, Progress, Upsert};
use bulk_tests::TestDb;

/// Sizes that cross every threshold: the first call's `VALUES` (48), the
/// plain form (128), the COPY path (5,000).
const SIZES: [usize; 12] = [1, 2, 47, 48, 49, 50, 127, 128, 129, 4999, 5000, 5001];

/// (row that repeats, row whose key it repeats): the repeat straddles a
/// boundary (0 and the last row, 127/128, 4,999/5,000, 47/48).
fn repeat_pairs(n: usize) -> Vec<(usize, usize)> {
    [(n.saturating_sub(1), 0), (128, 127), (5000, 4999), (48, 47), (49, 0), (4998, 128)]
        .into_iter()
        .filter(|&(dst, src)| dst < n && dst > src)
        .collect()
}

/// Which positions' keys are stored before the call (with another value,
/// or with the offered value when `i % 20 == 3`).
fn stored_position(i: usize) -> bool {
    i % 10 == 3 || i == 1 || i == 4999 || i == 127
}

// ---------------------------------------------------------------------------
// The models and their reference semantics.

/// A model the differential harness drives: its canonical key (equality as
/// the table has it), its stored row as text, and how to store it by hand.
trait Probe: BulkCreateNew + Clone + Debug + Send + Sync + 'static {
    /// The key as the table compares it.
    type Canon: Ord + Clone + Debug;
    fn canon(&self) -> Self::Canon;
    /// The key as `returning_keys` gives it back, formatted.
    fn key_debug(&self) -> String;
    /// The row as the table stores it, each column `::text` (see [`Probe::SELECT`]).
    fn text(&self) -> Vec<Option<String>>;
    /// `SELECT` of [`Probe::text`]'s columns, ordered by the key.
    const SELECT: &'static str;
    /// The table's DDL (made by hand where the model's DDL would not do).
    const DDL: &'static str;
    const TABLE: &'static str;
    /// The row offered at position `i` whose key is key number `key`.
    fn make(key: usize, i: usize, variant: usize) -> Self;
    /// The update column of the upsert probes.
    const SET: &'static str;
    /// Whether the upsert's set column of `stored` and `offered` compare equal.
    fn same_set(stored: &Self, offered: &Self) -> bool;
    /// `stored` with the set column of `offered`.
    fn updated(stored: &Self, offered: &Self) -> Self;
}

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "pa_int", unique(k))]
struct IntRow {
    k: i64,
    v: String,
    n: i32,
}

impl Probe for IntRow {
    type Canon = i64;
    fn canon(&self) -> i64 {
        self.k
    }
    fn key_debug(&self) -> String {
        format!("{:?}", (self.k,))
    }
    fn text(&self) -> Vec<Option<String>> {
        vec![Some(self.k.to_string()), Some(self.v.clone()), Some(self.n.to_string())]
    }
    const SELECT: &'static str = "SELECT k::text, v::text, n::text FROM pa_int ORDER BY pa_int.k";
    const DDL: &'static str = "CREATE TABLE pa_int (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
                               k bigint NOT NULL UNIQUE, v text NOT NULL, n integer NOT NULL)";
    const TABLE: &'static str = "pa_int";
    fn make(key: usize, i: usize, variant: usize) -> Self {
        // Scrambled key order: the client orders them.
        IntRow { k: ((key as i64) * 7919) % 10007 - 5000, v: format!("r{i}v{variant}"), n: i as i32 }
    }
    const SET: &'static str = "v";
    fn same_set(stored: &Self, offered: &Self) -> bool {
        stored.v == offered.v
    }
    fn updated(stored: &Self, offered: &Self) -> Self {
        IntRow { v: offered.v.clone(), ..stored.clone() }
    }
}

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "pa_text", unique(k), id = false)]
struct TextRow {
    k: String,
    v: String,
}

impl Probe for TextRow {
    type Canon = String;
    fn canon(&self) -> String {
        self.k.to_lowercase()
    }
    fn key_debug(&self) -> String {
        format!("{:?}", (self.k.clone(),))
    }
    fn text(&self) -> Vec<Option<String>> {
        vec![Some(self.k.clone()), Some(self.v.clone())]
    }
    const SELECT: &'static str = "SELECT k::text, v::text FROM pa_text ORDER BY lower(pa_text.k)";
    const DDL: &'static str = "CREATE COLLATION pa_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false); \
                               CREATE TABLE pa_text (k text COLLATE pa_ci NOT NULL UNIQUE, v text NOT NULL)";
    const TABLE: &'static str = "pa_text";
    fn make(key: usize, i: usize, variant: usize) -> Self {
        // A case variant per variant number: equal under the key's collation.
        let base = format!("key{:05}x", (key * 7919) % 10007);
        let k = match variant % 3 {
            0 => base,
            1 => base.to_uppercase(),
            _ => base[..1].to_uppercase() + &base[1..],
        };
        TextRow { k, v: format!("r{i}v{variant}") }
    }
    const SET: &'static str = "v";
    fn same_set(stored: &Self, offered: &Self) -> bool {
        stored.v == offered.v
    }
    fn updated(stored: &Self, offered: &Self) -> Self {
        TextRow { v: offered.v.clone(), ..stored.clone() }
    }
}

/// The batch of `n` rows and the stored set, for a model.
fn inputs<T: Probe>(n: usize) -> (Vec<T>, Vec<T>) {
    let mut key: Vec<usize> = (0..n).collect();
    let mut variant = vec![0usize; n];
    for (dst, src) in repeat_pairs(n) {
        key[dst] = key[src];
        variant[dst] = variant[src] + 1;
    }
    let batch: Vec<T> = (0..n).map(|i| T::make(key[i], i, variant[i])).collect();
    let mut stored = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for i in (0..n).filter(|&i| stored_position(i)) {
        if !seen.insert(key[i]) {
            continue;
        }
        // Stored in another case variant (text), with the offered value
        // for every other stored key.
        let same = i % 20 == 3;
        let v = if same { variant[i] } else { variant[i] + 2 };
        let mut row = T::make(key[i], i, v);
        if same {
            row = T::make(key[i], i, variant[i]);
            // Another key spelling, same value: only the key's case differs.
            let other = T::make(key[i], i, variant[i] + 1);
            row = T::updated(&other, &row);
        }
        stored.push(row);
    }
    (batch, stored)
}

// ---------------------------------------------------------------------------
// What a run gives, and what the reference says.

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    counts: (u64, u64, u64, u64, u64),
    keys: Option<Vec<(usize, String)>>,
    skipped: Option<Vec<usize>>,
    rows: Vec<Vec<Option<String>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Plain,
    Keys,
    Skipped,
    Upsert(Keep, bool),
    Stream,
    BatchId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    /// A new connection (its first call, without the check when eligible).
    Fresh,
    /// A connection that already made calls.
    Warm,
    /// Inside a caller's transaction on the warm connection.
    Tx,
}

/// The reference outcome of `op` on `batch` over `stored`.
fn reference<T: Probe>(op: Op, batch: &[T], stored: &[T]) -> Outcome {
    let mut table: BTreeMap<T::Canon, T> = stored.iter().map(|r| (r.canon(), r.clone())).collect();
    let n = batch.len() as u64;
    match op {
        Op::Upsert(keep, only_if_changed) => {
            let mut kept: BTreeMap<T::Canon, usize> = BTreeMap::new();
            let mut order = Vec::new();
            for (i, r) in batch.iter().enumerate() {
                match kept.get_mut(&r.canon()) {
                    None => {
                        kept.insert(r.canon(), i);
                        order.push(r.canon());
                    }
                    Some(at) => {
                        if keep == Keep::Last {
                            *at = i;
                        }
                    }
                }
            }
            let (mut ins, mut upd, mut unch) = (0, 0, 0);
            for c in order {
                let row = &batch[kept[&c]];
                match table.get(&c).cloned() {
                    None => {
                        ins += 1;
                        table.insert(c, row.clone());
                    }
                    Some(old) => {
                        if only_if_changed && T::same_set(&old, row) {
                            unch += 1;
                        } else {
                            upd += 1;
                            table.insert(c, T::updated(&old, row));
                        }
                    }
                }
            }
            let skipped = n - ins - upd - unch;
            Outcome {
                counts: (n, ins, upd, unch, skipped),
                keys: None,
                skipped: None,
                rows: table.values().map(T::text).collect(),
            }
        }
        _ => {
            let mut keys = Vec::new();
            let mut skipped = Vec::new();
            for (i, r) in batch.iter().enumerate() {
                if let std::collections::btree_map::Entry::Vacant(slot) = table.entry(r.canon()) {
                    slot.insert(r.clone());
                    keys.push((i, r.key_debug()));
                } else {
                    skipped.push(i);
                }
            }
            let ins = keys.len() as u64;
            Outcome {
                counts: (n, ins, 0, 0, n - ins),
                keys: (op == Op::Keys).then_some(keys),
                skipped: (op == Op::Skipped).then_some(skipped),
                rows: table.values().map(T::text).collect(),
            }
        }
    }
}

fn counts<R>(r: &bulk_runtime::Report<R>) -> (u64, u64, u64, u64, u64) {
    (r.offered, r.inserted, r.updated, r.unchanged, r.skipped)
}

/// Runs `op` on `conn`; the outcome without the stored rows, or the error.
async fn call<T: Probe, C: Connection + ?Sized>(
    conn: &mut C,
    op: Op,
    batch: &[T],
    tag: &str,
) -> Result<Outcome, bulk_runtime::Error>
where
    T::Key: Debug,
{
    let mut out = Outcome { counts: (0, 0, 0, 0, 0), keys: None, skipped: None, rows: Vec::new() };
    match op {
        Op::Plain => out.counts = counts(&T::bulk_create_new(conn, batch).await?),
        Op::Keys => {
            let r = T::bulk(conn).returning_keys().run(batch).await?;
            out.counts = counts(&r);
            out.keys = Some(r.returned.iter().map(|k| (k.index, format!("{:?}", k.key))).collect());
        }
        Op::Skipped => {
            let r = T::bulk(conn).returning_skipped().run(batch).await?;
            out.counts = counts(&r);
            out.skipped = Some(r.returned.clone());
        }
        Op::Upsert(keep, only) => {
            let mut u = Upsert::columns([T::SET]).keep(keep);
            if only {
                u = u.only_if_changed();
            }
            out.counts = counts(&T::bulk(conn).upsert(u).run(batch).await?);
        }
        Op::Stream => {
            let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
            let sink = seen.clone();
            let r = T::bulk(conn)
                .on_progress(move |p| sink.lock().unwrap().push(p))
                .run_stream(futures_util::stream::iter(batch.iter()))
                .await?;
            out.counts = counts(&r);
            let seen = seen.lock().unwrap().clone();
            let last = seen.last().unwrap_or_else(|| panic!("{tag}: no progress report"));
            assert_eq!(
                (last.sent, last.inserted, last.updated, last.finished),
                (r.offered, r.inserted, r.updated, true),
                "{tag}: the last progress report: {seen:?}"
            );
            assert_eq!(seen.iter().filter(|p| p.finished).count(), 1, "{tag}: one final report: {seen:?}");
            assert!(seen.windows(2).all(|w| w[0].sent <= w[1].sent), "{tag}: progress goes forward: {seen:?}");
        }
        Op::BatchId => {
            let id = format!("batch {tag}");
            let first = T::bulk(conn).batch_id(id.clone()).run(batch).await?;
            let again = T::bulk(conn).batch_id(id).run(batch).await?;
            assert!(!first.replayed && again.replayed, "{tag}: {first:?} then {again:?}");
            assert_eq!(counts(&first), counts(&again), "{tag}: the replay reports the first counts");
            out.counts = counts(&first);
        }
    }
    Ok(out)
}

async fn stored_rows<T: Probe>(client: &Client) -> Vec<Vec<Option<String>>> {
    client.query(T::SELECT, &[]).await.unwrap().iter().map(|r| (0..r.len()).map(|i| r.get(i)).collect()).collect()
}

/// Empties the table and stores `stored` by hand (not through the library).
async fn reset<T: Probe>(admin: &Client, stored: &[T]) {
    admin.batch_execute(&format!("TRUNCATE {} RESTART IDENTITY; TRUNCATE bulk_batches", T::TABLE)).await.unwrap();
    // Stored through a warm bulk call of its own connection is what the
    // library would do; by hand keeps the stored set independent of it.
    let cols: Vec<String> = T::SELECT
        .trim_start_matches("SELECT ")
        .split(" FROM ")
        .next()
        .unwrap()
        .split(", ")
        .map(|c| c.trim_end_matches("::text").to_owned())
        .collect();
    if stored.is_empty() {
        return;
    }
    let rows: Vec<String> = stored
        .iter()
        .map(|row| {
            let values: Vec<String> = row
                .text()
                .into_iter()
                .map(|v| v.map_or_else(|| "NULL".to_owned(), |v| format!("'{}'", v.replace('\'', "''"))))
                .collect();
            format!("({})", values.join(", "))
        })
        .collect();
    admin
        .batch_execute(&format!("INSERT INTO {} ({}) VALUES {}", T::TABLE, cols.join(", "), rows.join(", ")))
        .await
        .unwrap();
}

/// Every size, operation and connection for model `T`: each outcome is the
/// reference's. Returns the mismatches (a test asserts there are none).
async fn differential<T: Probe>(db: &TestDb, ops: &[Op]) -> Vec<String>
where
    T::Key: Debug,
{
    let admin = db.connect().await;
    admin.batch_execute(T::DDL).await.unwrap();
    admin.batch_execute(&Ledger::of::<T>().migration_sql()).await.unwrap();
    let mut warm = db.connect().await;
    // The process checks the model once (so new connections may skip it).
    // (One row of a key the batches do not store: see `RefusedRow`.)
    let (probe, _) = inputs::<T>(3);
    T::bulk_create_new(&mut warm, &probe[..1]).await.unwrap();
    let mut wrong = Vec::new();
    for n in SIZES {
        let (batch, stored) = inputs::<T>(n);
        for &op in ops {
            let want = reference(op, &batch, &stored);
            for on in [On::Fresh, On::Warm, On::Tx] {
                let tag = format!("{}_{n}_{op:?}_{on:?}", T::TABLE);
                reset(&admin, &stored).await;
                let got = match on {
                    On::Fresh => {
                        let mut fresh = db.connect().await;
                        call::<T, _>(&mut fresh, op, &batch, &tag).await
                    }
                    On::Warm => call::<T, _>(&mut warm, op, &batch, &tag).await,
                    On::Tx => {
                        let mut tx = warm.transaction().await.unwrap();
                        let got = call::<T, _>(&mut tx, op, &batch, &tag).await;
                        tx.commit().await.unwrap();
                        got
                    }
                };
                let mut rows = stored_rows::<T>(&admin).await;
                rows.sort();
                let mut want = want.clone();
                want.rows.sort();
                match got {
                    Err(e) => wrong.push(format!("{tag}: error {e} (sqlstate {:?})", e.sqlstate())),
                    Ok(mut got) => {
                        got.rows = rows;
                        if got != want {
                            let diff = |a: &Outcome, b: &Outcome| {
                                format!(
                                    "counts {:?} want {:?}; keys equal {}; skipped equal {}; rows equal {}",
                                    a.counts,
                                    b.counts,
                                    a.keys == b.keys,
                                    a.skipped == b.skipped,
                                    a.rows == b.rows
                                )
                            };
                            let first_row_diff = got
                                .rows
                                .iter()
                                .zip(&want.rows)
                                .find(|(a, b)| a != b)
                                .map(|(a, b)| format!("{a:?} want {b:?}"));
                            let first_key_diff = got
                                .keys
                                .iter()
                                .flatten()
                                .zip(want.keys.iter().flatten())
                                .find(|(a, b)| a != b)
                                .map(|(a, b)| format!("{a:?} want {b:?}"));
                            wrong.push(format!(
                                "{tag}: {} (rows {} want {}; first row diff {first_row_diff:?}; first key diff {first_key_diff:?})",
                                diff(&got, &want),
                                got.rows.len(),
                                want.rows.len()
                            ));
                        }
                    }
                }
            }
        }
    }
    wrong
}

const ALL_OPS: [Op; 9] = [
    Op::Plain,
    Op::Keys,
    Op::Skipped,
    Op::Upsert(Keep::First, true),
    Op::Upsert(Keep::Last, true),
    Op::Upsert(Keep::First, false),
    Op::Upsert(Keep::Last, false),
    Op::Stream,
    Op::BatchId,
];

/// An integer key (ordered and deduplicated on the client, first-call
/// eligible): every builder form at every size, on a new connection, a warm
/// one and in a transaction, agrees with the reference.
#[tokio::test]
async fn integer_key_every_form_every_size_agrees() {
    let db = TestDb::new("pa_int").await;
    let wrong = differential::<IntRow>(&db, &ALL_OPS).await;
    assert!(wrong.is_empty(), "{} mismatches:\n{}", wrong.len(), wrong.join("\n"));
    db.drop().await;
}

/// A text key under a case-insensitive (nondeterministic) collation: case
/// variants are one key, the first offered row (its spelling) wins.
#[tokio::test]
async fn case_insensitive_text_key_every_form_every_size_agrees() {
    let db = TestDb::new("pa_text").await;
    let wrong = differential::<TextRow>(&db, &ALL_OPS).await;
    assert!(wrong.is_empty(), "{} mismatches:\n{}", wrong.len(), wrong.join("\n"));
    db.drop().await;
}

/// A table that refuses some offered rows, all of them rows of keys already
/// stored (first offered or repeats): a value longer than its `varchar(5)`
/// column takes (22001), one its `CHECK` refuses (23514), a number beyond
/// its `numeric(5, 2)` (22003), one its `BEFORE INSERT` trigger raises for
/// (P0001).
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "pa_refuse", unique(k), id = false)]
struct RefusedRow {
    k: i64,
    v: String,
    #[bulk(sql_type = "varchar(5)")]
    w: String,
    #[bulk(sql_type = "numeric(5, 2)")]
    amount: rust_decimal::Decimal,
}

impl Probe for RefusedRow {
    type Canon = i64;
    fn canon(&self) -> i64 {
        self.k
    }
    fn key_debug(&self) -> String {
        format!("{:?}", (self.k,))
    }
    fn text(&self) -> Vec<Option<String>> {
        vec![Some(self.k.to_string()), Some(self.v.clone()), Some(self.w.clone()), Some(self.amount.to_string())]
    }
    const SELECT: &'static str = "SELECT k::text, v::text, w::text, amount::text FROM pa_refuse ORDER BY pa_refuse.k";
    const DDL: &'static str = "CREATE TABLE pa_refuse (k bigint PRIMARY KEY, v text NOT NULL, \
                               w varchar(5) NOT NULL CHECK (w <> 'bad'), amount numeric(5, 2) NOT NULL); \
                               CREATE FUNCTION pa_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
                               BEGIN IF NEW.w = 'boom' THEN RAISE EXCEPTION 'boom at key %', NEW.k; END IF; \
                               RETURN NEW; END $$; \
                               CREATE TRIGGER pa_refuse BEFORE INSERT ON pa_refuse \
                               FOR EACH ROW EXECUTE FUNCTION pa_refuse()";
    const TABLE: &'static str = "pa_refuse";
    fn make(key: usize, i: usize, variant: usize) -> Self {
        let k = ((key as i64) * 7919) % 10007 - 5000;
        let mut row = RefusedRow {
            k,
            v: format!("r{i}v{variant}"),
            w: format!("w{variant}"),
            amount: rust_decimal::Decimal::new((i % 999) as i64 * 100 + 25, 2),
        };
        // The offered rows (variants 0 and 1: the stored rows are 2 and
        // up) at the positions whose keys are stored, but those stored with
        // the offered value (`inputs`), are refused by the table.
        if stored_position(i) && variant < 2 && i % 20 != 3 {
            match i % 4 {
                0 => row.w = "toolong".into(),
                1 => row.w = "bad".into(),
                2 => row.amount = rust_decimal::Decimal::new(100_000, 2),
                _ => row.w = "boom".into(),
            }
        }
        row
    }
    const SET: &'static str = "v";
    fn same_set(stored: &Self, offered: &Self) -> bool {
        stored.v == offered.v
    }
    fn updated(stored: &Self, offered: &Self) -> Self {
        RefusedRow { v: offered.v.clone(), ..stored.clone() }
    }
}

/// Rows the table would refuse, of keys already stored (see [`RefusedRow`]):
/// every builder form at every size, on a new connection (its first call),
/// a warm one and in a caller's transaction, skips them as the reference
/// does, without the table seeing them, and stores the rest. (The `ON
/// CONFLICT` form alone lets such a row reach the table: the short path
/// then runs its form behind the anti-join.) The upsert is the exception:
/// its update of stored keys is PostgreSQL's `ON CONFLICT DO UPDATE`, which
/// forms and checks each offered row first, so it fails on every path and
/// size, with the table's error, nothing written.
#[tokio::test]
async fn rows_the_table_would_refuse_of_stored_keys_are_skipped_by_every_form() {
    let db = TestDb::new("pa_refuse").await;
    let ops = [Op::Plain, Op::Keys, Op::Skipped, Op::Stream, Op::BatchId];
    let mut wrong = differential::<RefusedRow>(&db, &ops).await;
    let admin = db.connect().await;
    let mut warm = db.connect().await;
    for n in SIZES.into_iter().filter(|&n| n > 2) {
        let (batch, stored) = inputs::<RefusedRow>(n);
        reset(&admin, &stored).await;
        let before = stored_rows::<RefusedRow>(&admin).await;
        for keep in [Keep::First, Keep::Last] {
            match call::<RefusedRow, _>(&mut warm, Op::Upsert(keep, false), &batch, "upsert").await {
                Ok(o) => wrong.push(format!("upsert {n} {keep:?}: no error, {:?}", o.counts)),
                Err(e) if !["22001", "22003", "23514", "P0001"].contains(&e.sqlstate().map_or("", |s| s.code())) => {
                    wrong.push(format!("upsert {n} {keep:?}: {e}"))
                }
                Err(_) => {}
            }
            if stored_rows::<RefusedRow>(&admin).await != before {
                wrong.push(format!("upsert {n} {keep:?}: the table changed"));
            }
        }
        // In a caller's `REPEATABLE READ` transaction too (where the plain
        // form's guard always refuses, and the `ON CONFLICT` forms decide).
        for op in [Op::Plain, Op::Keys] {
            reset(&admin, &stored).await;
            let want = reference(op, &batch, &stored);
            let tx =
                warm.build_transaction().isolation_level(bulk_runtime::tokio_postgres::IsolationLevel::RepeatableRead);
            let mut tx = tx.start().await.unwrap();
            let got = call::<RefusedRow, _>(&mut tx, op, &batch, "rr").await;
            tx.commit().await.unwrap();
            match got {
                Ok(got) if got.counts == want.counts => {}
                got => wrong.push(format!("{n} {op:?} in REPEATABLE READ: {got:?}, want {:?}", want.counts)),
            }
            let mut rows = stored_rows::<RefusedRow>(&admin).await;
            let mut want_rows = want.rows;
            rows.sort();
            want_rows.sort();
            if rows != want_rows {
                wrong.push(format!(
                    "{n} {op:?} in REPEATABLE READ: {} rows stored, want {}",
                    rows.len(),
                    want_rows.len()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{} mismatches:\n{}", wrong.len(), wrong.join("\n"));
    db.drop().await;
}

/// The same table's refusal of a new key's row fails every form and path
/// alike, nothing written, the row named: the form behind the anti-join
/// meets the row again.
#[tokio::test]
async fn a_new_keys_row_the_table_refuses_fails_every_form() {
    let db = TestDb::new("pa_refuse_new").await;
    let admin = db.connect().await;
    admin.batch_execute(RefusedRow::DDL).await.unwrap();
    admin.batch_execute(&Ledger::of::<RefusedRow>().migration_sql()).await.unwrap();
    let mut warm = db.connect().await;
    let mut wrong = Vec::new();
    for n in [1usize, 10, 48, 49, 127, 128, 300, 5001] {
        for (code, bad) in [("22001", "toolong"), ("23514", "bad"), ("22003", ""), ("P0001", "boom")] {
            let (mut batch, stored) = inputs::<RefusedRow>(n);
            // The refused value on a new key's row (position 2, or 0 of a
            // single row, is not stored, nor repeats a stored key).
            let at = if n > 2 { 2 } else { 0 };
            if bad.is_empty() {
                batch[at].amount = rust_decimal::Decimal::new(100_000, 2);
            } else {
                batch[at].w = bad.into();
            }
            for op in [Op::Plain, Op::Keys, Op::Upsert(Keep::First, false), Op::BatchId] {
                for on in [On::Fresh, On::Warm, On::Tx] {
                    let tag = format!("{n}_{code}_{op:?}_{on:?}");
                    reset(&admin, &stored).await;
                    let got = match on {
                        On::Fresh => call::<RefusedRow, _>(&mut db.connect().await, op, &batch, &tag).await,
                        On::Warm => call::<RefusedRow, _>(&mut warm, op, &batch, &tag).await,
                        On::Tx => {
                            let mut tx = warm.transaction().await.unwrap();
                            let got = call::<RefusedRow, _>(&mut tx, op, &batch, &tag).await;
                            tx.query_one("SELECT 1", &[]).await.expect("the caller's transaction stays usable");
                            tx.commit().await.unwrap();
                            got
                        }
                    };
                    let mut rows = stored_rows::<RefusedRow>(&admin).await;
                    rows.sort();
                    let mut want: Vec<_> = stored.iter().map(Probe::text).collect();
                    want.sort();
                    match got {
                        Ok(o) => wrong.push(format!("{tag}: no error, {:?}", o.counts)),
                        Err(e) => {
                            if e.sqlstate().map(|s| s.code()) != Some(code) {
                                wrong.push(format!("{tag}: {e} (sqlstate {:?})", e.sqlstate()));
                            }
                            // The row is named where the call can find it (a
                            // type modifier's refusal); never another row.
                            let named = code.starts_with("22");
                            if e.row().is_none_or(|r| r != at) && (named || e.row().is_some()) {
                                wrong.push(format!("{tag}: names row {:?}, the refused one is {at}: {e}", e.row()));
                            }
                        }
                    }
                    if rows != want {
                        wrong.push(format!("{tag}: {} rows stored, {} before the call", rows.len(), want.len()));
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{} mismatches:\n{}", wrong.len(), wrong.join("\n"));
    db.drop().await;
}

// ---------------------------------------------------------------------------
// Tables with triggers, generated columns, defaults, CHECK constraints.

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "pa_trig", unique(k), id = false)]
struct TrigRow {
    k: i64,
    v: String,
}

/// Batch sizes of each form: first call `VALUES`, `ON CONFLICT` arrays, the
/// plain arrays form, COPY.
const FORM_SIZES: [usize; 4] = [10, 100, 300, 5001];

/// What triggers wrote beside the target: the inbox's and the audit's rows,
/// and the most rows of one key in the inbox.
const SIDE: &str = "SELECT concat_ws(' ', (SELECT count(*) FROM pa_inbox), \
                    (SELECT coalesce(max(c), 0) FROM (SELECT count(*) AS c FROM pa_inbox GROUP BY k) AS x), \
                    (SELECT count(*) FROM pa_audit))";

/// Every builder form, each on a fresh table, on its own new connection.
async fn each_form<T: Probe>(
    db: &TestDb,
    setup: &str,
    batch: &[T],
    stored: &str,
) -> Vec<(Op, Result<Outcome, bulk_runtime::Error>, Vec<Vec<Option<String>>>, String)>
where
    T::Key: Debug,
{
    let admin = db.connect().await;
    let mut out = Vec::new();
    for op in [Op::Plain, Op::Keys, Op::Skipped, Op::Upsert(Keep::First, true), Op::Upsert(Keep::Last, false)] {
        admin.batch_execute(&format!("DROP TABLE IF EXISTS {} CASCADE; {setup}", T::TABLE)).await.unwrap();
        admin.batch_execute(stored).await.unwrap();
        let mut fresh = db.connect().await;
        let got = call::<T, _>(&mut fresh, op, batch, "form").await;
        let mut rows = stored_rows::<T>(&admin).await;
        rows.sort();
        // What the table's triggers wrote elsewhere, as `SIDE` reads it.
        let side: String = match admin.query_one(SIDE, &[]).await {
            Ok(row) => row.get(0),
            Err(_) => String::new(),
        };
        out.push((op, got, rows, side));
    }
    out
}

impl Probe for TrigRow {
    type Canon = i64;
    fn canon(&self) -> i64 {
        self.k
    }
    fn key_debug(&self) -> String {
        format!("{:?}", (self.k,))
    }
    fn text(&self) -> Vec<Option<String>> {
        vec![Some(self.k.to_string()), Some(self.v.clone())]
    }
    const SELECT: &'static str = "SELECT k::text, v::text FROM pa_trig ORDER BY pa_trig.k";
    const DDL: &'static str = "";
    const TABLE: &'static str = "pa_trig";
    fn make(key: usize, i: usize, _variant: usize) -> Self {
        TrigRow { k: key as i64, v: format!("r{i}") }
    }
    const SET: &'static str = "v";
    fn same_set(stored: &Self, offered: &Self) -> bool {
        stored.v == offered.v
    }
    fn updated(stored: &Self, offered: &Self) -> Self {
        TrigRow { v: offered.v.clone(), ..stored.clone() }
    }
}

/// A `BEFORE INSERT` trigger that leaves the key alone, normalizes a
/// non-key column (`upper(v)`) and drops some rows (`RETURN NULL` for a
/// negative key), as a filtering, normalizing trigger does.
const NORMALIZING_TRIGGER: &str = "
    CREATE TABLE pa_trig (k bigint PRIMARY KEY, v text NOT NULL);
    CREATE OR REPLACE FUNCTION pa_norm() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.k < 0 THEN RETURN NULL; END IF;
        NEW.v := upper(NEW.v);
        RETURN NEW;
    END $$;
    CREATE TRIGGER pa_norm BEFORE INSERT ON pa_trig FOR EACH ROW EXECUTE FUNCTION pa_norm();";

// A trigger that normalizes a non-key column *and* drops rows, where a
// dropped row's offered values equal another row's values as stored: batch
// [(1, "r1"), (-1, "R1")] stores (1, "R1"). That is exactly what a trigger
// that rewrote key -1 into 1 would leave (row -1 stored under key 1, row 1
// then skipped by `ON CONFLICT`), so `returning_keys`, `returning_skipped`
// and `upsert`, which must map each stored row to its offered row, cannot
// tell and refuse with `SchemaProblem::KeyChangedOnInsert`, nothing written
// (README, "Keys a trigger changes"). The plain call counts exactly.
#[tokio::test]
async fn a_trigger_that_normalizes_and_drops_rows_lookalike_is_refused_by_the_mapping_forms() {
    let db = TestDb::new("pa_trig_norm").await;
    let mut failures = Vec::new();
    for n in FORM_SIZES {
        // Keys 0..n (row i has key i), with a dropped row (-i) after every
        // tenth row holding what the trigger makes of row i's value.
        let mut batch = Vec::new();
        for i in 0..n as i64 {
            if i % 10 == 5 {
                batch.push(TrigRow { k: -i, v: format!("R{}", i - 1) });
            } else {
                batch.push(TrigRow { k: i, v: format!("r{i}") });
            }
        }
        let expected: Vec<Vec<Option<String>>> = {
            let mut rows: Vec<Vec<Option<String>>> = batch
                .iter()
                .filter(|r| r.k >= 0)
                .map(|r| vec![Some(r.k.to_string()), Some(r.v.to_uppercase())])
                .collect();
            rows.sort();
            rows
        };
        let inserted = expected.len() as u64;
        for (op, got, rows, _) in each_form::<TrigRow>(&db, NORMALIZING_TRIGGER, &batch, "SELECT 1").await {
            match (op, got) {
                (Op::Plain, Err(e)) => failures.push(format!("n = {n}, {op:?}: {e}")),
                (Op::Plain, Ok(got)) => {
                    let (_, ins, upd, _, skipped) = got.counts;
                    if (ins, upd, skipped) != (inserted, 0, n as u64 - inserted) || rows != expected {
                        failures.push(format!("n = {n}, {op:?}: counts {:?}, {} rows", got.counts, rows.len()));
                    }
                }
                (_, Ok(got)) => failures.push(format!("n = {n}, {op:?}: not refused: {:?}", got.counts)),
                (_, Err(e)) => {
                    let key_changed = matches!(&e, bulk_runtime::Error::SchemaMismatch { problems, .. }
                        if problems.iter().any(|p| matches!(p, bulk_runtime::SchemaProblem::KeyChangedOnInsert { .. })));
                    if !key_changed || !rows.is_empty() {
                        failures.push(format!("n = {n}, {op:?}: {e}, {} rows written", rows.len()));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    db.drop().await;
}

/// Control for the test above: the same normalizing trigger without a
/// dropped row that looks like a normalized one: every form agrees.
#[tokio::test]
async fn a_trigger_that_normalizes_and_drops_unlike_rows_gives_the_same_result_in_every_form() {
    let db = TestDb::new("pa_trig_ctrl").await;
    for n in FORM_SIZES {
        let batch: Vec<TrigRow> = (0..n as i64)
            .map(|i| {
                if i % 10 == 5 {
                    TrigRow { k: -i, v: format!("dropped {i}") }
                } else {
                    TrigRow { k: i, v: format!("r{i}") }
                }
            })
            .collect();
        let mut expected: Vec<Vec<Option<String>>> =
            batch.iter().filter(|r| r.k >= 0).map(|r| vec![Some(r.k.to_string()), Some(r.v.to_uppercase())]).collect();
        expected.sort();
        let inserted = expected.len() as u64;
        for (op, got, rows, _) in each_form::<TrigRow>(&db, NORMALIZING_TRIGGER, &batch, "SELECT 1").await {
            let got = got.unwrap_or_else(|e| panic!("n = {n}, {op:?}: {e}"));
            assert_eq!(got.counts.1, inserted, "n = {n}, {op:?}: {:?}", got.counts);
            assert_eq!(rows, expected, "n = {n}, {op:?}");
            if op == Op::Keys {
                let keys: Vec<usize> = got.keys.unwrap().iter().map(|k| k.0).collect();
                let want: Vec<usize> = (0..n).filter(|i| i % 10 != 5).collect();
                assert_eq!(keys, want, "n = {n}: positions of the inserted rows, ascending");
            }
            if op == Op::Skipped {
                let want: Vec<usize> = (0..n).filter(|i| i % 10 == 5).collect();
                assert_eq!(got.skipped.unwrap(), want, "n = {n}: the dropped rows are skipped");
            }
        }
    }
    db.drop().await;
}

/// A `BEFORE INSERT` trigger that sends each row to another table
/// (`RETURN NULL`): what it receives, per form.
const REDIRECT_TRIGGER: &str = "
    DROP TABLE IF EXISTS pa_inbox, pa_audit;
    CREATE TABLE pa_trig (k bigint PRIMARY KEY, v text NOT NULL);
    CREATE TABLE pa_inbox (k bigint NOT NULL, v text NOT NULL);
    CREATE TABLE pa_audit (k bigint);
    CREATE OR REPLACE FUNCTION pa_redirect() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO pa_inbox VALUES (NEW.k, NEW.v);
        RETURN NULL;
    END $$;
    CREATE TRIGGER pa_redirect BEFORE INSERT ON pa_trig FOR EACH ROW EXECUTE FUNCTION pa_redirect();";

// A `BEFORE INSERT` trigger that sends each row to another table and
// drops it gets each kept row once from the plain call, `returning_keys` and
// `returning_skipped`. From an upsert it gets each such row twice (README,
// "Rows a trigger suppresses"): its second statement, `ON CONFLICT DO
// UPDATE`, takes every key the first did not insert, and cannot tell a key
// whose row the trigger dropped from one stored under a row-level security
// policy that hides it (which must reach `ON CONFLICT DO UPDATE`, and fail).
#[tokio::test]
async fn a_redirecting_trigger_receives_each_row_once_but_twice_from_an_upsert() {
    let db = TestDb::new("pa_trig_redirect").await;
    let mut failures = Vec::new();
    for n in FORM_SIZES {
        let batch: Vec<TrigRow> =
            (0..n as i64).map(|i| TrigRow { k: i % (n as i64 - 1).max(1), v: format!("r{i}") }).collect();
        let distinct = if n > 1 { n - 1 } else { 1 };
        for (op, got, rows, side) in each_form::<TrigRow>(&db, REDIRECT_TRIGGER, &batch, "SELECT 1").await {
            let side: Vec<i64> = side.split(' ').map(|n| n.parse().unwrap()).collect();
            let (inbox, most) = (side[0], side[1]);
            match got {
                Err(e) => failures.push(format!("n = {n}, {op:?}: {e}")),
                Ok(got) => {
                    let times = if matches!(op, Op::Upsert(..)) { 2 } else { 1 };
                    if !rows.is_empty() || got.counts.1 != 0 || inbox != times * distinct as i64 || most != times {
                        failures.push(format!(
                            "n = {n}, {op:?}: counts {:?}, stored {}, inbox {inbox} rows ({distinct} keys), at most {most} per key",
                            got.counts,
                            rows.len()
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    db.drop().await;
}

/// A `CHECK` constraint that refuses one new row (key 77, or the last key
/// of a COPY batch): every form and path fails with 23514 naming no wrong
/// row, and writes nothing, on a fresh connection and a warm one.
#[tokio::test]
async fn a_check_constraint_refusing_a_new_row_fails_alike_everywhere() {
    let db = TestDb::new("pa_check").await;
    let setup = "CREATE TABLE pa_trig (k bigint PRIMARY KEY, v text NOT NULL CHECK (v <> 'bad'));
                 DROP TABLE IF EXISTS pa_audit, pa_inbox; CREATE TABLE pa_audit (k bigint);
                 CREATE TABLE pa_inbox (k bigint NOT NULL, v text NOT NULL);
                 CREATE OR REPLACE FUNCTION pa_audit() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN INSERT INTO pa_audit VALUES (NEW.k); RETURN NULL; END $$;
                 CREATE TRIGGER pa_audit AFTER INSERT ON pa_trig FOR EACH ROW EXECUTE FUNCTION pa_audit();";
    let mut seen = Vec::new();
    for n in [1usize, 10, 48, 49, 127, 128, 300, 4999, 5000, 5001] {
        let bad = n / 2;
        let batch: Vec<TrigRow> = (0..n as i64)
            .map(|i| TrigRow { k: i, v: if i as usize == bad { "bad".into() } else { format!("r{i}") } })
            .collect();
        for (op, got, rows, side) in each_form::<TrigRow>(&db, setup, &batch, "SELECT 1").await {
            let audit: i64 = side.split(' ').nth(2).unwrap().parse().unwrap();
            let e = match got {
                Ok(o) => panic!("n = {n}, {op:?}: no error, {:?}", o.counts),
                Err(e) => e,
            };
            assert!(rows.is_empty() && audit == 0, "n = {n}, {op:?}: {} rows, {audit} audit rows written", rows.len());
            assert_eq!(
                e.sqlstate(),
                Some(&bulk_runtime::tokio_postgres::error::SqlState::CHECK_VIOLATION),
                "n = {n}, {op:?}: {e}"
            );
            assert!(e.row().is_none_or(|r| r == bad), "n = {n}, {op:?}: names row {:?}, the bad one is {bad}", e.row());
            seen.push((n, op, e.row(), e.field().map(str::to_owned), e.is_retryable(), e.connection_usable()));
        }
    }
    // The same error on every path: the same row, field, retryability.
    let first = (seen[0].2, seen[0].3.clone(), seen[0].4, seen[0].5);
    let differ: Vec<_> = seen.iter().filter(|s| (s.2, s.3.clone(), s.4, s.5) != first).collect();
    assert!(differ.is_empty(), "errors differ from {first:?}: {differ:?}");
    db.drop().await;
}

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "pa_trig", unique(k), id = false)]
struct FloatRow {
    k: f64,
    v: String,
}

impl Probe for FloatRow {
    type Canon = u64;
    fn canon(&self) -> u64 {
        if self.k == 0.0 {
            0
        } else if self.k.is_nan() {
            u64::MAX
        } else {
            self.k.to_bits()
        }
    }
    fn key_debug(&self) -> String {
        format!("{:?}", (self.k,))
    }
    fn text(&self) -> Vec<Option<String>> {
        vec![Some(format!("{}", self.k)), Some(self.v.clone())]
    }
    const SELECT: &'static str = "SELECT k::text, v::text FROM pa_trig";
    const DDL: &'static str = "";
    const TABLE: &'static str = "pa_trig";
    fn make(key: usize, i: usize, _variant: usize) -> Self {
        FloatRow { k: key as f64, v: format!("r{i}") }
    }
    const SET: &'static str = "v";
    fn same_set(stored: &Self, offered: &Self) -> bool {
        stored.v == offered.v
    }
    fn updated(stored: &Self, offered: &Self) -> Self {
        FloatRow { v: offered.v.clone(), ..stored.clone() }
    }
}

/// A `double precision` key: `0.0` and `-0.0` are one key, and so are NaNs
/// of other bit patterns; repeats straddle 0/last, 127/128, 4,999/5,000,
/// one NaN is stored. Every form at every size keeps the first offered row
/// (its spelling, `-0` or `0`) and counts alike.
#[tokio::test]
async fn float_key_zero_signs_and_nans_agree_in_every_form() {
    let db = TestDb::new("pa_float").await;
    let nan2 = f64::from_bits(0x7ff8_0000_0000_0001);
    let setup = "CREATE TABLE pa_trig (k double precision PRIMARY KEY, v text NOT NULL)";
    for n in [10usize, 100, 129, 300, 4999, 5001] {
        let mut batch: Vec<FloatRow> = (0..n).map(|i| FloatRow { k: i as f64 + 0.5, v: format!("r{i}") }).collect();
        batch[0].k = -0.0;
        batch[n - 1].k = 0.0;
        batch[1].k = nan2;
        if n > 128 {
            batch[127].k = 0.0;
            batch[128].k = -0.0;
        }
        if n > 5000 {
            batch[4999].k = f64::NAN;
            batch[5000].k = -0.0;
        }
        batch[5].k = f64::NAN;
        let stored = "INSERT INTO pa_trig VALUES ('NaN', 'stored nan'), (3.5, 'stored')";
        let stored_rows = [FloatRow { k: f64::NAN, v: "stored nan".into() }, FloatRow { k: 3.5, v: "stored".into() }];
        for (op, got, rows, _) in each_form::<FloatRow>(&db, setup, &batch, stored).await {
            let mut want = reference(op, &batch, &stored_rows);
            want.rows.sort();
            let got = got.unwrap_or_else(|e| panic!("n = {n}, {op:?}: {e}"));
            assert_eq!(got.counts, want.counts, "n = {n}, {op:?}");
            assert_eq!(rows, want.rows, "n = {n}, {op:?}: stored rows");
            if op == Op::Keys {
                assert_eq!(got.keys, want.keys, "n = {n}: returned keys");
            }
            if op == Op::Skipped {
                assert_eq!(got.skipped, want.skipped, "n = {n}: skipped positions");
            }
        }
    }
    db.drop().await;
}
