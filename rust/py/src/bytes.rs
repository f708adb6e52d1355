//! `packed_count`: validates a V2 packed BYTES buffer and counts its elements.

use pyo3::prelude::*;
use riskserve_core::column::parse_packed_bytes;

use crate::error::NativeError;

/// Number of elements in a V2 packed BYTES buffer (4-byte LE length + bytes each).
/// Raises InputError when the buffer is truncated or malformed.
#[pyfunction]
pub fn packed_count(data: &[u8]) -> PyResult<usize> {
    Ok(parse_packed_bytes("BYTES tensor", data)
        .map_err(NativeError)?
        .len())
}
