//! A shard's state as a joiner receives it or a log starts with it: its frame and the
//! external clients' record inside it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    derecho::rpc::support::fuzz_state_frame(data);
});
