//! The mapping from Rust field types to PostgreSQL column types.
//!
//! Every field of a `#[derive(BulkCreateNew)]` struct must implement [`BulkColumn`].
//! The derive asks the trait, never the spelling of the type, so aliases and
//! fully qualified paths (`std::option::Option<i64>`) work.
//!
//! | Rust type | PostgreSQL type | feature | key | client-ordered key |
//! | --- | --- | --- | --- | --- |
//! | `i16` | `smallint` | | yes | yes |
//! | `i32` | `integer` | | yes | yes |
//! | `i64` | `bigint` | | yes | yes |
//! | `f32` | `real` | | yes | |
//! | `f64` | `double precision` | | yes | |
//! | `bool` | `boolean` | | yes | yes |
//! | `String`, `&str`, `Cow<str>`, `Box<str>` | `text` | | yes | |
//! | `Vec<u8>`, `&[u8]`, `Cow<[u8]>` | `bytea` | | yes | yes |
//! | `std::net::IpAddr` | `inet` | | yes | |
//! | `chrono::NaiveDate` | `date` | `chrono` | yes | yes |
//! | `chrono::NaiveDateTime` | `timestamp` | `chrono` | yes | yes |
//! | `chrono::DateTime<Utc>` | `timestamptz` | `chrono` | yes | yes |
//! | `chrono::NaiveTime` | `time` | `chrono` | yes | yes |
//! | `time::Date` | `date` | `time` | yes | yes |
//! | `time::PrimitiveDateTime` | `timestamp` | `time` | yes | yes |
//! | `time::OffsetDateTime` | `timestamptz` (stored in UTC) | `time` | yes | yes |
//! | `time::Time` | `time` | `time` | yes | yes |
//! | `uuid::Uuid` | `uuid` | `uuid` | yes | yes |
//! | `rust_decimal::Decimal` | `numeric` | `decimal` | yes | |
//! | `serde_json::Value` | `jsonb` | `json` | yes | |
//! | `bulk_runtime::Json<T>` (feature `json`), `T: Serialize + Debug` | `jsonb` | `json` | yes | |
//! | `Vec<T>`, `Vec<Option<T>>` of a scalar above (not `&str`, `&[u8]`, `Cow`, `Box<str>`, `Json<T>`) | `T[]`, one dimension | as `T` | no | |
//! | an enum with [`#[derive(BulkType)]`](crate::BulkType) | its PostgreSQL enum type | | yes | |
//! | a newtype with [`#[derive(BulkType)]`](crate::BulkType) | the wrapped type's | | as the wrapped type | as the wrapped type |
//! | `Option<T>` of any of the above | the same type, nullable | | with `nulls_not_distinct` | |
//!
//! A field of any other type is a compile error on that field.
//!
//! "Client-ordered key": for a short batch whose key columns are all of
//! these types, the client sorts the rows in PostgreSQL's key order itself
//! (their binary form sorts as PostgreSQL's `ORDER BY` does); other keys are
//! ordered by the server. An enum sorts by declaration order, not by label,
//! so it is never ordered on the client.
//!
//! An array column takes both paths like any other. On the short path,
//! whose `unnest` cannot carry an array per row (PostgreSQL arrays are
//! rectangular), each array column travels as its elements, their rows and
//! the rows' lengths, and the statement rebuilds each row's array.
//!
//! Values keep PostgreSQL's limits: a `numeric` column with a declared scale
//! (`numeric(10, 2)`) rounds, and the schema check refuses it for a key
//! column; `time` and `timestamp` keep microseconds (the `time` crate's
//! nanoseconds are truncated by tokio-postgres).
//!
//! # Enums and newtypes
//!
//! Derive [`BulkType`](crate::BulkType) on your own type: an enum of unit
//! variants becomes a PostgreSQL enum (create the type once with
//! [`PgEnum::create_type_sql`](crate::PgEnum::create_type_sql)), a newtype
//! is stored as the type it wraps. Both read back with tokio-postgres
//! (`row.get::<_, Mood>(0)`).
//!
//! ```
//! use bulk_runtime::{BulkCreateNew, BulkType};
//!
//! #[derive(BulkType, Debug, Clone, Copy)]
//! #[bulk(type = "share_kind")]
//! pub enum Kind {
//!     Retweet,
//!     Quote,
//! }
//!
//! #[derive(BulkType, Debug, Clone, Copy)]
//! pub struct UserId(pub i64);
//!
//! #[derive(BulkCreateNew)]
//! #[bulk(table = "share", unique(tweet, user))]
//! pub struct Share {
//!     pub tweet: i64,
//!     pub user: UserId, // a bigint column, client-ordered like i64
//!     pub kind: Kind,   // a share_kind column
//! }
//! # assert_eq!(Share::model().columns()[2].ddl_type(), "share_kind");
//! ```

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
    /// `numeric`.
    Numeric,
    /// `time` (without time zone).
    Time,
    /// `inet`.
    Inet,
    /// A one-dimensional array of the scalar type it holds (`bigint[]`).
    Array(&'static PgType),
    /// A PostgreSQL enum type, by the name the model declares
    /// (`#[bulk(type = "mood")]` on a [`BulkType`](crate::BulkType) enum).
    /// Its values travel as their labels' text.
    Enum(&'static str),
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
            PgType::Numeric => "numeric",
            PgType::Time => "time without time zone",
            PgType::Inet => "inet",
            PgType::Array(element) => match element {
                PgType::Int2 => "smallint[]",
                PgType::Int4 => "integer[]",
                PgType::Int8 => "bigint[]",
                PgType::Float4 => "real[]",
                PgType::Float8 => "double precision[]",
                PgType::Bool => "boolean[]",
                PgType::Text => "text[]",
                PgType::Bytea => "bytea[]",
                PgType::Date => "date[]",
                PgType::Timestamp => "timestamp without time zone[]",
                PgType::Timestamptz => "timestamp with time zone[]",
                PgType::Uuid => "uuid[]",
                PgType::Jsonb => "jsonb[]",
                PgType::Numeric => "numeric[]",
                PgType::Time => "time without time zone[]",
                PgType::Inet => "inet[]",
                // Not constructed: only scalars have `Vec<T>` columns.
                PgType::Array(_) | PgType::Enum(_) => "unsupported[]",
            },
            PgType::Enum(name) => name,
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
            PgType::Numeric => Type::NUMERIC,
            PgType::Time => Type::TIME,
            PgType::Inet => Type::INET,
            PgType::Array(element) => element.array_wire_type(),
            // An enum's binary form is its label's text; the column's own
            // type (scratch table, casts) tells PostgreSQL the rest.
            PgType::Enum(_) => Type::TEXT,
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
                | PgType::Time
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
            PgType::Numeric => Type::NUMERIC_ARRAY,
            PgType::Time => Type::TIME_ARRAY,
            PgType::Inet => Type::INET_ARRAY,
            // PostgreSQL has no arrays of arrays: the short path sends an
            // array column's elements as one array of the element type
            // (see `sql::fragments::arrays`).
            PgType::Array(element) => element.array_wire_type(),
            PgType::Enum(_) => Type::TEXT_ARRAY,
        }
    }

    /// Live column types (as `format_type(atttypid, NULL)` prints them) that
    /// accept this type through PostgreSQL's assignment casts without losing data.
    pub(crate) fn compatible_sql_names(self) -> Cow<'static, [&'static str]> {
        Cow::Borrowed(match self {
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
            PgType::Numeric => &["numeric"],
            PgType::Time => &["time without time zone"],
            PgType::Inet => &["inet"],
            PgType::Array(_) => return Cow::Owned(vec![self.sql_name()]),
            // `format_type` qualifies the name when its schema is not on the
            // search path; the check compares the unqualified name then.
            PgType::Enum(name) => {
                let unqualified = name.rsplit('.').next().unwrap_or(name);
                return Cow::Owned(if unqualified == name { vec![name] } else { vec![name, unqualified] });
            }
        })
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
        PgType::Int8 | PgType::Timestamp | PgType::Timestamptz | PgType::Time => Some(8),
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
    if matches!(
        ty,
        PgType::Int2
            | PgType::Int4
            | PgType::Int8
            | PgType::Date
            | PgType::Timestamp
            | PgType::Timestamptz
            | PgType::Time
    ) {
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
            PgType::Int2
            | PgType::Int4
            | PgType::Int8
            | PgType::Date
            | PgType::Timestamp
            | PgType::Timestamptz
            | PgType::Time => {
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
/// Implemented for every [`BulkColumn`] type; you never implement it
/// yourself (derive [`BulkType`](crate::BulkType) for a type of your own).
pub trait BulkValue: Sync {
    /// Checks the value on the client, before it is sent.
    ///
    /// # Errors
    /// A [`ValueError`] saying why PostgreSQL would refuse the value.
    fn check(&self) -> Result<(), ValueError>;

    /// Upcast to the tokio-postgres trait object the COPY writer takes.
    fn as_to_sql(&self) -> &(dyn ToSql + Sync);

    /// The number of elements of an array value; `None` for NULL and for a
    /// value that is not an array. (Whether a short batch's arrays are small
    /// enough for the one-statement path.)
    #[doc(hidden)]
    #[inline]
    fn __array_len(&self) -> Option<usize> {
        None
    }
}

/// A Rust type that can be stored in a column by the bulk insert.
///
/// See the [module documentation](self) for the supported types. The derive
/// uses this trait to choose each column's PostgreSQL type; a field whose type
/// does not implement it is a compile error on that field. For your own enums
/// and newtypes, derive it with [`BulkType`](crate::BulkType).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored by `#[derive(BulkCreateNew)]`",
    label = "unsupported column type",
    note = "supported: i16, i32, i64, f32, f64, bool, String, &str, Cow<str>, Box<str>, Vec<u8>, &[u8], Cow<[u8]>, std::net::IpAddr, Vec<T> of these scalars, and Option<T> of each",
    note = "with cargo features of bulk-runtime: chrono (NaiveDate, NaiveDateTime, NaiveTime, DateTime<Utc>), time (Date, PrimitiveDateTime, OffsetDateTime, Time), uuid (Uuid), json (serde_json::Value, Json<T>), decimal (rust_decimal::Decimal)",
    note = "for your own enum or newtype: `#[derive(bulk_runtime::BulkType)]` on it; see the docs of `bulk_runtime::BulkType`",
    note = "mark the field `#[bulk(skip)]` if it is not stored"
)]
pub trait BulkColumn: BulkValue {
    /// The PostgreSQL type of the column.
    const PG_TYPE: PgType;
    /// Whether the column may hold NULL (`Option<T>`).
    const NULLABLE: bool;
    /// A [`BulkType`](crate::BulkType) enum's labels (through an `Option`
    /// or a newtype too), which the schema check looks for in the column's
    /// enum type; empty for every other type.
    #[doc(hidden)]
    const __LABELS: &'static [&'static str] = &[];

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

/// A [`BulkColumn`] that is not an `Option`: what `Option<T>` can wrap.
///
/// Every supported type except `Option<T>` itself.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be wrapped in `Option` in a model",
    label = "not a non-`Option` column type",
    note = "`Option<T>` stores NULL for `None`; `T` must be a supported column type other than `Option`"
)]
pub trait NonOptionColumn: BulkColumn {}

/// A [`BulkColumn`] that can be part of the unique key: every supported type
/// except `Option<T>` and arrays (`Vec<T>` other than `Vec<u8>`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be part of the unique key",
    label = "a unique key field must have a non-`Option`, non-array column type",
    note = "NULL never equals NULL: rows with a NULL key would never be recognised as duplicates",
    note = "add `nulls_not_distinct` to `#[bulk(...)]` on the struct to treat NULLs as equal (PostgreSQL 15 or later), or make the field non-`Option`",
    note = "arrays (`Vec<T>` other than `Vec<u8>`) are not supported in a key"
)]
pub trait NonNullColumn: BulkColumn {}

fn check_text(s: &str) -> Result<(), ValueError> {
    match s.as_bytes().iter().position(|&b| b == 0) {
        Some(offset) => Err(ValueError::NulByte { offset }),
        None => Ok(()),
    }
}

/// The column impls of scalar types: `scalar!(Pg => T)` for an owned type
/// (its key reads back as itself), `scalar!(Pg as Owned => T, ...)` for
/// types whose key reads back as `Owned`.
macro_rules! scalar {
    ($pg:ident => $t:ty) => {
        scalar!($pg as $t => $t);
    };
    ($pg:ident as $owned:ty => $($t:ty),+ $(,)?) => {$(
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
        impl NonOptionColumn for $t {}
        impl NonNullColumn for $t {}
        impl KeyColumn for $t {
            type Owned = $owned;
        }
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
        impl NonOptionColumn for $t {}
        impl NonNullColumn for $t {}
        impl KeyColumn for $t {
            type Owned = String;
        }
    )+};
}

scalar!(Int2 => i16);
scalar!(Int4 => i32);
scalar!(Int8 => i64);
scalar!(Float4 => f32);
scalar!(Float8 => f64);
scalar!(Bool => bool);
scalar!(Bytea as Vec<u8> => Vec<u8>, &[u8], Cow<'_, [u8]>);
text!(String, &str, Cow<'_, str>, Box<str>);

#[cfg(feature = "chrono")]
scalar!(Date => chrono::NaiveDate);
#[cfg(feature = "chrono")]
scalar!(Timestamp => chrono::NaiveDateTime);
#[cfg(feature = "chrono")]
scalar!(Timestamptz => chrono::DateTime<chrono::Utc>);
#[cfg(feature = "chrono")]
scalar!(Time => chrono::NaiveTime);
#[cfg(feature = "uuid")]
scalar!(Uuid => uuid::Uuid);
#[cfg(feature = "decimal")]
scalar!(Numeric => rust_decimal::Decimal);
#[cfg(feature = "time")]
scalar!(Date => time::Date);
#[cfg(feature = "time")]
scalar!(Timestamp => time::PrimitiveDateTime);
#[cfg(feature = "time")]
scalar!(Timestamptz => time::OffsetDateTime);
#[cfg(feature = "time")]
scalar!(Time => time::Time);
scalar!(Inet => std::net::IpAddr);

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
impl NonOptionColumn for serde_json::Value {}
#[cfg(feature = "json")]
impl NonNullColumn for serde_json::Value {}

/// Typed JSON: a `T: Serialize` stored as `jsonb` (read it back as
/// `Json<T>` with `T: Deserialize`). The tokio-postgres wrapper, re-exported.
#[cfg(feature = "json")]
impl<T: serde::Serialize + fmt::Debug + Sync> BulkValue for tokio_postgres::types::Json<T> {
    fn check(&self) -> Result<(), ValueError> {
        Ok(())
    }
    fn as_to_sql(&self) -> &(dyn ToSql + Sync) {
        self
    }
}
#[cfg(feature = "json")]
impl<T: serde::Serialize + fmt::Debug + Sync> BulkColumn for tokio_postgres::types::Json<T> {
    const PG_TYPE: PgType = PgType::Jsonb;
    const NULLABLE: bool = false;
    type __Column = Self;
}
#[cfg(feature = "json")]
impl<T: serde::Serialize + fmt::Debug + Sync> NonOptionColumn for tokio_postgres::types::Json<T> {}
#[cfg(feature = "json")]
impl<T: serde::Serialize + fmt::Debug + Sync> NonNullColumn for tokio_postgres::types::Json<T> {}

/// `Vec<T>` of a scalar: a one-dimensional array column. Not a key type
/// ([`NonNullColumn`] is not implemented).
macro_rules! array {
    ($pg:ident => $($t:ty),+ $(,)?) => {$(
        impl BulkValue for Vec<$t> {
            #[inline]
            fn check(&self) -> Result<(), ValueError> {
                self.iter().try_for_each(BulkValue::check)
            }
            #[inline]
            fn as_to_sql(&self) -> &(dyn ToSql + Sync) { self }
            #[inline]
            fn __array_len(&self) -> Option<usize> { Some(self.len()) }
        }
        impl BulkColumn for Vec<$t> {
            const PG_TYPE: PgType = PgType::Array(&PgType::$pg);
            const NULLABLE: bool = false;
            type __Column = Self;
        }
        impl NonOptionColumn for Vec<$t> {}
        impl BulkValue for Vec<Option<$t>> {
            #[inline]
            fn check(&self) -> Result<(), ValueError> {
                self.iter().try_for_each(BulkValue::check)
            }
            #[inline]
            fn as_to_sql(&self) -> &(dyn ToSql + Sync) { self }
            #[inline]
            fn __array_len(&self) -> Option<usize> { Some(self.len()) }
        }
        impl BulkColumn for Vec<Option<$t>> {
            const PG_TYPE: PgType = PgType::Array(&PgType::$pg);
            const NULLABLE: bool = false;
            type __Column = Self;
        }
        impl NonOptionColumn for Vec<Option<$t>> {}
        // (Never a key: `NonNullColumn` refuses arrays with its own message;
        // this only keeps the key type from adding a second error.)
        impl KeyColumn for Vec<$t> {
            type Owned = Vec<$t>;
        }
        impl KeyColumn for Vec<Option<$t>> {
            type Owned = Vec<Option<$t>>;
        }
    )+};
}

array!(Int2 => i16);
array!(Int4 => i32);
array!(Int8 => i64);
array!(Float4 => f32);
array!(Float8 => f64);
array!(Bool => bool);
array!(Text => String);
array!(Bytea => Vec<u8>);
array!(Inet => std::net::IpAddr);
#[cfg(feature = "chrono")]
array!(Date => chrono::NaiveDate);
#[cfg(feature = "chrono")]
array!(Timestamp => chrono::NaiveDateTime);
#[cfg(feature = "chrono")]
array!(Timestamptz => chrono::DateTime<chrono::Utc>);
#[cfg(feature = "chrono")]
array!(Time => chrono::NaiveTime);
#[cfg(feature = "uuid")]
array!(Uuid => uuid::Uuid);
#[cfg(feature = "decimal")]
array!(Numeric => rust_decimal::Decimal);
#[cfg(feature = "time")]
array!(Date => time::Date);
#[cfg(feature = "time")]
array!(Timestamp => time::PrimitiveDateTime);
#[cfg(feature = "time")]
array!(Timestamptz => time::OffsetDateTime);
#[cfg(feature = "time")]
array!(Time => time::Time);
#[cfg(feature = "json")]
array!(Jsonb => serde_json::Value);

impl<T: NonOptionColumn> BulkValue for Option<T> {
    #[inline]
    fn check(&self) -> Result<(), ValueError> {
        match self {
            Some(v) => v.check(),
            None => Ok(()),
        }
    }
    #[inline]
    fn as_to_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Some(v) => v.as_to_sql(),
            None => &Null,
        }
    }
    #[inline]
    fn __array_len(&self) -> Option<usize> {
        self.as_ref().and_then(BulkValue::__array_len)
    }
}

/// SQL NULL for a column of any type: what `None` sends.
#[derive(Debug)]
struct Null;

impl ToSql for Null {
    fn to_sql(
        &self,
        _: &Type,
        _: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        Ok(tokio_postgres::types::IsNull::Yes)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

impl<T: NonOptionColumn> BulkColumn for Option<T> {
    const PG_TYPE: PgType = T::PG_TYPE;
    const NULLABLE: bool = true;
    const __LABELS: &'static [&'static str] = T::__LABELS;
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

#[cfg(feature = "json")]
impl KeyColumn for serde_json::Value {
    type Owned = serde_json::Value;
}
#[cfg(feature = "json")]
impl<T: serde::de::DeserializeOwned + Send + 'static> KeyColumn for tokio_postgres::types::Json<T> {
    type Owned = tokio_postgres::types::Json<T>;
}

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
        // numeric's binary form is base-10000 digits with a weight: not
        // bytewise ordered; inet orders by family and netmask first; an enum
        // sorts by declaration order, not by label; arrays are never keys.
        for t in [PgType::Numeric, PgType::Inet, PgType::Enum("mood"), PgType::Array(&PgType::Int8)] {
            assert!(!t.client_orderable(), "{t:?}");
        }
        assert!(PgType::Time.client_orderable());
        assert_eq!(order_key(PgType::Time, Some(&1i64.to_be_bytes()), Some(&2i64.to_be_bytes())), Ordering::Less);
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
            (PgType::Time, [0i64, 1, 86_399_999_999, 86_400_000_000].iter().map(|v| int(&v.to_be_bytes())).collect()),
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
            PgType::Numeric,
            PgType::Time,
            PgType::Inet,
            PgType::Array(&PgType::Int8),
            PgType::Array(&PgType::Text),
            PgType::Array(&PgType::Timestamptz),
            PgType::Enum("mood"),
            PgType::Enum("app.mood"),
        ] {
            assert!(t.compatible_sql_names().contains(&t.sql_name()), "{t:?}");
        }
    }

    #[test]
    fn new_types_name_their_columns() {
        #[cfg(feature = "decimal")]
        assert_eq!(<rust_decimal::Decimal as BulkColumn>::PG_TYPE.sql_name(), "numeric");
        #[cfg(feature = "chrono")]
        assert_eq!(<chrono::NaiveTime as BulkColumn>::PG_TYPE.sql_name(), "time without time zone");
        assert_eq!(<Vec<i64> as BulkColumn>::PG_TYPE.sql_name(), "bigint[]");
        assert_eq!(<Vec<Option<String>> as BulkColumn>::PG_TYPE.sql_name(), "text[]");
        assert_eq!(<Option<Vec<bool>> as BulkColumn>::PG_TYPE.wire_type(), Type::BOOL_ARRAY);
        assert_eq!(<std::net::IpAddr as BulkColumn>::PG_TYPE, PgType::Inet);
        assert_eq!(PgType::Enum("mood").wire_type(), Type::TEXT);
        assert_eq!(&*PgType::Enum("app.mood").compatible_sql_names(), ["app.mood", "mood"]);
        assert_eq!(Vec::from([String::from("a"), String::from("b\0")]).check(), Err(ValueError::NulByte { offset: 1 }));
    }
}
