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
                GenericParam::Lifetime(l) if l.lifetime.ident.to_string().starts_with("__bulk") => cx.error_spanned_by(
                    &l.lifetime,
                    "lifetimes starting with `'__bulk` are reserved for the derive's code: choose another name",
                ),
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
        if self.table().starts_with("__bulk") {
            let message = "table names starting with `__bulk` are reserved for the runtime's own tables and the \
                           names in its statements: choose another with `#[bulk(table = \"...\")]`";
            match a.table.get() {
                Some(lit) => cx.error_at(lit.span(), message),
                None => cx.error_spanned_by(self.ident, message),
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
    } else if let Err(why) = type_name_shape(&value) {
        cx.error_at(lit.span(), format!("`sql_type = \"{value}\"` is not a type name: {why}"));
    }
}

/// The type names PostgreSQL writes in more than one word (each may end in
/// `array`); any other type is one word. Modifiers (`(3)`) and brackets are
/// left out before comparing.
const MULTI_WORD_TYPES: &[&str] = &[
    "double precision",
    "character varying",
    "char varying",
    "national character",
    "national character varying",
    "national char",
    "national char varying",
    "nchar varying",
    "bit varying",
    "timestamp with time zone",
    "timestamp without time zone",
    "time with time zone",
    "time without time zone",
    "interval year",
    "interval month",
    "interval day",
    "interval hour",
    "interval minute",
    "interval second",
    "interval year to month",
    "interval day to hour",
    "interval day to minute",
    "interval day to second",
    "interval hour to minute",
    "interval hour to second",
    "interval minute to second",
];

/// Words of a column definition that are not part of its type.
const NOT_TYPE_WORDS: &[&str] =
    &["collate", "not", "null", "default", "check", "unique", "primary", "references", "constraint", "generated"];

/// PostgreSQL's reserved key words (its documentation's appendix C), which
/// no type is named without quotes; `array` only after a type.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "both",
    "case",
    "cast",
    "column",
    "create",
    "current_catalog",
    "current_date",
    "current_role",
    "current_time",
    "current_timestamp",
    "current_user",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "from",
    "grant",
    "group",
    "having",
    "in",
    "initially",
    "intersect",
    "into",
    "lateral",
    "leading",
    "limit",
    "localtime",
    "localtimestamp",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "placing",
    "returning",
    "select",
    "session_user",
    "some",
    "symmetric",
    "table",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "user",
    "using",
    "variadic",
    "when",
    "where",
    "window",
    "with",
];

/// Whether `value` (of the allowed characters) has the shape of a type
/// name: one word or a known multi-word name, with numeric modifiers in
/// parentheses and array brackets; the schema check resolves the name.
fn type_name_shape(value: &str) -> Result<(), String> {
    let mut words = String::new();
    let mut rest = value;
    while let Some(c) = rest.chars().next() {
        let (open, close) = match c {
            '(' => ('(', ')'),
            '[' => ('[', ']'),
            ')' | ']' | ',' => return Err(format!("`{c}` outside a modifier")),
            _ => {
                words.push(c);
                rest = &rest[c.len_utf8()..];
                continue;
            }
        };
        let Some(end) = rest.find(close) else { return Err(format!("`{open}` without `{close}`")) };
        let inside = &rest[1..end];
        // Numbers, or words (a PostGIS `geometry(Point, 4326)`), in a
        // modifier; a number or nothing in brackets.
        let items = inside.split(',').map(str::trim);
        let fine = if open == '(' {
            items.clone().all(|n| !n.is_empty() && !n.contains(' '))
        } else {
            inside.trim().bytes().all(|b| b.is_ascii_digit())
        };
        if !fine {
            return Err(format!("`{open}{inside}{close}` is not a modifier: give numbers or words between commas"));
        }
        words.push(' ');
        rest = &rest[end + 1..];
    }
    let lower = words.to_ascii_lowercase();
    let mut list: Vec<&str> = lower.split_whitespace().collect();
    if let Some(word) = list.iter().find(|w| NOT_TYPE_WORDS.contains(w)) {
        return Err(format!(
            "`{}` belongs to the table's DDL, not to the type; write that table (or an ALTER TABLE) yourself, the \
             schema check accepts it",
            word.to_ascii_uppercase()
        ));
    }
    if list.len() > 1 && list.last() == Some(&"array") {
        list.pop();
    }
    if let Some(word) = list.iter().find(|w| w.starts_with(|c: char| c.is_ascii_digit())) {
        return Err(format!("`{word}` starts with a digit, which no type name does"));
    }
    if let [word] = list.as_slice()
        && RESERVED.contains(word)
    {
        return Err(format!("`{word}` is a reserved word of PostgreSQL, not a type name"));
    }
    let joined = list.join(" ");
    if list.len() == 1 || MULTI_WORD_TYPES.contains(&joined.as_str()) {
        Ok(())
    } else if list.is_empty() {
        Err("it names no type".to_owned())
    } else {
        Err(format!("`{joined}` is not one type name; write one word or a name such as `double precision`"))
    }
}

#[cfg(test)]
mod tests {
    use super::type_name_shape;

    #[test]
    fn type_names_and_what_is_not_one() {
        for ok in [
            "varchar(40)",
            "numeric(10, 2)",
            "timestamp(3) with time zone",
            "TIME WITHOUT TIME ZONE",
            "double precision",
            "character varying(10)[]",
            "int8[3]",
            "bigint array",
            "interval day to second(3)",
            "citext",
            "my_domain",
            "geometry(Point, 4326)",
            "int array[3]",
        ] {
            assert_eq!(type_name_shape(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("text COLLATE aud_ci", "`COLLATE` belongs to the table's DDL"),
            ("varchar(40) NOT NULL", "`NOT` belongs"),
            ("bigint default 0", "`DEFAULT` belongs"),
            ("foo bar", "`foo bar` is not one type name"),
            ("numeric(10,)", "`(10,)` is not a modifier"),
            ("numeric(1 0)", "is not a modifier"),
            ("user", "`user` is a reserved word"),
            ("array", "`array` is a reserved word"),
            ("4int", "starts with a digit"),
            ("text)", "`)` outside a modifier"),
            ("varchar(40", "`(` without `)`"),
            ("(3)", "it names no type"),
        ] {
            let err = type_name_shape(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
