//! The protocol core is sans-IO and deterministic (ARCHITECTURE.md, STYLE principles 1-2): no
//! runtime, sockets, files, clocks, threads, async, unseeded randomness or random-order hash maps
//! below `core/src/protocol/`. This test reads the sources and fails if any appears, naming the
//! file and line.

use std::path::{Path, PathBuf};

/// Forbidden text (in code, not in comments) and why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("derecho_runtime", "the protocol must not depend on the runtime"),
    ("std::net", "no sockets"),
    ("std::fs", "no files"),
    ("std::io::", "no I/O"),
    ("Instant::now", "time is an input"),
    ("SystemTime", "time is an input"),
    ("std::thread", "no threads"),
    ("thread::spawn", "no threads"),
    ("async ", "no async"),
    (".await", "no async"),
    ("Mutex", "no locks (single-threaded state machine)"),
    ("rand::", "randomness must be a seeded field"),
    ("thread_rng", "randomness must be a seeded field"),
    ("getrandom", "randomness must be a seeded field"),
    ("HashMap", "iteration order must be deterministic: BTreeMap or Vec"),
    ("HashSet", "iteration order must be deterministic: BTreeSet or Vec"),
    ("println!", "no output from the core"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a line, without a trailing `//` comment (string literals in the core do not
/// contain `//`, and a false positive would show up as a failure to look at, not a pass).
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// Whether `needle` occurs in `code` not followed by more of an identifier (`.await` is found,
/// `.awaiting_state` is not).
fn mentions(code: &str, needle: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    code.match_indices(needle).any(|(i, _)| !needle.ends_with(ident) || !code[i + needle.len()..].starts_with(ident))
}

#[test]
fn protocol_sources_do_no_io_and_stay_deterministic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/src/protocol");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    files.sort();
    assert!(files.len() >= 5, "expected the protocol sources under {}", dir.display());
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read source");
        for (n, line) in text.lines().enumerate() {
            let code = code_of(line);
            for (needle, why) in FORBIDDEN {
                if mentions(code, needle) {
                    found.push(format!("{}:{}: `{needle}` ({why}): {}", f.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "the protocol core must stay sans-IO and deterministic:\n{}", found.join("\n"));
}

#[test]
fn the_check_catches_what_it_looks_for() {
    // The scanner itself: a forbidden call in code is found, the same words in a comment are not.
    let hits = |line: &str| FORBIDDEN.iter().filter(|(n, _)| mentions(code_of(line), n)).count();
    assert_eq!(hits("let t = std::time::Instant::now();"), 1);
    assert_eq!(hits("let m: HashMap<u32, u32> = HashMap::new();"), 1);
    assert_eq!(hits("// Instant::now is forbidden here"), 0);
    assert_eq!(hits("let x = 1; // no std::net here"), 0);
    assert_eq!(hits("let r = fut.await;"), 1);
    assert_eq!(hits("if s.awaiting_state {"), 0);
}
