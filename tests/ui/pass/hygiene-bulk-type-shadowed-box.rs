//! `#[derive(BulkType)]` where the user's module has its own `Box`,
//! `Result` and `Option`: the generated `ToSql`/`FromSql` impls must name
//! std's absolutely.
#![allow(dead_code)]

mod models {
    use ::bulk_runtime::BulkCreateNew;

    pub struct Box;
    pub struct Result;
    pub struct Option;

    // The derived `ToSql` impl writes `to_sql_checked` itself: tokio-postgres's
    // `to_sql_checked!()` names `Box` unqualified and took the user's one.
    #[derive(::bulk_runtime::BulkType, ::core::fmt::Debug, ::core::clone::Clone, ::core::marker::Copy, ::core::cmp::PartialEq)]
    pub enum Mood {
        Happy,
        Sad,
    }

    #[derive(::bulk_runtime::BulkType, ::core::fmt::Debug, ::core::clone::Clone, ::core::cmp::PartialEq)]
    pub struct Name(pub ::std::string::String);

    #[derive(BulkCreateNew)]
    #[bulk(unique(mood))]
    pub struct Typed {
        pub mood: Mood,
        pub name: Name,
        pub maybe: ::std::option::Option<Name>,
    }
}

fn main() {
    use ::bulk_runtime::BulkCreateNew;
    let _ = models::Typed::columns().name;
}
