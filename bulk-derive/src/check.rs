//! Rules that involve several attributes or fields. Each broken rule is an
//! error on the span the user should fix; all are reported together.

use std::collections::HashMap;

use proc_macro2::Span;
use syn::{GenericParam, LitStr};

use crate::ast::{Input, unraw};
use crate::attr::IdAttr;
use crate::ctxt::Ctxt;
use crate::suggest::closest;

/// PostgreSQL truncates identifiers longer than this (NAMEDATALEN - 1).
const MAX_IDENT: usize = 63;

impl Input<'_> {
    pub(crate) fn validate(&self, cx: &Ctxt) {
        self.check_generics(cx);
        self.check_names(cx);
        self.check_unique(cx);
        self.check_citus(cx);
        self.check_columns(cx);
        self.check_fields(cx);
    }

    fn check_generics(&self, cx: &Ctxt) {
        for param in &self.generics.params {
            match param {
                GenericParam::Lifetime(_) => {}
                GenericParam::Type(t) => cx.error_spanned_by(
                    &t.ident,
                    "`BulkCreateNew` does not support type parameters; lifetimes (for borrowed `&'a str` rows) are fine",
                ),
                GenericParam::Const(c) => {
                    cx.error_spanned_by(&c.ident, "`BulkCreateNew` does not support const parameters")
                }
            }
        }
    }

    fn check_names(&self, cx: &Ctxt) {
        let a = &self.attrs;
        match a.table.get() {
            Some(lit) => {
                let default = snake_case_default(self);
                check_named(cx, "table", lit, &format!("or leave it out for the default `{default}`"));
            }
            None => {
                check_implied(cx, "table name", "the struct name in snake_case", "table", &self.table(), self.ident)
            }
        }
        if let Some(lit) = a.schema.get() {
            check_named(cx, "schema", lit, "or leave it out to use the connection's `search_path`");
        }
        if let Some(IdAttr::Named(lit)) = a.id.get() {
            check_named(cx, "id", lit, "or `id = false` for no surrogate key");
        }
        for f in &self.fields {
            if !f.stored() {
                continue;
            }
            match f.attrs.rename.get() {
                Some(lit) => check_named(
                    cx,
                    "rename",
                    lit,
                    &format!("or leave it out to use the field name `{}`", unraw(f.ident)),
                ),
                None => check_implied(cx, "column name", "the field name", "rename", &f.column(), f.ident),
            }
            if f.column().starts_with("__bulk") {
                let span = f.attrs.rename.get().map_or(f.ident.span(), LitStr::span);
                cx.error_at(
                    span,
                    "column names starting with `__bulk` are reserved for the scratch table: \
                     choose another with `#[bulk(rename = \"...\")]`",
                );
            }
            if let Some(lit) = f.attrs.sql_type.get() {
                check_sql_type(cx, lit);
            }
        }
    }

    fn check_unique(&self, cx: &Ctxt) {
        let Some(key) = self.attrs.unique.get() else {
            if self.attrs.unique_reported || self.fields.iter().any(|f| f.attrs.unique_misplaced) {
                // A typo of `unique`, a malformed `unique` or a `unique` on a
                // field was reported already: it is not also missing.
                return;
            }
            cx.error_spanned_by(
                self.ident,
                format!(
                    "`{}` has no unique key: add `#[bulk(unique(field, ...))]` naming the fields that identify a row",
                    self.ident
                ),
            );
            return;
        };
        if key.is_empty() && !self.attrs.unique_reported {
            let span = self.attrs.unique.span().unwrap_or_else(Span::call_site);
            cx.error_at(span, "`unique` needs at least one field: `#[bulk(unique(field, ...))]`");
        }
        let mut seen = Vec::new();
        for name in key {
            if seen.contains(&unraw(name)) {
                cx.error_spanned_by(name, format!("`unique` names `{name}` twice"));
                continue;
            }
            seen.push(unraw(name));
            self.stored_field_named(cx, "unique", name);
        }
    }

    /// The stored field `attr` names as `name`; `None`, with an error naming
    /// `attr`, when there is no such field (with the closest name as a hint)
    /// or it is `#[bulk(skip)]`.
    fn stored_field_named(&self, cx: &Ctxt, attr: &str, name: &syn::Ident) -> Option<&crate::ast::Field<'_>> {
        match self.field_named(name) {
            None => {
                let names: Vec<String> = self.stored_fields().map(|f| f.ident.to_string()).collect();
                let hint = match closest(&name.to_string(), names.iter().map(String::as_str)) {
                    Some(near) => format!(", did you mean `{near}`?"),
                    None => String::new(),
                };
                cx.error_spanned_by(
                    name,
                    format!("`{attr}` names `{name}`, which is not a field of `{}`{hint}", self.ident),
                );
                None
            }
            Some(f) if !f.stored() => {
                cx.error_spanned_by(
                    name,
                    format!("`{attr}` names `{name}`, which is `#[bulk(skip)]` and so not stored"),
                );
                None
            }
            Some(f) => Some(f),
        }
    }

    /// `distribute_by(field)` names a stored field of the unique key (Citus
    /// refuses a unique key without the distribution column), and excludes
    /// `reference_table`.
    fn check_citus(&self, cx: &Ctxt) {
        let a = &self.attrs;
        if let (Some(_), Some(span)) = (a.distribute_by.get(), a.reference_table.span()) {
            cx.error_at(
                span,
                "`reference_table` and `distribute_by(...)` exclude each other: \
                 a Citus table is either distributed by a column or a reference table",
            );
        }
        let Some(name) = a.distribute_by.get() else {
            return;
        };
        let Some(f) = self.stored_field_named(cx, "distribute_by", name) else {
            return;
        };
        let Some(key) = a.unique.get() else {
            return;
        };
        if !key.is_empty() && !key.iter().any(|k| unraw(k) == unraw(f.ident)) {
            let key = key.iter().map(unraw).collect::<Vec<_>>().join(", ");
            cx.error_spanned_by(
                name,
                format!(
                    "`distribute_by` names `{name}`, which is not in the unique key `unique({key})`: \
                     Citus needs the distribution column in the unique key, so add `{name}` to `unique(...)`"
                ),
            );
        }
    }

    fn check_columns(&self, cx: &Ctxt) {
        let mut by_column: HashMap<String, String> = HashMap::new();
        if let Some(id) = self.id_column() {
            by_column.insert(id, String::new());
        }
        for f in self.stored_fields() {
            let column = f.column();
            let span = f.attrs.rename.get().map_or(f.ident.span(), LitStr::span);
            let field = unraw(f.ident);
            match by_column.get(&column) {
                Some(other) if other.is_empty() => {
                    let message = if self.attrs.id.get().is_some() {
                        format!(
                            "field `{field}` maps to column `{column}`, which `id = \"{column}\"` names as the surrogate key: \
                             rename one of them"
                        )
                    } else {
                        format!(
                            "field `{field}` maps to column `{column}`, which is the surrogate key the table gets by default: \
                             rename the column with `#[bulk(rename = \"...\")]`, the key with `#[bulk(id = \"...\")]`, \
                             or drop the key with `#[bulk(id = false)]`"
                        )
                    };
                    cx.error_at(span, message);
                }
                Some(other) => cx.error_at(
                    span,
                    format!(
                        "field `{field}` maps to column `{column}`, which field `{other}` already uses: \
                         give one of them another name with `#[bulk(rename = \"...\")]`"
                    ),
                ),
                None => {
                    by_column.insert(column, unraw(f.ident));
                }
            }
        }
        if self.stored_fields().next().is_none() {
            cx.error_spanned_by(
                self.ident,
                format!(
                    "`{}` has no stored field: a model needs at least one field that is not `#[bulk(skip)]`",
                    self.ident
                ),
            );
        }
    }

    fn check_fields(&self, cx: &Ctxt) {
        for f in &self.fields {
            if f.attrs.skip.span().is_none() {
                continue;
            }
            for (name, span) in [
                ("rename", f.attrs.rename.span()),
                ("index", f.attrs.index.span()),
                ("sql_type", f.attrs.sql_type.span()),
            ] {
                if let Some(span) = span {
                    cx.error_at(span, format!("`{name}` has no effect on a `#[bulk(skip)]` field"));
                }
            }
        }
    }
}

/// The default table name, for the hint of an explicit `table`.
fn snake_case_default(input: &Input<'_>) -> String {
    crate::ast::snake_case(&unraw(input.ident))
}

/// A name the user wrote as `key = "..."`; `alternative` completes the hint
/// of the "empty" message ("or leave it out ...").
fn check_named(cx: &Ctxt, key: &str, lit: &LitStr, alternative: &str) {
    let name = lit.value();
    let span = lit.span();
    if name.is_empty() {
        cx.error_at(span, format!("`{key}` must not be empty: write `{key} = \"name\"`, {alternative}"));
    } else if name.len() > MAX_IDENT {
        cx.error_at(
            span,
            format!("`{key}` is {} bytes long; PostgreSQL identifiers are at most {MAX_IDENT} bytes", name.len()),
        );
    } else if name.contains('\0') {
        cx.error_at(span, format!("`{key}` must not contain a NUL character"));
    }
}

/// A name derived from a Rust identifier (which is never empty and never
/// holds NUL): only its length can be wrong.
fn check_implied(cx: &Ctxt, what: &str, source: &str, key: &str, name: &str, ident: &syn::Ident) {
    if name.len() > MAX_IDENT {
        cx.error_spanned_by(
            ident,
            format!(
                "{what} `{name}` ({source}) is {} bytes long; PostgreSQL identifiers are at most {MAX_IDENT} bytes: \
                 set a shorter one with `#[bulk({key} = \"...\")]`",
                name.len()
            ),
        );
    }
}

/// The DDL type is written verbatim, so only type-name characters are allowed.
fn check_sql_type(cx: &Ctxt, lit: &LitStr) {
    let value = lit.value();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | ' ' | '(' | ')' | ',' | '[' | ']');
    if value.trim().is_empty() {
        cx.error_at(
            lit.span(),
            "`sql_type` must not be empty: write e.g. `sql_type = \"varchar(40)\"`, or leave it out for the type's default",
        );
    } else if value.len() > 128 {
        cx.error_at(lit.span(), "`sql_type` is longer than 128 bytes");
    } else if let Some(bad) = value.chars().find(|&c| !allowed(c)) {
        cx.error_at(
            lit.span(),
            format!(
                "`sql_type` contains `{bad}`; a type name may contain only letters, digits, `_`, spaces, parentheses, \
                 commas and brackets, e.g. `sql_type = \"varchar(40)\"`"
            ),
        );
    }
}
