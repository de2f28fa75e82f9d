//! Values in PostgreSQL's binary encoding: one column of a batch after
//! another, and as the short path's array parameters.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_postgres::types::{IsNull, ToSql, Type};

use crate::BulkCreateNew;
use crate::error::Error;
use crate::model::Model;
use crate::types::{self, BulkValue, ValueError};

/// A parameter encoded ahead of time (a binary array), so nothing borrowed
/// from the rows lives across an await.
#[derive(Debug)]
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

/// Appends `value` to `buf` as PostgreSQL's binary formats lay out a field
/// (COPY) or an array element: its length (-1 for NULL), then its bytes.
/// Returns the length. After an error `buf` may end in a partial value.
pub(crate) fn put_value(value: &dyn BulkValue, ty: &Type, buf: &mut BytesMut) -> Result<i32, ValueError> {
    let at = buf.len();
    buf.put_i32(0);
    let len = match value.as_to_sql().to_sql_checked(ty, buf) {
        Ok(IsNull::Yes) => -1,
        Ok(IsNull::No) => {
            i32::try_from(buf.len() - at - 4).map_err(|_| ValueError::Encode("value larger than 2 GiB".into()))?
        }
        Err(e) => return Err(ValueError::Encode(e.to_string())),
    };
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(len)
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

/// One binary array per column (and one for the ordinals), in PostgreSQL's
/// array wire format, rows in offered order.
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
    out.extend(
        cols.elements.iter().zip(&cols.types).zip(&cols.has_null).map(|((body, ty), &null)| array(ty, null, n, body)),
    );
    Ok(out)
}
