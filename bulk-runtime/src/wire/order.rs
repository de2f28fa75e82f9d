//! Short batches in key order: the client sorts the rows as PostgreSQL's
//! `ORDER BY key` would and keeps the first offered row of each key, for a
//! key whose binary form the client can order (see
//! [`Plan::client_ordered`](crate::sql::plan)).

use std::borrow::Borrow;

use bytes::{BufMut, BytesMut};

use super::values::{ArrayColumn, ColumnBuffers, Encoded, array_header, encode_columns, put_value};
use crate::BulkCreateNew;
use crate::error::Error;
use crate::model::{Column, Model};
use crate::sql::KeyForm;
use crate::types::{self, ValueError};

/// One binary array per column (three for an array column: see
/// [`ArrayColumn`]), rows sorted on the client into the order of
/// PostgreSQL's `ORDER BY key`, each key once: its first offered row (the
/// sort is stable), for a model whose key the client can order
/// ([`Plan::client_ordered`](crate::sql::plan)). Two keys are equal when
/// their binary forms are (for these types, as in PostgreSQL; NULL equals
/// NULL, as in a `NULLS NOT DISTINCT` key).
pub(crate) fn encode_arrays_key_ordered<T: BulkCreateNew, R: Borrow<T>>(
    model: &'static Model,
    rows: &[R],
) -> Result<Vec<Encoded>, Error> {
    match &crate::sql::plan(model).key_form {
        Some(form) if form.packs() => encode_arrays_packed(model, rows, form),
        _ => encode_arrays_sorted(model, rows),
    }
}

/// [`encode_arrays_key_ordered`] for any client-orderable key: the batch
/// encoded column by column first, then sorted on the encoded keys.
fn encode_arrays_sorted<T: BulkCreateNew, R: Borrow<T>>(
    model: &'static Model,
    rows: &[R],
) -> Result<Vec<Encoded>, Error> {
    let cols = encode_columns(model, rows.iter().map(Borrow::borrow))?;
    let columns = model.columns();
    let key: Vec<&Column> = model.unique_key().collect();
    let key: Vec<(usize, &Column)> =
        key.iter().filter_map(|k| columns.iter().position(|c| std::ptr::eq(c, *k)).map(|i| (i, *k))).collect();
    let order = first_of_each_key_in_order(&cols, &key, crate::sql::plan(model).key_form.as_ref());
    let mut out = Vec::with_capacity(columns.len());
    for (c, column) in columns.iter().enumerate() {
        let split = ArrayColumn::split(column, &cols, c, order.iter().copied())
            .map_err(|error| first_invalid::<T, R>(model, rows, |_| true).unwrap_or(error))?;
        if let Some(parts) = split {
            out.extend(parts);
            continue;
        }
        // Whether the kept rows (not the dropped repeats) hold a NULL here.
        let has_null = cols.has_null[c] && order.iter().any(|&i| cols.value(c, i).is_none());
        let mut values = array_header(&cols.types[c], has_null, order.len(), cols.elements[c].len());
        for &i in &order {
            values.put_slice(cols.element(c, i));
        }
        out.push(Encoded(values.freeze()));
    }
    check_dropped::<T, R>(model, rows, order.iter().copied())?;
    Ok(out)
}

/// [`encode_arrays_key_ordered`] for a key whose form packs into 16 bytes
/// (see [`KeyForm`]), with few allocations, as it
/// runs for every short batch: every value is checked in offered order,
/// each row's key is written in its sort form as one `u128`, the pairs
/// (form, position) are sorted, and then each column's array is encoded
/// straight from the rows in that order.
fn encode_arrays_packed<T: BulkCreateNew, R: Borrow<T>>(
    model: &'static Model,
    rows: &[R],
    key: &KeyForm,
) -> Result<Vec<Encoded>, Error> {
    let keyed = packed_keys::<T, R>(model, rows, key)?;
    let columns = model.columns();
    let mut arrays = Vec::with_capacity(columns.len());
    for c in 0..columns.len() {
        if let Err(error) = packed_column::<T, R>(model, rows, &keyed, c, &mut arrays) {
            // (Met in key order: the error names the first offered row
            // whose value fails, as on the COPY path.)
            return Err(first_invalid::<T, R>(model, rows, |_| true).unwrap_or(error));
        }
    }
    check_dropped::<T, R>(model, rows, keyed.iter().map(|&(_, index)| index))?;
    Ok(arrays)
}

/// Checks the values of the rows left out as repeats of a key (those not in
/// `kept`), which the arrays do not carry: a value that fails to encode
/// (a `Json` whose serialization fails, an array of two dimensions) fails
/// the call on the short path as on the COPY path, which encodes every
/// offered row. Every kept row's values encoded, so the first of these
/// that fails is the batch's first.
fn check_dropped<T: BulkCreateNew, R: Borrow<T>>(
    model: &'static Model,
    rows: &[R],
    kept: impl ExactSizeIterator<Item = usize>,
) -> Result<(), Error> {
    if kept.len() == rows.len() {
        return Ok(());
    }
    let mut is_kept = vec![false; rows.len()];
    for index in kept {
        is_kept[index] = true;
    }
    first_invalid::<T, R>(model, rows, |index| !is_kept[index]).map_or(Ok(()), Err)
}

/// The error of the first offered row (of those `only` selects) with a
/// value that fails to encode as the short path's arrays take it, if any.
fn first_invalid<T: BulkCreateNew, R: Borrow<T>>(
    model: &'static Model,
    rows: &[R],
    only: impl Fn(usize) -> bool,
) -> Option<Error> {
    let types = &crate::sql::plan(model).copy_types[1..];
    let columns = model.columns();
    let mut buf = BytesMut::new();
    for (index, row) in rows.iter().enumerate().filter(|&(index, _)| only(index)) {
        let values = row.borrow().copy_values();
        for (c, value) in values.as_ref().iter().enumerate() {
            buf.clear();
            let checked =
                value.check().and_then(|()| put_value(*value, &types[c], &mut buf)).and_then(
                    |len| match ArrayColumn::of(columns[c].pg_type(), 1) {
                        Some(mut parts) => parts.push(usize::try_from(len).ok().map(|_| &buf[4..])),
                        None => Ok(()),
                    },
                );
            if let Err(source) = checked {
                return Some(invalid(model, index, c, source));
            }
        }
    }
    None
}

/// The error of the value of column `c` in row `row`.
fn invalid(model: &Model, row: usize, c: usize, source: ValueError) -> Error {
    Error::InvalidValue { row, field: model.columns()[c].field(), source }
}

/// For [`encode_arrays_packed`]: every value checked, then each key once
/// (its first offered row's position) in key order, with its form.
fn packed_keys<T: BulkCreateNew, R: Borrow<T>>(
    model: &'static Model,
    rows: &[R],
    key: &KeyForm,
) -> Result<Vec<(u128, usize)>, Error> {
    let types = &crate::sql::plan(model).copy_types[1..];
    let mut value_buf = BytesMut::with_capacity(16);
    let mut keyed: Vec<(u128, usize)> = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        let values = row.borrow().copy_values();
        let values = values.as_ref();
        for (c, value) in values.iter().enumerate() {
            value.check().map_err(|source| invalid(model, index, c, source))?;
        }
        let mut form = [0u8; 16];
        for k in &key.columns {
            value_buf.clear();
            let len = put_value(values[k.column], &types[k.column], &mut value_buf)
                .map_err(|source| invalid(model, index, k.column, source))?;
            let value = match usize::try_from(len) {
                Err(_) => None,
                Ok(len) if len + usize::from(k.nullable) == k.width => Some(&value_buf[4..]),
                Ok(len) => {
                    let message = format!("{len} bytes for a value of type {}", k.ty.sql_name());
                    return Err(invalid(model, index, k.column, ValueError::Encode(message)));
                }
            };
            types::write_sort_form(k.ty, k.nullable, value, &mut form[k.at..k.at + k.width]);
        }
        keyed.push((u128::from_be_bytes(form), index));
    }
    keyed.sort_unstable();
    keyed.dedup_by_key(|(form, _)| *form);
    Ok(keyed)
}

/// For [`encode_arrays_packed`]: appends to `arrays` the array of column `c`
/// (three for an array column: see [`ArrayColumn`]), rows in the order of
/// `keyed`.
fn packed_column<T: BulkCreateNew, R: Borrow<T>>(
    model: &'static Model,
    rows: &[R],
    keyed: &[(u128, usize)],
    c: usize,
    arrays: &mut Vec<Encoded>,
) -> Result<(), Error> {
    let ty = &crate::sql::plan(model).copy_types[1 + c];
    let column = &model.columns()[c];
    if let Some(mut parts) = ArrayColumn::of(column.pg_type(), keyed.len()) {
        let mut value_buf = BytesMut::new();
        for &(_, index) in keyed {
            let values = rows[index].borrow().copy_values();
            value_buf.clear();
            let len = put_value(values.as_ref()[c], ty, &mut value_buf).map_err(|e| invalid(model, index, c, e))?;
            let value = usize::try_from(len).ok().map(|_| &value_buf[4..]);
            parts.push(value).map_err(|source| invalid(model, index, c, source))?;
        }
        arrays.extend(parts.finish());
        return Ok(());
    }
    let guess = keyed.len() * (4 + types::fixed_width(column.pg_type()).unwrap_or(16));
    let mut out = array_header(ty, false, keyed.len(), guess);
    let mut has_null = false;
    for &(_, index) in keyed {
        let values = rows[index].borrow().copy_values();
        let len = put_value(values.as_ref()[c], ty, &mut out).map_err(|source| invalid(model, index, c, source))?;
        has_null |= len < 0;
    }
    if has_null {
        // The header's flag: the array holds NULLs.
        out[4..8].copy_from_slice(&1i32.to_be_bytes());
    }
    arrays.push(Encoded(out.freeze()));
    Ok(())
}

/// The positions of the rows in key order, each key once (the first offered
/// row of it: the sorts are stable). `key` lists the key's columns (their
/// index in `cols`, and the column) in key order; every one is
/// [client-orderable](crate::types::PgType::client_orderable).
///
/// With a [`KeyForm`] (every key column has a fixed width), each row's key
/// is first written in its form, whose bytes sort as the key does, so the
/// sort compares byte strings instead of decoding the columns at every
/// comparison. (Forms of up to 16 bytes take [`encode_arrays_packed`].)
fn first_of_each_key_in_order(cols: &ColumnBuffers, key: &[(usize, &Column)], form: Option<&KeyForm>) -> Vec<usize> {
    let n = cols.rows;
    match form {
        Some(KeyForm { columns, width }) => {
            let width = *width;
            let mut forms = vec![0u8; n * width];
            for (i, form) in forms.chunks_exact_mut(width).enumerate() {
                for k in columns {
                    types::write_sort_form(k.ty, k.nullable, cols.value(k.column, i), &mut form[k.at..k.at + k.width]);
                }
            }
            let form = |i: usize| &forms[i * width..(i + 1) * width];
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| form(a).cmp(form(b)));
            order.dedup_by(|later, kept| form(*later) == form(*kept));
            order
        }
        None => {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| {
                key.iter()
                    .map(|&(c, k)| types::order_key(k.pg_type(), cols.value(c, a), cols.value(c, b)))
                    .find(|o| o.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            order.dedup_by(|later, kept| key.iter().all(|&(c, _)| cols.value(c, *later) == cols.value(c, *kept)));
            order
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ColumnSpec;
    use crate::types::{PgType, order_key};

    /// Column buffers holding `rows` (each a value per column, `None` for NULL).
    fn buffers(types: &[PgType], rows: &[Vec<Option<Vec<u8>>>]) -> ColumnBuffers {
        let mut elements: Vec<BytesMut> = types.iter().map(|_| BytesMut::new()).collect();
        let mut spans: Vec<Vec<(usize, i32)>> = types.iter().map(|_| Vec::new()).collect();
        let mut has_null = vec![false; types.len()];
        for row in rows {
            for (c, value) in row.iter().enumerate() {
                let at = elements[c].len();
                let len = value.as_ref().map_or(-1, |v| v.len() as i32);
                elements[c].put_i32(len);
                if let Some(v) = value {
                    elements[c].put_slice(v);
                }
                has_null[c] |= value.is_none();
                spans[c].push((at, len));
            }
        }
        let types = types.iter().map(|t| t.wire_type()).collect();
        ColumnBuffers { types, elements, spans, has_null, rows: rows.len() }
    }

    /// What `first_of_each_key_in_order` must return, the slow way: a stable
    /// sort with `order_key`, then the first row of each run of equal keys.
    fn reference(cols: &ColumnBuffers, key: &[(usize, &Column)]) -> Vec<usize> {
        let compare = |a: usize, b: usize| {
            key.iter()
                .map(|&(c, k)| order_key(k.pg_type(), cols.value(c, a), cols.value(c, b)))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        };
        let mut order: Vec<usize> = (0..cols.rows).collect();
        order.sort_by(|&a, &b| compare(a, b));
        let mut out: Vec<usize> = Vec::new();
        for i in order {
            if out.last().is_none_or(|&last| compare(last, i).is_ne()) {
                out.push(i);
            }
        }
        out
    }

    #[derive(crate::BulkCreateNew, Debug, Clone)]
    #[bulk(table = "packed", unique(a, b), nulls_not_distinct)]
    struct Packed {
        payload: String,
        a: i64,
        b: Option<i32>,
    }

    #[derive(crate::BulkCreateNew, Debug, Clone)]
    #[bulk(table = "flags", unique(on, day))]
    struct Flags {
        on: bool,
        day: i16,
        note: Option<String>,
    }

    fn bytes(arrays: &[Encoded]) -> Vec<Vec<u8>> {
        arrays.iter().map(|a| a.0.to_vec()).collect()
    }

    #[test]
    fn packed_keys_give_the_arrays_of_the_general_sort() {
        let mut seed = 3u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as i64
        };
        for form in [&crate::sql::plan(Packed::model()).key_form, &crate::sql::plan(Flags::model()).key_form] {
            assert!(form.as_ref().is_some_and(KeyForm::packs), "{form:?}");
        }
        for len in [1, 2, 10, 300] {
            // Few distinct keys: many repeats, NULLs, negative numbers.
            let rows: Vec<Packed> = (0..len)
                .map(|i| Packed {
                    payload: format!("row {i}"),
                    a: next() % 5 - 2,
                    b: (next() % 4 != 0).then(|| (next() % 3 - 1) as i32 * 70_000),
                })
                .collect();
            let packed = encode_arrays_key_ordered::<Packed, _>(Packed::model(), &rows).unwrap();
            let general = encode_arrays_sorted::<Packed, _>(Packed::model(), &rows).unwrap();
            assert_eq!(bytes(&packed), bytes(&general), "{len} rows");
            let flags: Vec<Flags> = (0..len)
                .map(|i| Flags {
                    on: next() % 2 == 0,
                    day: (next() % 5 - 2) as i16,
                    note: (i % 3 == 0).then(String::new),
                })
                .collect();
            let packed = encode_arrays_key_ordered::<Flags, _>(Flags::model(), &flags).unwrap();
            let general = encode_arrays_sorted::<Flags, _>(Flags::model(), &flags).unwrap();
            assert_eq!(bytes(&packed), bytes(&general), "{len} rows");
        }
        // A bad value is reported with its row and field, whichever path.
        let bad = [Packed { payload: "ok".into(), a: 1, b: None }, Packed { payload: "a\0b".into(), a: 0, b: None }];
        for result in [
            encode_arrays_key_ordered::<Packed, _>(Packed::model(), &bad),
            encode_arrays_sorted::<Packed, _>(Packed::model(), &bad),
        ] {
            let err = result.unwrap_err();
            assert_eq!((err.row(), err.field()), (Some(1), Some("payload")), "{err}");
        }
    }

    #[test]
    fn rows_come_in_key_order_once_per_key_whatever_the_key_is() {
        static PACKED: [Column; 3] = [
            ColumnSpec::of("tweet", PgType::Int8).build(),
            ColumnSpec::of("retweeter", PgType::Int8).build(),
            ColumnSpec::of("day", PgType::Date).nullable().build(),
        ];
        static WIDE: [Column; 2] =
            [ColumnSpec::of("id", PgType::Uuid).build(), ColumnSpec::of("at", PgType::Timestamptz).nullable().build()];
        static VARIABLE: [Column; 2] =
            [ColumnSpec::of("owner", PgType::Int4).nullable().build(), ColumnSpec::of("blob", PgType::Bytea).build()];
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 33
        };
        // Keys of 13 to 25 bytes (some with a nullable column), sorted as
        // byte strings; with bytea, sorted column by column.
        let cases: [(&[Column], &[usize]); 5] =
            [(&PACKED, &[1, 0]), (&PACKED, &[2, 0]), (&PACKED, &[1, 0, 2]), (&WIDE, &[0, 1]), (&VARIABLE, &[1, 0])];
        for (columns, key_order) in cases {
            let types: Vec<PgType> = columns.iter().map(Column::pg_type).collect();
            // Few distinct values per column: many repeated keys, NULLs,
            // negative numbers, and byte strings that are prefixes of others.
            let mut value = |ty: PgType, nullable: bool| -> Option<Vec<u8>> {
                let r = next();
                if nullable && r % 5 == 0 {
                    return None;
                }
                let small = (r % 7) as i64 - 3;
                Some(match ty {
                    PgType::Int8 => small.to_be_bytes().to_vec(),
                    PgType::Int4 | PgType::Date => (small as i32).to_be_bytes().to_vec(),
                    PgType::Timestamptz => (small * 1_000_000).to_be_bytes().to_vec(),
                    PgType::Uuid => [(r % 3) as u8; 16].to_vec(),
                    PgType::Bytea => vec![0xab; (r % 3) as usize],
                    other => unreachable!("{other:?}"),
                })
            };
            let rows: Vec<Vec<Option<Vec<u8>>>> =
                (0..300).map(|_| columns.iter().map(|c| value(c.pg_type(), c.nullable())).collect()).collect();
            let cols = buffers(&types, &rows);
            let key: Vec<(usize, &Column)> = key_order.iter().map(|&i| (i, &columns[i])).collect();
            let form = KeyForm::for_key(columns, key.iter().map(|&(_, k)| k));
            assert_eq!(form.is_some(), !types.contains(&PgType::Bytea), "{columns:?}");
            let got = first_of_each_key_in_order(&cols, &key, form.as_ref());
            assert_eq!(got, reference(&cols, &key), "{columns:?}");
            assert!(got.len() < rows.len(), "the rows repeat keys: {}", got.len());
        }
    }
}
