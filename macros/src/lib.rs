//! Procedural macros for derecho, re-exported by the `derecho` crate.
//!
//! This crate will hold the `#[replicated]` attribute: put on the `impl` block of a plain Rust
//! type, it will generate the typed RPC layer (ordered calls and peer-to-peer queries) that makes
//! the type a replicated object of a derecho group. It arrives with the replicated-objects work,
//! after the protocol and its driver; until then the crate defines no macro.
//!
//! # Layout
//!
//! Empty for now. The plan (STYLE.md, principle 11): parse the `impl` block into a model,
//! validate it collecting every error with its span, and expand with one function per generated
//! item, naming only absolute paths (`::derecho::__private::...`).
