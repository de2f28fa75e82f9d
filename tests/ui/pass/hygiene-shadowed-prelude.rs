//! A user's own `Result`, `Option`, `Vec`, `String`, `Box`, `Some`, `None`,
//! `Ok`, `Err`, `Copy`, `Clone`, `Debug`, `Send`, `Sync`, `Sized`, and
//! local modules named like the crates the generated code names, all in
//! scope where the derive expands: the generated code must still compile.
#![allow(dead_code, non_camel_case_types, unused_imports, unused_macros)]

mod core {}
mod std {}
mod bulk_runtime {}
mod tokio_postgres {}

mod models {
    use ::bulk_runtime::BulkCreateNew;

    pub struct Result;
    pub struct Option;
    pub struct Vec;
    pub struct String;
    pub struct Box;
    pub struct Some;
    pub struct None;
    pub struct Ok;
    pub struct Err;
    pub trait Copy {}
    pub trait Clone {}
    pub trait Debug {}
    pub trait Send {}
    pub trait Sync {}
    pub trait Sized {}
    pub trait Iterator {}
    pub trait Into {}
    pub trait Default {}
    pub struct PhantomData;
    pub struct Column;
    pub struct Model;
    pub struct BulkValue;
    pub struct BulkColumn;
    pub struct UpdateColumn;
    pub const COLUMNS: u8 = 0;
    pub static MODEL: u8 = 0;
    macro_rules! unreachable { () => { compile_error!("a user's `unreachable!` was used") }; }
    macro_rules! panic { ($($t:tt)*) => { compile_error!("a user's `panic!` was used") }; }
    macro_rules! assert { ($($t:tt)*) => { compile_error!("a user's `assert!` was used") }; }

    #[derive(BulkCreateNew)]
    #[bulk(table = "shadowed", unique(a, b), nulls_not_distinct)]
    pub struct Shadowed<'a> {
        pub a: ::std::string::String,
        pub b: ::std::option::Option<i64>,
        pub c: ::std::vec::Vec<u8>,
        pub d: &'a str,
        pub e: ::std::option::Option<::std::vec::Vec<::std::option::Option<i32>>>,
        #[bulk(skip)]
        pub f: Result,
    }

}

fn main() {
    use ::bulk_runtime::BulkCreateNew;
    let m = models::Shadowed::model();
    ::std::assert_eq!(m.table(), "shadowed");
    let _ = models::Shadowed::columns().c;
}
