//! The compile errors authors see for the common mistakes: each case in `tests/ui/` must fail
//! to compile with the message in its `.stderr` file.

#[test]
fn common_mistakes_fail_to_compile_with_readable_errors() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/*.rs"));
}
