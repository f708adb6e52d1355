//! `rows_json`: the prediction log's raw inputs, one JSON object text per row,
//! built with the GIL released (the log's writer thread must not hold the GIL the
//! event loop needs while it formats thousands of numbers).

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::columns::hold;
use crate::error::NativeError;
use crate::gil::without_gil;

/// One `{"name":value,...}` text per row of `columns` (input name → numpy array,
/// V2 packed BYTES or list of str/bytes/None). NaN and ±inf are `null`.
#[pyfunction]
pub fn rows_json(
    py: Python<'_>,
    columns: &Bound<'_, PyDict>,
    rows: usize,
) -> PyResult<Vec<String>> {
    let held = hold(columns)?;
    let views = held.views();
    let out = without_gil(py, || riskserve_core::record::rows_json(&views, rows));
    Ok(out.map_err(NativeError)?)
}
