struct Wrapper<T>(T);

#[derecho::replicated]
impl<T> Wrapper<T> {
    fn get(&self) -> u64 {
        0
    }
}

fn main() {}
