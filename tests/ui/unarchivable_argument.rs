use derecho::rpc::support::rkyv::{Archive, Deserialize, Serialize};

#[derive(Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = derecho::rpc::support::rkyv)]
struct Store {
    n: u64,
}

/// Not archivable: no rkyv derive.
struct Handle(u64);

#[derecho::replicated]
impl Store {
    fn set(&mut self, h: Handle) {
        self.n = h.0;
    }
}

fn main() {}
