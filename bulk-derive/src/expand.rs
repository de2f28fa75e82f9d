//! Code generation; assumes the input passed `check.rs`.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{DeriveInput, Lifetime, Type};

use crate::ast::{Field, Input, unraw};

/// The impl of `::bulk_runtime::BulkCreateNew` for a valid input.
pub(crate) fn impl_struct(input: &Input<'_>) -> TokenStream {
    let ident = input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let stored: Vec<_> = input.stored_fields().collect();
    let n = stored.len();

    let columns = stored.iter().map(|f| {
        let field = unraw(f.ident);
        let column = f.column();
        let sql_type = match f.attrs.sql_type.get() {
            Some(lit) => quote!(::core::option::Option::Some(#lit)),
            None => quote!(::core::option::Option::None),
        };
        let index = f.attrs.index.get().is_some();
        let pg_type = column_item(f, quote!(PG_TYPE));
        let nullable = column_item(f, quote!(NULLABLE));
        let labels = column_item(f, quote!(__LABELS));
        quote! {
            ::bulk_runtime::__private::ColumnSpec {
                field: #field,
                name: #column,
                pg_type: #pg_type,
                nullable: #nullable,
                sql_type: #sql_type,
                index: #index,
                labels: #labels,
            }
            .build()
        }
    });

    let values = stored.iter().map(|f| {
        let name = f.ident;
        column_item(f, quote!(__bulk_value(&self.#name)))
    });

    let key_fields: Vec<_> = input
        .attrs
        .unique
        .get()
        .map(|key| key.iter().filter_map(|k| input.field_named(k)).collect())
        .unwrap_or_default();
    let key_indices = key_fields.iter().map(|k| {
        let i = stored.iter().position(|f| f.ident == k.ident).unwrap_or_default();
        quote!(#i)
    });
    let non_null_asserts = non_null_asserts(input, &key_fields);

    let struct_name = ident.to_string();
    let schema = match input.attrs.schema.get() {
        Some(lit) => quote!(::core::option::Option::Some(#lit)),
        None => quote!(::core::option::Option::None),
    };
    let table = input.table();
    let id = match input.id_column() {
        Some(id) => quote!(::core::option::Option::Some(#id)),
        None => quote!(::core::option::Option::None),
    };
    let nulls_not_distinct = input.attrs.nulls_not_distinct.get().is_some();
    let citus = match (
        input.attrs.distribute_by.get().and_then(|f| input.field_named(f)),
        &input.attrs.reference_table.get(),
    ) {
        (Some(f), _) => {
            let column = f.column();
            quote!(::bulk_runtime::__private::CitusTable::Distributed { column: #column })
        }
        (None, Some(())) => quote!(::bulk_runtime::__private::CitusTable::Reference),
        (None, None) => quote!(::bulk_runtime::__private::CitusTable::None),
    };

    // The key type: each key field's owned type, in key order.
    // Through `BulkColumn::__Column`, as the other uses of a field's type,
    // so that an unsupported key type is reported once, as unsupported.
    let key_types = key_fields.iter().map(|f| {
        let ty = f.ty;
        quote_spanned!(f.ty.span()=>
            <<#ty as ::bulk_runtime::__private::BulkColumn>::__Column as ::bulk_runtime::__private::KeyColumn>::Owned)
    });
    // Typed handles of the stored fields outside the key.
    let updatable: Vec<&&Field<'_>> =
        stored.iter().filter(|f| !key_fields.iter().any(|k| k.ident == f.ident)).collect();
    let columns_struct = quote::format_ident!("{}Columns", unraw(ident));
    let handle_fields = updatable.iter().map(|f| {
        let name = f.ident;
        let doc = format!("The column of field `{}`.", unraw(f.ident));
        quote!(#[doc = #doc] pub #name: ::bulk_runtime::__private::UpdateColumn)
    });
    let handle_values = updatable.iter().map(|f| {
        let name = f.ident;
        let field = unraw(f.ident);
        quote!(#name: ::bulk_runtime::__private::update_column(#struct_name, #field))
    });
    let columns_doc = format!("The columns of `{struct_name}` an upsert can update (`{struct_name}::columns()`).");

    // The tuple at the key fields' span (the first's): a key field of an
    // unsupported type is then reported once, at the field.
    let key_span = key_fields.first().map_or_else(proc_macro2::Span::call_site, |f| f.ty.span());
    let key_type = quote_spanned!(key_span=> (#(#key_types,)*));

    quote! {
        #[automatically_derived]
        const _: () = {
            // In a module of its own: declared in this block, the struct's
            // name would hide a user's type of that name in the field types
            // written below.
            mod __bulk_columns {
                #[doc = #columns_doc]
                #[derive(::core::fmt::Debug, ::core::clone::Clone, ::core::marker::Copy)]
                pub struct #columns_struct {
                    #(#handle_fields,)*
                }
            }

            impl #impl_generics ::bulk_runtime::BulkCreateNew for #ident #ty_generics #where_clause {
                type Key = #key_type;
                type Columns = __bulk_columns::#columns_struct;

                fn columns() -> __bulk_columns::#columns_struct {
                    __bulk_columns::#columns_struct { #(#handle_values,)* }
                }

                type CopyValues<'__bulk_row> = [&'__bulk_row dyn ::bulk_runtime::__private::BulkValue; #n]
                where
                    Self: '__bulk_row;

                fn model() -> &'static ::bulk_runtime::__private::Model {
                    static COLUMNS: [::bulk_runtime::__private::Column; #n] = [#(#columns),*];
                    static MODEL: ::bulk_runtime::__private::Model = ::bulk_runtime::__private::ModelSpec {
                        struct_name: #struct_name,
                        schema: #schema,
                        table: #table,
                        id: #id,
                        nulls_not_distinct: #nulls_not_distinct,
                        columns: &COLUMNS,
                        unique: &[#(#key_indices),*],
                        citus: #citus,
                    }
                    .build();
                    &MODEL
                }

                // The concrete type rather than `Self::CopyValues<'_>`: the
                // projection would make a non-`Sync` struct fail a second time.
                #[inline]
                fn copy_values(&self) -> [&dyn ::bulk_runtime::__private::BulkValue; #n] {
                    [#(#values),*]
                }
            }

            const _: () = {
                #(#non_null_asserts)*
            };
        };
    }
}

/// For each key field: an assertion that its type can be in a key, spanned
/// at the type: not nullable, or with `nulls_not_distinct` an `Option` of a
/// key type; never an array. It goes through `<T as BulkColumn>::__Column`,
/// so a type that is no column type at all gets only the "cannot be stored"
/// error, not a second one about `Option`.
fn non_null_asserts(input: &Input<'_>, key_fields: &[&Field<'_>]) -> Vec<TokenStream> {
    let assert = if input.attrs.nulls_not_distinct.get().is_some() {
        quote!(assert_nullable_key)
    } else {
        quote!(assert_non_null)
    };
    key_fields
        .iter()
        .map(|f| {
            // `__Column` at the type's last token, so that the error spans
            // the whole type (from the projection's `<` at its first token).
            let last = f.ty.to_token_stream().into_iter().last().map_or_else(|| f.ty.span(), |t| t.span());
            let column = column_item(f, quote_spanned!(last=> __Column));
            quote_spanned!(f.ty.span()=> ::bulk_runtime::__private::#assert::<#column>();)
        })
        .collect()
}

/// What to emit when the input is invalid: the errors, plus a stub impl so
/// that uses of the trait elsewhere do not add a cascade of secondary errors.
/// Works for any item the derive was put on (an enum gets a stub too), but
/// not for generic ones, whose stub could add errors of its own.
///
/// The stub also checks the types of the stored fields (and that key fields
/// are not nullable), so that an unsupported field type is reported in the
/// same compile as the attribute mistakes. A field whose own `#[bulk(...)]`
/// is malformed is left out: whether it is stored is not known.
pub(crate) fn fallback(node: &DeriveInput, input: Option<&Input<'_>>, errors: syn::Error) -> TokenStream {
    let errors = errors.into_compile_error();
    let reserved_lifetime = node.generics.lifetimes().any(|l| l.lifetime.ident.to_string().starts_with("__bulk"));
    if node.generics.type_params().next().is_some()
        || node.generics.const_params().next().is_some()
        || reserved_lifetime
    {
        return errors;
    }
    let ident = &node.ident;
    let (impl_generics, ty_generics, where_clause) = node.generics.split_for_impl();
    let mut type_checks = Vec::new();
    if let Some(input) = input {
        let checked = |f: &&Field<'_>| f.attrs_ok && f.stored();
        type_checks.extend(input.fields.iter().filter(checked).map(|f| {
            let pg_type = column_item(f, quote!(PG_TYPE));
            quote!(let _ = #pg_type;)
        }));
        let key_fields: Vec<&Field<'_>> = match input.attrs.unique.get() {
            Some(key) => key.iter().filter_map(|k| input.field_named(k)).filter(checked).collect(),
            None => Vec::new(),
        };
        type_checks.extend(non_null_asserts(input, &key_fields));
    }
    quote! {
        #errors
        #[automatically_derived]
        const _: () = {
            impl #impl_generics ::bulk_runtime::BulkCreateNew for #ident #ty_generics #where_clause {
                type CopyValues<'__bulk_row> = [&'__bulk_row dyn ::bulk_runtime::__private::BulkValue; 0]
                where
                    Self: '__bulk_row;
                type Key = (i64,);
                type Columns = ();
                fn columns() {}
                fn model() -> &'static ::bulk_runtime::__private::Model {
                    #(#type_checks)*
                    ::core::unreachable!()
                }
                fn copy_values(&self) -> [&dyn ::bulk_runtime::__private::BulkValue; 0] {
                    []
                }
            }
        };
    }
}

/// `<T as BulkColumn>::item` for a field's type `T`, spanned at the type.
///
/// Every use of the field's type goes through this one path with the same
/// tokens, so an unsupported type gives rustc the same diagnostic at each use,
/// which it reports once.
fn column_item(f: &Field<'_>, item: TokenStream) -> TokenStream {
    let ty = erase_lifetimes(f.ty);
    quote_spanned!(f.ty.span()=> <#ty as ::bulk_runtime::__private::BulkColumn>::#item)
}

/// The field type with every named lifetime but `'static` replaced by `'_`,
/// so that it can be written inside `static` and `const` items (which cannot
/// name the impl's lifetimes) as well as in the impl's methods. The column
/// metadata of `&'a str` and `&'static str` is the same.
fn erase_lifetimes(ty: &Type) -> Type {
    struct Erase;
    impl VisitMut for Erase {
        fn visit_lifetime_mut(&mut self, lifetime: &mut Lifetime) {
            if lifetime.ident != "static" {
                *lifetime = Lifetime::new("'_", lifetime.span());
            }
        }
    }
    let mut ty = ty.clone();
    Erase.visit_type_mut(&mut ty);
    ty
}
