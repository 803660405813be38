//! The TCP frame header, a stream of client frames, and the client protocol's requests and
//! answers: whatever the bytes, an error or a value, never a panic or an allocation the bytes
//! choose beyond their own length.
#![no_main]

use derecho_wire::client::{Frames, Next, Request, Response, check_hello};
use derecho_wire::frame::{HEADER_LEN, Header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= HEADER_LEN {
        let raw: &[u8; HEADER_LEN] = data[..HEADER_LEN].try_into().unwrap();
        if let Ok(h) = Header::decode(raw, 1 << 20) {
            let _ = h.verify(raw, &data[HEADER_LEN..]);
        }
        let _ = check_hello(raw, 7);
    }
    // A stream of frames as a member or a client reads it.
    let frames = Frames::new(1 << 16);
    let mut at = 0;
    while let Ok(Next::Frame { body }) = frames.next(&data[at..]) {
        let b = &data[at + body.start..at + body.end];
        let _ = Request::decode(b);
        let _ = Response::decode(b);
        at += body.end;
    }
    let _ = Request::decode(data);
    let _ = Response::decode(data);
});
