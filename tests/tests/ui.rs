//! Compile-fail cases of `#[derive(BulkCreateNew)]`: one file per mistake in
//! `tests/ui/`, each with the compiler output it must produce beside it
//! (`.stderr`, written by `TRYBUILD=overwrite` and read before committing).
//! Valid models in `tests/ui/pass/` pin that correct input keeps compiling,
//! and that the calls' futures stay `Send` on rows mapped by a closure
//! (`send-mapped-iterators.rs`, compiled only: its `main` runs nothing).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
    t.pass("ui/pass/*.rs");
}
