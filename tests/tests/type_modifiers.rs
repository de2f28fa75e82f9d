//! Type modifiers (`varchar(n)`, `char(n)`, `numeric(p, s)`,
//! `timestamp(p)`, `varchar(n)[]`) of non-key columns, and of key columns
//! where other tests do not cover them, on the three paths (the short
//! path's `ON CONFLICT` form under 128 rows, its plain form from 128 rows,
//! COPY from `COPY_BATCH` rows) and the builder forms.
//!
//! What the README promises: a value the column's type modifier refuses
//! fails the call with the server's SQLSTATE (22001, 22003) and the same
//! report on every path: the first offered row whose value the column's
//! modifier refuses, and its field (PostgreSQL's message names the type
//! only; the call finds the row); nothing of the batch is written; the
//! connection takes the next batch; counts are exact; stored values are
//! the offered values as an `INSERT` would store them.
//!
//! Each test works in a schema of its own (`TestDb`) and drops it at the end.

use bulk_runtime::{BulkCreateNew, Error, Keep, Ledger, Step, Upsert};
use bulk_tests::{PADS, TestDb, count, path};
use chrono::{NaiveDate, NaiveDateTime};
use rust_decimal::Decimal;
use std::str::FromStr;

/// What a failed call reported: SQLSTATE, step, row, field.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    code: Option<String>,
    step: Option<Step>,
    row: Option<usize>,
    field: Option<String>,
}

fn failure<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) -> (Failure, Error) {
    let e = match r {
        Ok(ok) => panic!("{what}: expected an error, got {ok:?}"),
        Err(e) => e,
    };
    println!("{what}: {e}  [row {:?}, field {:?}, step {:?}]", e.row(), e.field(), e.step());
    assert!(e.connection_usable(), "{what}: {e}");
    let f = Failure {
        code: e.sqlstate().map(|s| s.code().to_owned()),
        step: e.step(),
        row: e.row(),
        field: e.field().map(str::to_owned),
    };
    (f, e)
}

// ---------------------------------------------------------------------------
// Models

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "vc_note", unique(k), id = false)]
struct VcNote {
    k: i64,
    #[bulk(sql_type = "varchar(5)")]
    note: String,
}

fn vc(k: i64, note: &str) -> VcNote {
    VcNote { k, note: note.into() }
}

/// The same, with a text key (repeats found on the server, not the client).
#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "vc_tnote", unique(k), id = false)]
struct VcTextNote {
    k: String,
    #[bulk(sql_type = "varchar(5)")]
    note: String,
}

fn vct(k: &str, note: &str) -> VcTextNote {
    VcTextNote { k: k.into(), note: note.into() }
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "ch_note", unique(k), id = false)]
struct ChNote {
    k: i64,
    #[bulk(sql_type = "char(5)")]
    note: String,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "num_note", unique(k), id = false)]
struct NumNote {
    k: i64,
    #[bulk(sql_type = "numeric(5, 2)")]
    amount: Decimal,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "ts_note", unique(k), id = false)]
struct TsNote {
    k: i64,
    #[bulk(sql_type = "timestamp(0)")]
    at: NaiveDateTime,
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "arr_note", unique(k), id = false)]
struct ArrNote {
    k: i64,
    #[bulk(sql_type = "varchar(5)[]")]
    tags: Vec<String>,
}

/// A `varchar(10)` key narrowed to `varchar(3)` after the check.
#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "vc_key", unique(code), id = false)]
struct VcKey {
    #[bulk(sql_type = "varchar(10)")]
    code: String,
    who: String,
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

// ---------------------------------------------------------------------------
// varchar(5) non-key column given a too-long value: every path, every kind
// of call, the first offered bad row (index 3) has a larger key than a
// later bad row (index 7), so a server inserting in key order meets row 7
// first.

fn vc_batch(pad: usize) -> Vec<VcNote> {
    let mut rows: Vec<VcNote> = (0..10).map(|i| vc(100 + i, "ok")).collect();
    rows[3] = vc(500, "toolong");
    rows[7] = vc(1, "longer!");
    rows.extend((0..pad as i64).map(|i| vc(1_000_000 + i, "pad")));
    rows
}

async fn varchar_note_too_long(pad: usize) -> Vec<(&'static str, Failure)> {
    let db = TestDb::new(&format!("tm_vc_{pad}")).await;
    let admin = db.connect().await;
    admin.batch_execute(&VcNote::model().migration_sql()).await.unwrap();
    admin.batch_execute(&Ledger::of::<VcNote>().migration_sql()).await.unwrap();
    let mut w = db.connect().await;
    // Warm: the connection has checked the table.
    VcNote::bulk_create_new(&mut w, [vc(-1, "warm")]).await.unwrap();
    let batch = vc_batch(pad);
    let p = path(pad);
    let mut got = Vec::new();
    let (f, _) = failure(&format!("{p} plain"), VcNote::bulk_create_new(&mut w, &batch).await);
    got.push(("plain", f));
    let (f, _) = failure(&format!("{p} keys"), VcNote::bulk(&mut w).returning_keys().run(&batch).await);
    got.push(("returning_keys", f));
    let (f, _) = failure(&format!("{p} skipped"), VcNote::bulk(&mut w).returning_skipped().run(&batch).await);
    got.push(("returning_skipped", f));
    let (f, _) = failure(&format!("{p} upsert"), VcNote::bulk(&mut w).upsert(Upsert::all_columns()).run(&batch).await);
    got.push(("upsert", f));
    let (f, _) = failure(&format!("{p} batch_id"), VcNote::bulk(&mut w).batch_id("b1").run(&batch).await);
    got.push(("batch_id", f));
    // In a caller's transaction.
    let tx = w.transaction().await.unwrap();
    let mut tx = tx;
    let (f, _) = failure(&format!("{p} in tx"), VcNote::bulk_create_new(&mut tx, &batch).await);
    got.push(("in_transaction", f));
    tx.commit().await.unwrap();
    assert_eq!(count(&admin, "vc_note").await, 1, "{p}: nothing of the refused batches");
    let ledger: i64 = admin.query_one("SELECT count(*) FROM bulk_batches", &[]).await.unwrap().get(0);
    assert_eq!(ledger, 0, "{p}: no ledger row for a failed call");
    // The connection takes the next batch.
    let fixed: Vec<VcNote> = batch.iter().map(|r| vc(r.k, if r.note.len() > 5 { "fixed" } else { &r.note })).collect();
    let o = VcNote::bulk(&mut w).batch_id("b1").run(&fixed).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (fixed.len() as u64, 0), "{p}");
    db.drop().await;
    got
}

/// What README promises for every path: 22001, nothing written, the same
/// report on every path and every kind of call, naming the first offered
/// bad row (3, not 7, which the server meets first in key order).
fn vc_expect_same(got: &[(&'static str, Failure)], p: &str) {
    for (kind, f) in got {
        assert_eq!(f.code.as_deref(), Some("22001"), "{p} {kind}: {f:?}");
        assert_eq!((f.row, f.field.as_deref()), (Some(3), Some("note")), "{p} {kind}: {f:?}");
    }
}

#[tokio::test]
async fn varchar_note_too_long_is_refused_on_every_path_alike() {
    let mut all = Vec::new();
    for pad in PADS {
        let got = varchar_note_too_long(pad).await;
        vc_expect_same(&got, path(pad));
        all.push((path(pad), got));
    }
    for (p, got) in &all {
        println!("{p}: {got:?}");
    }
    // The plain call reports the same row and field on every path.
    let plain: Vec<(&str, Option<usize>, Option<String>)> =
        all.iter().map(|(p, got)| (*p, got[0].1.row, got[0].1.field.clone())).collect();
    let first = &plain[0];
    for other in &plain[1..] {
        assert_eq!((first.1, &first.2), (other.1, &other.2), "row/field differ between paths: {plain:?}");
    }
}

// ---------------------------------------------------------------------------
// numeric(5, 2) non-key column: out of range (22003) and rounding.

async fn numeric_note(pad: usize) -> (Vec<(&'static str, Failure)>, Vec<(i64, String)>, Vec<(i64, String)>) {
    let db = TestDb::new(&format!("tm_num_{pad}")).await;
    let admin = db.connect().await;
    admin.batch_execute(&NumNote::model().migration_sql()).await.unwrap();
    admin
        .batch_execute("CREATE TABLE num_control (k bigint PRIMARY KEY, amount numeric(5, 2) NOT NULL)")
        .await
        .unwrap();
    let mut w = db.connect().await;
    NumNote::bulk_create_new(&mut w, [NumNote { k: -1, amount: dec("1") }]).await.unwrap();
    let p = path(pad);
    let pad_rows = || (0..pad as i64).map(|i| NumNote { k: 1_000_000 + i, amount: dec("0.5") });
    // Out of range: 1000.00 needs precision 6; 999.995 rounds to 1000.00.
    let mut bad: Vec<NumNote> = (0..10).map(|i| NumNote { k: 100 + i, amount: dec("1.5") }).collect();
    bad[3] = NumNote { k: 500, amount: dec("1000") };
    bad[7] = NumNote { k: 1, amount: dec("999.995") };
    bad.extend(pad_rows());
    let mut got = Vec::new();
    let (f, _) = failure(&format!("{p} plain"), NumNote::bulk_create_new(&mut w, &bad).await);
    got.push(("plain", f));
    let (f, _) = failure(&format!("{p} keys"), NumNote::bulk(&mut w).returning_keys().run(&bad).await);
    got.push(("returning_keys", f));
    let (f, _) = failure(&format!("{p} upsert"), NumNote::bulk(&mut w).upsert(Upsert::all_columns()).run(&bad).await);
    got.push(("upsert", f));
    assert_eq!(count(&admin, "num_note").await, 1, "{p}");
    // Rounding: stored as an INSERT stores them.
    let offered = ["1.234", "1.235", "-1.235", "999.994", "0.005", "-0.004", "12.3456789012345678901234"];
    let mut good: Vec<NumNote> =
        offered.iter().enumerate().map(|(i, a)| NumNote { k: 10 + i as i64, amount: dec(a) }).collect();
    good.extend(pad_rows());
    let o = NumNote::bulk(&mut w).returning_keys().run(&good).await.unwrap();
    assert_eq!((o.inserted, o.skipped, o.returned.len()), (good.len() as u64, 0, good.len()), "{p}");
    for r in &good[..offered.len()] {
        admin.execute("INSERT INTO num_control VALUES ($1, $2)", &[&r.k, &r.amount]).await.unwrap();
    }
    let read = |t: &'static str| {
        let admin = &admin;
        async move {
            admin
                .query(&format!("SELECT k, amount::text FROM {t} WHERE k BETWEEN 10 AND 99 ORDER BY k"), &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect::<Vec<(i64, String)>>()
        }
    };
    let (stored, control) = (read("num_note").await, read("num_control").await);
    // Upsert only_if_changed with the same values: unchanged (compared as stored).
    let up = NumNote::bulk(&mut w).upsert(Upsert::all_columns().only_if_changed()).run(&good).await.unwrap();
    assert_eq!((up.inserted, up.updated, up.unchanged), (0, 0, good.len() as u64), "{p}: {up:?}");
    db.drop().await;
    (got, stored, control)
}

#[tokio::test]
async fn numeric_note_out_of_range_and_rounding() {
    let mut rows = Vec::new();
    for pad in PADS {
        let (got, stored, control) = numeric_note(pad).await;
        for (kind, f) in &got {
            assert_eq!(f.code.as_deref(), Some("22003"), "{} {kind}: {f:?}", path(pad));
            // (Row 3 holds 1000; row 7's 999.995, which rounds out of
            // range too, comes later.)
            assert_eq!((f.row, f.field.as_deref()), (Some(3), Some("amount")), "{} {kind}: {f:?}", path(pad));
        }
        assert_eq!(stored, control, "{}: stored as an INSERT stores them", path(pad));
        rows.push((path(pad), got[0].1.row, got[0].1.field.clone()));
    }
    println!("numeric row/field: {rows:?}");
    assert!(rows.iter().all(|r| (r.1, &r.2) == (rows[0].1, &rows[0].2)), "paths differ: {rows:?}");
}

// ---------------------------------------------------------------------------
// char(5) non-key column: padding, trailing spaces cut, too long refused.

#[tokio::test]
async fn char_note_padding_cut_and_too_long() {
    for pad in PADS {
        let p = path(pad);
        let db = TestDb::new(&format!("tm_ch_{pad}")).await;
        let admin = db.connect().await;
        admin.batch_execute(&ChNote::model().migration_sql()).await.unwrap();
        admin.batch_execute("CREATE TABLE ch_control (k bigint PRIMARY KEY, note char(5) NOT NULL)").await.unwrap();
        let mut w = db.connect().await;
        ChNote::bulk_create_new(&mut w, [ChNote { k: -1, note: "w".into() }]).await.unwrap();
        let pad_rows = || (0..pad as i64).map(|i| ChNote { k: 1_000_000 + i, note: "p".into() });
        let offered = ["ab", "abcde", "abcde     ", "", " a ", "ab   "];
        let mut good: Vec<ChNote> =
            offered.iter().enumerate().map(|(i, n)| ChNote { k: 10 + i as i64, note: (*n).into() }).collect();
        good.extend(pad_rows());
        let o = ChNote::bulk(&mut w).returning_keys().run(&good).await.unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!((o.inserted, o.returned.len()), (good.len() as u64, good.len()), "{p}");
        for r in &good[..offered.len()] {
            admin.execute("INSERT INTO ch_control VALUES ($1, $2)", &[&r.k, &r.note]).await.unwrap();
        }
        let q = "SELECT k, note::text, octet_length(note) FROM {} WHERE k BETWEEN 10 AND 99 ORDER BY k";
        let (q1, q2) = (q.replace("{}", "ch_note"), q.replace("{}", "ch_control"));
        let stored: Vec<(i64, String, i32)> =
            admin.query(&q1, &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        let control: Vec<(i64, String, i32)> =
            admin.query(&q2, &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        assert_eq!(stored, control, "{p}");
        let up = ChNote::bulk(&mut w).upsert(Upsert::all_columns().only_if_changed()).run(&good).await.unwrap();
        assert_eq!((up.updated, up.unchanged), (0, good.len() as u64), "{p}: {up:?}");
        let mut bad: Vec<ChNote> = (0..5).map(|i| ChNote { k: 200 + i, note: "x".into() }).collect();
        bad[2].note = "abcdef".into();
        bad.extend((0..pad as i64).map(|i| ChNote { k: 2_000_000 + i, note: "p".into() }));
        let before = count(&admin, "ch_note").await;
        let (f, _) = failure(&format!("{p} char"), ChNote::bulk_create_new(&mut w, &bad).await);
        assert_eq!(f.code.as_deref(), Some("22001"), "{p}");
        assert_eq!((f.row, f.field.as_deref()), (Some(2), Some("note")), "{p}");
        assert_eq!(count(&admin, "ch_note").await, before, "{p}");
        db.drop().await;
    }
}

// ---------------------------------------------------------------------------
// timestamp(0) non-key column: rounded as an INSERT rounds; returning_keys
// and upsert only_if_changed see the stored form.

#[tokio::test]
async fn timestamp0_note_rounds_like_an_insert() {
    for pad in PADS {
        let p = path(pad);
        let db = TestDb::new(&format!("tm_ts_{pad}")).await;
        let admin = db.connect().await;
        admin.batch_execute(&TsNote::model().migration_sql()).await.unwrap();
        admin.batch_execute("CREATE TABLE ts_control (k bigint PRIMARY KEY, at timestamp(0) NOT NULL)").await.unwrap();
        let mut w = db.connect().await;
        let day = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
        let at = |h, m, s, us| day.and_hms_micro_opt(h, m, s, us).unwrap();
        TsNote::bulk_create_new(&mut w, [TsNote { k: -1, at: at(0, 0, 0, 0) }]).await.unwrap();
        let offered =
            [at(12, 0, 0, 499_999), at(12, 0, 0, 500_000), at(23, 59, 59, 500_000), at(0, 0, 0, 1), at(1, 2, 3, 0)];
        let mut good: Vec<TsNote> =
            offered.iter().enumerate().map(|(i, &a)| TsNote { k: 10 + i as i64, at: a }).collect();
        good.extend((0..pad as i64).map(|i| TsNote { k: 1_000_000 + i, at: at(3, 3, 3, 3) }));
        let o = TsNote::bulk(&mut w).returning_keys().run(&good).await.unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!((o.inserted, o.returned.len()), (good.len() as u64, good.len()), "{p}");
        for r in &good[..offered.len()] {
            admin.execute("INSERT INTO ts_control VALUES ($1, $2)", &[&r.k, &r.at]).await.unwrap();
        }
        let q = "SELECT k, at::text FROM {} WHERE k BETWEEN 10 AND 99 ORDER BY k";
        let stored: Vec<(i64, String)> =
            admin.query(&q.replace("{}", "ts_note"), &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
        let control: Vec<(i64, String)> = admin
            .query(&q.replace("{}", "ts_control"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(stored, control, "{p}");
        let up = TsNote::bulk(&mut w).upsert(Upsert::all_columns().only_if_changed()).run(&good).await.unwrap();
        assert_eq!((up.updated, up.unchanged), (0, good.len() as u64), "{p}: {up:?}");
        // returning_skipped on the same batch: all skipped, exact.
        let s = TsNote::bulk(&mut w).returning_skipped().run(&good).await.unwrap();
        assert_eq!((s.inserted, s.skipped, s.returned.len()), (0, good.len() as u64, good.len()), "{p}");
        db.drop().await;
    }
}

// ---------------------------------------------------------------------------
// varchar(5)[] non-key column.

#[tokio::test]
async fn varchar_array_note() {
    for pad in PADS {
        let p = path(pad);
        let db = TestDb::new(&format!("tm_arr_{pad}")).await;
        let admin = db.connect().await;
        admin.batch_execute(&ArrNote::model().migration_sql()).await.unwrap();
        let mut w = db.connect().await;
        ArrNote::bulk_create_new(&mut w, [ArrNote { k: -1, tags: vec![] }]).await.unwrap();
        let pad_rows = |from: i64| (0..pad as i64).map(move |i| ArrNote { k: from + i, tags: vec!["p".into()] });
        let tags = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
        let mut good = vec![
            ArrNote { k: 10, tags: tags(&["a", "abcde"]) },
            ArrNote { k: 11, tags: tags(&["abcde   "]) },
            ArrNote { k: 12, tags: vec![] },
        ];
        good.extend(pad_rows(1_000_000));
        let o = ArrNote::bulk(&mut w).returning_keys().run(&good).await.unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!((o.inserted, o.returned.len()), (good.len() as u64, good.len()), "{p}");
        let stored: Vec<(i64, Vec<String>)> = admin
            .query("SELECT k, tags::text[] FROM arr_note WHERE k BETWEEN 10 AND 99 ORDER BY k", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(
            stored,
            vec![(10, tags(&["a", "abcde"])), (11, tags(&["abcde"])), (12, vec![])],
            "{p}: as an INSERT stores them"
        );
        let mut bad: Vec<ArrNote> = (0..5).map(|i| ArrNote { k: 200 + i, tags: tags(&["x"]) }).collect();
        bad[2].tags = tags(&["ok", "abcdef"]);
        bad.extend(pad_rows(2_000_000));
        let before = count(&admin, "arr_note").await;
        let (f, _) = failure(&format!("{p} array"), ArrNote::bulk_create_new(&mut w, &bad).await);
        assert_eq!(f.code.as_deref(), Some("22001"), "{p}");
        assert_eq!((f.row, f.field.as_deref()), (Some(2), Some("tags")), "{p}");
        let (f, _) =
            failure(&format!("{p} array upsert"), ArrNote::bulk(&mut w).upsert(Upsert::all_columns()).run(&bad).await);
        assert_eq!(f.code.as_deref(), Some("22001"), "{p}");
        assert_eq!((f.row, f.field.as_deref()), (Some(2), Some("tags")), "{p}");
        assert_eq!(count(&admin, "arr_note").await, before, "{p}");
        db.drop().await;
    }
}

// ---------------------------------------------------------------------------
// A non-key typmod narrowed after the connection checked the table.

#[tokio::test]
async fn non_key_typmod_narrowed_between_calls() {
    for pad in PADS {
        let p = path(pad);
        let db = TestDb::new(&format!("tm_narrow_{pad}")).await;
        let admin = db.connect().await;
        admin.batch_execute(&VcNote::model().migration_sql()).await.unwrap();
        admin.batch_execute(&NumNote::model().migration_sql()).await.unwrap();
        let mut w = db.connect().await;
        let pad_vc = |from: i64| (0..pad as i64).map(move |i| vc(from + i, "p"));
        let first: Vec<VcNote> = [vc(1, "abcde")].into_iter().chain(pad_vc(1_000_000)).collect();
        VcNote::bulk_create_new(&mut w, &first).await.unwrap();
        VcNote::bulk(&mut w).returning_keys().run(&first).await.unwrap();
        NumNote::bulk_create_new(&mut w, [NumNote { k: 1, amount: dec("1") }]).await.unwrap();
        admin
            .batch_execute(
                "DELETE FROM vc_note WHERE k <> 1; ALTER TABLE vc_note ALTER note TYPE varchar(3) USING left(note, 3)",
            )
            .await
            .unwrap();
        admin.batch_execute("ALTER TABLE num_note ALTER amount TYPE numeric(3, 1)").await.unwrap();
        let bad: Vec<VcNote> = [vc(2, "ok"), vc(3, "abcd")].into_iter().chain(pad_vc(2_000_000)).collect();
        for (kind, r) in [
            ("plain", VcNote::bulk_create_new(&mut w, &bad).await.map(|r| r.inserted)),
            ("keys", VcNote::bulk(&mut w).returning_keys().run(&bad).await.map(|r| r.inserted)),
            ("upsert", VcNote::bulk(&mut w).upsert(Upsert::all_columns()).run(&bad).await.map(|r| r.inserted)),
        ] {
            let (f, _) = failure(&format!("{p} narrowed {kind}"), r);
            assert_eq!(f.code.as_deref(), Some("22001"), "{p} {kind}");
            assert_eq!((f.row, f.field.as_deref()), (Some(1), Some("note")), "{p} {kind}: as the table is now");
        }
        assert_eq!(count(&admin, "vc_note").await, 1, "{p}");
        let ok: Vec<VcNote> = [vc(2, "ok"), vc(3, "abc   ")].into_iter().chain(pad_vc(2_000_000)).collect();
        let o = VcNote::bulk_create_new(&mut w, &ok).await.unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(o.inserted, ok.len() as u64, "{p}");
        let n3: String = admin.query_one("SELECT note::text FROM vc_note WHERE k = 3", &[]).await.unwrap().get(0);
        assert_eq!(n3, "abc", "{p}");
        // numeric(3, 1) now: 100 is out of range.
        let bad: Vec<NumNote> = [NumNote { k: 2, amount: dec("100") }]
            .into_iter()
            .chain((0..pad as i64).map(|i| NumNote { k: 1_000_000 + i, amount: dec("1") }))
            .collect();
        let (f, _) = failure(&format!("{p} narrowed numeric"), NumNote::bulk_create_new(&mut w, &bad).await);
        assert_eq!(f.code.as_deref(), Some("22003"), "{p}");
        assert_eq!((f.row, f.field.as_deref()), (Some(0), Some("amount")), "{p}");
        assert_eq!(count(&admin, "num_note").await, 1, "{p}");
        db.drop().await;
    }
}

// ---------------------------------------------------------------------------
// A varchar(10) key narrowed to varchar(3) after the connection checked the
// table (widening is tested in key_equality.rs; narrowing only on Citus).

#[tokio::test]
async fn varchar_key_narrowed_between_calls_keeps_the_first_offered_row() {
    for pad in PADS {
        let p = path(pad);
        let db = TestDb::new(&format!("tm_knarrow_{pad}")).await;
        let admin = db.connect().await;
        admin.batch_execute(&VcKey::model().migration_sql()).await.unwrap();
        let mut w = db.connect().await;
        let pads =
            |from: usize| (0..pad).map(move |i| VcKey { code: format!("{:03}", (from + i) % 1000), who: "pad".into() });
        let row = |c: &str, who: &str| VcKey { code: c.into(), who: who.into() };
        // Check and prepare every kind of call at varchar(10).
        let warm: Vec<VcKey> = [row("w", "w")].into_iter().collect();
        VcKey::bulk_create_new(&mut w, &warm).await.unwrap();
        VcKey::bulk(&mut w).returning_keys().run(&warm).await.unwrap();
        VcKey::bulk(&mut w).upsert(Upsert::all_columns()).run(&warm).await.unwrap();
        let warm_long: Vec<VcKey> = pads(0).collect();
        if pad > 0 {
            VcKey::bulk_create_new(&mut w, &warm_long).await.unwrap();
            VcKey::bulk(&mut w).returning_keys().run(&warm_long).await.unwrap();
            admin.batch_execute("DELETE FROM vc_key WHERE who = 'pad'").await.unwrap();
        }
        admin.batch_execute("ALTER TABLE vc_key ALTER code TYPE varchar(3)").await.unwrap();
        // Pads are 3-digit codes (`000`..`999`): with pad > 1000 they repeat.
        let batch: Vec<VcKey> = [row("abc ", "first"), row("abc", "second")].into_iter().chain(pads(0)).collect();
        let distinct_pads = pad.min(1000) as u64;
        let mut got = Vec::new();
        let plain = VcKey::bulk_create_new(&mut w, &batch).await;
        got.push(("plain", plain.map(|r| (r.inserted, r.skipped)).map_err(|e| e.to_string())));
        let who: Option<String> =
            admin.query_opt("SELECT who FROM vc_key WHERE code = 'abc'", &[]).await.unwrap().map(|r| r.get(0));
        got.push(("plain who", Ok((u64::from(who.as_deref() == Some("first")), 0))));
        admin.batch_execute("DELETE FROM vc_key WHERE code <> 'w'").await.unwrap();
        let keys = VcKey::bulk(&mut w).returning_keys().run(&batch).await;
        got.push(("keys", keys.map(|r| (r.inserted, r.skipped)).map_err(|e| e.to_string())));
        let who: Option<String> =
            admin.query_opt("SELECT who FROM vc_key WHERE code = 'abc'", &[]).await.unwrap().map(|r| r.get(0));
        got.push(("keys who", Ok((u64::from(who.as_deref() == Some("first")), 0))));
        admin.batch_execute("DELETE FROM vc_key WHERE code <> 'w'").await.unwrap();
        let up = VcKey::bulk(&mut w).upsert(Upsert::all_columns().keep(Keep::First)).run(&batch).await;
        got.push(("upsert", up.map(|r| (r.inserted, r.skipped)).map_err(|e| e.to_string())));
        let who: Option<String> =
            admin.query_opt("SELECT who FROM vc_key WHERE code = 'abc'", &[]).await.unwrap().map(|r| r.get(0));
        got.push(("upsert who", Ok((u64::from(who.as_deref() == Some("first")), 0))));
        // A key too long for varchar(3).
        let long: Vec<VcKey> = [row("abcd", "x")].into_iter().chain(pads(0)).collect();
        let before = count(&admin, "vc_key").await;
        let r = VcKey::bulk_create_new(&mut w, &long).await;
        let code = r.as_ref().err().and_then(|e| e.sqlstate()).map(|s| s.code().to_owned());
        let named = r.as_ref().err().map(|e| (e.row(), e.field().map(str::to_owned)));
        println!("{p} long key after narrowing: {:?}", r.as_ref().map(|r| r.inserted).map_err(|e| e.to_string()));
        assert_eq!(count(&admin, "vc_key").await, before, "{p}: nothing written");
        db.drop().await;
        let want = vec![
            ("plain", Ok((1 + distinct_pads, 1 + pad as u64 - distinct_pads))),
            ("plain who", Ok((1, 0))),
            ("keys", Ok((1 + distinct_pads, 1 + pad as u64 - distinct_pads))),
            ("keys who", Ok((1, 0))),
            ("upsert", Ok((1 + distinct_pads, 1 + pad as u64 - distinct_pads))),
            ("upsert who", Ok((1, 0))),
        ];
        assert_eq!(got, want, "{p}");
        assert_eq!(code.as_deref(), Some("22001"), "{p}");
        assert_eq!(named, Some((Some(0), Some("code".to_owned()))), "{p}");
    }
}

// ---------------------------------------------------------------------------
// A repeat of a key (not the first offered row) with a value the column
// refuses: the table never sees a repeat, on every path; int key (the
// client drops repeats) and text key (the server does).

#[tokio::test]
async fn repeat_with_a_value_the_column_refuses_is_skipped_on_every_path() {
    let mut all = Vec::new();
    for pad in PADS {
        let p = path(pad);
        let db = TestDb::new(&format!("tm_rep_{pad}")).await;
        let admin = db.connect().await;
        admin.batch_execute(&VcNote::model().migration_sql()).await.unwrap();
        admin.batch_execute(&VcTextNote::model().migration_sql()).await.unwrap();
        let mut w = db.connect().await;
        VcNote::bulk_create_new(&mut w, [vc(-1, "w")]).await.unwrap();
        VcTextNote::bulk_create_new(&mut w, [vct("w", "w")]).await.unwrap();
        let ib: Vec<VcNote> = [vc(5, "first"), vc(6, "six"), vc(5, "toolong")]
            .into_iter()
            .chain((0..pad as i64).map(|i| vc(1_000_000 + i, "p")))
            .collect();
        let tb: Vec<VcTextNote> = [vct("five", "first"), vct("six", "six"), vct("five", "toolong")]
            .into_iter()
            .chain((0..pad).map(|i| vct(&format!("p{i}"), "p")))
            .collect();
        let s = |r: Result<(u64, u64), Error>| r.map_err(|e| e.to_string());
        let mut got = Vec::new();
        got.push(("int plain", s(VcNote::bulk_create_new(&mut w, &ib).await.map(|o| (o.inserted, o.skipped)))));
        admin.batch_execute("DELETE FROM vc_note WHERE k <> -1").await.unwrap();
        got.push((
            "int keys",
            s(VcNote::bulk(&mut w).returning_keys().run(&ib).await.map(|o| (o.inserted, o.skipped))),
        ));
        admin.batch_execute("DELETE FROM vc_note WHERE k <> -1").await.unwrap();
        got.push((
            "int upsert first",
            s(VcNote::bulk(&mut w)
                .upsert(Upsert::all_columns().keep(Keep::First))
                .run(&ib)
                .await
                .map(|o| (o.inserted, o.skipped))),
        ));
        got.push(("text plain", s(VcTextNote::bulk_create_new(&mut w, &tb).await.map(|o| (o.inserted, o.skipped)))));
        admin.batch_execute("DELETE FROM vc_tnote WHERE k <> 'w'").await.unwrap();
        got.push((
            "text skipped",
            s(VcTextNote::bulk(&mut w).returning_skipped().run(&tb).await.map(|o| (o.inserted, o.skipped))),
        ));
        admin.batch_execute("DELETE FROM vc_tnote WHERE k <> 'w'").await.unwrap();
        got.push((
            "text upsert first",
            s(VcTextNote::bulk(&mut w)
                .upsert(Upsert::all_columns().keep(Keep::First))
                .run(&tb)
                .await
                .map(|o| (o.inserted, o.skipped))),
        ));
        let n: String = admin.query_one("SELECT note FROM vc_tnote WHERE k = 'five'", &[]).await.unwrap().get(0);
        assert_eq!(n, "first", "{p}");
        db.drop().await;
        let want_new = 2 + pad as u64;
        let want = vec![
            ("int plain", Ok((want_new, 1))),
            ("int keys", Ok((want_new, 1))),
            ("int upsert first", Ok((want_new, 1))),
            ("text plain", Ok((want_new, 1))),
            ("text skipped", Ok((want_new, 1))),
            ("text upsert first", Ok((want_new, 1))),
        ];
        all.push((p, got.clone()));
        assert_eq!(got, want, "{p}");
    }
}

// ---------------------------------------------------------------------------
// A new connection's first call (which may skip the check once the process
// checked the model) given a too-long non-key value.

#[tokio::test]
async fn first_call_of_a_new_connection_refuses_like_the_others() {
    #[derive(BulkCreateNew, Debug, Clone)]
    #[bulk(table = "first_vc", unique(k), id = false)]
    struct FirstVc {
        k: i64,
        #[bulk(sql_type = "varchar(5)")]
        note: String,
    }
    let db = TestDb::new("tm_first").await;
    let admin = db.connect().await;
    admin.batch_execute(&FirstVc::model().migration_sql()).await.unwrap();
    let mut w = db.connect().await;
    FirstVc::bulk_create_new(&mut w, [FirstVc { k: -1, note: "w".into() }]).await.unwrap();
    let mut batch: Vec<FirstVc> = (0..10).map(|i| FirstVc { k: i, note: "ok".into() }).collect();
    batch[3].note = "toolong".into();
    let (warm, _) = failure("warm connection", FirstVc::bulk_create_new(&mut w, &batch).await);
    let mut fresh = db.connect().await;
    let (first, _) = failure("first call", FirstVc::bulk_create_new(&mut fresh, &batch).await);
    assert_eq!(count(&admin, "first_vc").await, 1);
    // The same (under its limit) in the shortest form the first call takes.
    let mut fresh2 = db.connect().await;
    let (one, _) = failure(
        "first call, one row",
        FirstVc::bulk_create_new(&mut fresh2, [FirstVc { k: 7, note: "abcdef".into() }]).await,
    );
    assert_eq!(count(&admin, "first_vc").await, 1);
    let ok = FirstVc::bulk_create_new(&mut fresh2, [FirstVc { k: 7, note: "abcde   ".into() }]).await.unwrap();
    assert_eq!(ok.inserted, 1);
    let mut fresh3 = db.connect().await;
    let ok = FirstVc::bulk_create_new(&mut fresh3, [FirstVc { k: 8, note: "abcde   ".into() }]).await.unwrap();
    assert_eq!(ok.inserted, 1);
    let n: Vec<String> = admin
        .query("SELECT note FROM first_vc WHERE k IN (7, 8) ORDER BY k", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(n, ["abcde", "abcde"]);
    db.drop().await;
    assert_eq!(first, warm);
    assert_eq!((warm.row, warm.field.as_deref()), (Some(3), Some("note")));
    assert_eq!(one.code.as_deref(), Some("22001"));
    assert_eq!((one.row, one.field.as_deref()), (Some(0), Some("note")));
}

// ---------------------------------------------------------------------------
// A type modifier given to a column after the connection checked the
// table: text made varchar(3), a numeric made numeric(3, 0) (a Decimal
// field, and an integer field in a numeric column). The server refuses,
// and the call names the first offered row as the table is now.

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "later", unique(k), id = false)]
struct Later {
    k: i64,
    note: String,
    #[bulk(sql_type = "numeric")]
    amount: Decimal,
    #[bulk(sql_type = "numeric")]
    count: i64,
}

fn later(k: i64) -> Later {
    Later { k, note: "ab".into(), amount: dec("1.5"), count: 7 }
}

/// SQLSTATE, row and field of an error.
type Named = (String, Option<usize>, Option<String>);

#[tokio::test]
async fn a_modifier_given_after_the_check_is_named_on_every_path() {
    for pad in PADS {
        let p = path(pad);
        let db = TestDb::new(&format!("tm_later_{pad}")).await;
        let admin = db.connect().await;
        admin.batch_execute(&Later::model().migration_sql()).await.unwrap();
        let mut w = db.connect().await;
        // Checked (and, from COPY_BATCH rows, the scratch table made)
        // without modifiers.
        let warm: Vec<Later> = (0..=pad as i64).map(|i| later(-1 - i)).collect();
        Later::bulk_create_new(&mut w, &warm).await.unwrap();
        admin
            .batch_execute(
                "ALTER TABLE later ALTER note TYPE varchar(3), ALTER amount TYPE numeric(3, 0), \
                 ALTER count TYPE numeric(3, 0)",
            )
            .await
            .unwrap();
        let batch = |from: i64| -> Vec<Later> { (0..10 + pad as i64).map(|i| later(from + i)).collect() };
        let mut got = Vec::new();
        let mut rows = batch(1_000);
        rows[4].note = "abcd".into();
        rows[6].note = "abcdef".into();
        got.push(("note", Later::bulk_create_new(&mut w, &rows).await.err()));
        let mut rows = batch(2_000);
        rows[5].amount = dec("999.5");
        got.push(("amount", Later::bulk(&mut w).returning_keys().run(&rows).await.err()));
        let mut rows = batch(3_000);
        rows[2].count = -1_000;
        got.push(("count", Later::bulk_create_new(&mut w, &rows).await.err()));
        assert_eq!(count(&admin, "later").await, warm.len() as i64, "{p}: nothing written");
        let named: Vec<(&str, Option<Named>)> = got
            .iter()
            .map(|(what, e)| {
                let named = e.as_ref().map(|e| {
                    let code = e.sqlstate().map_or_else(|| e.to_string(), |s| s.code().to_owned());
                    (code, e.row(), e.field().map(str::to_owned))
                });
                (*what, named)
            })
            .collect();
        let want = |code: &str, row: usize, field: &str| Some((code.to_owned(), Some(row), Some(field.to_owned())));
        assert_eq!(
            named,
            [
                ("note", want("22001", 4, "note")),
                ("amount", want("22003", 5, "amount")),
                ("count", want("22003", 2, "count")),
            ],
            "{p}"
        );
        db.drop().await;
    }
}

// ---------------------------------------------------------------------------
// Which row is named: the first offered row whose value the column's
// modifier refuses, also when the server met another (a repeat of a key,
// left out before the table sees it, comes first here).

#[tokio::test]
async fn the_first_offered_refused_row_is_named_a_repeat_included() {
    for pad in PADS {
        let p = path(pad);
        let db = TestDb::new(&format!("tm_which_{pad}")).await;
        let admin = db.connect().await;
        admin.batch_execute(&VcNote::model().migration_sql()).await.unwrap();
        admin.batch_execute(&VcTextNote::model().migration_sql()).await.unwrap();
        let mut w = db.connect().await;
        let ib: Vec<VcNote> = [vc(5, "first"), vc(5, "toolong"), vc(6, "six"), vc(9, "longer!")]
            .into_iter()
            .chain((0..pad as i64).map(|i| vc(1_000_000 + i, "p")))
            .collect();
        let tb: Vec<VcTextNote> =
            [vct("five", "first"), vct("five", "toolong"), vct("six", "six"), vct("nine", "longer!")]
                .into_iter()
                .chain((0..pad).map(|i| vct(&format!("p{i}"), "p")))
                .collect();
        let int = VcNote::bulk_create_new(&mut w, &ib).await.expect_err("row 3 is refused");
        let text = VcTextNote::bulk_create_new(&mut w, &tb).await.expect_err("row 3 is refused");
        for e in [&int, &text] {
            assert_eq!(e.sqlstate().map(|s| s.code()), Some("22001"), "{p}: {e}");
            assert_eq!((e.row(), e.field()), (Some(1), Some("note")), "{p}: {e}");
        }
        assert_eq!(count(&admin, "vc_note").await + count(&admin, "vc_tnote").await, 0, "{p}");
        db.drop().await;
    }
}

// ---------------------------------------------------------------------------
// An integer column made numeric(3, 0) from bigint after the check: the
// short path names the row at once, the COPY path from the next call on
// (README).

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "int_only", unique(k), id = false)]
struct IntOnly {
    k: i64,
    n: i64,
}

#[tokio::test]
async fn an_integer_column_made_numeric_after_the_check() {
    for pad in PADS {
        let p = path(pad);
        let db = TestDb::new(&format!("tm_int_{pad}")).await;
        let admin = db.connect().await;
        admin.batch_execute(&IntOnly::model().migration_sql()).await.unwrap();
        let mut w = db.connect().await;
        let warm: Vec<IntOnly> = (0..=pad as i64).map(|i| IntOnly { k: -1 - i, n: 1 }).collect();
        IntOnly::bulk_create_new(&mut w, &warm).await.unwrap();
        admin.batch_execute("ALTER TABLE int_only ALTER n TYPE numeric(3, 0)").await.unwrap();
        let mut rows: Vec<IntOnly> = (0..10 + pad as i64).map(|i| IntOnly { k: i, n: 5 }).collect();
        rows[2].n = 1_000;
        let mut named = Vec::new();
        for _ in 0..2 {
            let e = IntOnly::bulk_create_new(&mut w, &rows).await.expect_err("1000 is out of range");
            assert_eq!(e.sqlstate().map(|s| s.code()), Some("22003"), "{p}: {e}");
            named.push((e.row(), e.field().map(str::to_owned)));
        }
        assert_eq!(count(&admin, "int_only").await, warm.len() as i64, "{p}");
        let at = (Some(2), Some("n".to_owned()));
        if pad < bulk_tests::COPY_BATCH {
            assert_eq!(named, [at.clone(), at], "{p}");
        } else {
            assert_eq!(named, [(None, None), at], "{p}");
        }
        db.drop().await;
    }
}
