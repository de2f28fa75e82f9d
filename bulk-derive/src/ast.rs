//! A typed picture of the input that keeps the original tokens for spans.

use syn::{Data, DeriveInput, Fields, Generics, Ident, Type};

use crate::attr::{ContainerAttrs, FieldAttrs};
use crate::ctxt::Ctxt;

pub(crate) const NOT_NAMED_STRUCT: &str =
    "`BulkCreateNew` needs a struct with named fields, one per column: `struct Name { field: Type, ... }`";

/// The struct being derived.
pub(crate) struct Input<'a> {
    pub ident: &'a Ident,
    pub generics: &'a Generics,
    pub attrs: ContainerAttrs,
    pub fields: Vec<Field<'a>>,
}

/// One named field.
pub(crate) struct Field<'a> {
    pub ident: &'a Ident,
    pub ty: &'a Type,
    pub attrs: FieldAttrs,
    /// The field's `#[bulk(...)]` parsed without error, so whether it is
    /// stored is known.
    pub attrs_ok: bool,
}

impl<'a> Field<'a> {
    /// The column name: `rename`, or the field name without a raw `r#` prefix.
    pub(crate) fn column(&self) -> String {
        match self.attrs.rename.get() {
            Some(lit) => lit.value(),
            None => unraw(self.ident),
        }
    }

    pub(crate) fn stored(&self) -> bool {
        self.attrs.skip.get().is_none()
    }
}

/// The identifier as the user means it (`r#type` is `type`).
pub(crate) fn unraw(ident: &Ident) -> String {
    let s = ident.to_string();
    s.strip_prefix("r#").map_or(s.clone(), str::to_owned)
}

impl<'a> Input<'a> {
    /// Reads the struct; `None` when it is not a struct with named fields
    /// (the error is recorded in `cx`).
    pub(crate) fn from_syn(cx: &Ctxt, node: &'a DeriveInput) -> Option<Input<'a>> {
        let attrs = ContainerAttrs::from_syn(cx, &node.attrs);
        let fields = match &node.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => named
                    .named
                    .iter()
                    .map(|f| {
                        let errors = cx.error_count();
                        let attrs = FieldAttrs::from_syn(cx, &f.attrs);
                        Field {
                            ident: f.ident.as_ref().expect("named fields have names"),
                            ty: &f.ty,
                            attrs,
                            attrs_ok: cx.error_count() == errors,
                        }
                    })
                    .collect(),
                Fields::Unnamed(unnamed) => {
                    cx.error_spanned_by(unnamed, NOT_NAMED_STRUCT);
                    return None;
                }
                Fields::Unit => {
                    cx.error_spanned_by(&node.ident, NOT_NAMED_STRUCT);
                    return None;
                }
            },
            Data::Enum(e) => {
                cx.error_spanned_by(e.enum_token, NOT_NAMED_STRUCT);
                return None;
            }
            Data::Union(u) => {
                cx.error_spanned_by(u.union_token, NOT_NAMED_STRUCT);
                return None;
            }
        };
        Some(Input { ident: &node.ident, generics: &node.generics, attrs, fields })
    }

    /// The table name: `table`, or the struct name in snake_case.
    pub(crate) fn table(&self) -> String {
        match self.attrs.table.get() {
            Some(lit) => lit.value(),
            None => snake_case(&unraw(self.ident)),
        }
    }

    /// The surrogate key column, if any.
    pub(crate) fn id_column(&self) -> Option<String> {
        match self.attrs.id.get() {
            None => Some("id".to_owned()),
            Some(crate::attr::IdAttr::Named(lit)) => Some(lit.value()),
            Some(crate::attr::IdAttr::Disabled) => None,
        }
    }

    /// The field a `unique(...)` name refers to (`type` names `r#type`).
    pub(crate) fn field_named(&self, name: &Ident) -> Option<&Field<'a>> {
        let name = unraw(name);
        self.fields.iter().find(|f| unraw(f.ident) == name)
    }

    pub(crate) fn stored_fields(&self) -> impl Iterator<Item = &Field<'a>> {
        self.fields.iter().filter(|f| f.stored())
    }
}

/// `RetweetV2` -> `retweet_v2`, `HTTPRequest` -> `http_request`.
pub(crate) fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|j| chars[j]);
            let next = chars.get(i + 1);
            let boundary = match prev {
                None => false,
                Some('_') => false,
                Some(p) => {
                    p.is_lowercase()
                        || p.is_ascii_digit()
                        || (p.is_uppercase() && next.is_some_and(|n| n.is_lowercase()))
                }
            };
            if boundary {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
