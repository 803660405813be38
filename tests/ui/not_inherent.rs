use derecho::rpc::support::rkyv::{Archive, Deserialize, Serialize};

#[derive(Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = derecho::rpc::support::rkyv)]
struct Store {
    n: u64,
}

trait Bump {
    fn bump(&mut self);
}

#[derecho::replicated]
impl Bump for Store {
    fn bump(&mut self) {
        self.n += 1;
    }
}

fn main() {}
