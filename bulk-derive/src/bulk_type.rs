//! `#[derive(BulkType)]`: a field type of the user's own, stored either as a
//! PostgreSQL enum (a Rust enum of unit variants) or as the column type of
//! the one field it wraps (a newtype struct).
//!
//! The same phases as the model derive, in one file because the input is
//! small: read the item and its `#[bulk(...)]` keys (every mistake recorded
//! in a [`Ctxt`]), then expand.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitStr, Type};

use crate::ast::{snake_case, unraw};
use crate::ctxt::Ctxt;
use crate::suggest::closest;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1); enum labels share it.
const MAX_NAME: usize = 63;

const SHAPE: &str = "`#[derive(BulkType)]` takes an enum of unit variants (a PostgreSQL enum) \
                     or a newtype struct with one field, e.g. `struct UserId(i64);`";

/// The checked input.
enum Item<'a> {
    Enum { ident: &'a Ident, type_name: String, variants: Vec<(&'a Ident, String)> },
    Newtype { ident: &'a Ident, inner: &'a Type },
}

/// Entry point: parse, check, expand.
pub(crate) fn derive(input: TokenStream) -> TokenStream {
    let node = match syn::parse2::<DeriveInput>(input) {
        Ok(node) => node,
        Err(e) => return e.into_compile_error(),
    };
    let cx = Ctxt::new();
    let item = read(&cx, &node);
    match (cx.check(), item) {
        (Ok(()), Some(item)) => expand(&item),
        (Err(errors), _) => errors.into_compile_error(),
        (Ok(()), None) => syn::Error::new_spanned(&node.ident, SHAPE).into_compile_error(),
    }
}

/// Reads `#[bulk(key = "...")]` keys of one attribute list; `allowed` are the
/// keys this place takes, each with its syntax.
fn bulk_keys(cx: &Ctxt, attrs: &[syn::Attribute], allowed: &[(&str, &str)]) -> Vec<(String, LitStr)> {
    let mut found: Vec<(String, LitStr)> = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("bulk")) {
        let result = attr.parse_nested_meta(|meta| {
            let key = meta.path.get_ident().map(unraw).unwrap_or_default();
            if !allowed.iter().any(|(k, _)| *k == key) {
                let message = match closest(&key, allowed.iter().map(|(k, _)| *k)) {
                    Some(near) => {
                        let syntax = allowed.iter().find(|(k, _)| *k == near).map_or(near, |(_, s)| s);
                        format!("unknown bulk attribute `{key}` here, did you mean `{syntax}`?")
                    }
                    None => {
                        let list = allowed.iter().map(|(_, s)| format!("`{s}`")).collect::<Vec<_>>().join(", ");
                        if list.is_empty() {
                            format!("unknown bulk attribute `{key}`: a newtype takes no `#[bulk(...)]` keys")
                        } else {
                            format!("unknown bulk attribute `{key}` here, expected {list}")
                        }
                    }
                };
                cx.error_spanned_by(&meta.path, message);
                // Skip the value, if any.
                if meta.input.peek(syn::Token![=]) {
                    let _: syn::Expr = meta.value()?.parse()?;
                }
                return Ok(());
            }
            let lit: LitStr = meta.value()?.parse()?;
            if found.iter().any(|(k, _)| *k == key) {
                cx.error_spanned_by(&meta.path, format!("duplicate bulk attribute `{key}`"));
            } else {
                found.push((key, lit));
            }
            Ok(())
        });
        if let Err(e) = result {
            cx.syn_error(e);
        }
    }
    found
}

/// A PostgreSQL type name written verbatim into DDL and casts: a lowercase
/// identifier, optionally schema-qualified.
fn check_type_name(cx: &Ctxt, name: &str, span: Span) {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= MAX_NAME
            && !p.starts_with(|c: char| c.is_ascii_digit())
            && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 || !parts.iter().all(|p| part_ok(p)) {
        cx.error_at(
            span,
            format!(
                "`type = \"{name}\"` is not a plain type name: use lowercase letters, digits and `_` (at most \
                 {MAX_NAME} bytes), optionally schema-qualified, e.g. `type = \"mood\"` or `type = \"app.mood\"`"
            ),
        );
    }
}

fn read<'a>(cx: &Ctxt, node: &'a DeriveInput) -> Option<Item<'a>> {
    if !node.generics.params.is_empty() {
        cx.error_spanned_by(&node.generics, "`#[derive(BulkType)]` does not support generic parameters");
    }
    match &node.data {
        Data::Enum(data) => {
            let keys = bulk_keys(cx, &node.attrs, &[("type", "type = \"...\"")]);
            let type_name = match keys.first() {
                Some((_, lit)) => {
                    check_type_name(cx, &lit.value(), lit.span());
                    lit.value()
                }
                None => {
                    let name = snake_case(&unraw(&node.ident));
                    check_type_name(cx, &name, node.ident.span());
                    name
                }
            };
            if data.variants.is_empty() {
                cx.error_spanned_by(&node.ident, "an enum stored by `#[derive(BulkType)]` needs at least one variant");
            }
            let mut variants: Vec<(&Ident, String)> = Vec::new();
            for v in &data.variants {
                if !matches!(v.fields, Fields::Unit) {
                    cx.error_spanned_by(
                        &v.fields,
                        format!("variant `{}` has fields; a PostgreSQL enum's variants are unit variants", v.ident),
                    );
                }
                let rename = bulk_keys(cx, &v.attrs, &[("rename", "rename = \"...\"")]);
                let (label, span) = match rename.first() {
                    Some((_, lit)) => (lit.value(), lit.span()),
                    None => (snake_case(&unraw(&v.ident)), v.ident.span()),
                };
                if label.is_empty() || label.len() > MAX_NAME || label.contains('\0') {
                    cx.error_at(
                        span,
                        format!("enum label `{label}` must be 1 to {MAX_NAME} bytes long, without NUL characters"),
                    );
                }
                if let Some((other, _)) = variants.iter().find(|(_, l)| *l == label) {
                    cx.error_at(
                        span,
                        format!(
                            "variants `{other}` and `{}` have the same label `{label}`: set another with \
                             `#[bulk(rename = \"...\")]`",
                            v.ident
                        ),
                    );
                }
                variants.push((&v.ident, label));
            }
            Some(Item::Enum { ident: &node.ident, type_name, variants })
        }
        Data::Struct(data) => {
            let _ = bulk_keys(cx, &node.attrs, &[]);
            match &data.fields {
                Fields::Unnamed(fields) if fields.unnamed.len() == 1 => {
                    let field = &fields.unnamed[0];
                    let _ = bulk_keys(cx, &field.attrs, &[]);
                    Some(Item::Newtype { ident: &node.ident, inner: &field.ty })
                }
                _ => {
                    cx.error_spanned_by(&node.ident, SHAPE);
                    None
                }
            }
        }
        Data::Union(_) => {
            cx.error_spanned_by(&node.ident, SHAPE);
            None
        }
    }
}

fn expand(item: &Item<'_>) -> TokenStream {
    let p = quote!(::bulk_runtime::__private);
    // By hand, not tokio-postgres's `to_sql_checked!`, which names `Box` as
    // the user's scope has it.
    let to_sql_checked = quote! {
        fn to_sql_checked(
            &self,
            ty: &#p::Type,
            out: &mut #p::BytesMut,
        ) -> ::core::result::Result<#p::IsNull, #p::SqlError> {
            #p::checked_to_sql(self, ty, out)
        }
    };
    match item {
        Item::Enum { ident, type_name, variants } => {
            let idents: Vec<_> = variants.iter().map(|(v, _)| v).collect();
            let labels: Vec<_> = variants.iter().map(|(_, l)| l).collect();
            let bytes: Vec<_> = labels.iter().map(|l| syn::LitByteStr::new(l.as_bytes(), Span::call_site())).collect();
            let rust_name = ident.to_string();
            quote! {
                #[automatically_derived]
                const _: () = {
                    impl #p::ToSql for #ident {
                        fn to_sql(
                            &self,
                            _ty: &#p::Type,
                            out: &mut #p::BytesMut,
                        ) -> ::core::result::Result<#p::IsNull, #p::SqlError> {
                            let label: &str = match self { #(#ident::#idents => #labels,)* };
                            out.extend_from_slice(label.as_bytes());
                            ::core::result::Result::Ok(#p::IsNull::No)
                        }
                        fn accepts(ty: &#p::Type) -> bool {
                            #p::enum_accepts(ty, #type_name)
                        }
                        #to_sql_checked
                    }
                    impl<'__bulk_raw> #p::FromSql<'__bulk_raw> for #ident {
                        fn from_sql(
                            _ty: &#p::Type,
                            raw: &'__bulk_raw [u8],
                        ) -> ::core::result::Result<Self, #p::SqlError> {
                            match raw {
                                #(#bytes => ::core::result::Result::Ok(#ident::#idents),)*
                                _ => ::core::result::Result::Err(#p::unknown_label(raw, #rust_name)),
                            }
                        }
                        fn accepts(ty: &#p::Type) -> bool {
                            #p::enum_accepts(ty, #type_name)
                        }
                    }
                    impl #p::BulkValue for #ident {
                        #[inline]
                        fn check(&self) -> ::core::result::Result<(), #p::ValueError> {
                            ::core::result::Result::Ok(())
                        }
                        #[inline]
                        fn as_to_sql(&self) -> &(dyn #p::ToSql + ::core::marker::Sync) {
                            // The label as text: the binary form of an enum value.
                            match self { #(#ident::#idents => &#labels,)* }
                        }
                    }
                    impl #p::BulkColumn for #ident {
                        const PG_TYPE: #p::PgType = #p::PgType::Enum(#type_name);
                        const NULLABLE: bool = false;
                        const __LABELS: &'static [&'static str] = &[#(#labels),*];
                        type __Column = Self;
                    }
                    impl #p::NonOptionColumn for #ident {}
                    impl #p::NonNullColumn for #ident {}
                    impl #p::KeyColumn for #ident {
                        type Owned = Self;
                    }
                    impl #p::PgEnum for #ident {
                        const TYPE_NAME: &'static str = #type_name;
                        const LABELS: &'static [&'static str] = &[#(#labels),*];
                    }
                };
            }
        }
        Item::Newtype { ident, inner } => {
            // Trait paths spanned at the inner type, so an unsupported one is
            // reported on it.
            let column = quote_spanned!(inner.span()=> <#inner as #p::BulkColumn>);
            quote! {
                #[automatically_derived]
                const _: () = {
                    impl #p::ToSql for #ident {
                        fn to_sql(
                            &self,
                            ty: &#p::Type,
                            out: &mut #p::BytesMut,
                        ) -> ::core::result::Result<#p::IsNull, #p::SqlError> {
                            <#inner as #p::ToSql>::to_sql(&self.0, ty, out)
                        }
                        fn accepts(ty: &#p::Type) -> bool {
                            <#inner as #p::ToSql>::accepts(ty)
                        }
                        #to_sql_checked
                    }
                    impl<'__bulk_raw> #p::FromSql<'__bulk_raw> for #ident {
                        fn from_sql(
                            ty: &#p::Type,
                            raw: &'__bulk_raw [u8],
                        ) -> ::core::result::Result<Self, #p::SqlError> {
                            <#inner as #p::FromSql<'__bulk_raw>>::from_sql(ty, raw).map(#ident)
                        }
                        fn from_sql_null(ty: &#p::Type) -> ::core::result::Result<Self, #p::SqlError> {
                            <#inner as #p::FromSql<'__bulk_raw>>::from_sql_null(ty).map(#ident)
                        }
                        fn accepts(ty: &#p::Type) -> bool {
                            <#inner as #p::FromSql<'__bulk_raw>>::accepts(ty)
                        }
                    }
                    impl #p::BulkValue for #ident {
                        #[inline]
                        fn check(&self) -> ::core::result::Result<(), #p::ValueError> {
                            #column::__bulk_value(&self.0).check()
                        }
                        #[inline]
                        fn as_to_sql(&self) -> &(dyn #p::ToSql + ::core::marker::Sync) {
                            #column::__bulk_value(&self.0).as_to_sql()
                        }
                        #[inline]
                        fn __array_len(&self) -> ::core::option::Option<usize> {
                            #column::__bulk_value(&self.0).__array_len()
                        }
                    }
                    impl #p::BulkColumn for #ident {
                        const PG_TYPE: #p::PgType = #column::PG_TYPE;
                        const NULLABLE: bool = #column::NULLABLE;
                        const __LABELS: &'static [&'static str] = #column::__LABELS;
                        type __Column = Self;
                    }
                    // Through `__Bound`, which names a lifetime: a newtype of a
                    // type without the trait (an `Option`, an array) just
                    // lacks the impl instead of failing to compile.
                    impl<'__bulk_b> #p::NonOptionColumn for #ident where #p::__Bound<'__bulk_b, #inner>: #p::IsNonOption {}
                    impl<'__bulk_b> #p::NonNullColumn for #ident where #p::__Bound<'__bulk_b, #inner>: #p::IsNonNull {}
                    // Read back as itself (its `FromSql` is above).
                    impl #p::KeyColumn for #ident {
                        type Owned = Self;
                    }
                };
            }
        }
    }
}
