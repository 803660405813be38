//! Control messages (joins, answers, restart offers), views, view frames, saved views and
//! proposals (`derecho::protocol::wire`).
#![no_main]

use derecho::protocol::wire::{Control, ViewFrame, decode_proposals, decode_saved_view, decode_view};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Control::decode(data);
    let _ = ViewFrame::decode(data);
    let _ = decode_view(data);
    let _ = decode_saved_view(data);
    let _ = decode_proposals(data);
});
