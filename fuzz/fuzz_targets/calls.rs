//! A call as a member receives it: the call header, then the archived arguments handed to a
//! `#[replicated]` type's generated dispatch (validated by rkyv before use), for every method.
#![no_main]

use derecho::rpc::Replicated;
use derecho::rpc::support::rkyv::{Archive, Deserialize, Serialize};
use derecho::rpc::wire::Header;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = derecho::rpc::support::rkyv)]
pub struct Target {
    entries: Vec<(String, Vec<u8>)>,
}

#[derecho::replicated]
impl Target {
    pub fn put(&mut self, key: &str, value: &[u8]) -> u64 {
        self.entries.push((key.to_owned(), value.to_vec()));
        self.entries.len() as u64
    }

    pub fn add(&mut self, n: u64, list: Vec<u32>) -> Option<(u64, String)> {
        Some((n.wrapping_add(list.len() as u64), String::new()))
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok((h, body)) = Header::read(data) {
        let _ = h;
        let _ = body;
    }
    // The arguments, 16-byte aligned as a member holds them, to every method id.
    let Some((&m, args)) = data.split_first() else { return };
    let mut aligned = derecho::rpc::support::rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(args);
    let mut t = Target::default();
    let method = u32::from(m % 5);
    drop(t.apply(method, &aligned));
    drop(t.query(method, &aligned));
    let _ = Target::restore(&aligned);
});
