//! Expansion snapshots (reviewed as diffs) and unit tests of the derive's helpers.

use quote::quote;

use crate::ast::snake_case;
use crate::derive_inner;

fn expand(input: proc_macro2::TokenStream) -> String {
    let output = derive_inner(input);
    let file = syn::parse2::<syn::File>(output).expect("the expansion parses as a file");
    prettyplease::unparse(&file)
}

#[test]
fn snapshot_retweet() {
    insta::assert_snapshot!(expand(quote! {
        #[bulk(table = "retweeter", unique(tweet, retweeter))]
        pub struct Retweet {
            pub tweet: i64,
            #[bulk(index)]
            pub retweeter: i64,
            #[bulk(index)]
            pub original_author: i64,
        }
    }));
}

#[test]
fn snapshot_distributed_by_a_renamed_key_field() {
    insta::assert_snapshot!(expand(quote! {
        #[bulk(unique(tweet, retweeter), distribute_by(tweet))]
        pub struct Retweet {
            #[bulk(rename = "tweet id")]
            pub tweet: i64,
            pub retweeter: i64,
        }
    }));
}

#[test]
fn snapshot_reference_table() {
    insta::assert_snapshot!(expand(quote! {
        #[bulk(unique(code), reference_table, id = false)]
        pub struct Country {
            pub code: String,
            pub name: String,
        }
    }));
}

#[test]
fn snapshot_borrowed_row_with_options_and_renames() {
    insta::assert_snapshot!(expand(quote! {
        #[bulk(schema = "audit log", unique(source, external_id), nulls_not_distinct, id = "row id")]
        struct LogLine<'a> {
            source: &'a str,
            #[bulk(rename = "external id")]
            external_id: Option<i64>,
            #[bulk(sql_type = "varchar(200)")]
            message: std::borrow::Cow<'a, str>,
            #[bulk(skip)]
            parsed: bool,
            r#type: Option<Vec<u8>>,
        }
    }));
}

#[test]
fn snapshot_no_surrogate_key() {
    insta::assert_snapshot!(expand(quote! {
        #[bulk(id = false, unique(day))]
        struct HTTPDailyStat {
            day: i32,
            #[bulk(index)]
            hits: i64,
        }
    }));
}

#[test]
fn snapshot_invalid_input_emits_errors_and_a_stub() {
    insta::assert_snapshot!(expand(quote! {
        #[bulk(uniqe(a))]
        struct Broken {
            a: i64,
        }
    }));
}

#[test]
fn snake_case_handles_acronyms_and_digits() {
    assert_eq!(snake_case("Retweet"), "retweet");
    assert_eq!(snake_case("RetweetV2"), "retweet_v2");
    assert_eq!(snake_case("HTTPRequest"), "http_request");
    assert_eq!(snake_case("DailyStat"), "daily_stat");
    assert_eq!(snake_case("already_snake"), "already_snake");
}

fn expand_bulk_type(input: proc_macro2::TokenStream) -> String {
    let output = crate::bulk_type::derive(input);
    let file = syn::parse2::<syn::File>(output).expect("the expansion parses as a file");
    prettyplease::unparse(&file)
}

#[test]
fn snapshot_bulk_type_enum() {
    insta::assert_snapshot!(expand_bulk_type(quote! {
        #[bulk(type = "app.mood")]
        enum Mood {
            Happy,
            #[bulk(rename = "so-so")]
            SoSo,
        }
    }));
}

#[test]
fn snapshot_bulk_type_newtype() {
    insta::assert_snapshot!(expand_bulk_type(quote! {
        struct UserId(i64);
    }));
}
