//! The derive macros behind `bulk_runtime::BulkCreateNew` and
//! `bulk_runtime::BulkType`.
//!
//! Depend on `bulk-runtime`, which re-exports this derive and documents its
//! attributes; this crate alone is not useful.

mod ast;
mod attr;
mod bulk_type;
mod check;
mod ctxt;
mod expand;
mod suggest;

use proc_macro::TokenStream;

/// Derives `bulk_runtime::BulkCreateNew`; see that crate for the attributes.
#[proc_macro_derive(BulkCreateNew, attributes(bulk))]
pub fn derive_bulk_create_new(input: TokenStream) -> TokenStream {
    derive_inner(input.into()).into()
}

/// Derives `bulk_runtime::BulkType` for an enum (a PostgreSQL enum) or a
/// newtype struct; see that crate for the attributes.
#[proc_macro_derive(BulkType, attributes(bulk))]
pub fn derive_bulk_type(input: TokenStream) -> TokenStream {
    bulk_type::derive(input.into()).into()
}

/// The `proc_macro2` twin of the entry point, callable from unit tests.
fn derive_inner(input: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    let node = match syn::parse2::<syn::DeriveInput>(input) {
        Ok(node) => node,
        Err(e) => return e.into_compile_error(),
    };
    let cx = ctxt::Ctxt::new();
    let input = ast::Input::from_syn(&cx, &node);
    if let Some(input) = &input {
        input.validate(&cx);
    }
    match (cx.check(), &input) {
        (Ok(()), Some(input)) => expand::impl_struct(input),
        (Err(errors), input) => expand::fallback(&node, input.as_ref(), errors),
        // `from_syn` records an error whenever it returns `None`.
        (Ok(()), None) => expand::fallback(&node, None, syn::Error::new_spanned(&node.ident, ast::NOT_NAMED_STRUCT)),
    }
}

#[cfg(test)]
mod tests;
