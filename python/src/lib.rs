//! Python modules over kvxfer's C ABI, linked against the shared
//! `libkvxfer.so.0`: `kvxfer._native` (the `kvxfer` package's API) and
//! `tensorrt_llm_transfer_agent_binding` (TensorRT-LLM's Python
//! transfer-agent binding served by kvxfer). One binary exports both init
//! functions; the wheel ships it under both names.

/// `.name` and `.value` for a PyO3 enum, as Python's and nanobind's enums have.
macro_rules! enum_name_value {
    ($ty:ident { $($v:ident),* }) => {
        #[pymethods]
        impl $ty {
            #[getter]
            fn name(&self) -> &'static str {
                match self { $($ty::$v => stringify!($v),)* }
            }
            #[getter]
            fn value(&self) -> u32 {
                *self as u32
            }
        }
    };
}

mod api;
mod binding;
mod errors;
mod handles;
mod memory;
mod sys;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<api::Agent>()?;
    m.add_class::<api::Transfer>()?;
    m.add_class::<api::TransferState>()?;
    m.add_class::<api::Region>()?;
    m.add_class::<api::ConnectionManager>()?;
    m.add_class::<api::Connection>()?;
    m.add_function(wrap_pyfunction!(api::resolve_backend, m)?)?;
    m.add_function(wrap_pyfunction!(api::backend_info, m)?)?;
    m.add_function(wrap_pyfunction!(api::library_version, m)?)?;
    m.add_function(wrap_pyfunction!(api::library_path, m)?)?;
    Ok(())
}

#[pymodule]
fn tensorrt_llm_transfer_agent_binding(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Installed into TensorRT-LLM, the binding is imported without the kvxfer package; importing
    // it (when present) points libkvxfer at this interpreter's UCX / NIXL wheels, as for
    // `import kvxfer`. Without it libkvxfer searches on its own.
    let _ = m.py().import("kvxfer");
    binding::init(m)
}
