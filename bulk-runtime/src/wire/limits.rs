//! The row and field of a value that its column's type modifier refuses
//! on the server: text longer than a `varchar(n)` or `char(n)` column
//! takes (SQLSTATE 22001), a number beyond a `numeric(p, s)` column's
//! range once rounded to its scale (22003). PostgreSQL's message names
//! only the type, and the statement that met the value (an insert from
//! arrays or from the scratch table) has no row number to give.
//!
//! The call changes nothing of what the server decides: the same batches
//! succeed and fail as without this module. When the server refuses, the
//! call names the first offered row whose value the column's type
//! modifier, read from the catalog then, refuses (a row the server would
//! not have met, such as a repeat of a key or the row of a stored key that
//! the anti-join left out, can be that first row too: its value is refused
//! all the same). To find it, a [`Watch`] keeps, per column, the rows
//! whose value goes beyond every earlier row's: the first refused row is
//! among them, since a value at most as long (or as large) as an earlier
//! one is refused only if that one is. The short path builds it from the
//! batch, which it holds, once the server refused; the COPY path keeps it
//! as it streams, for its text and `numeric` columns, and for integer
//! columns that were `numeric` with a modifier when the connection last
//! read the table (see [`watched_columns`]): a model of integers alone
//! into columns without modifiers pays nothing for it.

use std::borrow::Borrow;
use std::sync::LazyLock;

use bytes::BytesMut;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::BulkCreateNew;
use crate::error::Error;
use crate::model::Model;
use crate::sql::VARHDRSZ;
use crate::types::PgType;

/// What a column's type modifier limits (also an array column's, for each
/// element).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// `varchar(n)` or `char(n)`: at most `n` characters, after trailing
    /// spaces beyond them are cut (as PostgreSQL cuts them).
    Chars(u32),
    /// `numeric(p, s)`: rounded to `s` places (half away from zero), less
    /// than 10^(p − s) in magnitude. PostgreSQL 15 allows a negative scale
    /// and one larger than the precision.
    Numeric {
        /// `p`.
        precision: i32,
        /// `s`.
        scale: i32,
    },
}

impl Limit {
    /// The limit of a column whose base type is `base` (`pg_type.typname`:
    /// `varchar`, `bpchar`, `numeric`, or their arrays' `_varchar`, ...)
    /// with the type modifier `typmod`; `None` for other types, and for no
    /// modifier (-1).
    pub(crate) fn of(base: &str, typmod: i32) -> Option<Limit> {
        if typmod < VARHDRSZ {
            return None;
        }
        let m = typmod - VARHDRSZ;
        match base.strip_prefix('_').unwrap_or(base) {
            "varchar" | "bpchar" => u32::try_from(m).ok().map(Limit::Chars),
            "numeric" => Some(Limit::Numeric { precision: (m >> 16) & 0xffff, scale: ((m & 0x7ff) ^ 1024) - 1024 }),
            _ => None,
        }
    }

    /// The SQLSTATE of the server's refusal.
    fn sqlstate(self) -> SqlState {
        match self {
            Limit::Chars(_) => SqlState::STRING_DATA_RIGHT_TRUNCATION,
            Limit::Numeric { .. } => SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
        }
    }

    /// Whether the limit refuses a value of `class` (see [`Class`]) of the
    /// kind it limits.
    fn refuses(self, class: Class) -> bool {
        match self {
            Limit::Chars(n) => i64::from(class.0) > i64::from(n),
            Limit::Numeric { precision, scale } => {
                // Its integer digits once rounded: more than p - s, or
                // exactly that many with the rounding carrying into one more.
                let room = precision - scale;
                class.0 > room || (class.0 == room && i64::from(class.1) >= i64::from(precision))
            }
        }
    }
}

/// How far a value goes, as its limit reads it, ordered so that a larger
/// class is refused by every limit that refuses a smaller one:
/// - text: its characters after trailing spaces are cut, and 0;
/// - a number (not zero): its digits before the decimal point (0 or less
///   below 1: 0.05 has -1), and how many of its leading digits rounding
///   may turn into a carry past them (the leading nines, one fewer unless
///   the digit after them is 5 or more: 99.5 has 2, 99.4 has 1), which is
///   what rounding to a scale can add to its integer digits.
type Class = (i32, u32);

/// What kind of values a watched column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Number,
}

/// A watched column: the rows (in offered order) whose value's class is
/// larger than every earlier row's.
#[derive(Debug, Clone)]
struct Breakers {
    kind: Kind,
    /// The wire type of the values (of the elements, for an array column).
    scalar: Type,
    array: bool,
    records: Vec<(usize, Class)>,
}

/// At most this many rows are kept per column (a column whose values grow
/// row after row): beyond them, rows go unnamed.
const MAX_RECORDS: usize = 4096;

impl Breakers {
    /// A watch of a column of type `ty`, when a type modifier can refuse
    /// its values: text, integers (a `numeric` column takes them) and
    /// `numeric`, and arrays of these.
    fn of(ty: PgType) -> Option<Breakers> {
        let (scalar, array) = match ty {
            PgType::Array(element) => (*element, true),
            scalar => (scalar, false),
        };
        let kind = match scalar {
            PgType::Text => Kind::Text,
            PgType::Int2 | PgType::Int4 | PgType::Int8 | PgType::Numeric => Kind::Number,
            _ => return None,
        };
        Some(Breakers { kind, scalar: scalar.wire_type(), array, records: Vec::new() })
    }

    /// Takes the binary value (not NULL) of row `row`.
    fn observe(&mut self, row: usize, value: &[u8]) {
        if !self.array {
            return self.observe_scalar(row, value);
        }
        for element in array_elements(value) {
            self.observe_scalar(row, element);
        }
    }

    fn observe_scalar(&mut self, row: usize, value: &[u8]) {
        let last = self.records.last().map(|&(_, class)| class);
        let class = match self.kind {
            Kind::Text => {
                // (Characters never outnumber bytes: a value of no more
                // bytes than the longest so far has no more characters.)
                if last.is_some_and(|(chars, _)| i64::try_from(value.len()).is_ok_and(|len| len <= i64::from(chars))) {
                    return;
                }
                (text_chars(value), 0)
            }
            Kind::Number => match number_class(&self.scalar, value) {
                Some(class) => class,
                None => return,
            },
        };
        if last.is_none_or(|last| class > last) && self.records.len() < MAX_RECORDS {
            self.records.push((row, class));
        }
    }

    /// The first row whose value `limit` refuses, of those kept.
    fn first_refused(&self, limit: Limit) -> Option<usize> {
        let fits = matches!((self.kind, limit), (Kind::Text, Limit::Chars(_)) | (Kind::Number, Limit::Numeric { .. }));
        if !fits {
            return None;
        }
        self.records.iter().find(|&&(_, class)| limit.refuses(class)).map(|&(row, _)| row)
    }
}

/// The characters of UTF-8 text after its trailing spaces are cut.
fn text_chars(text: &[u8]) -> i32 {
    let end = text.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    let chars = text[..end].iter().filter(|&&b| b & 0xC0 != 0x80).count();
    i32::try_from(chars).unwrap_or(i32::MAX)
}

/// The [`Class`] of a binary `smallint`, `integer`, `bigint` or `numeric`
/// value; `None` for zero, NaN and the infinities (which no modifier
/// refuses) and for what does not parse.
fn number_class(ty: &Type, value: &[u8]) -> Option<Class> {
    let int = match *ty {
        Type::INT2 => i64::from(i16::from_be_bytes(value.try_into().ok()?)),
        Type::INT4 => i64::from(i32::from_be_bytes(value.try_into().ok()?)),
        Type::INT8 => i64::from_be_bytes(value.try_into().ok()?),
        Type::NUMERIC => return numeric_class(value),
        _ => return None,
    };
    let x = int.unsigned_abs();
    if x == 0 {
        return None;
    }
    let digits = x.ilog10() + 1;
    let decimal = (0..digits).rev().map(|place| u8::try_from(x / 10u64.pow(place) % 10).unwrap_or(0));
    Some((i32::try_from(digits).ok()?, carry_reach(decimal)))
}

/// The [`Class`] of a binary `numeric`: digit count, weight, sign and
/// display scale (16 bits each), then base-10,000 digits, the first at
/// 10,000^weight.
fn numeric_class(value: &[u8]) -> Option<Class> {
    let word = |at: usize| value.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(2)? as i16);
    let sign = word(4)?;
    if sign != 0 && sign != 0x4000 {
        return None;
    }
    if value.len() < 8 + 2 * ndigits {
        return None;
    }
    let group = |i: usize| u16::from_be_bytes([value[8 + 2 * i], value[9 + 2 * i]]);
    let first = (0..ndigits).find(|&i| group(i) != 0)?;
    let lead_digits = u32::from(group(first)).ilog10() + 1;
    let point = (weight - i32::try_from(first).ok()?) * 4 + i32::try_from(lead_digits).ok()?;
    let decimal = (first..ndigits).flat_map(|i| {
        let (g, places) = (group(i), if i == first { lead_digits } else { 4 });
        (0..places).rev().map(move |place| u8::try_from(g / 10u16.pow(place) % 10).unwrap_or(0))
    });
    Some((point, carry_reach(decimal)))
}

/// Of a number's decimal digits (most significant first, the first not
/// 0): how many leading digits rounding can carry past (see [`Class`]).
fn carry_reach(mut digits: impl Iterator<Item = u8>) -> u32 {
    let mut nines = 0;
    for digit in digits.by_ref() {
        if digit != 9 {
            return if digit >= 5 { nines } else { nines.saturating_sub(1) };
        }
        nines += 1;
    }
    nines.saturating_sub(1)
}

/// The elements (not NULL) of a binary one-dimensional array; nothing for
/// what does not parse.
fn array_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let int = |at: usize| value.get(at..at + 4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let dims = int(0).unwrap_or(0);
    let count = if dims == 1 { int(12).and_then(|n| usize::try_from(n).ok()).unwrap_or(0) } else { 0 };
    let mut at = 20;
    (0..count).filter_map(move |_| {
        let len = int(at)?;
        at += 4;
        let len = usize::try_from(len).ok()?;
        let element = value.get(at..at + len);
        at += len;
        element
    })
}

/// Per model column, the rows that may hold a value its type modifier
/// refuses (see the [module](self) docs).
#[derive(Debug, Clone, Default)]
pub(crate) struct Watch {
    columns: Vec<Option<Breakers>>,
}

impl Watch {
    /// A watch, for the COPY path, of the model's columns that a type
    /// modifier can limit and that either hold text or `numeric` (which a
    /// modifier added since any check may limit) or `watched` (per model
    /// column: see [`watched_columns`]) marks (integers, which only a
    /// `numeric` column's modifier limits); `None` when there is none.
    pub(crate) fn of_columns(model: &Model, watched: Option<&[bool]>) -> Option<Watch> {
        let columns: Vec<Option<Breakers>> = model
            .columns()
            .iter()
            .enumerate()
            .map(|(c, column)| {
                let scalar = match column.pg_type() {
                    PgType::Array(element) => *element,
                    scalar => scalar,
                };
                let always = matches!(scalar, PgType::Text | PgType::Numeric);
                let watch = always || watched.is_some_and(|w| w.get(c) == Some(&true));
                if watch { Breakers::of(column.pg_type()) } else { None }
            })
            .collect();
        columns.iter().any(Option::is_some).then_some(Watch { columns })
    }

    /// A watch of every column of `model` a type modifier can limit, over
    /// `rows` (a row whose values do not encode is left out: the call
    /// would have refused it before sending anything).
    pub(crate) fn of_rows<T: BulkCreateNew, R: Borrow<T>>(model: &'static Model, rows: &[R]) -> Watch {
        let mut watch = Watch { columns: model.columns().iter().map(|c| Breakers::of(c.pg_type())).collect() };
        let types = &crate::sql::plan(model).copy_types;
        let mut buf = BytesMut::new();
        for (index, row) in rows.iter().enumerate() {
            buf.clear();
            if super::copy::encode_row::<T>(model, types, index, row.borrow(), &mut buf).is_ok() {
                watch.observe_copy_row(index, &buf);
            }
        }
        watch
    }

    /// Takes row `index` as binary COPY encodes it: the field count, then
    /// each field's length (-1 for NULL) and bytes, the row's position
    /// first.
    pub(crate) fn observe_copy_row(&mut self, index: usize, row: &[u8]) {
        let mut at = 2;
        let mut field = |row: &[u8]| -> Option<Option<(usize, usize)>> {
            let len = i32::from_be_bytes(row.get(at..at + 4)?.try_into().ok()?);
            at += 4;
            let Ok(len) = usize::try_from(len) else { return Some(None) };
            let span = (at, at + len);
            at += len;
            Some(Some(span))
        };
        if field(row).is_none() {
            return;
        }
        for column in &mut self.columns {
            let Some(span) = field(row) else { return };
            if let (Some(watch), Some((from, to))) = (column.as_mut(), span) {
                watch.observe(index, &row[from..to]);
            }
        }
    }

    /// Whether `error` may be named by [`name`](Self::name): the server's
    /// refusal of a value for its column's type modifier, with no row.
    pub(crate) fn may_name(&self, error: &Error) -> bool {
        Watch::refers(error) && self.columns.iter().flatten().any(|c| !c.records.is_empty())
    }

    /// Whether `error` is the server's refusal of a value for its column's
    /// type modifier, with no row (whatever this watch holds).
    pub(crate) fn refers(error: &Error) -> bool {
        let refused = [SqlState::STRING_DATA_RIGHT_TRUNCATION, SqlState::NUMERIC_VALUE_OUT_OF_RANGE];
        matches!(error, Error::Database { row: None, .. })
            && error.sqlstate().is_some_and(|code| refused.contains(code))
    }

    /// `error` with the first offered row (and its field) whose value the
    /// column's type modifier refuses, as the catalog on `client` has it
    /// now; `error` as it is when no row is refused or the catalog cannot
    /// be read. The connection's COPY path then watches the columns
    /// found with a modifier (see [`watched_columns`]).
    pub(crate) async fn name(&self, client: &Client, model: &'static Model, error: Error) -> Error {
        let target = crate::sql::plan(model).target_regclass.as_str();
        let Ok(rows) = client.query_typed(LIMITS.as_str(), &[(&target, Type::TEXT)]).await else { return error };
        let live = |name: &str| {
            let row = rows.iter().find(|r| r.get::<_, &str>(0) == name)?;
            Some((row.get::<_, String>(1), row.get::<_, i32>(2)))
        };
        let limits: Vec<Option<Limit>> = model
            .columns()
            .iter()
            .map(|c| live(c.name()).and_then(|(base, typmod)| Limit::of(&base, typmod)))
            .collect();
        let watched = watched_columns(model, live);
        crate::statements::set_watched(client, model, &watched);
        let Some(code) = error.sqlstate() else { return error };
        let first = self
            .columns
            .iter()
            .zip(&limits)
            .enumerate()
            .filter_map(|(c, (watch, limit))| {
                let (watch, limit) = (watch.as_ref()?, (*limit)?);
                if &limit.sqlstate() != code {
                    return None;
                }
                watch.first_refused(limit).map(|row| (row, c))
            })
            .min();
        match first {
            Some((row, c)) => error.at_row(row, model.columns()[c].field()),
            None => error,
        }
    }
}

/// Per column of the table `$1`, its base type's name and type modifier,
/// for those with a modifier (and `numeric` ones).
static LIMITS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT a.attname::text, b.typname, b.typmod FROM pg_catalog.pg_attribute AS a CROSS JOIN LATERAL {} \
          WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
            AND (b.typmod >= 0 OR b.typname IN ('numeric', '_numeric'))",
        crate::schema::base_type("a.atttypid", "a.atttypmod", "b")
    )
});

/// Per model column, whether the COPY path watches it (see
/// [`Watch::of_columns`]), by the base type `base` and modifier `typmod`
/// of the live column of its name (from the schema check's rows): one a
/// type modifier limits, or a `numeric` one, which may get a modifier.
pub(crate) fn watched_columns(model: &Model, live: impl Fn(&str) -> Option<(String, i32)>) -> Vec<bool> {
    model
        .columns()
        .iter()
        .map(|c| {
            live(c.name()).is_some_and(|(base, typmod)| {
                Limit::of(&base, typmod).is_some() || matches!(base.as_str(), "numeric" | "_numeric")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(p: i32, s: i32) -> Limit {
        let m = (p << 16) | (s & 0x7ff);
        Limit::of("numeric", m + VARHDRSZ).unwrap()
    }

    /// PostgreSQL's binary `numeric` of a decimal literal.
    #[cfg(feature = "decimal")]
    fn binary(text: &str) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let d: rust_decimal::Decimal = text.parse().unwrap();
        tokio_postgres::types::ToSql::to_sql(&d, &Type::NUMERIC, &mut buf).unwrap();
        buf.to_vec()
    }

    #[cfg(feature = "decimal")]
    fn refused(limit: Limit, text: &str) -> bool {
        numeric_class(&binary(text)).is_some_and(|class| limit.refuses(class))
    }

    #[test]
    fn modifiers_read_as_postgres_writes_them() {
        assert_eq!(Limit::of("varchar", 9), Some(Limit::Chars(5)));
        assert_eq!(Limit::of("_bpchar", 5), Some(Limit::Chars(1)));
        assert_eq!(Limit::of("varchar", -1), None);
        assert_eq!(Limit::of("text", 9), None);
        // numeric(5, 2), numeric(2, -3) and numeric(3, 5) as PostgreSQL 15
        // writes them in atttypmod.
        assert_eq!(Limit::of("numeric", 327_686), Some(Limit::Numeric { precision: 5, scale: 2 }));
        assert_eq!(Limit::of("_numeric", 133_121), Some(Limit::Numeric { precision: 2, scale: -3 }));
        assert_eq!(Limit::of("numeric", 196_617), Some(Limit::Numeric { precision: 3, scale: 5 }));
    }

    #[cfg(feature = "decimal")]
    #[test]
    fn numbers_are_refused_as_postgres_rounds_them() {
        let n52 = numeric(5, 2);
        for (text, want) in [
            ("999.99", false),
            ("999.994", false),
            ("999.995", true),
            ("-999.995", true),
            ("1000", true),
            ("0.001", false),
            ("0", false),
            ("123.456789", false),
        ] {
            assert_eq!(refused(n52, text), want, "numeric(5, 2) {text}");
        }
        let neg = numeric(2, -3);
        for (text, want) in [("99499", false), ("99500", true), ("1234", false), ("100000", true), ("499", false)] {
            assert_eq!(refused(neg, text), want, "numeric(2, -3) {text}");
        }
        let small = numeric(3, 5);
        for (text, want) in [("0.00999", false), ("0.009994", false), ("0.009995", true), ("0.0123", true)] {
            assert_eq!(refused(small, text), want, "numeric(3, 5) {text}");
        }
        let n30 = numeric(3, 0);
        for (text, want) in [("999.4", false), ("999.5", true), ("0.5", false), ("99999999999999999999", true)] {
            assert_eq!(refused(n30, text), want, "numeric(3, 0) {text}");
        }
    }

    #[test]
    fn integers_are_classed_like_numbers() {
        let n30 = numeric(3, 0);
        let class = |x: i64| number_class(&Type::INT8, &x.to_be_bytes());
        assert_eq!(class(0), None);
        assert!(!n30.refuses(class(999).unwrap()));
        assert!(n30.refuses(class(-1000).unwrap()));
        assert!(n30.refuses(class(i64::MIN).unwrap()));
        assert!(numeric(2, -3).refuses(class(99_500).unwrap()));
        assert!(!numeric(2, -3).refuses(class(99_499).unwrap()));
        assert_eq!(number_class(&Type::INT2, &(-99i16).to_be_bytes()), Some((2, 1)));
    }

    #[test]
    fn text_counts_characters_without_trailing_spaces() {
        assert_eq!(text_chars(b"abc   "), 3);
        assert_eq!(text_chars("äöü x ".as_bytes()), 5);
        assert_eq!(text_chars(b"   "), 0);
        assert!(Limit::Chars(3).refuses((text_chars("abcd".as_bytes()), 0)));
        assert!(!Limit::Chars(3).refuses((text_chars("äöü".as_bytes()), 0)));
    }

    #[test]
    fn the_first_refused_row_is_among_the_records() {
        let mut watch = Breakers::of(PgType::Text).unwrap();
        for (row, text) in ["ab", "a", "abcdef", "abcdefgh", "xyz", "abcdefghij"].iter().enumerate() {
            watch.observe(row, text.as_bytes());
        }
        assert_eq!(watch.records.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 2, 3, 5]);
        assert_eq!(watch.first_refused(Limit::Chars(5)), Some(2));
        assert_eq!(watch.first_refused(Limit::Chars(7)), Some(3));
        assert_eq!(watch.first_refused(Limit::Chars(10)), None);
        assert_eq!(watch.first_refused(Limit::Numeric { precision: 1, scale: 0 }), None);
    }

    #[test]
    fn array_elements_are_watched_one_by_one() {
        let mut body = BytesMut::new();
        for e in ["a", "abcdef"] {
            body.extend_from_slice(&(e.len() as i32).to_be_bytes());
            body.extend_from_slice(e.as_bytes());
        }
        body.extend_from_slice(&(-1i32).to_be_bytes());
        let array = crate::wire::array(&Type::TEXT, true, 3, &body);
        let mut watch = Breakers::of(PgType::Array(&PgType::Text)).unwrap();
        watch.observe(4, &array.0);
        assert_eq!(watch.first_refused(Limit::Chars(5)), Some(4));
        assert_eq!(watch.first_refused(Limit::Chars(6)), None);
    }
}
