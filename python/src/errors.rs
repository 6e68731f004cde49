//! kvxfer failures as Python exceptions: one class per `kvx_status` family,
//! defined in `kvxfer/errors.py`, each carrying the code, the status name and
//! `kvx_last_error`'s text. Without the kvxfer package (the TensorRT-LLM
//! binding copied on its own) they fall back to `RuntimeError` / `ValueError`.

use crate::handles::{status_name, KvxError, KvxResult};
use crate::sys::KVX_ERR_INVALID_ARGUMENT;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

pub fn to_py(py: Python<'_>, e: KvxError) -> PyErr {
    let name = e.status_name();
    let made = py
        .import("kvxfer.errors")
        .and_then(|m| m.getattr("_from_status"))
        .and_then(|f| f.call1((e.code, name.as_str(), e.detail.as_str())));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(_) if e.code == KVX_ERR_INVALID_ARGUMENT => PyValueError::new_err(e.detail),
        Err(_) => PyRuntimeError::new_err(if e.detail.is_empty() { name } else { e.detail }),
    }
}

/// A kvxfer-style invalid-argument error raised by these modules' own checks.
pub fn invalid(py: Python<'_>, detail: impl Into<String>) -> PyErr {
    let detail = format!("{}: {}", status_name(KVX_ERR_INVALID_ARGUMENT), detail.into());
    to_py(py, KvxError::new(KVX_ERR_INVALID_ARGUMENT, detail))
}

/// `?`-friendly conversion of handle results.
pub trait OrRaise<T> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> OrRaise<T> for KvxResult<T> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}
