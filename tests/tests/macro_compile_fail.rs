//! `#[replicated]` misused: each case in `tests/ui/` must fail to compile with the error in its
//! `.stderr` snapshot, at the right span. `TRYBUILD=overwrite` rewrites the snapshots after a
//! deliberate change.

#[test]
fn misuse_is_reported_at_the_right_span() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
}
