use derecho::rpc::support::rkyv::{Archive, Deserialize, Serialize};

#[derive(Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = derecho::rpc::support::rkyv)]
struct Store {
    n: u64,
}

#[derecho::replicated]
impl Store {
    fn merge(&mut self, other: Self) {
        self.n += other.n;
    }

    fn find(&self, to: u64) -> u64 {
        self.n + to
    }

    #[cfg(test)]
    fn extra(&mut self) {}

    fn handle(&self) -> u64 {
        self.n
    }

    fn names(&self) -> Option<impl Iterator<Item = u64>> {
        None::<std::iter::Empty<u64>>
    }
}

fn main() {}
