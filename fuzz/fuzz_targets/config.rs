//! Configuration files: a member's and a static group's, from any text.
#![no_main]

use derecho::driver::{GroupConfig, GroupMemberConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = GroupMemberConfig::from_toml(text, Vec::new(), &[]);
    let _ = GroupConfig::from_toml(text, Vec::new(), &[]);
});
