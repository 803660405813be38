use derecho::rpc::support::rkyv::{Archive, Deserialize, Serialize};

#[derive(Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = derecho::rpc::support::rkyv)]
struct Store {
    n: u64,
}

#[derecho::replicated]
impl Store {
    async fn bump(&mut self) {
        self.n += 1;
    }
}

fn main() {}
