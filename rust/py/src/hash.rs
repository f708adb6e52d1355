//! `murmur3_32`: the core's portable hash, for tests and Python-side routing.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::error::input_error;

/// MurmurHash3 x86_32 of `data` (str is hashed as UTF-8) with `seed`.
#[pyfunction]
#[pyo3(signature = (data, seed = 0))]
pub fn murmur3_32(data: &Bound<'_, PyAny>, seed: u32) -> PyResult<u32> {
    if let Ok(s) = data.cast::<PyString>() {
        return Ok(riskserve_core::hash::murmur3_x86_32(
            s.to_str()?.as_bytes(),
            seed,
        ));
    }
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(riskserve_core::hash::murmur3_x86_32(b.as_bytes(), seed));
    }
    Err(input_error("murmur3_32 takes str or bytes".into()))
}
