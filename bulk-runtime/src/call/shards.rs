//! On Citus, a plain call's batch of [`GROUPED_FROM`] rows or more as a few
//! multi-row `VALUES` statements, each for the rows of one run of the
//! table's shards, instead of one statement for the whole batch.
//!
//! Citus routes a multi-row `VALUES` insert by splitting it into one task per
//! shard, and copies the whole statement, every row, once per task: work that
//! grows with rows × shards (28 ms of the coordinator's 45 ms for 1,000 rows
//! over 32 shards; see `notes/citus.md`, §10). A statement of half the rows
//! that meets half the shards costs a quarter of that. The call reads each
//! shard's hash range and id ([`read`]) inside its transaction (or
//! savepoint), right before the insert, hashes the distribution column on
//! the client as PostgreSQL's hash operator class does (`hashint8`,
//! `hashint4`, `hashint2`), and sends one statement per run of shard ids,
//! runs in ascending order, pipelined.
//!
//! The order matters: Citus runs a multi-row insert's shard tasks one after
//! the other in shard-id order (rows of a shard in the statement's order,
//! here key order), and takes no other lock for it. Statements cut by runs
//! of shard ids and sent in that order take the rows' locks in exactly the
//! order one statement would, so grouping adds no deadlock that one
//! statement would not also have. (Grouping by worker instead interleaves
//! the shard ids, and did deadlock against single statements: see
//! `eight_writers_of_short_batches_of_every_length` in the Citus suite.)
//! One exception to that order: Citus runs the shards placed on the node
//! the client is connected to (a coordinator that holds shards, or a worker
//! of a cluster that takes queries on its workers) after the others, so a
//! table with a shard on that node is not grouped.
//!
//! The map is read for every grouped call (one small catalog query,
//! pipelined with `BEGIN`, 0.2–0.4 ms on the coordinator), not kept,
//! which leaves only the moments between that read and the inserts for a
//! shard split to change it: a map kept across calls could be
//! another table's (the same model through another `search_path`, database
//! or cluster) or one whose shards were split since, and then the rows of
//! one shard could go in two statements against their key order, which
//! does deadlock (seen in the suite when the map was kept per model). A
//! table whose map is of no use (a reference table, a distribution column
//! that is not an integer column of the model, a shard on the connected
//! node) or could not be read is remembered per connection for
//! [`NOT_GROUPED_FOR`], so that its calls do not read again.
//!
//! Whatever the map, Citus routes every row by itself: the grouping never
//! puts a row in the wrong shard, and the counts are the statements'
//! command tags, exact for `VALUES` on Citus.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::arrays::Element;
use crate::model::Model;
use crate::sql;
use crate::statements::Identity;
use crate::types::PgType;

/// Batches of at least this many rows go as several statements (below it,
/// one statement meets few shards).
pub(crate) const GROUPED_FROM: usize = 256;

/// How many runs of shard ids (statements) a batch is cut into: one per
/// 100 rows, 2 to 8 of them. Measured with 32 shards (`notes/citus.md`,
/// §10): against multi-row `VALUES` at 1,000 rows, 2, 4 and 8 statements
/// came out 0.81–0.90, 0.82–0.88 and 0.80–0.83; at 10,000 rows 4, 8 and 16
/// came out 0.62, 0.59 and 0.55–0.61.
fn statements_for(rows: usize) -> usize {
    (rows / 100).clamp(2, 8)
}

/// How long a connection remembers that a model's table has no usable
/// shard map.
const NOT_GROUPED_FOR: Duration = Duration::from_secs(60);

/// Where the rows of a hash-distributed table go.
#[derive(Debug)]
pub(crate) struct ShardMap {
    /// The model column (index) of the distribution column.
    column: usize,
    /// Its type.
    ty: PgType,
    /// Each shard's lowest hash value, ascending.
    mins: Vec<i32>,
    /// Each shard's rank among the shards in shard-id order (same order as
    /// `mins`).
    ranks: Vec<usize>,
}

/// The distribution column of the table `$1` names (none for a reference
/// table, when a shard is placed on the node this session is connected
/// to, or when the column is not a `smallint`, `integer` or `bigint` in the
/// table: a model's `i64` field may be stored in a `numeric` column, which
/// Citus hashes otherwise, so the client's split would not follow the
/// shards), and its shards' ranges and ids, in hash order.
const SHARD_MAP: &str = "\
SELECT (SELECT pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) FROM pg_catalog.pg_dist_partition AS p
         WHERE p.logicalrelid = pg_catalog.to_regclass($1) AND p.partmethod = 'h'
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_shard AS s
                             JOIN pg_catalog.pg_dist_placement AS pl ON pl.shardid = s.shardid
                            WHERE s.logicalrelid = p.logicalrelid
                              AND pl.groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group))
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute AS a
                        WHERE a.attrelid = p.logicalrelid
                          AND a.attname = pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)
                          AND a.atttypid = ANY ('{21,23,20}'::pg_catalog.oid[]))),
       ARRAY(SELECT s.shardminvalue::int4 FROM pg_catalog.pg_dist_shard AS s
              WHERE s.logicalrelid = pg_catalog.to_regclass($1) ORDER BY s.shardminvalue::int4),
       ARRAY(SELECT s.shardid FROM pg_catalog.pg_dist_shard AS s
              WHERE s.logicalrelid = pg_catalog.to_regclass($1) ORDER BY s.shardminvalue::int4)";

/// Per (connection, model address), when its table was found to have no
/// usable shard map.
static NOT_GROUPED: Mutex<Option<HashMap<(Identity, usize), Instant>>> = Mutex::new(None);

/// Whether a call of `model` on `client` should read the shard map: not
/// when this connection found it of no use within [`NOT_GROUPED_FOR`].
pub(crate) fn worth_reading(client: &Client, model: &'static Model) -> bool {
    let key = (Identity::of(client), std::ptr::from_ref(model) as usize);
    let guard = NOT_GROUPED.lock().unwrap_or_else(PoisonError::into_inner);
    guard.as_ref().and_then(|m| m.get(&key)).is_none_or(|at| at.elapsed() >= NOT_GROUPED_FOR)
}

/// Reads the shard map of `model`'s table on `client` (inside the call's
/// transaction or savepoint): `Ok(None)` when it is of no use (a reference
/// table, a distribution column that is not an integer column of the
/// model, a single shard, a shard on the connected node), which the
/// connection then remembers; `Err` when the read failed (the transaction
/// is then aborted), which it remembers too.
pub(crate) async fn read(client: &Client, model: &'static Model) -> Result<Option<ShardMap>, tokio_postgres::Error> {
    let target = sql::plan(model).target_regclass.as_str();
    let rows = match client.query_typed(SHARD_MAP, &[(&target, Type::TEXT)]).await {
        Ok(rows) => rows,
        Err(e) => {
            not_grouped(client, model);
            return Err(e);
        }
    };
    let map = rows.first().and_then(|row| {
        // (A reference table has no distribution column, and its shard no range.)
        let name: Option<String> = row.try_get(0).ok()?;
        let column = model.columns().iter().position(|c| Some(c.name()) == name.as_deref())?;
        let mins: Vec<i32> = row.try_get::<_, Vec<Option<i32>>>(1).ok()?.into_iter().collect::<Option<_>>()?;
        let ids: Vec<i64> = row.try_get::<_, Vec<Option<i64>>>(2).ok()?.into_iter().collect::<Option<_>>()?;
        let ty = model.columns()[column].pg_type();
        let usable = matches!(ty, PgType::Int2 | PgType::Int4 | PgType::Int8) && mins.len() == ids.len();
        (usable && ids.len() > 1).then(|| ShardMap::new(column, ty, mins, &ids))
    });
    if map.is_none() {
        not_grouped(client, model);
    }
    Ok(map)
}

/// Remembers that `client` found no usable shard map for `model`.
fn not_grouped(client: &Client, model: &'static Model) {
    let key = (Identity::of(client), std::ptr::from_ref(model) as usize);
    let mut guard = NOT_GROUPED.lock().unwrap_or_else(PoisonError::into_inner);
    let seen = guard.get_or_insert_with(HashMap::new);
    if seen.len() >= 4096 {
        seen.clear();
    }
    seen.insert(key, Instant::now());
}

impl ShardMap {
    /// The map of shards whose lowest hash values are `mins` (ascending)
    /// and ids `ids` (same order).
    fn new(column: usize, ty: PgType, mins: Vec<i32>, ids: &[i64]) -> ShardMap {
        let mut by_id: Vec<usize> = (0..ids.len()).collect();
        by_id.sort_by_key(|&i| ids[i]);
        let mut ranks = vec![0; ids.len()];
        for (rank, &i) in by_id.iter().enumerate() {
            ranks[i] = rank;
        }
        ShardMap { column, ty, mins, ranks }
    }

    /// The rows (indexes into `columns`, the batch's values per model
    /// column, one per row) of each statement, in row order, statements in
    /// shard-id order, none empty; `None` when a value cannot be read
    /// (then the batch goes as one statement).
    pub(crate) fn split(&self, columns: &[Vec<Element>]) -> Option<Vec<Vec<usize>>> {
        let values = columns.get(self.column)?;
        let statements = statements_for(values.len()).min(self.ranks.len());
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); statements];
        for (row, value) in values.iter().enumerate() {
            let bytes = &value.as_ref()?.0;
            let hash = match (self.ty, bytes.len()) {
                (PgType::Int8, 8) => hash_int8(i64::from_be_bytes(bytes[..].try_into().ok()?)),
                (PgType::Int4, 4) => hash_uint32(i32::from_be_bytes(bytes[..].try_into().ok()?) as u32),
                (PgType::Int2, 2) => hash_uint32(i32::from(i16::from_be_bytes(bytes[..].try_into().ok()?)) as u32),
                _ => return None,
            } as i32;
            let shard = self.mins.partition_point(|min| *min <= hash).checked_sub(1)?;
            groups[self.ranks[shard] * statements / self.ranks.len()].push(row);
        }
        groups.retain(|rows| !rows.is_empty());
        Some(groups)
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
    fn rows_split_by_runs_of_shard_ids_in_row_order() {
        // Four shards in hash order, their ids out of that order: by id,
        // the shards of ranges 2, 0 | 3, 1 (two statements for 250 rows).
        let mins = vec![i32::MIN, -1 << 30, 0, 1 << 30];
        let map = ShardMap::new(0, PgType::Int8, mins.clone(), &[102, 104, 101, 103]);
        let values: Vec<i64> = (0..250).collect();
        let column: Vec<Element> =
            values.iter().map(|v| Some(Encoded(bytes::Bytes::copy_from_slice(&v.to_be_bytes())))).collect();
        let groups = map.split(&[column]).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 250);
        let range = |v: i64| mins.partition_point(|m| *m <= hash_int8(v) as i32) - 1;
        for (g, rows) in groups.iter().enumerate() {
            assert!(rows.windows(2).all(|w| w[0] < w[1]), "row order kept");
            for &row in rows {
                let wanted = if g == 0 { [2, 0] } else { [3, 1] };
                assert!(wanted.contains(&range(values[row])), "row {row} in the statement of its shard's id");
            }
        }
    }
}
