//! Values in PostgreSQL's binary encoding: one column of a batch after
//! another, and as the short path's array parameters.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_postgres::types::{IsNull, ToSql, Type};

use crate::BulkCreateNew;
use crate::error::Error;
use crate::model::{Column, Model};
use crate::types::{self, BulkValue, ValueError};

/// A parameter encoded ahead of time (a binary array), so nothing borrowed
/// from the rows lives across an await.
#[derive(Debug, Clone)]
pub(crate) struct Encoded(pub(crate) Bytes);

impl ToSql for Encoded {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// The batch's values, column by column, each element length-prefixed as in
/// PostgreSQL's binary array format (-1 for NULL).
pub(crate) struct ColumnBuffers {
    pub(crate) types: Vec<Type>,
    pub(crate) elements: Vec<BytesMut>,
    /// Per column, per row: where the element's length prefix starts, and the length.
    pub(crate) spans: Vec<Vec<(usize, i32)>>,
    pub(crate) has_null: Vec<bool>,
    pub(crate) rows: usize,
}

impl ColumnBuffers {
    /// The value of column `c` in row `i` (without its length), `None` for NULL.
    pub(crate) fn value(&self, c: usize, i: usize) -> Option<&[u8]> {
        let (at, len) = self.spans[c][i];
        usize::try_from(len).ok().map(|len| &self.elements[c][at + 4..at + 4 + len])
    }

    /// The element of column `c` in row `i`, with its length prefix.
    pub(crate) fn element(&self, c: usize, i: usize) -> &[u8] {
        let (at, len) = self.spans[c][i];
        &self.elements[c][at..at + 4 + usize::try_from(len).unwrap_or(0)]
    }
}

/// The most bytes of one value PostgreSQL takes: a field is at most 1 GB
/// with its 4-byte header (`MaxAllocSize`, `0x3fff_ffff`). A longer one
/// would reach the server only to be refused, or, sent in one protocol
/// message, to close the connection.
pub(crate) const MAX_VALUE_BYTES: usize = 0x3fff_ffff - 4;

/// Appends `value` to `buf` as PostgreSQL's binary formats lay out a field
/// (COPY) or an array element: its length (-1 for NULL), then its bytes.
/// Returns the length. After an error `buf` may end in a partial value.
pub(crate) fn put_value(value: &dyn BulkValue, ty: &Type, buf: &mut BytesMut) -> Result<i32, ValueError> {
    let at = buf.len();
    buf.put_i32(0);
    let len = match value.as_to_sql().to_sql_checked(ty, buf) {
        Ok(IsNull::Yes) => -1,
        Ok(IsNull::No) => {
            let len = buf.len() - at - 4;
            if len > MAX_VALUE_BYTES {
                return Err(ValueError::Encode(format!(
                    "a value of {len} bytes: PostgreSQL stores at most {MAX_VALUE_BYTES} bytes (1 GB) in one field"
                )));
            }
            in_range(ty, &buf[at + 4..]).map_err(ValueError::Encode)?;
            i32::try_from(len).expect("MAX_VALUE_BYTES fits an i32")
        }
        Err(e) => return Err(ValueError::Encode(e.to_string())),
    };
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(len)
}

/// The first day PostgreSQL stores, 4714-11-24 BC, in days from 2000-01-01.
const FIRST_DAY: i32 = -2_451_545;
/// The first microsecond of a PostgreSQL timestamp (4714-11-24 BC), and
/// the first one past its last (294277-01-01), from 2000-01-01.
const FIRST_MICROSECOND: i64 = -211_813_488_000_000_000;
const END_MICROSECOND: i64 = 9_223_371_331_200_000_000;
/// A day in microseconds: `time` holds 00:00 to 24:00.
const DAY_MICROSECONDS: i64 = 86_400_000_000;

/// Refuses a date, timestamp or time (or an array of them) in binary form
/// `value` that PostgreSQL's receive functions would refuse: the client's
/// types reach further (chrono's years run to ±262,143, a leap second can
/// end past 24:00). Checked on the client so that every path refuses the
/// same values, also in rows the short path leaves out as repeats of a key,
/// which the server never sees.
fn in_range(ty: &Type, value: &[u8]) -> Result<(), String> {
    let element = match *ty {
        Type::DATE_ARRAY => Type::DATE,
        Type::TIMESTAMP_ARRAY => Type::TIMESTAMP,
        Type::TIMESTAMPTZ_ARRAY => Type::TIMESTAMPTZ,
        Type::TIME_ARRAY => Type::TIME,
        Type::DATE | Type::TIMESTAMP | Type::TIMESTAMPTZ | Type::TIME => return scalar_in_range(ty, value),
        _ => return Ok(()),
    };
    // An array: dimensions, flags, element type, (length, lower bound) per
    // dimension, then each element as its length (-1 for NULL) and bytes.
    let word = |at: usize| value.get(at..at + 4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let dims = usize::try_from(word(0).unwrap_or(0)).unwrap_or(0);
    let mut at = 12 + 8 * dims;
    while let Some(len) = word(at) {
        at += 4;
        if let Ok(len) = usize::try_from(len) {
            scalar_in_range(&element, value.get(at..at + len).unwrap_or_default())?;
            at += len;
        }
    }
    Ok(())
}

fn scalar_in_range(ty: &Type, value: &[u8]) -> Result<(), String> {
    let (name, fits) = match *ty {
        Type::DATE => {
            let days = value.try_into().map(i32::from_be_bytes).unwrap_or(0);
            ("date", days >= FIRST_DAY)
        }
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let micros = value.try_into().map(i64::from_be_bytes).unwrap_or(0);
            ("timestamp", (FIRST_MICROSECOND..END_MICROSECOND).contains(&micros))
        }
        Type::TIME => {
            let micros = value.try_into().map(i64::from_be_bytes).unwrap_or(0);
            ("time", (0..=DAY_MICROSECONDS).contains(&micros))
        }
        _ => return Ok(()),
    };
    if fits {
        Ok(())
    } else if name == "time" {
        Err("a time past 24:00:00 (a leap second?): PostgreSQL stores times from 00:00 to 24:00".to_owned())
    } else {
        Err(format!("a {name} outside PostgreSQL's range, which starts at 4714-11-24 BC"))
    }
}

/// Encodes the batch column by column, checking every value on the client.
pub(crate) fn encode_columns<'r, T: BulkCreateNew + 'r>(
    model: &Model,
    rows: impl ExactSizeIterator<Item = &'r T>,
) -> Result<ColumnBuffers, Error> {
    let n = rows.len();
    let columns = model.columns();
    let types: Vec<Type> = columns.iter().map(|c| c.pg_type().wire_type()).collect();
    // Room for every value of a fixed-width type (and a guess for the others)
    // with its length prefix, so the buffers do not grow value by value.
    let mut elements: Vec<BytesMut> = columns
        .iter()
        .map(|c| BytesMut::with_capacity(n * (4 + types::fixed_width(c.pg_type()).unwrap_or(16))))
        .collect();
    let mut spans: Vec<Vec<(usize, i32)>> = columns.iter().map(|_| Vec::with_capacity(n)).collect();
    let mut has_null = vec![false; columns.len()];
    for (index, row) in rows.enumerate() {
        let values = row.copy_values();
        for (c, value) in values.as_ref().iter().enumerate() {
            let fail = |source| Error::InvalidValue { row: index, field: columns[c].field(), source };
            value.check().map_err(fail)?;
            let at = elements[c].len();
            let len = put_value(*value, &types[c], &mut elements[c]).map_err(fail)?;
            has_null[c] |= len < 0;
            spans[c].push((at, len));
        }
    }
    Ok(ColumnBuffers { types, elements, spans, has_null, rows: n })
}

/// A one-dimensional binary array: dimensions, null flag, element type,
/// length, lower bound, then the length-prefixed elements.
pub(crate) fn array(elem: &Type, has_null: bool, n: usize, body: &[u8]) -> Encoded {
    let mut out = array_header(elem, has_null, n, body.len());
    out.put_slice(body);
    Encoded(out.freeze())
}

/// The header of [`array`], in a buffer with room for `body` more bytes.
pub(crate) fn array_header(elem: &Type, has_null: bool, n: usize, body: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(20 + body);
    out.put_i32(1);
    out.put_i32(i32::from(has_null));
    out.put_u32(elem.oid());
    out.put_i32(n as i32);
    out.put_i32(1);
    out
}

/// An array column's parameters on the short path (see
/// `sql::fragments::arrays`): its rows' lengths (NULL for a NULL array),
/// every element of every row in the order sent, and each element's row (a
/// row's place in the arrays sent, from 1).
pub(crate) struct ArrayColumn {
    /// The elements' type.
    elem: Type,
    lengths: BytesMut,
    rows: usize,
    length_null: bool,
    elements: BytesMut,
    element_null: bool,
    owners: BytesMut,
    count: usize,
}

impl ArrayColumn {
    /// The parameters of a column of type `ty`, when it is an array column
    /// of `rows` rows.
    pub(crate) fn of(ty: types::PgType, rows: usize) -> Option<ArrayColumn> {
        let types::PgType::Array(elem) = ty else { return None };
        Some(ArrayColumn {
            elem: elem.wire_type(),
            lengths: BytesMut::with_capacity(8 * rows),
            rows: 0,
            length_null: false,
            elements: BytesMut::new(),
            element_null: false,
            owners: BytesMut::new(),
            count: 0,
        })
    }

    /// The parameters of the column `c` of `cols` (of the model's column
    /// `column`) for the rows `order`, in that order, when it is an array
    /// column.
    pub(crate) fn split(
        column: &Column,
        cols: &ColumnBuffers,
        c: usize,
        order: impl ExactSizeIterator<Item = usize>,
    ) -> Result<Option<[Encoded; 3]>, Error> {
        let Some(mut parts) = ArrayColumn::of(column.pg_type(), order.len()) else { return Ok(None) };
        for i in order {
            let fail = |source| Error::InvalidValue { row: i, field: column.field(), source };
            parts.push(cols.value(c, i)).map_err(fail)?;
        }
        Ok(Some(parts.finish()))
    }

    /// Appends the next row's value: a one-dimensional binary array as
    /// PostgreSQL's binary format lays it out (without the length before
    /// it), or `None` for NULL.
    pub(crate) fn push(&mut self, value: Option<&[u8]>) -> Result<(), ValueError> {
        self.rows += 1;
        let Some(value) = value else {
            self.lengths.put_i32(-1);
            self.length_null = true;
            return Ok(());
        };
        let malformed = || ValueError::Encode("not a one-dimensional binary array".into());
        let word = |at: usize| -> Result<i32, ValueError> {
            let bytes = value.get(at..at + 4).ok_or_else(malformed)?;
            Ok(i32::from_be_bytes(bytes.try_into().expect("four bytes")))
        };
        // Dimensions, NULL flag, element type, then (length, lower bound)
        // per dimension, then the elements, each with its length before it.
        let (len, body) = match word(0)? {
            0 => (0, 12),
            1 => (word(12)?, 20),
            _ => return Err(ValueError::Encode("an array of more than one dimension".into())),
        };
        let elements = value.get(body..).ok_or_else(malformed)?;
        self.lengths.put_i32(4);
        self.lengths.put_i32(len);
        self.element_null |= word(4)? != 0;
        self.elements.put_slice(elements);
        let row = i32::try_from(self.rows).map_err(|_| malformed())?;
        for _ in 0..len {
            self.owners.put_i32(4);
            self.owners.put_i32(row);
        }
        self.count += usize::try_from(len).map_err(|_| malformed())?;
        Ok(())
    }

    /// The three parameters, in their order.
    pub(crate) fn finish(self) -> [Encoded; 3] {
        [
            array(&Type::INT4, self.length_null, self.rows, &self.lengths),
            array(&self.elem, self.element_null, self.count, &self.elements),
            array(&Type::INT4, false, self.count, &self.owners),
        ]
    }
}

/// One binary array per column (and one for the ordinals), in PostgreSQL's
/// array wire format, rows in offered order (three for an array column:
/// see [`ArrayColumn`]).
pub(crate) fn encode_arrays<'r, T: BulkCreateNew + 'r>(
    model: &Model,
    rows: impl ExactSizeIterator<Item = &'r T>,
) -> Result<Vec<Encoded>, Error> {
    let cols = encode_columns(model, rows)?;
    let n = cols.rows;
    let mut ords = BytesMut::with_capacity(12 * n);
    for i in 0..n {
        ords.put_i32(8);
        ords.put_i64(i as i64);
    }
    let mut out = vec![array(&Type::INT8, false, n, &ords)];
    for (c, column) in model.columns().iter().enumerate() {
        match ArrayColumn::split(column, &cols, c, 0..n)? {
            Some(parts) => out.extend(parts),
            None => out.push(array(&cols.types[c], cols.has_null[c], n, &cols.elements[c])),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {

    #[test]
    fn dates_times_and_their_arrays_outside_postgresql_s_range_are_refused() {
        let date = |d: i32| d.to_be_bytes().to_vec();
        let micros = |m: i64| m.to_be_bytes().to_vec();
        assert_eq!(in_range(&Type::DATE, &date(FIRST_DAY)), Ok(()));
        assert!(in_range(&Type::DATE, &date(FIRST_DAY - 1)).unwrap_err().contains("4714-11-24 BC"));
        assert_eq!(in_range(&Type::TIMESTAMPTZ, &micros(FIRST_MICROSECOND)), Ok(()));
        assert!(in_range(&Type::TIMESTAMP, &micros(FIRST_MICROSECOND - 1)).is_err());
        assert!(in_range(&Type::TIMESTAMP, &micros(END_MICROSECOND)).is_err());
        assert_eq!(in_range(&Type::TIME, &micros(DAY_MICROSECONDS)), Ok(()));
        assert!(in_range(&Type::TIME, &micros(DAY_MICROSECONDS + 1)).unwrap_err().contains("24:00"));
        // An array: one dimension of three, a NULL, then a date too early.
        let mut array = Vec::new();
        for word in [1i32, 1, 1082, 3, 1] {
            array.extend(word.to_be_bytes());
        }
        array.extend(4i32.to_be_bytes());
        array.extend(date(0));
        array.extend((-1i32).to_be_bytes());
        array.extend(4i32.to_be_bytes());
        let fine = array.clone();
        array.extend(date(FIRST_DAY - 1));
        assert!(in_range(&Type::DATE_ARRAY, &array).is_err());
        let mut fine = fine;
        fine.extend(date(FIRST_DAY));
        assert_eq!(in_range(&Type::DATE_ARRAY, &fine), Ok(()));
    }

    use super::*;
    use crate::types::PgType;

    #[test]
    fn array_columns_split_into_lengths_elements_and_rows() {
        use tokio_postgres::types::FromSql;

        let encode = |v: Vec<Option<String>>| {
            let mut buf = BytesMut::new();
            v.to_sql(&Type::TEXT_ARRAY, &mut buf).unwrap();
            buf
        };
        let mut parts = ArrayColumn::of(PgType::Array(&PgType::Text), 5).unwrap();
        assert!(ArrayColumn::of(PgType::Text, 5).is_none());
        parts.push(Some(&encode(vec![Some("a".into()), None, Some(String::new())]))).unwrap();
        parts.push(None).unwrap();
        parts.push(Some(&encode(vec![]))).unwrap();
        // An empty array of no dimension, as PostgreSQL itself sends `'{}'`.
        parts.push(Some(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 25])).unwrap();
        parts.push(Some(&encode(vec![None]))).unwrap();
        let [lengths, elements, rows] = parts.finish();
        let lengths = Vec::<Option<i32>>::from_sql(&Type::INT4_ARRAY, &lengths.0).unwrap();
        assert_eq!(lengths, [Some(3), None, Some(0), Some(0), Some(1)]);
        let elements = Vec::<Option<String>>::from_sql(&Type::TEXT_ARRAY, &elements.0).unwrap();
        assert_eq!(elements, [Some("a".into()), None, Some(String::new()), None]);
        let rows = Vec::<i32>::from_sql(&Type::INT4_ARRAY, &rows.0).unwrap();
        assert_eq!(rows, [1, 1, 1, 5]);

        // Two dimensions, or a value cut short, are refused.
        let mut parts = ArrayColumn::of(PgType::Array(&PgType::Int4), 1).unwrap();
        let two_dims = [0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 23, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
        assert!(
            matches!(parts.push(Some(&two_dims)), Err(ValueError::Encode(e)) if e.contains("more than one dimension"))
        );
        assert!(parts.push(Some(&[0, 0, 0, 1, 0, 0])).is_err());
    }
}
