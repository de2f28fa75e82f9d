//! The SQL: per model, the plan of the plain call's statements ([`plan`]),
//! built once per process; the variants' statements ([`variants`]); how a
//! table's key compares ([`KeyShape`]); and the fragments every statement is
//! assembled from (`fragments`), as text. sea-query builds only the DDL of
//! migrations (`model.rs`). Every identifier is quoted; no value is ever
//! part of a statement's text.

mod fragments;
mod insert;
mod plan;
mod shape;
pub(crate) mod variants;

pub(crate) use fragments::{
    KEY_INDEX_CHANGED, STAGE_CHANGED, before_insert_row_triggers, insert_rule_names, literal, type_oids,
};
pub(crate) use insert::{
    arrays_citus, arrays_filtered, arrays_on_conflict, arrays_plain, returning_all, values_on_conflict,
};
pub(crate) use plan::{KeyForm, plan, scratch_ddl};
pub(crate) use shape::{Dialect, KeyAs, KeyShape, VARHDRSZ};

#[cfg(test)]
pub(crate) use plan::fixtures;
