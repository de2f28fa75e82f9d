//! Parsing of `#[bulk(...)]` attributes, and nothing else. Rules that involve
//! several attributes or fields live in `check.rs`.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Ident, Lit, LitStr, Token};

use crate::ctxt::Ctxt;

const CONTAINER_KEYS: &str = "`table`, `schema`, `unique`, `id`, `nulls_not_distinct`";
const FIELD_KEYS: &str = "`rename`, `index`, `sql_type`, `skip`";

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
}

/// A field's `#[bulk(...)]` attributes.
pub(crate) struct FieldAttrs {
    pub rename: Attr<LitStr>,
    pub index: Attr<()>,
    pub sql_type: Attr<LitStr>,
    pub skip: Attr<()>,
}

fn key_span(meta: &ParseNestedMeta<'_>) -> Span {
    meta.path.segments.first().map_or_else(Span::call_site, |s| s.ident.span())
}

fn key_name(meta: &ParseNestedMeta<'_>) -> String {
    let p = &meta.path;
    p.segments.iter().map(|s| s.ident.to_string()).collect::<Vec<_>>().join("::")
}

fn string_value(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<LitStr> {
    let expected = || meta.error(format!("expected `{key} = \"...\"`"));
    if !meta.input.peek(Token![=]) {
        return Err(expected());
    }
    match meta.value()?.parse::<Lit>()? {
        Lit::Str(s) => Ok(s),
        other => Err(syn::Error::new(other.span(), format!("expected `{key} = \"...\"`"))),
    }
}

fn flag(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<()> {
    if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
        return Err(meta.error(format!("`{key}` takes no value: write `#[bulk({key})]`")));
    }
    Ok(())
}

/// Records an unknown key and skips its value, so the keys after it are
/// still parsed (and their mistakes reported in the same compile).
fn unknown(cx: &Ctxt, meta: &ParseNestedMeta<'_>, message: String) -> syn::Result<()> {
    cx.error_at(key_span(meta), message);
    if meta.input.peek(Token![=]) {
        meta.input.parse::<Token![=]>()?;
    }
    while !meta.input.is_empty() && !meta.input.peek(Token![,]) {
        meta.input.parse::<proc_macro2::TokenTree>()?;
    }
    Ok(())
}

fn bulk_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs.iter().filter(|a| a.path().is_ident("bulk"))
}

fn require_list(cx: &Ctxt, attr: &Attribute) -> bool {
    match attr.meta.require_list() {
        Ok(_) => true,
        Err(_) => {
            cx.error_spanned_by(attr, "expected `#[bulk(...)]`");
            false
        }
    }
}

impl ContainerAttrs {
    pub(crate) fn from_syn(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut out = ContainerAttrs {
            table: Attr::none("table"),
            schema: Attr::none("schema"),
            unique: Attr::none("unique"),
            id: Attr::none("id"),
            nulls_not_distinct: Attr::none("nulls_not_distinct"),
        };
        for attr in bulk_attrs(attrs) {
            if !require_list(cx, attr) {
                continue;
            }
            let result = attr.parse_nested_meta(|meta| {
                let span = key_span(&meta);
                if meta.path.is_ident("table") {
                    out.table.set(cx, span, string_value(&meta, "table")?);
                } else if meta.path.is_ident("schema") {
                    out.schema.set(cx, span, string_value(&meta, "schema")?);
                } else if meta.path.is_ident("unique") {
                    if !meta.input.peek(syn::token::Paren) {
                        return Err(meta.error("expected `unique(field, ...)`"));
                    }
                    let mut fields = Vec::new();
                    meta.parse_nested_meta(|inner| match inner.path.get_ident() {
                        Some(ident) if inner.input.is_empty() || inner.input.peek(Token![,]) => {
                            fields.push(ident.clone());
                            Ok(())
                        }
                        _ => Err(inner.error("expected a field name in `unique(field, ...)`")),
                    })?;
                    out.unique.set(cx, span, fields);
                } else if meta.path.is_ident("id") {
                    if !meta.input.peek(Token![=]) {
                        return Err(meta.error("expected `id = \"name\"` or `id = false`"));
                    }
                    match meta.value()?.parse::<Lit>()? {
                        Lit::Str(s) => out.id.set(cx, span, IdAttr::Named(s)),
                        Lit::Bool(b) if !b.value => out.id.set(cx, span, IdAttr::Disabled),
                        other => {
                            return Err(syn::Error::new(
                                other.span(),
                                "expected `id = \"name\"` or `id = false` (the surrogate key is on by default)",
                            ));
                        }
                    }
                } else if meta.path.is_ident("nulls_not_distinct") {
                    flag(&meta, "nulls_not_distinct")?;
                    out.nulls_not_distinct.set(cx, span, ());
                } else {
                    let message =
                        format!("unknown bulk attribute `{}`, expected one of {CONTAINER_KEYS}", key_name(&meta));
                    return unknown(cx, &meta, message);
                }
                Ok(())
            });
            if let Err(e) = result {
                cx.syn_error(e);
            }
        }
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
        };
        for attr in bulk_attrs(attrs) {
            if !require_list(cx, attr) {
                continue;
            }
            let result = attr.parse_nested_meta(|meta| {
                let span = key_span(&meta);
                if meta.path.is_ident("rename") {
                    out.rename.set(cx, span, string_value(&meta, "rename")?);
                } else if meta.path.is_ident("index") {
                    flag(&meta, "index")?;
                    out.index.set(cx, span, ());
                } else if meta.path.is_ident("sql_type") {
                    out.sql_type.set(cx, span, string_value(&meta, "sql_type")?);
                } else if meta.path.is_ident("skip") {
                    flag(&meta, "skip")?;
                    out.skip.set(cx, span, ());
                } else {
                    let message =
                        format!("unknown bulk field attribute `{}`, expected one of {FIELD_KEYS}", key_name(&meta));
                    return unknown(cx, &meta, message);
                }
                Ok(())
            });
            if let Err(e) = result {
                cx.syn_error(e);
            }
        }
        out
    }
}
