//! The recovery scan of a shard's log (`derecho::persist::record::scan`): a damaged or forged
//! log is cut at its valid prefix, never misread.
#![no_main]

use derecho::persist::record::scan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = scan(data);
    assert!(s.valid_len <= data.len());
});
