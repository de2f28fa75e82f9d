//! Compile-fail cases of `#[derive(BulkCreateNew)]`: one file per mistake in
//! `tests/ui/`, each with the compiler output it must produce beside it
//! (`.stderr`, written by `TRYBUILD=overwrite` and read before committing).
//! Valid models in `tests/ui/pass/` pin that correct input keeps compiling.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
    t.pass("ui/pass/*.rs");
}
