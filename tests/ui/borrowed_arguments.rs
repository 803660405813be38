use derecho::rpc::support::rkyv::{Archive, Deserialize, Serialize};

#[derive(Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = derecho::rpc::support::rkyv)]
struct Store {
    n: u64,
}

#[derecho::replicated]
impl Store {
    fn a(&mut self, x: &u64) {
        self.n = *x;
    }

    fn b(&mut self, x: &mut Vec<u8>) {
        x.clear();
    }

    fn c(&self, x: Vec<&str>) -> usize {
        x.len()
    }

    fn d(&self) -> &u64 {
        &self.n
    }
}

fn main() {}
