//! `FeaturePipeline` and `fit_spec`.

use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use riskserve_core::{fit, FeatureSpec};

use pyo3::exceptions::PyValueError;

use crate::columns::hold;
use crate::drift::DriftMonitor;
use crate::error::NativeError;
use crate::gil::without_gil;

/// A fitted feature spec compiled for batch transforms. Thread-safe: one instance
/// serves every thread, and `transform` releases the GIL.
#[pyclass(module = "riskserve._native", frozen)]
pub struct FeaturePipeline {
    pub(crate) inner: riskserve_core::FeaturePipeline,
}

#[pymethods]
impl FeaturePipeline {
    /// Compiles `spec_json` (the contents of a `features.json`).
    #[new]
    fn new(spec_json: &str) -> PyResult<Self> {
        let inner = riskserve_core::FeaturePipeline::from_json(spec_json).map_err(NativeError)?;
        Ok(Self { inner })
    }

    /// Output feature names, in column order.
    #[getter]
    fn feature_names(&self) -> Vec<String> {
        self.inner.feature_names().to_vec()
    }

    #[getter]
    fn n_features(&self) -> usize {
        self.inner.n_features()
    }

    /// Declared raw inputs as (name, dtype) pairs, dtype in float|int|bool|string.
    #[getter]
    fn inputs(&self) -> Vec<(String, &'static str)> {
        self.inner
            .inputs()
            .iter()
            .map(|i| (i.name.clone(), i.dtype.name()))
            .collect()
    }

    /// The compiled spec as canonical JSON.
    fn spec_json(&self) -> PyResult<String> {
        Ok(self.inner.spec().to_json().map_err(NativeError)?)
    }

    /// Transforms a batch of named raw columns into a float32 [rows, n_features]
    /// matrix. Raises InputError naming the offending input. With `drift`, the
    /// raw inputs are also counted by that monitor in the same GIL-free section
    /// (only once the whole batch has been validated and transformed).
    #[pyo3(signature = (columns, drift = None, now = None))]
    fn transform<'py>(
        &self,
        py: Python<'py>,
        columns: &Bound<'py, PyDict>,
        drift: Option<PyRef<'py, DriftMonitor>>,
        now: Option<u64>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        if let Some(d) = &drift {
            if !d.same_inputs(&self.inner) {
                return Err(PyValueError::new_err(
                    "the drift monitor was built for a spec with other inputs",
                ));
            }
        }
        let held = hold(columns)?;
        let views = held.views();
        let n = self.inner.n_features();
        let inner = &self.inner;
        let monitor = drift.as_ref().map(|d| &d.inner);
        let (out, rows) = without_gil(py, || {
            let (cols, rows) = inner.bind(&views)?;
            let mut out = vec![0f32; rows * n];
            inner.transform_bound(&cols, rows, &mut out)?;
            if let Some(m) = monitor {
                m.observe(&cols, rows, &[], now);
            }
            Ok::<_, riskserve_core::Error>((out, rows))
        })
        .map_err(NativeError)?;
        PyArray1::from_vec(py, out).reshape([rows, n])
    }
}

/// Fits a spec template on training columns (extra columns are ignored) and
/// returns the fitted spec as JSON.
#[pyfunction]
pub fn fit_spec(
    py: Python<'_>,
    template_json: &str,
    columns: &Bound<'_, PyDict>,
) -> PyResult<String> {
    let template = FeatureSpec::from_json(template_json).map_err(NativeError)?;
    let held = hold(columns)?;
    let views = held.views();
    let fitted = without_gil(py, || fit::fit(&template, &views)).map_err(NativeError)?;
    Ok(fitted.to_json().map_err(NativeError)?)
}
