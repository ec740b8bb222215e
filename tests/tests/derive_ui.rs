//! Compile-time checks of `#[derive(Pipeline)]`: each error a user can meet, pinned by its
//! `.stderr` snapshot, and the shapes that must compile.

#[test]
fn derive_pipeline_ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
