//! Prepared statements of the small-batch path, kept per connection.
//!
//! tokio-postgres has no statement cache and a `Client` carries no user data,
//! so statements are kept in a process-wide map keyed by the client's address
//! and the model. A stale entry (the client was dropped and another took its
//! address, or `DISCARD ALL` / `DEALLOCATE ALL` ran) fails with SQLSTATE 26000
//! (tokio-postgres names statements from a process-wide counter, so a stale
//! name never matches another statement of this process); the caller then
//! evicts it and runs the statement unprepared.
//!
//! Behind a pooler in transaction mode without prepared-statement support
//! (PgBouncer before 1.21, or with `max_prepared_statements = 0`), a
//! statement stays on the backend that prepared it while later transactions
//! run on others: every re-prepare would leave one more statement behind on
//! the pooler's backends. So a client re-prepares once; when its statement
//! goes stale a second time, it stops preparing and runs the statement
//! unnamed from then on ([`prepares`] is false), leaving nothing behind.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio_postgres::{Client, Statement};

use crate::model::Model;

/// Beyond this many entries the map is cleared (entries of dropped clients
/// would otherwise accumulate in a long-lived process).
const MAX_ENTRIES: usize = 4096;

type Key = (usize, usize);

/// A client's statement of one model, and how often one went stale.
#[derive(Default)]
struct Entry {
    statement: Option<Statement>,
    stale: u8,
}

/// Stale statements after which a client stops preparing.
const STALE_LIMIT: u8 = 2;

static STATEMENTS: Mutex<Option<HashMap<Key, Entry>>> = Mutex::new(None);

fn key(client: &Client, model: &'static Model) -> Key {
    (std::ptr::from_ref(client) as usize, std::ptr::from_ref(model) as usize)
}

/// The prepared small-batch statement of `model` on `client`, if this
/// client has one (which also means the client has checked the model).
pub(crate) fn get(client: &Client, model: &'static Model) -> Option<Statement> {
    let map = STATEMENTS.lock().unwrap_or_else(PoisonError::into_inner);
    map.as_ref().and_then(|m| m.get(&key(client, model))).and_then(|e| e.statement.clone())
}

/// Whether `client` prepares the statement of `model`: false once its
/// statement went stale twice (a pooler in transaction mode).
pub(crate) fn prepares(client: &Client, model: &'static Model) -> bool {
    let map = STATEMENTS.lock().unwrap_or_else(PoisonError::into_inner);
    map.as_ref().and_then(|m| m.get(&key(client, model))).is_none_or(|e| e.stale < STALE_LIMIT)
}

/// Prepares the small-batch statement of `model` on `client` and keeps it.
///
/// # Errors
/// The error of `prepare_typed`.
pub(crate) async fn prepare(client: &Client, model: &'static Model) -> Result<Statement, tokio_postgres::Error> {
    let plan = model.plan();
    let statement = client.prepare_typed(&plan.small_insert, &plan.small_types).await?;
    let mut guard = STATEMENTS.lock().unwrap_or_else(PoisonError::into_inner);
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
    map.entry(key(client, model)).or_default().statement = Some(statement.clone());
    Ok(statement)
}

/// Forgets the statement of `model` on `client`, which the server no longer
/// knows, and counts it as stale.
pub(crate) fn evict(client: &Client, model: &'static Model) {
    if let Some(entry) =
        STATEMENTS.lock().unwrap_or_else(PoisonError::into_inner).as_mut().and_then(|m| m.get_mut(&key(client, model)))
    {
        entry.statement = None;
        entry.stale = entry.stale.saturating_add(1);
    }
}
