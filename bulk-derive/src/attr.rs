//! Parsing of `#[bulk(...)]` attributes, and nothing else. Rules that involve
//! several attributes or fields live in `check.rs`.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::parse::ParseStream;
use syn::{Attribute, Ident, LitBool, LitStr, Token};

use crate::ctxt::Ctxt;
use crate::suggest::closest;

/// The struct's keys, each with its syntax.
const CONTAINER_KEYS: [(&str, &str); 7] = [
    ("table", "table = \"...\""),
    ("schema", "schema = \"...\""),
    ("unique", "unique(field, ...)"),
    ("id", "id = \"...\""),
    ("nulls_not_distinct", "nulls_not_distinct"),
    ("distribute_by", "distribute_by(field)"),
    ("reference_table", "reference_table"),
];

/// A field's keys, each with its syntax.
const FIELD_KEYS: [(&str, &str); 4] =
    [("rename", "rename = \"...\""), ("index", "index"), ("sql_type", "sql_type = \"...\""), ("skip", "skip")];

/// Which `#[bulk(...)]` is being parsed.
#[derive(Clone, Copy)]
enum Place {
    Struct,
    Field,
}

impl Place {
    fn keys(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Place::Struct => &CONTAINER_KEYS,
            Place::Field => &FIELD_KEYS,
        }
    }

    /// The message for a key that is not one of [`Place::keys`].
    fn unknown_key_message(self, key: &str) -> String {
        let (here, there, other_keys) = match self {
            Place::Struct => ("bulk attribute", "a field", &FIELD_KEYS[..]),
            Place::Field => ("bulk field attribute", "the struct", &CONTAINER_KEYS[..]),
        };
        if let Some((_, syntax)) = other_keys.iter().find(|(k, _)| *k == key) {
            return format!("`{key}` goes on {there}, not here: `#[bulk({syntax})]`");
        }
        let keys = self.keys();
        match closest(key, keys.iter().map(|(k, _)| *k)) {
            Some(near) => {
                let syntax = keys.iter().find(|(k, _)| *k == near).map_or(near, |(_, s)| s);
                format!("unknown {here} `{key}`, did you mean `{syntax}`?")
            }
            None => {
                let list = keys.iter().map(|(k, _)| format!("`{k}`")).collect::<Vec<_>>().join(", ");
                format!("unknown {here} `{key}`, expected one of {list}")
            }
        }
    }
}

/// One attribute value with the span of its key, for "duplicate" errors.
pub(crate) struct Attr<T> {
    name: &'static str,
    value: Option<(Span, T)>,
}

impl<T> Attr<T> {
    fn none(name: &'static str) -> Self {
        Attr { name, value: None }
    }

    fn set(&mut self, cx: &Ctxt, span: Span, value: T) {
        if self.value.is_some() {
            cx.error_at(span, format!("duplicate bulk attribute `{}`", self.name));
        } else {
            self.value = Some((span, value));
        }
    }

    pub(crate) fn get(&self) -> Option<&T> {
        self.value.as_ref().map(|(_, v)| v)
    }

    pub(crate) fn span(&self) -> Option<Span> {
        self.value.as_ref().map(|(s, _)| *s)
    }
}

/// `id = "name"` or `id = false`.
pub(crate) enum IdAttr {
    Named(LitStr),
    Disabled,
}

/// The struct's `#[bulk(...)]` attributes.
pub(crate) struct ContainerAttrs {
    pub table: Attr<LitStr>,
    pub schema: Attr<LitStr>,
    pub unique: Attr<Vec<Ident>>,
    pub id: Attr<IdAttr>,
    pub nulls_not_distinct: Attr<()>,
    /// `distribute_by(field)`: the Citus distribution column's field.
    pub distribute_by: Attr<Ident>,
    /// `reference_table`: a Citus reference table.
    pub reference_table: Attr<()>,
    /// A mistake in or near `unique` (a typo of the key, a malformed value)
    /// was reported, so a missing or empty unique key is not reported again.
    pub unique_reported: bool,
}

/// A field's `#[bulk(...)]` attributes.
pub(crate) struct FieldAttrs {
    pub rename: Attr<LitStr>,
    pub index: Attr<()>,
    pub sql_type: Attr<LitStr>,
    pub skip: Attr<()>,
    /// `unique` was written on this field and reported as misplaced.
    pub unique_misplaced: bool,
}

fn key_span(meta: &ParseNestedMeta<'_>) -> Span {
    meta.path.segments.first().map_or_else(Span::call_site, |s| s.ident.span())
}

fn key_name(meta: &ParseNestedMeta<'_>) -> String {
    let p = &meta.path;
    p.segments.iter().map(|s| s.ident.to_string()).collect::<Vec<_>>().join("::")
}

/// The span of the next token, to point at a bad value rather than its key.
fn next_token_span(input: ParseStream<'_>) -> Span {
    input.cursor().token_tree().map_or_else(|| input.span(), |(tt, _)| tt.span())
}

fn string_value(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<LitStr> {
    let message = format!("expected a string: `{key} = \"...\"`");
    if !meta.input.peek(Token![=]) {
        return Err(meta.error(message));
    }
    let input = meta.value()?;
    if input.peek(LitStr) {
        return input.parse();
    }
    Err(syn::Error::new(next_token_span(input), message))
}

fn flag(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<()> {
    if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
        return Err(meta.error(format!("`{key}` takes no value: write `#[bulk({key})]`")));
    }
    Ok(())
}

/// Skips what is left of the current key's value (up to the next comma).
fn skip_value(input: ParseStream<'_>) -> syn::Result<()> {
    while !input.is_empty() && !input.peek(Token![,]) {
        input.parse::<proc_macro2::TokenTree>()?;
    }
    Ok(())
}

/// Records the error of one key, if any, and skips the rest of its value, so
/// the keys after it are still parsed (and their mistakes reported in the
/// same compile).
fn recover(cx: &Ctxt, input: ParseStream<'_>, result: syn::Result<()>) -> syn::Result<()> {
    if let Err(e) = result {
        cx.syn_error(e);
        skip_value(input)?;
    }
    Ok(())
}

fn bulk_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs.iter().filter(|a| a.path().is_ident("bulk"))
}

/// Parses every `#[bulk(...)]` in `attrs`, calling `key` for each key.
/// An error that `key` returns is recorded and parsing goes on with the
/// next key; `key` returns `Ok(false)` for a key it does not know.
fn parse_keys(
    cx: &Ctxt,
    attrs: &[Attribute],
    place: Place,
    mut key: impl FnMut(&ParseNestedMeta<'_>) -> syn::Result<bool>,
) {
    for attr in bulk_attrs(attrs) {
        if attr.meta.require_list().is_err() {
            cx.error_spanned_by(attr, "expected `#[bulk(...)]`");
            continue;
        }
        let result = attr.parse_nested_meta(|meta| {
            let known = key(&meta);
            if matches!(known, Ok(false)) {
                cx.error_at(key_span(&meta), place.unknown_key_message(&key_name(&meta)));
                if meta.input.peek(Token![=]) {
                    meta.input.parse::<Token![=]>()?;
                }
                return skip_value(meta.input);
            }
            recover(cx, meta.input, known.map(drop))
        });
        // Only a key that is not a path (`#[bulk("x")]`) or a missing comma get here.
        if let Err(e) = result {
            cx.syn_error(e);
        }
    }
}

/// The fields of `unique(field, ...)`; each mistake is recorded (and
/// `reported` set) and the other names are still read.
fn unique_fields(cx: &Ctxt, meta: &ParseNestedMeta<'_>, reported: &mut bool) -> syn::Result<Vec<Ident>> {
    if !meta.input.peek(syn::token::Paren) {
        return Err(meta.error("expected the key's fields in parentheses: `unique(field, ...)`"));
    }
    let content;
    syn::parenthesized!(content in meta.input);
    let mut fields = Vec::new();
    while !content.is_empty() {
        // A lone identifier; `Ident::parse_any` so that a keyword can name a
        // raw field (`type` for `r#type`).
        let fork = content.fork();
        if fork.call(Ident::parse_any).is_ok() && (fork.is_empty() || fork.peek(Token![,])) {
            fields.push(content.call(Ident::parse_any)?);
        } else {
            cx.error_at(next_token_span(&content), "expected a field name in `unique(field, ...)`");
            *reported = true;
            skip_value(&content)?;
        }
        if !content.is_empty() {
            content.parse::<Token![,]>()?;
        }
    }
    Ok(fields)
}

/// The field of `distribute_by(field)`: one field name in parentheses. On a
/// mistake the whole parenthesis is consumed, so it is reported once.
fn distribution_field(meta: &ParseNestedMeta<'_>) -> syn::Result<Ident> {
    let expected = "expected one field name in parentheses: `distribute_by(field)`";
    if !meta.input.peek(syn::token::Paren) {
        return Err(meta.error(expected));
    }
    let content;
    syn::parenthesized!(content in meta.input);
    let fork = content.fork();
    let field = fork.call(Ident::parse_any).ok();
    let result = match field {
        Some(field) if fork.is_empty() => Ok(field),
        // Point past the name at what follows it (`, other`), else at the start.
        Some(_) => Err(syn::Error::new(next_token_span(&fork), expected)),
        None => Err(syn::Error::new(next_token_span(&content), expected)),
    };
    while !content.is_empty() {
        content.parse::<proc_macro2::TokenTree>()?;
    }
    result
}

fn id_value(meta: &ParseNestedMeta<'_>) -> syn::Result<IdAttr> {
    let expected = "expected `id = \"name\"` or `id = false` (the surrogate key is on by default)";
    if !meta.input.peek(Token![=]) {
        return Err(meta.error(expected));
    }
    let input = meta.value()?;
    if input.peek(LitStr) {
        return Ok(IdAttr::Named(input.parse()?));
    }
    if input.peek(LitBool) && !input.fork().parse::<LitBool>()?.value {
        input.parse::<LitBool>()?;
        return Ok(IdAttr::Disabled);
    }
    Err(syn::Error::new(next_token_span(input), expected))
}

impl ContainerAttrs {
    pub(crate) fn from_syn(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut out = ContainerAttrs {
            table: Attr::none("table"),
            schema: Attr::none("schema"),
            unique: Attr::none("unique"),
            id: Attr::none("id"),
            nulls_not_distinct: Attr::none("nulls_not_distinct"),
            distribute_by: Attr::none("distribute_by"),
            reference_table: Attr::none("reference_table"),
            unique_reported: false,
        };
        parse_keys(cx, attrs, Place::Struct, |meta| {
            let span = key_span(meta);
            if meta.path.is_ident("table") {
                out.table.set(cx, span, string_value(meta, "table")?);
            } else if meta.path.is_ident("schema") {
                out.schema.set(cx, span, string_value(meta, "schema")?);
            } else if meta.path.is_ident("unique") {
                // A malformed key is not also reported as missing or empty.
                let fields = unique_fields(cx, meta, &mut out.unique_reported);
                out.unique_reported |= fields.is_err();
                out.unique.set(cx, span, fields?);
            } else if meta.path.is_ident("id") {
                out.id.set(cx, span, id_value(meta)?);
            } else if meta.path.is_ident("nulls_not_distinct") {
                flag(meta, "nulls_not_distinct")?;
                out.nulls_not_distinct.set(cx, span, ());
            } else if meta.path.is_ident("distribute_by") {
                out.distribute_by.set(cx, span, distribution_field(meta)?);
            } else if meta.path.is_ident("reference_table") {
                flag(meta, "reference_table")?;
                out.reference_table.set(cx, span, ());
            } else {
                let keys = CONTAINER_KEYS.iter().map(|(k, _)| *k);
                out.unique_reported |= closest(&key_name(meta), keys) == Some("unique");
                return Ok(false);
            }
            Ok(true)
        });
        out
    }
}

impl FieldAttrs {
    pub(crate) fn from_syn(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut out = FieldAttrs {
            rename: Attr::none("rename"),
            index: Attr::none("index"),
            sql_type: Attr::none("sql_type"),
            skip: Attr::none("skip"),
            unique_misplaced: false,
        };
        parse_keys(cx, attrs, Place::Field, |meta| {
            let span = key_span(meta);
            if meta.path.is_ident("rename") {
                out.rename.set(cx, span, string_value(meta, "rename")?);
            } else if meta.path.is_ident("index") {
                flag(meta, "index")?;
                out.index.set(cx, span, ());
            } else if meta.path.is_ident("sql_type") {
                out.sql_type.set(cx, span, string_value(meta, "sql_type")?);
            } else if meta.path.is_ident("skip") {
                flag(meta, "skip")?;
                out.skip.set(cx, span, ());
            } else {
                out.unique_misplaced |= meta.path.is_ident("unique");
                return Ok(false);
            }
            Ok(true)
        });
        out
    }
}
