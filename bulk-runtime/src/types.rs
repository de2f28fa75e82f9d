//! The mapping from Rust field types to PostgreSQL column types.
//!
//! Every field of a `#[derive(BulkCreateNew)]` struct must implement [`BulkColumn`].
//! The derive asks the trait, never the spelling of the type, so aliases and
//! fully qualified paths (`std::option::Option<i64>`) work.
//!
//! | Rust type | PostgreSQL type | feature |
//! | --- | --- | --- |
//! | `i16` | `smallint` | |
//! | `i32` | `integer` | |
//! | `i64` | `bigint` | |
//! | `f32` | `real` | |
//! | `f64` | `double precision` | |
//! | `bool` | `boolean` | |
//! | `String`, `&str`, `Cow<str>`, `Box<str>` | `text` | |
//! | `Vec<u8>`, `&[u8]`, `Cow<[u8]>` | `bytea` | |
//! | `chrono::NaiveDate` | `date` | `chrono` |
//! | `chrono::NaiveDateTime` | `timestamp` | `chrono` |
//! | `chrono::DateTime<Utc>` | `timestamptz` | `chrono` |
//! | `uuid::Uuid` | `uuid` | `uuid` |
//! | `serde_json::Value` | `jsonb` | `json` |
//! | `Option<T>` of any of the above | the same type, nullable | |
//!
//! A field of any other type is a compile error on that field.
//!
//! # Other types
//!
//! For an enum, a newtype or a type of another crate, give the model a field
//! of a supported type and convert when building the row from your own type:
//! an enum to its name (`String`, or `&'static str` in a borrowed row) or to a
//! code (`i16`), a newtype to what it wraps. The model is the shape of the
//! table's row, not necessarily your domain type:
//!
//! ```
//! use bulk_runtime::BulkCreateNew;
//!
//! #[derive(Clone, Copy)]
//! pub enum Kind {
//!     Retweet,
//!     Quote,
//! }
//!
//! pub struct UserId(pub i64);
//!
//! #[derive(BulkCreateNew)]
//! #[bulk(table = "share", unique(tweet, user))]
//! pub struct ShareRow {
//!     pub tweet: i64,
//!     pub user: i64,           // a `UserId`
//!     pub kind: &'static str,  // a `Kind`, by name
//! }
//!
//! fn row(tweet: i64, user: UserId, kind: Kind) -> ShareRow {
//!     let kind = match kind {
//!         Kind::Retweet => "retweet",
//!         Kind::Quote => "quote",
//!     };
//!     ShareRow { tweet, user: user.0, kind }
//! }
//! # let _ = row(1, UserId(2), Kind::Quote);
//! ```
//!
//! The columns are then of the types above (for an enum's names, `text`,
//! with a `CHECK` constraint if you want the database to hold to them).
//! Direct support for more types (`numeric`, the `time` crate, arrays, typed
//! JSON) and a derive or attribute for enums and newtypes is planned; until
//! then, the conversion above is the supported path.

use std::borrow::Cow;
use std::fmt;

use tokio_postgres::types::{ToSql, Type};

/// A PostgreSQL column type that a model field can be stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PgType {
    /// `smallint` (`int2`).
    Int2,
    /// `integer` (`int4`).
    Int4,
    /// `bigint` (`int8`).
    Int8,
    /// `real` (`float4`).
    Float4,
    /// `double precision` (`float8`).
    Float8,
    /// `boolean`.
    Bool,
    /// `text`.
    Text,
    /// `bytea`.
    Bytea,
    /// `date`.
    Date,
    /// `timestamp` (without time zone).
    Timestamp,
    /// `timestamptz` (with time zone).
    Timestamptz,
    /// `uuid`.
    Uuid,
    /// `jsonb`.
    Jsonb,
}

impl PgType {
    /// The type's name as PostgreSQL's `format_type` prints it, used in DDL.
    pub const fn sql_name(self) -> &'static str {
        match self {
            PgType::Int2 => "smallint",
            PgType::Int4 => "integer",
            PgType::Int8 => "bigint",
            PgType::Float4 => "real",
            PgType::Float8 => "double precision",
            PgType::Bool => "boolean",
            PgType::Text => "text",
            PgType::Bytea => "bytea",
            PgType::Date => "date",
            PgType::Timestamp => "timestamp without time zone",
            PgType::Timestamptz => "timestamp with time zone",
            PgType::Uuid => "uuid",
            PgType::Jsonb => "jsonb",
        }
    }

    /// The tokio-postgres type used on the wire (binary COPY).
    pub fn wire_type(self) -> Type {
        match self {
            PgType::Int2 => Type::INT2,
            PgType::Int4 => Type::INT4,
            PgType::Int8 => Type::INT8,
            PgType::Float4 => Type::FLOAT4,
            PgType::Float8 => Type::FLOAT8,
            PgType::Bool => Type::BOOL,
            PgType::Text => Type::TEXT,
            PgType::Bytea => Type::BYTEA,
            PgType::Date => Type::DATE,
            PgType::Timestamp => Type::TIMESTAMP,
            PgType::Timestamptz => Type::TIMESTAMPTZ,
            PgType::Uuid => Type::UUID,
            PgType::Jsonb => Type::JSONB,
        }
    }

    /// Whether the binary form of this type, compared as [`order_key`]
    /// prepares it, sorts as PostgreSQL's `ORDER BY` does (no collation, no
    /// special float values, no jsonb rules).
    pub(crate) fn client_orderable(self) -> bool {
        matches!(
            self,
            PgType::Int2
                | PgType::Int4
                | PgType::Int8
                | PgType::Bool
                | PgType::Date
                | PgType::Timestamp
                | PgType::Timestamptz
                | PgType::Uuid
                | PgType::Bytea
        )
    }

    /// The array type of [`wire_type`](Self::wire_type), for the small-batch path.
    pub fn array_wire_type(self) -> Type {
        match self {
            PgType::Int2 => Type::INT2_ARRAY,
            PgType::Int4 => Type::INT4_ARRAY,
            PgType::Int8 => Type::INT8_ARRAY,
            PgType::Float4 => Type::FLOAT4_ARRAY,
            PgType::Float8 => Type::FLOAT8_ARRAY,
            PgType::Bool => Type::BOOL_ARRAY,
            PgType::Text => Type::TEXT_ARRAY,
            PgType::Bytea => Type::BYTEA_ARRAY,
            PgType::Date => Type::DATE_ARRAY,
            PgType::Timestamp => Type::TIMESTAMP_ARRAY,
            PgType::Timestamptz => Type::TIMESTAMPTZ_ARRAY,
            PgType::Uuid => Type::UUID_ARRAY,
            PgType::Jsonb => Type::JSONB_ARRAY,
        }
    }

    /// Live column types (as `format_type(atttypid, NULL)` prints them) that
    /// accept this type through PostgreSQL's assignment casts without losing data.
    pub(crate) fn compatible_sql_names(self) -> &'static [&'static str] {
        match self {
            PgType::Int2 => &["smallint", "integer", "bigint", "numeric"],
            PgType::Int4 => &["integer", "bigint", "numeric"],
            PgType::Int8 => &["bigint", "numeric"],
            PgType::Float4 => &["real", "double precision"],
            PgType::Float8 => &["double precision"],
            PgType::Bool => &["boolean"],
            PgType::Text => &["text", "character varying", "character", "citext"],
            PgType::Bytea => &["bytea"],
            PgType::Date => &["date"],
            PgType::Timestamp => &["timestamp without time zone"],
            PgType::Timestamptz => &["timestamp with time zone"],
            PgType::Uuid => &["uuid"],
            PgType::Jsonb => &["jsonb", "json"],
        }
    }
}

impl fmt::Display for PgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sql_name())
    }
}

/// The width of the binary form of a fixed-width
/// [`client_orderable`](PgType::client_orderable) type; `None` for bytea
/// and for types the client does not order.
pub(crate) fn fixed_width(ty: PgType) -> Option<usize> {
    match ty {
        PgType::Bool => Some(1),
        PgType::Int2 => Some(2),
        PgType::Int4 | PgType::Date => Some(4),
        PgType::Int8 | PgType::Timestamp | PgType::Timestamptz => Some(8),
        PgType::Uuid => Some(16),
        _ => None,
    }
}

/// Writes into `out` the form of a binary-encoded value (`None` is NULL) of a
/// [fixed-width](fixed_width) type whose bytes compare (as unsigned bytes,
/// `memcmp`) as [`order_key`] compares the values: for a `nullable` column
/// a flag first (0 for a value, 1 for NULL: NULLs last), then the value's
/// bytes with the sign bit flipped for signed integers (zeros for NULL).
/// `out` is `fixed_width(ty)` bytes long, plus one for the flag.
pub(crate) fn write_sort_form(ty: PgType, nullable: bool, value: Option<&[u8]>, out: &mut [u8]) {
    let out = if nullable {
        out[0] = u8::from(value.is_none());
        &mut out[1..]
    } else {
        out
    };
    let Some(value) = value else {
        out.fill(0);
        return;
    };
    out.copy_from_slice(value);
    if matches!(ty, PgType::Int2 | PgType::Int4 | PgType::Int8 | PgType::Date | PgType::Timestamp | PgType::Timestamptz)
    {
        out[0] ^= 0x80;
    }
}

/// Compares two binary-encoded values (without their length prefix; `None`
/// is NULL) of a [`client_orderable`](PgType::client_orderable) type in
/// PostgreSQL's ascending order, NULLs last. Signed integers (and dates and
/// timestamps, which are integers on the wire) compare with the sign bit
/// flipped; booleans, uuids and bytea compare bytewise, shorter first.
pub(crate) fn order_key(ty: PgType, a: Option<&[u8]>, b: Option<&[u8]>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(a), Some(b)) => match ty {
            PgType::Int2 | PgType::Int4 | PgType::Int8 | PgType::Date | PgType::Timestamp | PgType::Timestamptz => {
                let flip = |v: &[u8]| v.first().map(|f| f ^ 0x80);
                flip(a).cmp(&flip(b)).then_with(|| a.get(1..).cmp(&b.get(1..)))
            }
            _ => a.cmp(b),
        },
    }
}

/// Why a value cannot be stored, found on the client before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueError {
    /// A text value contains a NUL byte, which PostgreSQL `text` cannot hold.
    NulByte {
        /// Byte offset of the first NUL in the value.
        offset: usize,
    },
    /// The value could not be encoded for its column type.
    Encode(String),
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueError::NulByte { offset } => {
                write!(f, "text contains a NUL byte at byte offset {offset}, which PostgreSQL text cannot store")
            }
            ValueError::Encode(msg) => write!(f, "cannot encode value: {msg}"),
        }
    }
}

impl std::error::Error for ValueError {}

/// A value the binary COPY stream can carry: object-safe half of [`BulkColumn`].
///
/// Implemented for every [`BulkColumn`] type; you never implement it yourself.
pub trait BulkValue: ToSql + Sync {
    /// Checks the value on the client, before it is sent.
    ///
    /// # Errors
    /// A [`ValueError`] saying why PostgreSQL would refuse the value.
    fn check(&self) -> Result<(), ValueError>;

    /// Upcast to the tokio-postgres trait object the COPY writer takes.
    fn as_to_sql(&self) -> &(dyn ToSql + Sync);
}

/// A Rust type that can be stored in a column by the bulk insert.
///
/// See the [module documentation](self) for the supported types. The derive
/// uses this trait to choose each column's PostgreSQL type; a field whose type
/// does not implement it is a compile error on that field.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored by `#[derive(BulkCreateNew)]`",
    label = "unsupported column type",
    note = "supported: i16, i32, i64, f32, f64, bool, String, &str, Cow<str>, Box<str>, Vec<u8>, &[u8], Cow<[u8]>, and Option<T> of each",
    note = "with cargo features of bulk-runtime: chrono (NaiveDate, NaiveDateTime, DateTime<Utc>), uuid (Uuid), json (serde_json::Value)",
    note = "for an enum, a newtype or another type: store one of these in the field and convert when building the row; see the docs of `bulk_runtime::types`",
    note = "mark the field `#[bulk(skip)]` if it is not stored"
)]
pub trait BulkColumn: BulkValue {
    /// The PostgreSQL type of the column.
    const PG_TYPE: PgType;
    /// Whether the column may hold NULL (`Option<T>`).
    const NULLABLE: bool;

    /// `Self`. The derive checks a unique key field through this projection
    /// (`<T as BulkColumn>::__Column: NonNullColumn`), so a field type that is
    /// not a column type at all gets only the error above, not a second one
    /// about `Option`.
    #[doc(hidden)]
    type __Column: ?Sized;

    /// The value for the COPY stream. The derive calls it as
    /// `<T as BulkColumn>::__bulk_value`, the same path as [`Self::PG_TYPE`],
    /// so an unsupported field type gives one error, not one per use.
    #[doc(hidden)]
    #[inline(always)]
    fn __bulk_value(&self) -> &dyn BulkValue
    where
        Self: Sized,
    {
        self
    }
}

/// A [`BulkColumn`] that is never NULL: every supported type except `Option<T>`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be part of the unique key",
    label = "a unique key field must have a non-`Option` column type",
    note = "NULL never equals NULL: rows with a NULL key would never be recognised as duplicates",
    note = "add `nulls_not_distinct` to `#[bulk(...)]` on the struct to treat NULLs as equal (PostgreSQL 15 or later), or make the field non-`Option`"
)]
pub trait NonNullColumn: BulkColumn {}

fn check_text(s: &str) -> Result<(), ValueError> {
    match s.as_bytes().iter().position(|&b| b == 0) {
        Some(offset) => Err(ValueError::NulByte { offset }),
        None => Ok(()),
    }
}

macro_rules! scalar {
    ($pg:ident => $($t:ty),+ $(,)?) => {$(
        impl BulkValue for $t {
            #[inline]
            fn check(&self) -> Result<(), ValueError> { Ok(()) }
            #[inline]
            fn as_to_sql(&self) -> &(dyn ToSql + Sync) { self }
        }
        impl BulkColumn for $t {
            const PG_TYPE: PgType = PgType::$pg;
            const NULLABLE: bool = false;
            type __Column = Self;
        }
        impl NonNullColumn for $t {}
    )+};
}

macro_rules! text {
    ($($t:ty),+ $(,)?) => {$(
        impl BulkValue for $t {
            #[inline]
            fn check(&self) -> Result<(), ValueError> { check_text(self) }
            #[inline]
            fn as_to_sql(&self) -> &(dyn ToSql + Sync) { self }
        }
        impl BulkColumn for $t {
            const PG_TYPE: PgType = PgType::Text;
            const NULLABLE: bool = false;
            type __Column = Self;
        }
        impl NonNullColumn for $t {}
    )+};
}

scalar!(Int2 => i16);
scalar!(Int4 => i32);
scalar!(Int8 => i64);
scalar!(Float4 => f32);
scalar!(Float8 => f64);
scalar!(Bool => bool);
scalar!(Bytea => Vec<u8>, &[u8], Cow<'_, [u8]>);
text!(String, &str, Cow<'_, str>, Box<str>);

#[cfg(feature = "chrono")]
scalar!(Date => chrono::NaiveDate);
#[cfg(feature = "chrono")]
scalar!(Timestamp => chrono::NaiveDateTime);
#[cfg(feature = "chrono")]
scalar!(Timestamptz => chrono::DateTime<chrono::Utc>);
#[cfg(feature = "uuid")]
scalar!(Uuid => uuid::Uuid);

#[cfg(feature = "json")]
impl BulkValue for serde_json::Value {
    fn check(&self) -> Result<(), ValueError> {
        Ok(())
    }
    fn as_to_sql(&self) -> &(dyn ToSql + Sync) {
        self
    }
}
#[cfg(feature = "json")]
impl BulkColumn for serde_json::Value {
    const PG_TYPE: PgType = PgType::Jsonb;
    const NULLABLE: bool = false;
    type __Column = Self;
}
#[cfg(feature = "json")]
impl NonNullColumn for serde_json::Value {}

impl<T: NonNullColumn> BulkValue for Option<T> {
    #[inline]
    fn check(&self) -> Result<(), ValueError> {
        match self {
            Some(v) => v.check(),
            None => Ok(()),
        }
    }
    #[inline]
    fn as_to_sql(&self) -> &(dyn ToSql + Sync) {
        self
    }
}

impl<T: NonNullColumn> BulkColumn for Option<T> {
    const PG_TYPE: PgType = T::PG_TYPE;
    const NULLABLE: bool = true;
    type __Column = Self;
}

/// The owned Rust type a key field's value is read back as, for the
/// model's key type ([`BulkCreateNew::Key`](crate::BulkCreateNew::Key)):
/// itself for owned types, `String` for borrowed text, `Vec<u8>` for
/// borrowed bytes, `Option<_>` of that for a nullable field.
#[doc(hidden)]
pub trait KeyColumn {
    /// The owned type.
    type Owned: for<'a> tokio_postgres::types::FromSql<'a> + Send + 'static;
}

macro_rules! key_as {
    ($owned:ty => $($t:ty),+ $(,)?) => {$(
        impl KeyColumn for $t {
            type Owned = $owned;
        }
    )+};
}

key_as!(i16 => i16);
key_as!(i32 => i32);
key_as!(i64 => i64);
key_as!(f32 => f32);
key_as!(f64 => f64);
key_as!(bool => bool);
key_as!(Vec<u8> => Vec<u8>, &[u8], Cow<'_, [u8]>);
key_as!(String => String, &str, Cow<'_, str>, Box<str>);
#[cfg(feature = "chrono")]
key_as!(chrono::NaiveDate => chrono::NaiveDate);
#[cfg(feature = "chrono")]
key_as!(chrono::NaiveDateTime => chrono::NaiveDateTime);
#[cfg(feature = "chrono")]
key_as!(chrono::DateTime<chrono::Utc> => chrono::DateTime<chrono::Utc>);
#[cfg(feature = "uuid")]
key_as!(uuid::Uuid => uuid::Uuid);
#[cfg(feature = "json")]
key_as!(serde_json::Value => serde_json::Value);

impl<T: KeyColumn> KeyColumn for Option<T> {
    type Owned = Option<T::Owned>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_bytes_are_found_with_their_offset() {
        assert_eq!("ab\0c".check(), Err(ValueError::NulByte { offset: 2 }));
        assert_eq!(Some(String::from("\0")).check(), Err(ValueError::NulByte { offset: 0 }));
        assert_eq!(Option::<String>::None.check(), Ok(()));
        assert_eq!("plain ünïcode".check(), Ok(()));
    }

    #[test]
    fn client_order_matches_postgresql_order() {
        use std::cmp::Ordering;
        let i8 = |v: i64| v.to_be_bytes().to_vec();
        let mut ints = [5i64, -1, i64::MIN, 0, i64::MAX, -300, 300];
        let mut encoded: Vec<Vec<u8>> = ints.iter().map(|&v| i8(v)).collect();
        encoded.sort_by(|a, b| order_key(PgType::Int8, Some(a), Some(b)));
        ints.sort();
        assert_eq!(encoded, ints.iter().map(|&v| i8(v)).collect::<Vec<_>>());
        let i2 = |v: i16| v.to_be_bytes();
        assert_eq!(order_key(PgType::Int2, Some(&i2(-2)), Some(&i2(1))), Ordering::Less);
        assert_eq!(order_key(PgType::Int4, Some(&7i32.to_be_bytes()), Some(&7i32.to_be_bytes())), Ordering::Equal);
        // bytea: bytewise, a prefix first; NULLs last.
        assert_eq!(order_key(PgType::Bytea, Some(b"ab"), Some(b"abc")), Ordering::Less);
        assert_eq!(order_key(PgType::Bytea, Some(b"\xff"), Some(b"\x00\x01")), Ordering::Greater);
        assert_eq!(order_key(PgType::Int8, None, Some(&i8(i64::MAX))), Ordering::Greater);
        assert_eq!(order_key(PgType::Int8, None, None), Ordering::Equal);
        assert!(!PgType::Text.client_orderable() && !PgType::Float8.client_orderable());
        assert!(!PgType::Jsonb.client_orderable());
    }

    #[test]
    fn sort_forms_compare_as_order_key_does() {
        // A few values of every fixed-width type, edge cases included, each
        // also as NULL for a nullable column.
        let int = |bytes: &[u8]| bytes.to_vec();
        let values: Vec<(PgType, Vec<Vec<u8>>)> = vec![
            (PgType::Bool, vec![vec![0], vec![1]]),
            (PgType::Int2, [i16::MIN, -1, 0, 1, i16::MAX].iter().map(|v| int(&v.to_be_bytes())).collect()),
            (PgType::Int4, [i32::MIN, -70_000, 0, 255, 256, i32::MAX].iter().map(|v| int(&v.to_be_bytes())).collect()),
            (PgType::Date, [i32::MIN, -1, 0, i32::MAX].iter().map(|v| int(&v.to_be_bytes())).collect()),
            (PgType::Int8, [i64::MIN, -300, -1, 0, 1, 300, i64::MAX].iter().map(|v| int(&v.to_be_bytes())).collect()),
            (PgType::Timestamp, [i64::MIN, 0, i64::MAX].iter().map(|v| int(&v.to_be_bytes())).collect()),
            (PgType::Timestamptz, [-5i64, 5].iter().map(|v| int(&v.to_be_bytes())).collect()),
            (PgType::Uuid, vec![vec![0; 16], vec![0xff; 16], (0..16).collect(), (0..16).rev().collect()]),
        ];
        for (ty, values) in values {
            let width = fixed_width(ty).expect("fixed width");
            assert!(values.iter().all(|v| v.len() == width), "{ty:?}");
            for nullable in [false, true] {
                let mut all: Vec<Option<&[u8]>> = values.iter().map(|v| Some(v.as_slice())).collect();
                if nullable {
                    all.push(None);
                }
                let form = |v: Option<&[u8]>| {
                    let mut out = vec![0xaa; width + usize::from(nullable)];
                    write_sort_form(ty, nullable, v, &mut out);
                    out
                };
                for &a in &all {
                    for &b in &all {
                        assert_eq!(form(a).cmp(&form(b)), order_key(ty, a, b), "{ty:?} {a:?} {b:?}");
                    }
                }
            }
        }
        assert_eq!(fixed_width(PgType::Bytea), None);
        assert_eq!(fixed_width(PgType::Text), None);
    }

    #[test]
    fn option_keeps_the_inner_type_and_is_nullable() {
        assert_eq!(<Option<i64> as BulkColumn>::PG_TYPE, PgType::Int8);
        const { assert!(<Option<i64> as BulkColumn>::NULLABLE) };
        const { assert!(!<i64 as BulkColumn>::NULLABLE) };
    }

    #[test]
    fn every_type_is_compatible_with_itself() {
        for t in [
            PgType::Int2,
            PgType::Int4,
            PgType::Int8,
            PgType::Float4,
            PgType::Float8,
            PgType::Bool,
            PgType::Text,
            PgType::Bytea,
            PgType::Date,
            PgType::Timestamp,
            PgType::Timestamptz,
            PgType::Uuid,
            PgType::Jsonb,
        ] {
            assert!(t.compatible_sql_names().contains(&t.sql_name()), "{t:?}");
        }
    }
}
