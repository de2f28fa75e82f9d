//! Rules that involve several attributes or fields. Each broken rule is an
//! error on the span the user should fix; all are reported together.

use std::collections::HashMap;

use proc_macro2::Span;
use syn::{GenericParam, LitStr};

use crate::ast::{Input, unraw};
use crate::ctxt::Ctxt;

/// PostgreSQL truncates identifiers longer than this (NAMEDATALEN - 1).
const MAX_IDENT: usize = 63;

impl Input<'_> {
    pub(crate) fn validate(&self, cx: &Ctxt) {
        self.check_generics(cx);
        self.check_names(cx);
        self.check_unique(cx);
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
            Some(lit) => check_ident(cx, "table", &lit.value(), lit.span()),
            None => check_ident(cx, "table", &self.table(), self.ident.span()),
        }
        if let Some(lit) = a.schema.get() {
            check_ident(cx, "schema", &lit.value(), lit.span());
        }
        if let Some(crate::attr::IdAttr::Named(lit)) = a.id.get() {
            check_ident(cx, "id", &lit.value(), lit.span());
        }
        for f in &self.fields {
            if !f.stored() {
                continue;
            }
            match f.attrs.rename.get() {
                Some(lit) => check_ident(cx, "rename", &lit.value(), lit.span()),
                None => check_ident(cx, "column", &f.column(), f.ident.span()),
            }
            if f.column().starts_with("__bulk") {
                let span = f.attrs.rename.get().map_or(f.ident.span(), LitStr::span);
                cx.error_at(span, "column names starting with `__bulk` are reserved for the scratch table");
            }
            if let Some(lit) = f.attrs.sql_type.get() {
                check_sql_type(cx, lit);
            }
        }
    }

    fn check_unique(&self, cx: &Ctxt) {
        let Some(key) = self.attrs.unique.get() else {
            cx.error_spanned_by(
                self.ident,
                format!(
                    "`{}` has no unique key: add `#[bulk(unique(field, ...))]` naming the fields that identify a row",
                    self.ident
                ),
            );
            return;
        };
        if key.is_empty() {
            let span = self.attrs.unique.span().unwrap_or_else(Span::call_site);
            cx.error_at(span, "`unique` needs at least one field: `#[bulk(unique(field, ...))]`");
        }
        let mut seen = Vec::new();
        for name in key {
            if seen.contains(&name) {
                cx.error_spanned_by(name, format!("`unique` names `{name}` twice"));
                continue;
            }
            seen.push(name);
            match self.fields.iter().find(|f| f.ident == name) {
                None => cx.error_spanned_by(
                    name,
                    format!("`unique` names `{name}`, which is not a field of `{}`", self.ident),
                ),
                Some(f) if !f.stored() => cx.error_spanned_by(
                    name,
                    format!("`unique` names `{name}`, which is `#[bulk(skip)]` and so not stored"),
                ),
                Some(_) => {}
            }
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
            match by_column.get(&column) {
                Some(other) if other.is_empty() => cx.error_at(
                    span,
                    format!(
                        "`{}` maps to column `{column}`, which is the surrogate key the table gets; \
                         rename the column, name the key with `#[bulk(id = \"...\")]`, or drop it with `#[bulk(id = false)]`",
                        unraw(f.ident)
                    ),
                ),
                Some(other) => cx.error_at(
                    span,
                    format!("`{}` maps to column `{column}`, which field `{other}` already uses", unraw(f.ident)),
                ),
                None => {
                    by_column.insert(column, unraw(f.ident));
                }
            }
        }
        if self.stored_fields().next().is_none() {
            cx.error_spanned_by(self.ident, format!("`{}` has no stored field", self.ident));
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

fn check_ident(cx: &Ctxt, what: &str, name: &str, span: Span) {
    if name.is_empty() {
        cx.error_at(span, format!("`{what}` must not be empty"));
    } else if name.len() > MAX_IDENT {
        cx.error_at(
            span,
            format!(
                "`{what}` name `{name}` is {} bytes long; PostgreSQL identifiers are at most {MAX_IDENT} bytes",
                name.len()
            ),
        );
    } else if name.contains('\0') {
        cx.error_at(span, format!("`{what}` must not contain a NUL character"));
    }
}

/// The DDL type is written verbatim, so only type-name characters are allowed.
fn check_sql_type(cx: &Ctxt, lit: &LitStr) {
    let value = lit.value();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | ' ' | '(' | ')' | ',' | '[' | ']');
    if value.trim().is_empty() {
        cx.error_at(lit.span(), "`sql_type` must not be empty, e.g. `#[bulk(sql_type = \"varchar(40)\")]`");
    } else if value.len() > 128 {
        cx.error_at(lit.span(), "`sql_type` is longer than 128 bytes");
    } else if let Some(bad) = value.chars().find(|&c| !allowed(c)) {
        cx.error_at(
            lit.span(),
            format!(
                "`sql_type` contains `{bad}`; a type name may contain only letters, digits, `_`, spaces, parentheses, commas and brackets"
            ),
        );
    }
}
