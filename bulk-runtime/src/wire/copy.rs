//! Binary COPY: rows encoded into a buffer that goes to the server in
//! chunks, and the fingerprint of a batch's rows.

use std::borrow::Borrow;
use std::pin::Pin;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use sha2::{Digest, Sha256};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, CopyInSink};

use super::limits::Watch;
use super::values::put_value;
use crate::BulkCreateNew;
use crate::error::{Error, Step};
use crate::model::Model;
use crate::repeats::{Repeats, key_hash};
use crate::sql;
use crate::statements;
use crate::types::ValueError;

/// Bytes per message sent to the server during COPY.
pub(crate) const CHUNK: usize = 128 * 1024;

/// The most bytes of COPY data sent in one message: a row of large values
/// goes in several (the server joins them), since the server closes the
/// connection on a message of 1 GB or more.
const MAX_MESSAGE: usize = 64 << 20;

/// The binary COPY header: signature, flags, header extension length.
pub(crate) const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Binary COPY into the session's scratch table: rows are encoded
/// synchronously into a buffer, which goes to the connection in messages of
/// about [`CHUNK`] bytes, so client memory stays flat and no borrow of a row
/// needs to live across an await.
pub(crate) struct CopyWriter {
    sink: Pin<Box<CopyInSink<Bytes>>>,
    buf: BytesMut,
    /// The wire types of the COPY columns (looked up once, not per row).
    types: &'static [Type],
    /// Rows encoded so far.
    pub(crate) offered: u64,
    sent_bytes: u64,
    unsent: bool,
    /// The keys seen so far, to tell whether one may repeat (when asked).
    repeats: Option<Repeats>,
    /// Per column, whether it is part of the key.
    key_columns: &'static [bool],
    /// The batch's fingerprint so far, when asked (a call with a batch id).
    pub(crate) fingerprint: Option<Fingerprint>,
    /// The rows that may hold a value its column's type modifier refuses
    /// (see [`Watch`]), for a table with such columns.
    pub(crate) watch: Option<Watch>,
}

impl CopyWriter {
    /// Starts `COPY ... FROM STDIN (FORMAT binary)` into the scratch table;
    /// with `watch_repeats`, the writer tells whether a key may repeat (see
    /// [`repeats_possible`](Self::repeats_possible)); with `staged`, into the
    /// target's Citus staging table instead (see
    /// [`Model::citus_staging_sql`](crate::Model::citus_staging_sql)).
    pub(crate) async fn start(
        tx: &Client,
        model: &'static Model,
        watch_repeats: bool,
        staged: bool,
    ) -> Result<CopyWriter, Error> {
        // Prepared apart: a COPY statement the server refuses at parse time
        // leaves the connection as it was. One refused as it starts (an
        // ErrorResponse instead of CopyInResponse) leaves tokio-postgres's
        // connection out of step: `copy_in` sent Bind, Execute and Sync, and
        // then sends CopyFail and Sync, so the server answers one
        // ReadyForQuery more than the client waits for, which the next
        // request takes as its answer. The error says so (a pool may not
        // see it closed yet). `BEFORE_COPY` makes the scratch table again
        // rather than let the server refuse the COPY into it for a reason it
        // can see (a column gone, no INSERT privilege); what is left is
        // what no check foresees (a cancel, a lock wait on the staging table).
        let plan = sql::plan(model);
        let copy = if staged { &plan.copy_stage } else { &plan.copy };
        let statement = tx.prepare(copy).await.map_err(Error::at_step(model, Step::Copy))?;
        let sink =
            tx.copy_in::<_, Bytes>(&statement).await.map_err(|e| Error::database(model, Step::Copy, e).broken())?;
        let mut buf = BytesMut::with_capacity(CHUNK + 4096);
        buf.put_slice(COPY_HEADER);
        Ok(CopyWriter {
            sink: Box::pin(sink),
            buf,
            types: &sql::plan(model).copy_types,
            offered: 0,
            sent_bytes: 0,
            unsent: false,
            repeats: if watch_repeats { Some(Repeats::new()) } else { None },
            key_columns: &sql::plan(model).key_columns,
            fingerprint: None,
            watch: Watch::of_columns(model, statements::watched(tx, model).as_deref()),
        })
    }

    /// Encodes one row (its position in the batch is the count so far);
    /// returns whether the buffer is full and should be [flushed](Self::flush).
    pub(crate) fn push<T: BulkCreateNew>(&mut self, model: &'static Model, row: &T) -> Result<bool, Error> {
        let start = self.buf.len();
        encode_row::<T>(model, self.types, self.offered as usize, row, &mut self.buf)?;
        if let Some(repeats) = self.repeats.as_mut().filter(|r| !r.maybe()) {
            // (encode_row wrote a whole row; a row it could not read back
            // would count as a possible repeat: the safe side.)
            repeats.insert(key_hash(&self.buf[start..], self.key_columns));
        }
        if let Some(fingerprint) = self.fingerprint.as_mut() {
            fingerprint.add_row_of(self.types, &self.buf[start..]);
        }
        if let Some(watch) = self.watch.as_mut() {
            watch.observe_copy_row(self.offered as usize, &self.buf[start..]);
        }
        self.offered += 1;
        self.unsent = true;
        Ok(self.buf.len() >= CHUNK)
    }

    /// Whether a key may have come twice so far (see [`repeats`](crate::repeats));
    /// always true when the writer was not asked to watch.
    pub(crate) fn repeats_possible(&self) -> bool {
        self.repeats.as_ref().is_none_or(Repeats::maybe)
    }

    /// Whether rows are buffered but not sent yet.
    pub(crate) fn pending(&self) -> bool {
        self.unsent
    }

    /// Bytes of COPY data sent or buffered so far.
    pub(crate) fn bytes_sent(&self) -> u64 {
        self.sent_bytes + self.buf.len() as u64
    }

    /// Sends what is buffered, in messages of at most [`MAX_MESSAGE`] bytes.
    pub(crate) async fn flush(&mut self, model: &'static Model) -> Result<(), Error> {
        self.sent_bytes += self.buf.len() as u64;
        self.unsent = false;
        let mut data = self.buf.split().freeze();
        while data.len() > MAX_MESSAGE {
            let head = data.split_to(MAX_MESSAGE);
            self.sink.as_mut().send(head).await.map_err(|source| Error::copy(model, source))?;
        }
        self.sink.as_mut().send(data).await.map_err(|source| Error::copy(model, source))
    }

    /// Ends the COPY; returns the rows the server received.
    pub(crate) async fn finish(mut self, model: &'static Model) -> Result<u64, Error> {
        self.buf.put_i16(-1);
        self.flush(model).await?;
        self.sink.as_mut().finish().await.map_err(|source| Error::copy(model, source))
    }
}

/// Appends one row in binary COPY format: the field count, the ordinal, then
/// each value as a length-prefixed encoding. Values are checked on the client
/// first, and an error names the row and the field.
pub(crate) fn encode_row<T: BulkCreateNew>(
    model: &Model,
    types: &[Type],
    index: usize,
    row: &T,
    buf: &mut BytesMut,
) -> Result<(), Error> {
    let values = row.copy_values();
    let values = values.as_ref();
    let start = buf.len();
    buf.put_i16(types.len() as i16);
    buf.put_i32(8);
    buf.put_i64(index as i64);
    for ((value, ty), column) in values.iter().zip(&types[1..]).zip(model.columns()) {
        let fail = |buf: &mut BytesMut, source: ValueError| {
            buf.truncate(start);
            Error::InvalidValue { row: index, field: column.field(), source }
        };
        if let Err(source) = value.check().and_then(|()| put_value(*value, ty, buf).map(drop)) {
            return Err(fail(buf, source));
        }
    }
    Ok(())
}

/// What a batch is, for its batch id: the model, the number of rows and a
/// stable hash of the rows' binary encoding (as sent with `COPY`,
/// each row's position included), written as text in the ledger when the id
/// is claimed. A later call with the same id replays the recorded counts
/// only if its batch has the same fingerprint; another batch (other rows, or
/// another model's) under a used id is an error, never a silent replay.
///
/// The hash is SHA-256 (its first 128 bits written), so it stays the same
/// across processes, versions of Rust and machines, and another batch
/// cannot be made to match a recorded one, even on purpose (a batch whose
/// rows an outsider writes, say).
#[derive(Debug, Clone)]
pub(crate) struct Fingerprint {
    rows: u64,
    hash: Sha256,
}

impl PartialEq for Fingerprint {
    fn eq(&self, other: &Fingerprint) -> bool {
        self.rows == other.rows && self.digest() == other.digest()
    }
}

impl Fingerprint {
    pub(crate) fn new() -> Fingerprint {
        Fingerprint { rows: 0, hash: Sha256::new() }
    }

    /// Adds one row, given as its binary `COPY` encoding (its length first,
    /// so that rows cannot shift into one another).
    pub(crate) fn add_row(&mut self, bytes: &[u8]) {
        self.hash.update((bytes.len() as u64).to_le_bytes());
        self.hash.update(bytes);
        self.rows += 1;
    }

    /// The first 128 bits of the hash so far.
    fn digest(&self) -> [u8; 16] {
        let full = self.hash.clone().finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// Adds one row, given as its binary `COPY` encoding of `types`, with
    /// each jsonb value (alone or in an array) in a canonical form: object
    /// keys sorted, as jsonb stores them. A `Json<T>` whose `T` holds a
    /// `HashMap` serializes its keys in another order each time the map is
    /// built, so the same batch, built again for a retry, would otherwise
    /// have another fingerprint. (Sorted keys are how `serde_json` writes a
    /// `Value` or a `BTreeMap`: such rows hash as they always did.)
    pub(crate) fn add_row_of(&mut self, types: &[Type], bytes: &[u8]) {
        #[cfg(feature = "json")]
        if types.iter().any(|t| *t == Type::JSONB || *t == Type::JSONB_ARRAY)
            && let Some(canonical) = canonical::row(types, bytes)
        {
            return self.add_row(&canonical);
        }
        let _ = types;
        self.add_row(bytes);
    }

    /// The text recorded in the ledger.
    pub(crate) fn text(&self, model: &Model) -> String {
        let hex: String = self.digest().iter().map(|b| format!("{b:02x}")).collect();
        format!("{} rows of {} {hex}", self.rows, model.struct_name())
    }
}

/// The canonical form of a row's jsonb values, for its fingerprint.
#[cfg(feature = "json")]
mod canonical {
    use tokio_postgres::types::Type;

    /// `bytes` (one binary `COPY` row of `types`) with every jsonb value's
    /// object keys sorted; `None` when the row does not read as expected.
    pub(super) fn row(types: &[Type], bytes: &[u8]) -> Option<Vec<u8>> {
        let mut input = bytes;
        let mut out = Vec::with_capacity(bytes.len());
        let fields = take(&mut input, 2)?;
        out.extend_from_slice(fields);
        for ty in types {
            let Some(value) = field(&mut input)? else {
                out.extend_from_slice(&(-1i32).to_be_bytes());
                continue;
            };
            let value = match *ty {
                Type::JSONB => jsonb(value)?,
                Type::JSONB_ARRAY => array(value)?,
                _ => value.to_vec(),
            };
            out.extend_from_slice(&i32::try_from(value.len()).ok()?.to_be_bytes());
            out.extend_from_slice(&value);
        }
        input.is_empty().then_some(out)
    }

    fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if input.len() < n {
            return None;
        }
        let (head, rest) = input.split_at(n);
        *input = rest;
        Some(head)
    }

    fn int(input: &mut &[u8]) -> Option<i32> {
        Some(i32::from_be_bytes(take(input, 4)?.try_into().ok()?))
    }

    /// A length-prefixed field: `Some(None)` for NULL.
    fn field<'a>(input: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
        let len = int(input)?;
        if len < 0 { Some(None) } else { take(input, usize::try_from(len).ok()?).map(Some) }
    }

    /// A binary jsonb value: version 1, then the JSON text, written again
    /// compactly with every object's keys sorted (also where a dependency
    /// turns on `serde_json`'s `preserve_order`).
    ///
    /// `serde_json` holds a number it cannot keep exactly (an integer beyond
    /// 64 bits, more digits than an `f64` keeps) as an `f64`, which jsonb
    /// does not: two such values that jsonb tells apart would read alike.
    /// When the number literals written again differ from those sent, the
    /// literals as sent follow, sorted (the order of an object's members
    /// does not change them).
    fn jsonb(value: &[u8]) -> Option<Vec<u8>> {
        let (&version, text) = value.split_first()?;
        let mut parsed: serde_json::Value = serde_json::from_slice(text).ok()?;
        parsed.sort_all_objects();
        let mut out = vec![version];
        serde_json::to_writer(&mut out, &parsed).ok()?;
        let mut sent = numbers(text);
        let mut written = numbers(&out[1..]);
        sent.sort_unstable();
        written.sort_unstable();
        if sent != written {
            out.push(0);
            for number in sent {
                out.extend_from_slice(number);
                out.push(b',');
            }
        }
        Some(out)
    }

    /// The number literals of the JSON `text`, outside its strings, in order.
    fn numbers(text: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < text.len() {
            match text[i] {
                b'"' => {
                    i += 1;
                    while i < text.len() && text[i] != b'"' {
                        i += if text[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                }
                b'-' | b'0'..=b'9' => {
                    let start = i;
                    while i < text.len() && matches!(text[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                        i += 1;
                    }
                    out.push(&text[start..i]);
                }
                _ => i += 1,
            }
        }
        out
    }

    /// A binary one-dimensional (or empty) array of jsonb.
    fn array(value: &[u8]) -> Option<Vec<u8>> {
        let mut input = value;
        let header = take(&mut input, 12)?;
        let dimensions = usize::try_from(i32::from_be_bytes(header[..4].try_into().ok()?)).ok()?;
        let bounds = take(&mut input, 8 * dimensions)?;
        let mut out = [header, bounds].concat();
        while !input.is_empty() {
            match field(&mut input)? {
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(element) => {
                    let element = jsonb(element)?;
                    out.extend_from_slice(&i32::try_from(element.len()).ok()?.to_be_bytes());
                    out.extend_from_slice(&element);
                }
            }
        }
        Some(out)
    }
}

/// The fingerprint of a short batch: its rows' binary COPY encoding, as the
/// COPY path computes it while streaming.
pub(crate) fn fingerprint<T: BulkCreateNew, R: Borrow<T>>(
    model: &'static Model,
    rows: &[R],
) -> Result<Fingerprint, Error> {
    let types = &sql::plan(model).copy_types;
    let mut fingerprint = Fingerprint::new();
    let mut buf = BytesMut::new();
    for (i, row) in rows.iter().enumerate() {
        buf.clear();
        encode_row::<T>(model, types, i, row.borrow(), &mut buf)?;
        fingerprint.add_row_of(types, &buf);
    }
    Ok(fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "json")]
    #[test]
    fn jsonb_values_are_fingerprinted_with_their_keys_sorted() {
        let row = |json: &str, element: &str| {
            let mut row = 2i16.to_be_bytes().to_vec();
            let field = |row: &mut Vec<u8>, bytes: &[u8]| {
                row.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                row.extend_from_slice(bytes);
            };
            field(&mut row, &[[1u8].as_slice(), json.as_bytes()].concat());
            let mut array = [1i32, 0, Type::JSONB.oid() as i32, 2, 1].map(i32::to_be_bytes).concat();
            field(&mut array, &[[1u8].as_slice(), element.as_bytes()].concat());
            array.extend_from_slice(&(-1i32).to_be_bytes());
            field(&mut row, &array);
            row
        };
        let types = [Type::JSONB, Type::JSONB_ARRAY];
        let of = |bytes: &[u8]| {
            let mut f = Fingerprint::new();
            f.add_row_of(&types, bytes);
            f
        };
        let sorted = row(r#"{"a":[1,{"c":null,"d":"x"}],"b":2.5}"#, r#"{"e":1,"f":2}"#);
        let shuffled = row(r#"{"b": 2.5, "a": [1, {"d": "x", "c": null}]}"#, r#"{"f":2,"e":1}"#);
        assert_eq!(of(&shuffled), of(&sorted));
        // Rows already in that form (a `Value` or a `BTreeMap`) hash as before.
        assert_eq!(of(&sorted), {
            let mut f = Fingerprint::new();
            f.add_row(&sorted);
            f
        });
        assert_ne!(of(&row(r#"{"a":[{"c":null,"d":"x"},1],"b":2.5}"#, r#"{"e":1,"f":2}"#)), of(&sorted));
        // Numbers an `f64` does not keep exactly (as `serde_json` reads
        // them) still tell rows apart, whatever the order of the members.
        let big = |n: &str, m: &str| row(&format!(r#"{{"a":{n},"s":"1\"2","b":{m}}}"#), r#"{"e":1}"#);
        let one = of(&big("100000000000000000001", "0.1000000000000000000001"));
        assert_ne!(one, of(&big("100000000000000000002", "0.1000000000000000000001")));
        assert_ne!(one, of(&big("100000000000000000001", "0.1000000000000000000002")));
        assert_eq!(
            one,
            of(&row(r#"{"b":0.1000000000000000000001,"s":"1\"2","a":100000000000000000001}"#, r#"{"e":1}"#))
        );
    }

    #[test]
    fn fingerprints_tell_batches_apart_and_stay_the_same() {
        let of = |rows: &[&[u8]]| {
            let mut f = Fingerprint::new();
            rows.iter().for_each(|r| f.add_row(r));
            f
        };
        let a = of(&[b"first row", b"second"]);
        assert_eq!(a, of(&[b"first row", b"second"]));
        for other in [of(&[b"second", b"first row"]), of(&[b"first rowsecond"]), of(&[b"first row", b"secone"])] {
            assert_ne!(a, other);
        }
        // Ledgers keep it across processes and versions: it must never
        // change. (The first half of SHA-256 over each row's length, as a
        // little-endian u64, and bytes; checked with Python's hashlib.)
        assert_eq!(
            of(&[b"abc", b"0123456789"]).text(&crate::sql::fixtures::MODEL),
            "2 rows of Retweet 7ade0bb5f9f79a238e47e5b401e7e62f"
        );
    }
}
