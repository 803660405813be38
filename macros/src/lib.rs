//! Procedural macros for derecho, re-exported by the `derecho` crate.
//!
//! `#[replicated]` goes on the `impl` block of a plain Rust type and makes the type a replicated
//! object (PROTOCOLS §6): every `&mut self` method becomes an *ordered* operation (multicast in
//! the shard and applied by every replica at the same point of the order), every `&self` method
//! a *query* (run by one chosen replica). The block is kept as written, so the methods can still
//! be called directly; the macro adds:
//!
//! * the archived argument types of each method (rkyv), in a hidden module;
//! * `impl ::derecho::rpc::Replicated for T`: the method table and the dispatch, which validates
//!   the arguments in place in the receive buffer and calls the method (`&str` and `&[u8]`
//!   arguments are borrowed from the buffer, other types are deserialized);
//! * a client, `TClient`, with one async method per source method: ordered methods return every
//!   replica's reply (`Replies<R>`), queries take the member to ask and return its reply.
//!
//! The type itself must be rkyv-archivable (`#[derive(Archive, Serialize, Deserialize)]`): its
//! archive is the state sent to a member that joins a shard.
//!
//! # Layout
//!
//! * `model`: the `impl` block parsed into a model, every error collected with its span.
//! * `expand`: one function per generated item, absolute paths only
//!   (`::derecho::rpc::...`, `::core::...`).

use proc_macro::TokenStream;

mod expand;
mod model;

/// Makes the type of an `impl` block a replicated object; see the crate documentation.
///
/// ```ignore
/// #[derive(Default, Archive, Serialize, Deserialize)]
/// #[rkyv(crate = derecho::rpc::support::rkyv)]
/// struct Counter { value: u64 }
///
/// #[derecho::replicated]
/// impl Counter {
///     pub fn add(&mut self, n: u64) -> u64 { self.value += n; self.value }
///     pub fn get(&self) -> u64 { self.value }
/// }
/// ```
#[proc_macro_attribute]
pub fn replicated(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = proc_macro2::TokenStream::from(attr);
    let item_impl = match syn::parse::<syn::ItemImpl>(item) {
        Ok(i) => i,
        Err(e) => {
            return syn::Error::new(e.span(), "#[replicated] goes on an inherent `impl` block: impl MyType { ... }")
                .to_compile_error()
                .into();
        }
    };
    match model::Model::parse(&attr, &item_impl) {
        Ok(m) => expand::expand(&m, &item_impl).into(),
        Err(errors) => {
            let errors = errors.into_iter().map(|e| e.to_compile_error());
            quote::quote! { #item_impl #(#errors)* }.into()
        }
    }
}

#[cfg(test)]
mod tests {
    //! The expansion of one example, compared with `tests/expanded/counter.rs`
    //! (`DERECHO_SNAPSHOTS=overwrite` rewrites it after a deliberate change).

    use super::{expand, model};

    #[test]
    fn expansion_snapshot() {
        let item: syn::ItemImpl = syn::parse_quote! {
            impl Counter {
                /// Adds `by`, tagged `label`.
                pub fn add(&mut self, by: u64, label: &str) -> u64 {
                    self.n += by;
                    self.n
                }

                pub fn get(&self) -> u64 {
                    self.n
                }

                pub fn new() -> Self {
                    Self { n: 0 }
                }
            }
        };
        let m = model::Model::parse(&proc_macro2::TokenStream::new(), &item).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(m.methods.len(), 2, "an associated function without a receiver stays local");
        let file: syn::File = syn::parse2(expand::expand(&m, &item)).expect("the expansion parses");
        let got = prettyplease::unparse(&file);
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expanded/counter.rs");
        if std::env::var("DERECHO_SNAPSHOTS").as_deref() == Ok("overwrite") {
            std::fs::write(&path, &got).expect("write the snapshot");
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(want == got, "the expansion changed; run with DERECHO_SNAPSHOTS=overwrite and review:\n{got}");
    }

    #[test]
    fn every_error_is_collected() {
        let item: syn::ItemImpl = syn::parse_quote! {
            impl Store {
                fn a<T>(&mut self, t: T) {}
                fn b(self) {}
                fn c(&self, x: &mut u8) {}
                fn snapshot(&self) {}
            }
        };
        let errors = match model::Model::parse(&proc_macro2::TokenStream::new(), &item) {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        };
        assert_eq!(errors.len(), 4, "{:?}", errors.iter().map(ToString::to_string).collect::<Vec<_>>());
    }
}
