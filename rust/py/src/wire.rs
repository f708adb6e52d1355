//! `parse_infer_request`: ModelInferRequest bytes → plain Python values, with
//! raw tensors as (start, end) offsets into the same bytes (no copies).

use pyo3::prelude::*;
use pyo3::types::PyTuple;
use riskserve_core::wire::{parse_infer_request as parse, Param};

use crate::error::NativeError;

type Input = (String, String, Vec<i64>, bool);

/// (model_name, model_version, id, parameters [(key, value)], inputs [(name,
/// datatype, shape, has_typed_contents)], outputs [name], raw [(start, end)]).
#[pyfunction]
pub fn parse_infer_request<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyTuple>> {
    let w = parse(data).map_err(NativeError)?;
    let params: Vec<(String, Py<PyAny>)> = w
        .parameters
        .into_iter()
        .map(|(k, v)| {
            let obj = match v {
                Param::Bool(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
                Param::Int64(i) => i.into_pyobject(py)?.into_any().unbind(),
                Param::String(s) => s.into_pyobject(py)?.into_any().unbind(),
                Param::Double(d) => d.into_pyobject(py)?.into_any().unbind(),
                Param::Uint64(u) => u.into_pyobject(py)?.into_any().unbind(),
            };
            Ok((k, obj))
        })
        .collect::<PyResult<_>>()?;
    let inputs: Vec<Input> = w
        .inputs
        .into_iter()
        .map(|i| (i.name, i.datatype, i.shape, i.has_contents))
        .collect();
    (
        w.model_name,
        w.model_version,
        w.id,
        params,
        inputs,
        w.outputs,
        w.raw,
    )
        .into_pyobject(py)
}
