//! The COPY path: the session's scratch table, the binary COPY stream into
//! it, and the kind's statements from it.

use std::borrow::Borrow;
use std::pin::Pin;

use futures_util::{FutureExt, Stream, StreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::form::Form;
use super::spec::{Call, counts, deliver, upsert_report};
use crate::BulkCreateNew;
use crate::api::{BoxError, Keep, Kind, Report};
use crate::error::{Error, SchemaProblem, Step};
use crate::model::{Model, quote_ident};
use crate::schema;
use crate::scope::Scope;
use crate::sql::variants::{self, Returned, Source};
use crate::sql::{self, Dialect};
use crate::statements;
use crate::types::PgType;
use crate::wire::{CopyWriter, Fingerprint};

/// What the COPY sent.
pub(crate) struct Sent {
    /// Rows copied.
    pub offered: u64,
    /// Bytes of COPY data.
    pub bytes: u64,
    /// Whether a key may repeat in the batch (always, unless the writer
    /// watched the keys: see [`repeats`](crate::repeats)).
    pub repeats: bool,
    /// Whether the rows went to the target's Citus staging table (see
    /// [`Dialect::CitusStaged`]) instead of the session's scratch table.
    pub staged: bool,
}

/// What [`scratch`] found before the COPY.
pub(crate) struct Before {
    /// Whether the target has a usable id column, when the kind returns ids.
    pub with_id: bool,
    /// Whether the COPY of a plain call may go to the target's Citus
    /// staging table, when the connection's check found it usable: only in
    /// a `READ COMMITTED` transaction (see `Plan::stage_guard`).
    pub may_stage: bool,
    /// Whether two keys the table holds equal are equal in their binary
    /// form too, so that the client's repeat filter sees every repeat (see
    /// [`repeats`](crate::repeats)): not for a float, `numeric` or jsonb
    /// key column (`-0.0` and `0.0`, `1.0` and `1.00`, jsonb key order),
    /// nor for a text key the table compares otherwise than `text` does (a
    /// collation, `citext`, `char(n)`, `varchar(n)`). Otherwise the insert
    /// keeps `DISTINCT ON`, so that a repeat never reaches the table.
    pub bytewise_keys: bool,
}

/// Makes sure the session has the scratch table (after the schema check the
/// first time it sees the model); returns what it found. One round trip
/// when the table exists.
pub(crate) async fn scratch(tx: &Client, model: &'static Model, kind: &Kind) -> Result<Before, Error> {
    let plan = sql::plan(model);
    let id: Option<&str> = if matches!(kind, Kind::Keys) { model.id_column() } else { None };
    let stage_id = model.id_column();
    let params: [(&(dyn ToSql + Sync), Type); 11] = [
        (&plan.scratch_regclass, Type::TEXT),
        (&plan.target_regclass, Type::TEXT),
        (&id, Type::TEXT),
        (&plan.stage_regclass, Type::TEXT),
        (&stage_id, Type::TEXT),
        (&plan.stage_columns, Type::TEXT_ARRAY),
        (&plan.text_key, Type::TEXT_ARRAY),
        (&plan.text_key_nullable, Type::BOOL_ARRAY),
        (&plan.enum_columns.0, Type::TEXT_ARRAY),
        (&plan.enum_columns.1, Type::TEXT_ARRAY),
        (&plan.copy_columns, Type::TEXT_ARRAY),
    ];
    let before = tx.query_typed(&variants::BEFORE_COPY, &params).await.map_err(Error::at_step(model, Step::Scratch))?;
    let (mut exists, with_id, stage, fits, read_committed, plain_text_keys) =
        before.first().map_or((false, false, false, true, false, false), |r| {
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))
        });
    let bytewise_keys = plain_text_keys
        && model
            .unique_key()
            .all(|c| !matches!(c.pg_type(), PgType::Float4 | PgType::Float8 | PgType::Numeric | PgType::Jsonb));
    // Under `REPEATABLE READ` or `SERIALIZABLE` the check reads the catalog
    // as of the transaction's snapshot, which may be older than the
    // target's lock: such a call keeps to the session's scratch table.
    let stage = stage && read_committed;
    if exists && !fits {
        // The key compares otherwise than when the scratch table was made
        // (its key columns took the table's type and collation then), an
        // enum column's type name now finds another type, or the server
        // would refuse the COPY into it as the COPY starts (a column gone,
        // no INSERT for the current role), which leaves the connection out
        // of step (see `CopyWriter::start`), or the target has an `INSERT`
        // or `UPDATE` rule: made again after a check, which finds the table
        // as it is now (and refuses one with such a rule).
        drop_scratch(tx, model).await?;
        statements::forget_prepared(tx, model);
        exists = false;
    }
    let checked = use_scratch(tx, model, exists).await?;
    let dialect = statements::dialect(tx, model);
    let plain = matches!(kind, Kind::CreateNew);
    let staged = dialect == Dialect::CitusStaged && read_committed;
    let opened = stage && dialect == Dialect::Citus && !statements::stage_refused(tx, model);
    if plain && (staged || opened) && !checked {
        // The check again, which decides between the staging table and the
        // session's scratch table, before every plain COPY call that could
        // use the staging table: it may be gone or closed to the current
        // role (a `SET ROLE`), or have become open to it; and the target
        // may have changed since (a column with a volatile default or an
        // identity, another distribution) so that Citus would run the
        // insert from it through the coordinator, where an `ON CONFLICT`
        // insert's command tag counts the rows attempted. One round trip,
        // on a call of more rows than a `VALUES` statement takes.
        schema::verify(tx, model).await?;
    }
    if plain && stage {
        // A staging table the query found usable and the check refused
        // (other columns, a key compared otherwise): not checked again for
        // it on this connection.
        statements::set_stage_refused(tx, model, statements::dialect(tx, model) == Dialect::Citus);
    }
    Ok(Before { with_id, may_stage: read_committed, bytewise_keys })
}

/// Drops the session's scratch table for `model`. Only its owner may: after
/// a `SET ROLE` since another role made it, the drop runs as that role
/// (as `SET LOCAL ROLE`, which the session's own role may take whenever it is
/// a member, as it is of itself), then the role set before is taken again;
/// both are undone with the transaction if the call fails. A table the
/// session's role may not act for either is a clear error.
async fn drop_scratch(tx: &Client, model: &'static Model) -> Result<(), Error> {
    let plan = sql::plan(model);
    let owner = tx
        .query_typed(
            "SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE'), pg_catalog.pg_has_role(session_user, c.relowner, 'MEMBER'), \
                    pg_catalog.pg_get_userbyid(c.relowner)::text, current_user::text \
               FROM pg_catalog.pg_class AS c WHERE c.oid = pg_catalog.to_regclass($1)",
            &[(&plan.scratch_regclass, Type::TEXT)],
        )
        .await
        .map_err(Error::at_step(model, Step::Scratch))?;
    let Some(owner) = owner.first() else { return Ok(()) };
    let drop = format!("DROP TABLE pg_temp.{}", quote_ident(&plan.scratch));
    let (acts_for, may_take, owner_name, current): (bool, bool, String, String) =
        (owner.get(0), owner.get(1), owner.get(2), owner.get(3));
    let sql = if acts_for {
        drop
    } else if may_take {
        // (`set_config`, not `SET LOCAL ROLE`: see `work_mem_sql`.)
        format!(
            "SELECT pg_catalog.set_config('role', {}, true); {drop}; SELECT pg_catalog.set_config('role', {}, true)",
            crate::sql::literal(&owner_name),
            crate::sql::literal(&current)
        )
    } else {
        return Err(Error::SchemaMismatch {
            table: model.qualified_name(),
            model: model.struct_name(),
            problems: vec![SchemaProblem::ScratchTableOfAnotherRole { owner: owner_name, role: current }],
        });
    };
    tx.batch_execute(&sql).await.map_err(Error::at_step(model, Step::Scratch))
}

/// The session's scratch table for `model`, made first (after the schema
/// check) unless it `exists`, and counted as the connection's most recently
/// used; beyond [`SCRATCH_TABLES`](statements::SCRATCH_TABLES) per session,
/// the least recently used one is dropped (see [`statements::scratch_used`]).
/// Returns whether it ran the schema check.
async fn use_scratch(tx: &Client, model: &'static Model, exists: bool) -> Result<bool, Error> {
    let checked = !exists || statements::dialect_unknown(tx, model);
    if !exists {
        create_scratch(tx, model).await?;
    } else if checked {
        // A session whose scratch table this process has not seen checked
        // (a cache cleared): the check finds the table's dialect again.
        schema::verify(tx, model).await?;
    }
    let Some(old) = statements::scratch_used(tx, model, !exists) else { return Ok(checked) };
    // Only a table the current role may drop (after `SET ROLE`, another
    // role's may stay: it is dropped by a later call of its owner, or ends
    // with the session).
    let droppable = tx
        .query_typed(
            "SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class AS c \
             WHERE c.oid = pg_catalog.to_regclass($1)",
            &[(&sql::plan(old).scratch_regclass, Type::TEXT)],
        )
        .await
        .map_err(Error::at_step(model, Step::Scratch))?
        .first()
        .is_some_and(|r| r.get::<_, bool>(0));
    if droppable {
        let sql = format!("DROP TABLE IF EXISTS pg_temp.{}", quote_ident(&sql::plan(old).scratch));
        tx.batch_execute(&sql).await.map_err(Error::at_step(model, Step::Scratch))?;
    }
    Ok(checked)
}

/// Checks the live table against the model and creates the session's scratch
/// table (which also marks the session as checked).
async fn create_scratch(tx: &Client, model: &'static Model) -> Result<(), Error> {
    let shape = schema::verify(tx, model).await?;
    let plan = sql::plan(model);
    // Key columns compared otherwise than the model's types (citext, a
    // collation) take the table's type and collation in the scratch table.
    let create = if shape.is_plain() { plan.create_scratch.clone() } else { sql::scratch_ddl(model, &shape) };
    let sql = format!("{create}; {}", plan.grant_scratch);
    tx.batch_execute(&sql).await.map_err(Error::at_step(model, Step::Scratch))
}

/// Binary COPY of the batch (`head`, then the rest of `rows`) into the
/// scratch table. Rows are encoded synchronously and sent in chunks, so no
/// borrow of a row lives across an await and memory stays flat; when the
/// stream has no row ready, what is buffered goes out first. Progress is
/// reported after each chunk; with a ledger, the batch is fingerprinted.
pub(crate) async fn stream<T, S, R>(
    tx: &Client,
    model: &'static Model,
    head: Vec<R>,
    mut rows: Pin<&mut S>,
    call: &mut Call<'_>,
    before: &Before,
) -> Result<Sent, Error>
where
    T: BulkCreateNew,
    S: Stream<Item = Result<R, BoxError>>,
    R: Borrow<T>,
{
    let plain = matches!(call.kind, Kind::CreateNew);
    let staged = plain && before.may_stage && statements::dialect(tx, model) == Dialect::CitusStaged;
    let mut copy = CopyWriter::start(tx, model, plain && before.bytewise_keys, staged).await?;
    if call.ledger.is_some() {
        copy.fingerprint = Some(Fingerprint::new());
    }
    let mut head = head.into_iter();
    loop {
        let next = match head.next() {
            Some(row) => Some(Ok(row)),
            None => match rows.next().now_or_never() {
                Some(next) => next,
                None => {
                    flush(&mut copy, model, call).await?;
                    rows.next().await
                }
            },
        };
        let row = match next {
            None => break,
            Some(Ok(row)) => row,
            Some(Err(source)) => return Err(Error::Stream { row: copy.offered as usize, source }),
        };
        let full = copy.push::<T>(model, row.borrow())?;
        drop(row);
        if full {
            flush(&mut copy, model, call).await?;
        }
    }
    flush(&mut copy, model, call).await?;
    let sent = Sent { offered: copy.offered, bytes: copy.bytes_sent(), repeats: copy.repeats_possible(), staged };
    call.fingerprint = copy.fingerprint.take();
    call.watch = copy.watch.take();
    let copied = copy.finish(model).await?;
    debug_assert_eq!(copied, sent.offered);
    Ok(sent)
}

/// Sends what the writer holds, if anything, and reports progress.
async fn flush(copy: &mut CopyWriter, model: &'static Model, call: &mut Call<'_>) -> Result<(), Error> {
    if copy.pending() {
        copy.flush(model).await?;
        call.tell(copy.offered, None);
    }
    Ok(())
}

/// The kind's statements from the scratch table (and, inside a caller's
/// transaction, emptying it, which `ON COMMIT DELETE ROWS` would only do at
/// the caller's commit). With `and_commit` (no ledger row to write after
/// them), the commit goes in the same request as the plain call's insert.
pub(crate) async fn insert(
    scope: &mut Scope<'_>,
    model: &'static Model,
    sent: &Sent,
    with_id: bool,
    call: &mut Call<'_>,
    and_commit: bool,
) -> Result<Report, Error> {
    let (tx, nested) = (scope.client(), scope.nested());
    let fail = |source| Error::insert(model, source);
    let none = std::iter::empty::<(&(dyn ToSql + Sync), Type)>;
    let offered = sent.offered;
    let dialect = statements::dialect(tx, model);
    let report = match call.kind {
        Kind::CreateNew => return insert_new(scope, model, sent, and_commit).await,
        Kind::Keys | Kind::Positions => {
            let returned =
                if matches!(call.kind, Kind::Keys) { Returned::Keys { with_id } } else { Returned::Positions };
            let from = Source::Scratch(dialect);
            // On Citus the insert is `ON CONFLICT` alone, in a savepoint:
            // after it failed on a row the table refused (of a stored key,
            // perhaps; nothing written), back to it, and the insert behind
            // Citus's anti-join (see `Form::after_refused`), from the same
            // scratch rows.
            let savepoint = dialect.is_citus().then(|| format!("SAVEPOINT {PLAIN_SAVEPOINT}"));
            let setup: Vec<String> = work_mem_sql(sent, nested).into_iter().chain(savepoint).collect();
            if !setup.is_empty() {
                tx.batch_execute(&setup.join("; ")).await.map_err(Error::at_step(model, Step::Insert))?;
            }
            let mut returning = async |sql: String| {
                let rows = tx.query_typed_raw(&sql, none()).await.map_err(fail)?;
                deliver(model, rows, offered, &mut *call.receiver).await
            };
            let inserted = match returning(variants::returning(model, from, Keep::First, returned)).await {
                Err(e) if dialect.is_citus() && Form::row_refused(&e) => {
                    let again = format!("ROLLBACK TO SAVEPOINT {PLAIN_SAVEPOINT}");
                    tx.batch_execute(&again).await.map_err(Error::at_step(model, Step::Insert))?;
                    returning(variants::returning_filtered(model, from, returned)).await?
                }
                result => result?,
            };
            Report::counts(offered, inserted)
        }
        // On Citus the first statement cannot also delete from the scratch
        // table (see `variants::upsert_forget_inserted`): it returns the
        // positions of the rows it inserted, and a statement of its own
        // deletes their keys' rows.
        Kind::Upsert(set) if dialect.is_citus() => {
            set_work_mem(tx, model, sent, nested).await?;
            let sql = variants::returning(model, Source::Scratch(dialect), set.keep, Returned::Positions);
            let rows = tx.query_typed(&sql, &[]).await.map_err(fail)?;
            let positions = rows.iter().map(|row| row.try_get::<_, i64>(0)).collect::<Result<Vec<i64>, _>>();
            let positions = positions.map_err(fail)?;
            let forget = variants::upsert_forget_inserted(model);
            tx.query_typed(&forget, &[(&positions, Type::INT8_ARRAY)]).await.map_err(fail)?;
            let sql = variants::upsert_update(model, Source::Scratch(dialect), set);
            let (remaining, updated) = counts(model, tx.query_typed_raw(&sql, none()).await.map_err(fail)?).await?;
            let inserted = positions.len() as u64;
            upsert_report(offered, inserted, inserted + remaining, updated)
        }
        Kind::Upsert(set) => {
            set_work_mem(tx, model, sent, nested).await?;
            let sql = variants::upsert_insert_from_scratch(model, set.keep, dialect);
            let (inserted, distinct) = counts(model, tx.query_typed_raw(&sql, none()).await.map_err(fail)?).await?;
            let sql = variants::upsert_update(model, Source::Scratch(dialect), set);
            let (_, updated) = counts(model, tx.query_typed_raw(&sql, none()).await.map_err(fail)?).await?;
            upsert_report(offered, inserted, distinct, updated)
        }
    };
    if nested {
        tx.batch_execute(&sql::plan(model).clear).await.map_err(fail)?;
    }
    Ok(report)
}

/// `work_mem` for the insert's sort, for the rest of the call's own
/// transaction (`set_config(..., true)`, as `SET LOCAL`): room for the
/// batch's tuples (their COPY bytes plus PostgreSQL's per-tuple overhead,
/// twice over for the sort's slack), at least 64 MB, at most 1 GB. Inside a
/// caller's transaction the caller's setting stays. The one place that
/// sizes it. A function, not `SET LOCAL`: with
/// `citus.propagate_set_commands = 'local'`, Citus sends a `SET LOCAL` to
/// the workers the transaction already uses, as the whole query string it
/// came in, the call's insert and guard included.
fn work_mem_sql(sent: &Sent, nested: bool) -> Option<String> {
    let need = 2 * (sent.bytes + 96 * sent.offered) / 1024;
    let kb = need.clamp(64 * 1024, 1024 * 1024);
    (!nested).then(|| format!("SELECT pg_catalog.set_config('work_mem', '{kb}kB', true)"))
}

/// Sends [`work_mem_sql`] on its own (the statements that return rows go
/// through the extended protocol, one statement each).
async fn set_work_mem(tx: &Client, model: &'static Model, sent: &Sent, nested: bool) -> Result<(), Error> {
    match work_mem_sql(sent, nested) {
        Some(sql) => tx.batch_execute(&sql).await.map_err(Error::at_step(model, Step::Insert)),
        None => Ok(()),
    }
}

/// The savepoint around the plain form of the COPY path's insert (on Citus,
/// around each form, and around the returning calls' insert).
const PLAIN_SAVEPOINT: &str = "bulk_create_new_plain";

/// The plain call's insert from the scratch table: the plain form first,
/// inside a savepoint; on `unique_violation` (a key another writer stored
/// meanwhile) back to the savepoint, and the `ON CONFLICT` form on the same
/// scratch rows (see [`Form`]); on Citus, after the `ON CONFLICT` form
/// failed on a row the table refused, back to the savepoint again and the
/// filtered form ([`Form::Filtered`]). One round trip, two
/// after a conflict; with
/// `and_commit` outside a caller's transaction, the commit goes in the same
/// request, so once it is sent the call completes even if its future is
/// dropped. Returns the call's report.
async fn insert_new(
    scope: &mut Scope<'_>,
    model: &'static Model,
    sent: &Sent,
    and_commit: bool,
) -> Result<Report, Error> {
    let nested = scope.nested();
    // The commit rides with the insert, except in a caller's transaction:
    // there the savepoint is released only once the insert has succeeded, so
    // that a dropped call is rolled back to it.
    let commit = (and_commit && !nested).then(|| scope.commit_sql());
    let dialect = match statements::dialect(scope.client(), model) {
        _ if sent.staged => Dialect::CitusStaged,
        dialect => dialect.without_stage(),
    };
    // The rows to delete once inserted: the staging table's, or inside a
    // caller's transaction the scratch table's.
    let plan = sql::plan(model);
    let clear = if sent.staged { Some(plan.clear_stage.as_str()) } else { nested.then_some(plan.clear.as_str()) };
    let mut form = Form::first(model, &Kind::CreateNew, sent.offered, dialect);
    let mut request = Request::default();
    request.push_opt(work_mem_sql(sent, nested).as_deref());
    // From the staging table, a guard follows the `ON CONFLICT` form's
    // insert: the target may have changed since the check so that Citus ran
    // the insert through the coordinator, where its command tag counts the
    // rows attempted (see `Plan::stage_guard`); the call then fails, nothing
    // written. (The plain form's tag counts exactly there too: it inserts
    // every row it attempts, or fails.)
    let staged = dialect == Dialect::CitusStaged;
    let stage_guard = staged.then_some(plan.stage_guard.as_str());
    // The plain form runs in a savepoint (a conflict rolls back to it);
    // on Citus every form does (so does a refused row: see
    // `Form::after_refused` below), from the staging table the savepoint
    // kept until the insert succeeded.
    let savepoint = form == Form::Plain || dialect.is_citus();
    if savepoint {
        request.push(&format!("SAVEPOINT {PLAIN_SAVEPOINT}"));
    }
    request.push_counted(form.scratch_sql(model, sent.repeats, dialect));
    if form == Form::Plain {
        // From the staging table, the key's guard follows the insert (see
        // `Plan::staged_guard`); a refusal rolls back to the savepoint.
        request.push_opt(staged.then_some(plan.staged_guard.as_str()));
    } else {
        request.push_opt(stage_guard);
    }
    if savepoint {
        request.push(&format!("RELEASE SAVEPOINT {PLAIN_SAVEPOINT}"));
    }
    let mut refused: Option<Error> = None;
    loop {
        request.push_opt(clear);
        request.push_opt(commit);
        let result = request.send(scope, model, commit.is_some()).await;
        if refused.is_some()
            && result.as_ref().is_err_and(|e| e.sqlstate() == Some(&SqlState::NO_ACTIVE_SQL_TRANSACTION))
        {
            // The plain attempt failed at its COMMIT (a deferred constraint
            // on another column), which ended the transaction: that is the
            // call's error, and nothing was written.
            return Err(refused.take().expect("checked above"));
        }
        // (On Citus, the `ON CONFLICT` form is the insert alone, without the
        // anti-join.)
        let alone = dialect.is_citus();
        if let Some(again) = form.after(model, &result).or_else(|| form.after_refused(alone, &result)) {
            form = again;
            request = Request::default();
            request.push(&format!("ROLLBACK TO SAVEPOINT {PLAIN_SAVEPOINT}"));
            if !staged {
                request.push(&format!("RELEASE SAVEPOINT {PLAIN_SAVEPOINT}"));
            }
            request.push_counted(form.scratch_sql(model, sent.repeats, dialect));
            request.push_opt(stage_guard);
            if staged {
                request.push(&format!("RELEASE SAVEPOINT {PLAIN_SAVEPOINT}"));
            }
            refused = result.err();
            continue;
        }
        return Ok(Report::counts(sent.offered, result?));
    }
}

/// Statements sent as one simple query (one round trip; the server stops
/// at the first that fails), one of which is the insert whose row count
/// the call reads.
#[derive(Default)]
struct Request {
    sql: String,
    /// How many statements the request holds.
    statements: usize,
    /// The position of the insert among them.
    counted: usize,
}

impl Request {
    fn push(&mut self, statement: &str) {
        if self.statements > 0 {
            self.sql.push_str("; ");
        }
        self.sql.push_str(statement);
        self.statements += 1;
    }

    fn push_opt(&mut self, statement: Option<&str>) {
        if let Some(statement) = statement {
            self.push(statement);
        }
    }

    /// Adds the insert.
    fn push_counted(&mut self, statement: &str) {
        self.counted = self.statements;
        self.push(statement);
    }

    /// Sends the request; returns the insert's row count. With `commits`,
    /// the request ends the scope's transaction: a lost answer (the
    /// connection dropped) leaves the commit in doubt.
    async fn send(&self, scope: &mut Scope<'_>, model: &'static Model, commits: bool) -> Result<u64, Error> {
        let request = scope.client().simple_query(&self.sql);
        if commits {
            scope.commit_sent();
        }
        let result = request.await;
        if commits {
            if result.is_ok() { scope.sent_ok() } else { scope.sent_failed() }
        }
        match result {
            Ok(messages) => Ok(self.count(&messages)),
            Err(source) if commits && source.as_db_error().is_none() => {
                Err(Error::database(model, Step::Commit, source))
            }
            Err(source) => Err(Error::insert(model, source)),
        }
    }

    /// The insert's row count among the request's results: its command
    /// tag's, or the value of the one row it returned (an insert counted in
    /// SQL, Citus's dialect).
    fn count(&self, messages: &[SimpleQueryMessage]) -> u64 {
        let mut statement = 0;
        let mut row_count = None;
        for message in messages {
            match message {
                SimpleQueryMessage::Row(row) if statement == self.counted => {
                    row_count = row.get(0).and_then(|v| v.parse::<u64>().ok());
                }
                SimpleQueryMessage::CommandComplete(rows) if statement == self.counted => {
                    return row_count.unwrap_or(*rows);
                }
                SimpleQueryMessage::CommandComplete(_) => statement += 1,
                _ => {}
            }
        }
        0
    }
}
