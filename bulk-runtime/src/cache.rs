//! Prepared statements of the small-batch path, kept per connection.
//!
//! tokio-postgres has no statement cache and a `Client` carries no user data,
//! so statements are kept in a process-wide map keyed by the client's address
//! and the model. A stale entry (the client was dropped and another took its
//! address, or `DISCARD ALL` / `DEALLOCATE ALL` ran) fails with SQLSTATE 26000
//! (tokio-postgres names statements from a process-wide counter, so a stale
//! name never matches another statement of this process); the caller then
//! evicts it and runs the statement unprepared.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio_postgres::{Client, Statement};

use crate::model::Model;

/// Beyond this many entries the map is cleared (entries of dropped clients
/// would otherwise accumulate in a long-lived process).
const MAX_ENTRIES: usize = 4096;

type Key = (usize, usize);

static STATEMENTS: Mutex<Option<HashMap<Key, Statement>>> = Mutex::new(None);

fn key(client: &Client, model: &'static Model) -> Key {
    (std::ptr::from_ref(client) as usize, std::ptr::from_ref(model) as usize)
}

/// The prepared small-batch statement of `model` on `client`, if this
/// client has one (which also means the client has checked the model).
pub(crate) fn get(client: &Client, model: &'static Model) -> Option<Statement> {
    let map = STATEMENTS.lock().unwrap_or_else(PoisonError::into_inner);
    map.as_ref().and_then(|m| m.get(&key(client, model)).cloned())
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
    map.insert(key(client, model), statement.clone());
    Ok(statement)
}

/// Forgets the statement of `model` on `client`.
pub(crate) fn evict(client: &Client, model: &'static Model) {
    if let Some(map) = STATEMENTS.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
        map.remove(&key(client, model));
    }
}
