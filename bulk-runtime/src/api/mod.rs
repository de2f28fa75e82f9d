//! The public face of a call: the [`Bulk`] builder with its options and
//! modes, and the [`Report`] a call returns.
//!
//! Nothing here runs a call: the driver (`call`) implements the builder's
//! `run` methods, so this module imports nothing from it.

mod builder;
pub(crate) mod ledger;
mod report;

pub(crate) use builder::private::Run;
pub use builder::{
    BoxError, Bulk, CreateNew, FromKey, Keep, Mode, NewRow, Progress, ReturningKeys, ReturningKeysWith,
    ReturningSkipped, UpdateColumn, Upsert, Upserting,
};
pub(crate) use builder::{Kind, UpdateSet};
pub use ledger::Ledger;
pub use report::Report;
