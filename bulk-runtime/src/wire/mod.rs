//! The wire formats: values in PostgreSQL's binary encoding, as array
//! parameters of the short path ([`encode_arrays`], and in key order,
//! [`order`]) and as binary COPY rows ([`copy`]).

pub(crate) mod copy;
pub(crate) mod limits;
pub(crate) mod order;
mod values;

pub(crate) use copy::{CopyWriter, Fingerprint};
pub(crate) use order::encode_arrays_key_ordered;
#[cfg(test)]
pub(crate) use values::array;
pub(crate) use values::{Encoded, encode_arrays};
