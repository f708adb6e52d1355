//! `DriftMonitor` and `fit_reference`.

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use riskserve_core::drift::{self, DriftConfig, Window};
use riskserve_core::{Column, FeaturePipeline as CorePipeline, FeatureSpec};

use crate::columns::hold;
use crate::error::NativeError;
use crate::gil::without_gil;

/// Batches up to this size are counted while holding the GIL.
const SMALL_BATCH: usize = 64;

fn window(name: &str) -> PyResult<Window> {
    match name {
        "cumulative" => Ok(Window::Cumulative),
        "sliding" | "window" => Ok(Window::Sliding),
        other => Err(PyValueError::new_err(format!(
            "window must be 'cumulative' or 'sliding', not {other:?}"
        ))),
    }
}

/// Exact streaming per-bin counts of every raw input and the score, with PSI
/// against the reference in the spec. Thread-safe; counting takes no lock.
#[pyclass(module = "riskserve._native", frozen)]
pub struct DriftMonitor {
    pub(crate) inner: drift::DriftMonitor,
}

#[pymethods]
impl DriftMonitor {
    #[new]
    #[pyo3(signature = (spec_json, slots = 60, slot_seconds = 60))]
    fn new(spec_json: &str, slots: usize, slot_seconds: u64) -> PyResult<Self> {
        let spec = FeatureSpec::from_json(spec_json).map_err(NativeError)?;
        let inner = drift::DriftMonitor::new(
            &spec,
            DriftConfig {
                slots,
                slot_seconds,
            },
        )
        .map_err(NativeError)?;
        Ok(Self { inner })
    }

    /// (name, bin labels, reference shares) per field, the score (`__score__`) last.
    #[getter]
    fn fields(&self) -> Vec<(String, Vec<String>, Vec<f64>)> {
        self.inner
            .fields()
            .map(|f| (f.name.clone(), f.bins.labels(), f.shares.clone()))
            .collect()
    }

    /// Minimum observations before field `i`'s PSI is reported.
    fn min_count(&self, i: usize) -> PyResult<u64> {
        if i >= self.inner.offsets().len() {
            return Err(PyValueError::new_err(format!("no field #{i}")));
        }
        Ok(self.inner.min_count(i))
    }

    /// Counts a batch of raw columns (validated like a transform) and, if given,
    /// its scores. `now` (Unix seconds) overrides the clock, for tests.
    #[pyo3(signature = (columns, scores = None, now = None))]
    fn observe(
        &self,
        py: Python<'_>,
        columns: &Bound<'_, PyDict>,
        scores: Option<PyReadonlyArray1<'_, f64>>,
        now: Option<u64>,
    ) -> PyResult<()> {
        let held = hold(columns)?;
        let views = held.views();
        let scores: &[f64] = match &scores {
            Some(s) => s.as_slice()?,
            None => &[],
        };
        let inner = &self.inner;
        without_gil(py, || {
            let (cols, rows) = inner.bind(&views)?;
            inner.observe(&cols, rows, scores, now);
            Ok::<_, riskserve_core::Error>(())
        })
        .map_err(NativeError)?;
        Ok(())
    }

    /// Counts scores only (the inputs were observed during the transform).
    /// float32 or float64; a small batch is counted without releasing the GIL
    /// (the hand-off would cost more than the counting).
    #[pyo3(signature = (scores, now = None))]
    fn observe_scores(
        &self,
        py: Python<'_>,
        scores: &Bound<'_, PyAny>,
        now: Option<u64>,
    ) -> PyResult<()> {
        let widened: Vec<f64>;
        let f64s;
        let s: &[f64] = if let Ok(a) = scores.cast::<PyArray1<f32>>() {
            let ro = a.readonly();
            widened = ro.as_slice()?.iter().map(|&x| f64::from(x)).collect();
            &widened
        } else {
            f64s = scores.extract::<PyReadonlyArray1<'_, f64>>()?;
            f64s.as_slice()?
        };
        let inner = &self.inner;
        let no_cols: [Column<'_>; 0] = [];
        if s.len() <= SMALL_BATCH {
            inner.observe(&no_cols, 0, s, now);
        } else {
            without_gil(py, || inner.observe(&no_cols, 0, s, now));
        }
        Ok(())
    }

    /// Flat per-bin counts, fields in order then the score.
    #[pyo3(signature = (window = "cumulative", now = None))]
    fn counts<'py>(
        &self,
        py: Python<'py>,
        window: &str,
        now: Option<u64>,
    ) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let w = self::window(window)?;
        Ok(PyArray1::from_vec(py, self.inner.counts(w, now)))
    }

    /// (name, observations, PSI or None below the minimum count) per field.
    #[pyo3(signature = (window = "cumulative", now = None))]
    fn psi(&self, window: &str, now: Option<u64>) -> PyResult<Vec<(String, u64, Option<f64>)>> {
        let w = self::window(window)?;
        Ok(self.named(self.inner.psi(w, now)))
    }

    /// Like `psi`, of flat per-bin counts laid out like `counts()` (e.g. the
    /// counts of several worker processes summed).
    fn psi_of(
        &self,
        counts: PyReadonlyArray1<'_, u64>,
    ) -> PyResult<Vec<(String, u64, Option<f64>)>> {
        let counts = counts.as_slice()?;
        let rows = self.inner.psi_of(counts).ok_or_else(|| {
            PyValueError::new_err(format!(
                "drift counts: expected {} bins, got {}",
                self.inner.total_bins(),
                counts.len()
            ))
        })?;
        Ok(self.named(rows))
    }
}

impl DriftMonitor {
    fn named(&self, rows: Vec<(u64, Option<f64>)>) -> Vec<(String, u64, Option<f64>)> {
        self.inner
            .fields()
            .zip(rows)
            .map(|(f, (n, p))| (f.name.clone(), n, p))
            .collect()
    }

    pub(crate) fn same_inputs(&self, pipeline: &CorePipeline) -> bool {
        self.inner.inputs() == pipeline.inputs()
    }
}

/// PSI of per-bin counts `actual` against `expected` (the canary's scores against
/// the control's).
#[pyfunction]
pub fn psi_between(
    actual: PyReadonlyArray1<'_, u64>,
    expected: PyReadonlyArray1<'_, u64>,
) -> PyResult<f64> {
    let (a, e) = (actual.as_slice()?, expected.as_slice()?);
    if a.len() != e.len() {
        return Err(PyValueError::new_err(format!(
            "psi_between: {} bins against {}",
            a.len(),
            e.len()
        )));
    }
    Ok(drift::psi_between(a, e))
}

/// Fits drift reference bins on training columns and holdout scores; returns the
/// spec JSON with `reference` filled in.
#[pyfunction]
#[pyo3(signature = (spec_json, columns, scores, quantiles = 10, max_categories = 50))]
pub fn fit_reference(
    py: Python<'_>,
    spec_json: &str,
    columns: &Bound<'_, PyDict>,
    scores: PyReadonlyArray1<'_, f64>,
    quantiles: usize,
    max_categories: usize,
) -> PyResult<String> {
    if quantiles < 2 {
        return Err(PyValueError::new_err("quantiles must be ≥ 2"));
    }
    let mut spec = FeatureSpec::from_json(spec_json).map_err(NativeError)?;
    let held = hold(columns)?;
    let views = held.views();
    let s = scores.as_slice()?;
    let reference = without_gil(py, || {
        drift::fit_reference(&spec, &views, s, quantiles, max_categories)
    })
    .map_err(NativeError)?;
    spec.reference =
        Some(serde_json::to_value(reference).map_err(|e| PyValueError::new_err(e.to_string()))?);
    Ok(spec.to_json().map_err(NativeError)?)
}
