//! `parse_infer_request`: ModelInferRequest bytes → a dict of plain Python
//! values, with raw tensors as (start, end) offsets into the same bytes (no copies).

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use riskserve_core::wire::{first_infinite_input, parse_infer_request_capped, Caps, Param};

use crate::error::NativeError;

type Input = (String, String, Vec<i64>, bool);

/// The request as a dict (`riskserve._native.WireRequest` in the stubs): model_name,
/// model_version, id, parameters [(key, value or None)], inputs [(name, datatype,
/// shape, has_typed_contents)], outputs [name], raw [(start, end)], the full counts
/// n_parameters, n_inputs, n_outputs, n_raw (lists hold at most the caps),
/// tensor_parameters (the most parameters of one input or output), max_dims (the
/// most dimensions of one input's shape), longest_name (the UTF-8 size of the
/// longest name: model name and version, parameter keys, input names and
/// datatypes, output names), and infinite: the index of the first
/// input whose raw FP16/FP32/FP64 content holds ±inf, or None.
#[pyfunction]
#[pyo3(signature = (data, max_parameters=usize::MAX, max_tensors=usize::MAX, max_dims=usize::MAX))]
pub fn parse_infer_request<'py>(
    py: Python<'py>,
    data: &[u8],
    max_parameters: usize,
    max_tensors: usize,
    max_dims: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let caps = Caps {
        parameters: max_parameters,
        tensors: max_tensors,
        dims: max_dims,
    };
    let w = parse_infer_request_capped(data, &caps).map_err(NativeError)?;
    let infinite = first_infinite_input(data, &w);
    let max_dims = w.inputs.iter().map(|i| i.n_dims).max().unwrap_or(0);
    let longest_name = w.longest_name();
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
                Param::Unset => py.None(),
            };
            Ok((k, obj))
        })
        .collect::<PyResult<_>>()?;
    let inputs: Vec<Input> = w
        .inputs
        .into_iter()
        .map(|i| (i.name, i.datatype, i.shape, i.has_contents))
        .collect();
    let d = PyDict::new(py);
    d.set_item(intern!(py, "model_name"), w.model_name)?;
    d.set_item(intern!(py, "model_version"), w.model_version)?;
    d.set_item(intern!(py, "id"), w.id)?;
    d.set_item(intern!(py, "parameters"), params)?;
    d.set_item(intern!(py, "inputs"), inputs)?;
    d.set_item(intern!(py, "outputs"), w.outputs)?;
    d.set_item(intern!(py, "raw"), w.raw)?;
    d.set_item(intern!(py, "n_parameters"), w.n_parameters)?;
    d.set_item(intern!(py, "n_inputs"), w.n_inputs)?;
    d.set_item(intern!(py, "n_outputs"), w.n_outputs)?;
    d.set_item(intern!(py, "n_raw"), w.n_raw)?;
    d.set_item(intern!(py, "tensor_parameters"), w.tensor_parameters)?;
    d.set_item(intern!(py, "max_dims"), max_dims)?;
    d.set_item(intern!(py, "longest_name"), longest_name)?;
    d.set_item(intern!(py, "infinite"), infinite)?;
    Ok(d)
}
