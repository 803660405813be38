use derecho::rpc::support::rkyv::{Archive, Deserialize, Serialize};

#[derive(Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = derecho::rpc::support::rkyv)]
struct Store {
    n: u64,
}

#[derecho::replicated]
impl Store {
    fn consume(self) -> u64 {
        self.n
    }

    fn get(&self) -> u64 {
        self.n
    }
}

fn main() {}
