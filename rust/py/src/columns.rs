//! numpy/Python ⇄ core columns. Numeric numpy arrays are read in place (no copy
//! when C-contiguous with a supported dtype); strings become spans over one buffer,
//! and a `bytes` object is read as a V2 packed BYTES tensor without copying.

use numpy::{
    PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyString};
use riskserve_core::column::parse_packed_bytes;
use riskserve_core::{Column, StrColumn};

use crate::error::{input_error, NativeError};

/// Owns (or borrows from Python) the data behind one column while the GIL is
/// released. Every variant is `Send`.
pub enum Held<'py> {
    F64(PyReadonlyArrayDyn<'py, f64>),
    F32(PyReadonlyArrayDyn<'py, f32>),
    I64(PyReadonlyArrayDyn<'py, i64>),
    I32(PyReadonlyArrayDyn<'py, i32>),
    /// A bool array viewed as uint8 (reading arbitrary bytes as Rust `bool`
    /// would be undefined behaviour).
    Bool(PyReadonlyArrayDyn<'py, u8>),
    Packed(PyBackedBytes, Vec<Option<(usize, usize)>>),
    Strings(Vec<u8>, Vec<Option<(usize, usize)>>),
}

/// Named columns ready to be viewed as core columns.
pub struct HeldColumns<'py> {
    pub items: Vec<(String, Held<'py>)>,
}

fn slice<'a, T: numpy::Element>(a: &'a PyReadonlyArrayDyn<'_, T>) -> &'a [T] {
    // Arrays are made C-contiguous before they are held, so as_slice succeeds.
    a.as_slice().unwrap_or(&[])
}

impl HeldColumns<'_> {
    /// Borrowed core views; `Send`, so they can cross the GIL release.
    pub fn views(&self) -> Vec<(&str, Column<'_>)> {
        self.items
            .iter()
            .map(|(name, h)| {
                let col = match h {
                    Held::F64(a) => Column::F64(slice(a)),
                    Held::F32(a) => Column::F32(slice(a)),
                    Held::I64(a) => Column::I64(slice(a)),
                    Held::I32(a) => Column::I32(slice(a)),
                    Held::Bool(a) => Column::Bool(slice(a)),
                    Held::Packed(b, spans) => Column::Str(StrColumn { data: b, spans }),
                    Held::Strings(b, spans) => Column::Str(StrColumn { data: b, spans }),
                };
                (name.as_str(), col)
            })
            .collect()
    }
}

fn check_shape(name: &str, shape: &[usize]) -> PyResult<()> {
    match shape {
        [_] | [_, 1] => Ok(()),
        _ => Err(input_error(format!(
            "input '{name}' must have shape [batch] or [batch, 1], got {shape:?}"
        ))),
    }
}

fn hold_array<'py>(name: &str, value: &Bound<'py, PyAny>) -> PyResult<Held<'py>> {
    let py = value.py();
    let arr = value.cast::<PyUntypedArray>()?;
    check_shape(name, arr.shape())?;
    let kind = arr.dtype().kind();
    if kind == b'O' || kind == b'U' || kind == b'S' {
        return hold_strings(name, value);
    }
    if !matches!(kind, b'f' | b'i' | b'u' | b'b') {
        return Err(input_error(format!(
            "input '{name}' has unsupported numpy dtype kind '{}'",
            kind as char
        )));
    }
    // Fast path: a C-contiguous array of a supported dtype is read in place,
    // dispatched on (kind, itemsize) so no failed conversion is ever attempted.
    if arr.is_c_contiguous() {
        let size = arr.dtype().itemsize();
        let held = match (kind, size) {
            (b'f', 8) => value
                .cast::<PyArrayDyn<f64>>()
                .ok()
                .map(|a| Held::F64(a.readonly())),
            (b'f', 4) => value
                .cast::<PyArrayDyn<f32>>()
                .ok()
                .map(|a| Held::F32(a.readonly())),
            (b'i', 8) => value
                .cast::<PyArrayDyn<i64>>()
                .ok()
                .map(|a| Held::I64(a.readonly())),
            (b'i', 4) => value
                .cast::<PyArrayDyn<i32>>()
                .ok()
                .map(|a| Held::I32(a.readonly())),
            (b'b', 1) => {
                let bytes = value.call_method1("view", ("uint8",))?;
                bytes
                    .cast::<PyArrayDyn<u8>>()
                    .ok()
                    .map(|a| Held::Bool(a.readonly()))
            }
            _ => None,
        };
        if let Some(h) = held {
            return Ok(h);
        }
    }
    // Slow path: strided arrays get one contiguous copy; other numeric dtypes
    // (int8, uint32, float16, big-endian, ...) are widened to float64 once.
    let numpy = py.import("numpy")?;
    let mut a = numpy.call_method1("ascontiguousarray", (value,))?;
    loop {
        if let Ok(x) = a.extract::<PyReadonlyArrayDyn<'py, f64>>() {
            return Ok(Held::F64(x));
        }
        if let Ok(x) = a.extract::<PyReadonlyArrayDyn<'py, f32>>() {
            return Ok(Held::F32(x));
        }
        if let Ok(x) = a.extract::<PyReadonlyArrayDyn<'py, i64>>() {
            return Ok(Held::I64(x));
        }
        if let Ok(x) = a.extract::<PyReadonlyArrayDyn<'py, i32>>() {
            return Ok(Held::I32(x));
        }
        if a.cast::<PyArrayDyn<bool>>().is_ok() {
            let bytes = a.call_method1("view", ("uint8",))?;
            return Ok(Held::Bool(bytes.extract::<PyReadonlyArrayDyn<'py, u8>>()?));
        }
        a = numpy.call_method1("ascontiguousarray", (a, "float64"))?;
    }
}

fn hold_strings<'py>(name: &str, value: &Bound<'py, PyAny>) -> PyResult<Held<'py>> {
    let mut data = Vec::new();
    let mut spans = Vec::new();
    let items = value.try_iter().map_err(|_| {
        input_error(format!(
            "input '{name}' must be an array or a sequence of values, got a single {}",
            value
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    for (row, item) in items.enumerate() {
        let item = item?;
        if item.is_none() {
            spans.push(None);
            continue;
        }
        let start = data.len();
        if let Ok(s) = item.cast::<PyString>() {
            let s = s.to_str().map_err(|_| {
                input_error(format!(
                    "input '{name}' row {row}: value is not valid UTF-8"
                ))
            })?;
            data.extend_from_slice(s.as_bytes());
        } else if let Ok(b) = item.cast::<PyBytes>() {
            data.extend_from_slice(b.as_bytes());
        } else {
            return Err(input_error(format!(
                "input '{name}' row {row}: expected str, bytes or None, got {} (numeric \
                 columns must be numpy arrays)",
                item.get_type().name()?
            )));
        }
        spans.push(Some((start, data.len())));
    }
    Ok(Held::Strings(data, spans))
}

/// Extracts `columns` (a mapping of name → numpy array, list of str/bytes/None,
/// or a `bytes` object holding a V2 packed BYTES tensor).
pub fn hold<'py>(columns: &Bound<'py, PyDict>) -> PyResult<HeldColumns<'py>> {
    let mut items = Vec::with_capacity(columns.len());
    for (k, v) in columns.iter() {
        let name: String = k
            .extract()
            .map_err(|_| input_error("column names must be str".into()))?;
        let held = if v.cast::<PyUntypedArray>().is_ok() {
            hold_array(&name, &v)?
        } else if let Ok(b) = v.cast::<PyBytes>() {
            let backed: PyBackedBytes = b.clone().into();
            let spans = parse_packed_bytes(&name, &backed).map_err(NativeError)?;
            Held::Packed(backed, spans)
        } else if v.cast::<PyString>().is_ok() {
            return Err(input_error(format!(
                "input '{name}' is a single str; pass a sequence of values"
            )));
        } else {
            hold_strings(&name, &v)?
        };
        items.push((name, held));
    }
    Ok(HeldColumns { items })
}
