//! `kv_client`: the kv example's store from Python.
//!
//! Everything but the module itself is generated: `#[replicated]` (with `derecho`'s feature
//! `python`) writes the class `KvStore` (`KvStorePython`) whose methods are the store's. This
//! file adds it to a module, with `derecho`'s `ClientError` and the function that places keys on
//! shards as the members do.

use pyo3::prelude::*;

/// The shard `(subgroup, shard)` that holds `key` in a store of `shards` shards.
#[pyfunction]
fn shard_of(key: &str, shards: u16) -> (u16, u16) {
    let s = derecho_examples::kv::shard_of(key, shards);
    (s.subgroup.0, s.shard.0)
}

#[pymodule]
fn kv_client(m: &Bound<'_, PyModule>) -> PyResult<()> {
    derecho::rpc::support::python::register(m)?;
    m.add_class::<derecho_examples::kv::KvStorePython>()?;
    m.add_function(wrap_pyfunction!(shard_of, m)?)?;
    Ok(())
}
