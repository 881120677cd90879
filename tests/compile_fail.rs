//! Misuses of `#[cached]`, `#[once]`, `#[lock]` and `#[pooled]` must fail to compile with
//! a clear message pointing at the offending token. The expected output is in
//! `tests/ui/*.stderr`; regenerate it with `TRYBUILD=overwrite`.

#[test]
fn ui() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
