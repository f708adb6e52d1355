//! `Gbdt`: a LightGBM model evaluated by the core's tree evaluator.

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::error::{input_error, NativeError};
use crate::gil::without_gil;

/// A LightGBM model parsed from its text format. Thread-safe: one instance serves
/// every thread, and `predict` releases the GIL.
#[pyclass(module = "riskserve._native", frozen)]
pub struct Gbdt {
    pub(crate) inner: riskserve_core::gbdt::Gbdt,
}

impl Gbdt {
    fn score<'py>(&self, x: &Bound<'py, PyAny>, raw: bool) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let py = x.py();
        let n = self.inner.n_features();
        let arr = x.cast::<PyArray2<f32>>().map_err(|_| describe(x, n))?;
        let ro = arr.readonly();
        let rows = ro.shape()[0];
        if ro.shape()[1] != n {
            return Err(input_error(format!(
                "x has {} columns, the model has {n} features",
                ro.shape()[1]
            )));
        }
        // as_slice also takes a Fortran-ordered array, which would be read transposed.
        let values = ro
            .as_slice()
            .ok()
            .filter(|_| ro.is_c_contiguous())
            .ok_or_else(|| input_error("x must be C-contiguous".into()))?;
        let inner = &self.inner;
        let out = without_gil(py, || {
            let mut out = vec![0f64; rows];
            if raw {
                inner.predict_raw(values, &mut out)?;
            } else {
                inner.predict(values, &mut out)?;
            }
            Ok::<_, riskserve_core::Error>(out)
        })
        .map_err(NativeError)?;
        Ok(PyArray1::from_vec(py, out))
    }
}

/// The error for an `x` that is not a 2-D float32 array.
fn describe(x: &Bound<'_, PyAny>, n: usize) -> PyErr {
    let got = match x.cast::<PyUntypedArray>() {
        Ok(a) => format!("a {}-D {} array", a.ndim(), a.dtype()),
        Err(_) => x
            .get_type()
            .name()
            .map_or_else(|_| "another type".into(), |t| t.to_string()),
    };
    input_error(format!(
        "x must be a 2-D float32 array of shape (rows, {n}), got {got}"
    ))
}

#[pymethods]
impl Gbdt {
    /// Parses `model_text` (model.txt as LightGBM writes it). Raises ModelError
    /// naming the line and field when it is malformed or not supported.
    #[new]
    fn new(model_text: &str) -> PyResult<Self> {
        let inner = riskserve_core::gbdt::Gbdt::from_text(model_text).map_err(NativeError)?;
        Ok(Self { inner })
    }

    #[getter]
    fn n_features(&self) -> usize {
        self.inner.n_features()
    }

    #[getter]
    fn num_trees(&self) -> usize {
        self.inner.num_trees()
    }

    #[getter]
    fn feature_names(&self) -> Vec<String> {
        self.inner.feature_names().to_vec()
    }

    /// Predictions (probabilities for a binary model) of a C-contiguous float32
    /// [rows, n_features] matrix, as float64: LightGBM's `Booster.predict`.
    fn predict<'py>(&self, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<f64>>> {
        self.score(x, false)
    }

    /// Raw scores (sums of leaf values): LightGBM's `predict(raw_score=True)`.
    fn predict_raw<'py>(&self, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<f64>>> {
        self.score(x, true)
    }
}
