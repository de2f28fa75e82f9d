//! On Citus, a plain call's batch of [`GROUPED_FROM`] rows or more as one
//! multi-row `VALUES` statement per worker instead of one for the whole
//! batch.
//!
//! Citus routes a multi-row `VALUES` insert by splitting it into one task per
//! shard, and copies the whole statement, every row, once per task: work that
//! grows with rows × shards (28 ms of the coordinator's 45 ms for 1,000 rows
//! over 32 shards; see `notes/citus.md`, §10). The rows of one worker's
//! shards in a statement of their own meet fewer shards each. The call reads
//! where each shard's hash range starts and which worker holds it
//! ([`map`], kept per model for [`MAP_FOR`]), hashes the distribution column
//! on the client as PostgreSQL's hash operator class does (`hashint8`,
//! `hashint4`, `hashint2`), and sends the statements, each in key order,
//! workers in one order, pipelined in the call's own transaction. The
//! grouping is only a hint: Citus routes every row by itself, so a stale map
//! or a row in the wrong group costs speed, never a row in the wrong shard,
//! and the counts are the statements' command tags, exact for `VALUES` on
//! Citus.
//!
//! Citus may open up to `citus.max_adaptive_executor_pool_size` (16)
//! connections to a worker for one statement, and a transaction keeps them
//! to its end; these statements need one per worker, so the transaction
//! first sets [`ONE_CONNECTION_PER_WORKER`] (it ends with the transaction),
//! which measured no slower at 1,000 rows (`notes/citus.md`, §10). Inside a
//! caller's transaction the setting would outlive the call, so there the
//! batch goes as one statement, as it does below [`GROUPED_FROM`] rows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::arrays::Element;
use crate::model::Model;
use crate::sql;
use crate::types::PgType;

/// Batches of at least this many rows go as one statement per worker (below
/// it, one statement meets few shards, and needs no transaction).
pub(crate) const GROUPED_FROM: usize = 256;

/// Sent with the grouped call's `BEGIN`: each statement uses one connection
/// per worker, for the rest of the transaction (see the module's documentation).
pub(crate) const ONE_CONNECTION_PER_WORKER: &str = "SET LOCAL citus.max_adaptive_executor_pool_size = 1";

/// How long a shard map stands before the next call reads it again.
const MAP_FOR: Duration = Duration::from_secs(60);

/// Where the rows of a hash-distributed table go.
#[derive(Debug)]
pub(crate) struct ShardMap {
    /// The model column (index) of the distribution column.
    column: usize,
    /// Its type.
    ty: PgType,
    /// Each shard's lowest hash value, ascending.
    mins: Vec<i32>,
    /// The worker group of each shard.
    groups: Vec<i32>,
}

/// The distribution column of the table `$1` names, and its shards' ranges
/// and worker groups, in hash order (no column for a reference table).
const SHARD_MAP: &str = "\
SELECT (SELECT pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) FROM pg_catalog.pg_dist_partition AS p
         WHERE p.logicalrelid = pg_catalog.to_regclass($1) AND p.partmethod = 'h'),
       ARRAY(SELECT s.shardminvalue::int4 FROM pg_catalog.pg_dist_shard AS s
              WHERE s.logicalrelid = pg_catalog.to_regclass($1) ORDER BY s.shardminvalue::int4),
       ARRAY(SELECT (SELECT min(pl.groupid) FROM pg_catalog.pg_dist_placement AS pl WHERE pl.shardid = s.shardid)
               FROM pg_catalog.pg_dist_shard AS s
              WHERE s.logicalrelid = pg_catalog.to_regclass($1) ORDER BY s.shardminvalue::int4)";

/// Per model address, its table's shard map (`None`: not worth grouping).
type Maps = HashMap<usize, (Instant, Option<Arc<ShardMap>>)>;

static MAPS: Mutex<Option<Maps>> = Mutex::new(None);

/// The shard map of `model`'s table, read on `client` when this process has
/// none younger than [`MAP_FOR`]; `None` when the rows are not worth
/// grouping: a reference table, a distribution column that is not an
/// integer column of the model, shards on one worker, or a failed read.
/// Only outside a transaction (a failed read would abort it).
pub(crate) async fn map(client: &Client, model: &'static Model) -> Option<Arc<ShardMap>> {
    let key = std::ptr::from_ref(model) as usize;
    {
        let guard = MAPS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, map)) = guard.as_ref().and_then(|m| m.get(&key))
            && at.elapsed() < MAP_FOR
        {
            return map.clone();
        }
    }
    let target = sql::plan(model).target_regclass.as_str();
    let read = client.query_typed(SHARD_MAP, &[(&target, Type::TEXT)]).await.ok();
    let map = read.and_then(|rows| {
        let row = rows.first()?;
        // (A reference table has no distribution column, and its shard no range.)
        let name: Option<String> = row.try_get(0).ok()?;
        let column = model.columns().iter().position(|c| Some(c.name()) == name.as_deref())?;
        let mins: Vec<i32> = row.try_get::<_, Vec<Option<i32>>>(1).ok()?.into_iter().collect::<Option<_>>()?;
        let groups: Vec<i32> = row.try_get::<_, Vec<Option<i32>>>(2).ok()?.into_iter().collect::<Option<_>>()?;
        let ty = model.columns()[column].pg_type();
        let several = groups.iter().any(|g| *g != groups[0]);
        let usable = matches!(ty, PgType::Int2 | PgType::Int4 | PgType::Int8) && mins.len() == groups.len() && several;
        usable.then(|| Arc::new(ShardMap { column, ty, mins, groups }))
    });
    let mut guard = MAPS.lock().unwrap_or_else(PoisonError::into_inner);
    let maps = guard.get_or_insert_with(HashMap::new);
    if maps.len() >= 4096 {
        maps.clear();
    }
    maps.insert(key, (Instant::now(), map.clone()));
    map
}

impl ShardMap {
    /// The rows (indexes into `columns`, the batch's values per model
    /// column, one per row) of each worker, in row order; `None` when a
    /// value cannot be read (then the batch goes as one statement).
    pub(crate) fn split(&self, columns: &[Vec<Element>]) -> Option<Vec<Vec<usize>>> {
        let values = columns.get(self.column)?;
        let mut by_group: Vec<(i32, Vec<usize>)> = Vec::new();
        for (row, value) in values.iter().enumerate() {
            let bytes = &value.as_ref()?.0;
            let hash = match (self.ty, bytes.len()) {
                (PgType::Int8, 8) => hash_int8(i64::from_be_bytes(bytes[..].try_into().ok()?)),
                (PgType::Int4, 4) => hash_uint32(i32::from_be_bytes(bytes[..].try_into().ok()?) as u32),
                (PgType::Int2, 2) => hash_uint32(i32::from(i16::from_be_bytes(bytes[..].try_into().ok()?)) as u32),
                _ => return None,
            } as i32;
            let shard = self.mins.partition_point(|min| *min <= hash).checked_sub(1)?;
            let group = self.groups[shard];
            match by_group.iter_mut().find(|(g, _)| *g == group) {
                Some((_, rows)) => rows.push(row),
                None => by_group.push((group, vec![row])),
            }
        }
        // Workers in one order for every call (writers that meet on keys
        // take their locks in the same order).
        by_group.sort_by_key(|(g, _)| *g);
        Some(by_group.into_iter().map(|(_, rows)| rows).collect())
    }
}

/// PostgreSQL's `hashint8`: the high half folded into the low one, then
/// [`hash_uint32`].
pub(crate) fn hash_int8(value: i64) -> u32 {
    let (mut low, high) = (value as u32, (value >> 32) as u32);
    low ^= if value >= 0 { high } else { !high };
    hash_uint32(low)
}

/// PostgreSQL's `hash_bytes_uint32` (Bob Jenkins' `final` mix of one word),
/// which `hashint4` and `hashint2` apply to the value as a 32-bit integer.
pub(crate) fn hash_uint32(k: u32) -> u32 {
    let init = 0x9e37_79b9_u32.wrapping_add(4).wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init.wrapping_add(k), init, init);
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c.wrapping_sub(b.rotate_left(24))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Encoded;

    /// Values of `hashint8`, `hashint4` and `hashint2` read from
    /// PostgreSQL 15 (`SELECT hashint8(v)` ...).
    #[test]
    fn hashes_are_postgresql_s() {
        let int8 = [
            (0i64, -272_711_505i32),
            (1, -1_905_060_026),
            (-1, 385_747_274),
            (42, 1_509_752_520),
            (-5_000_000_000, 954_517_114),
            (i64::MAX, -1_524_351_049),
        ];
        for (v, h) in int8 {
            assert_eq!(hash_int8(v) as i32, h, "hashint8({v})");
        }
        assert_eq!(hash_uint32(42) as i32, 1_509_752_520, "hashint4(42)");
        assert_eq!(hash_uint32(-7i32 as u32) as i32, -82_204_417, "hashint4(-7)");
        assert_eq!(hash_uint32(i32::from(-3i16) as u32) as i32, -1_044_245_375, "hashint2(-3)");
    }

    #[test]
    fn rows_split_by_the_worker_of_their_shard_in_row_order() {
        let map = ShardMap { column: 0, ty: PgType::Int8, mins: vec![i32::MIN, 0], groups: vec![1, 2] };
        let values: Vec<i64> = (0..50).collect();
        let column: Vec<Element> =
            values.iter().map(|v| Some(Encoded(bytes::Bytes::copy_from_slice(&v.to_be_bytes())))).collect();
        let groups = map.split(&[column]).unwrap();
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 50);
        for (g, rows) in groups.iter().enumerate() {
            assert!(rows.windows(2).all(|w| w[0] < w[1]), "row order kept");
            for &row in rows {
                let negative = (hash_int8(values[row]) as i32) < 0;
                assert_eq!(g == 0, negative, "row {row} in the group of its shard");
            }
        }
    }
}
