//! The code `#[replicated]` generates names everything by absolute path: a module that shadows
//! the prelude's `Result`, `Option`, `Vec`, `String`, `Box`, `Ok`, `Err` and a local `rkyv` and
//! `core` still compiles and works.

#![allow(dead_code, non_camel_case_types)]

mod shadowed {
    use derecho::rpc::support::rkyv::{Archive, Deserialize, Serialize};

    pub struct Result;
    pub struct Option;
    pub struct Vec;
    pub struct String;
    pub struct Box;
    pub struct Ok;
    pub struct Err;
    pub mod rkyv {}
    pub mod core {}

    #[derive(Debug, Default, Archive, Serialize, Deserialize)]
    #[rkyv(crate = derecho::rpc::support::rkyv)]
    pub struct Counter {
        pub n: u64,
    }

    #[derecho::replicated]
    impl Counter {
        pub fn add(&mut self, by: u64, label: &str) -> u64 {
            self.n += by + label.len() as u64;
            self.n
        }

        pub fn get(&self) -> u64 {
            self.n
        }
    }
}

#[test]
fn generated_code_ignores_shadowed_names() {
    use derecho::rpc::Replicated;
    use shadowed::Counter;

    let mut c = Counter::default();
    let args = derecho::rpc::support::rkyv::to_bytes::<derecho::rpc::support::rkyv::rancor::Error>(&(3u64,)).unwrap();
    // Method 0 (`add`) dispatched with arguments of the wrong shape is refused, not misread.
    assert!(Replicated::apply(&mut c, 0, &args).now().expect("synchronous").is_err());
    assert_eq!(c.n, 0);
    // Query 1 (`get`) takes no arguments: its archived empty arguments.
    let none = derecho::rpc::support::rkyv::to_bytes::<derecho::rpc::support::rkyv::rancor::Error>(&()).unwrap();
    let reply = Replicated::query(&c, 1, &none).now().expect("synchronous").unwrap();
    assert_eq!(
        derecho::rpc::support::rkyv::from_bytes::<u64, derecho::rpc::support::rkyv::rancor::Error>(&reply).unwrap(),
        0
    );
    // An ordered index asked as a query, and an index out of range, are refused.
    assert!(Replicated::query(&c, 0, &none).now().expect("synchronous").is_err());
    assert!(Replicated::apply(&mut c, 7, &none).now().expect("synchronous").is_err());
    assert_eq!(Counter::METHODS.len(), 2);
    assert_eq!(Counter::NAME, "Counter");
    let state = Replicated::snapshot(&Counter { n: 7 }).unwrap();
    assert_eq!(<Counter as Replicated>::restore(&state).unwrap().n, 7);
    assert!(<Counter as Replicated>::restore(&[1, 2, 3]).is_err());
}
