//! Every misuse of the derives fails to compile with an error on the offending token; the
//! expected messages are the checked-in `tests/ui/*.stderr` files (regenerate with
//! `TRYBUILD=overwrite` and review them).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
