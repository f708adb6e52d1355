//! The one-call native path (riskserve_core::fastpath): `Scorer`, `peek_request`
//! and `request_rows_json`. A request the native path does not take comes back
//! as None (the Python path handles it and says what is wrong), never as an error.

use numpy::PyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};
use riskserve_core::fastpath::{self, FastPath, Limits, Reply};

use crate::drift::DriftMonitor;
use crate::error::input_error;
use crate::gbdt::Gbdt;
use crate::gil::without_gil;
use crate::pipeline::FeaturePipeline;

/// (model_name, model_version, id, routing_key or None) of a plain request, read
/// without its inputs; None when the bytes do not decode or these fields are not
/// those of a plain request (a name over `max_name_bytes`, an id over
/// `max_key_bytes`, more than `max_parameters` parameters, a parameter other than
/// `routing_key`, a `routing_key` that is not a non-empty string within
/// `max_key_bytes`).
#[pyfunction]
pub fn peek_request<'py>(
    py: Python<'py>,
    data: &[u8],
    max_name_bytes: usize,
    max_key_bytes: usize,
    max_parameters: usize,
) -> PyResult<Option<Bound<'py, PyTuple>>> {
    let Some(p) = fastpath::peek_request(data, max_name_bytes, max_key_bytes, max_parameters)
    else {
        return Ok(None);
    };
    let key = p.routing_key.map(|k| PyString::new(py, &k));
    let fields = (
        PyString::new(py, p.model_name),
        PyString::new(py, p.model_version),
        PyString::new(py, p.id),
        key,
    );
    Ok(Some(fields.into_pyobject(py)?))
}

/// One JSON object text per row of a plain request's raw inputs (in request
/// order): what `rows_json` gives for the columns the Python codec decodes from
/// the same bytes. InputError when the bytes are not a plain raw request or do
/// not hold `rows` rows.
#[pyfunction]
pub fn request_rows_json(py: Python<'_>, data: &[u8], rows: usize) -> PyResult<Vec<String>> {
    let out = without_gil(py, || {
        let req = fastpath::decode_plain(data, &Limits::NONE)
            .map_err(|d| format!("not a plain raw request: {d}"))?;
        riskserve_core::record::rows_json(&req.columns(), rows).map_err(|e| e.to_string())
    });
    out.map_err(input_error)
}

/// Requests up to this size (about 8 rows of 35 inputs) are scored holding the
/// GIL: their few microseconds cost less than giving the GIL away, which, when
/// another thread (the prediction log's writer) takes it, can take up to the
/// interpreter's switch interval (5 ms) to come back to the event loop.
const KEEP_GIL_BYTES: usize = 4096;

/// One model version's compiled pipeline, model and drift monitor (the very
/// objects its Python path uses, shared, not copied), scoring plain requests
/// from their bytes in one call with the GIL released.
#[pyclass(module = "riskserve._native", frozen)]
pub struct Scorer {
    pipeline: Py<FeaturePipeline>,
    model: Py<Gbdt>,
    drift: Option<Py<DriftMonitor>>,
    limits: Limits,
}

impl Scorer {
    fn path(&self) -> FastPath<'_> {
        FastPath {
            pipeline: &self.pipeline.get().inner,
            model: &self.model.get().inner,
            drift: self.drift.as_ref().map(|d| &d.get().inner),
            limits: self.limits,
        }
    }
}

#[pymethods]
impl Scorer {
    /// `limits`: (max_parameters, max_inputs, max_name_bytes, max_routing_key_bytes,
    /// max_parameter_bytes), as LimitsSettings; `max_rows`: the most rows one
    /// request may carry. ValueError when the model does not take the pipeline's
    /// features or the drift monitor was built for other inputs.
    #[new]
    fn new(
        pipeline: Bound<'_, FeaturePipeline>,
        model: Bound<'_, Gbdt>,
        drift: Option<Bound<'_, DriftMonitor>>,
        limits: (usize, usize, usize, usize, usize),
        max_rows: usize,
    ) -> PyResult<Self> {
        let (
            max_parameters,
            max_inputs,
            max_name_bytes,
            max_routing_key_bytes,
            max_parameter_bytes,
        ) = limits;
        let limits = Limits {
            max_parameters,
            max_inputs,
            max_name_bytes,
            max_routing_key_bytes,
            max_parameter_bytes,
            max_rows,
        };
        FastPath::new(
            &pipeline.get().inner,
            &model.get().inner,
            drift.as_ref().map(|d| &d.get().inner),
            limits,
        )
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(Self {
            pipeline: pipeline.unbind(),
            model: model.unbind(),
            drift: drift.map(Bound::unbind),
            limits,
        })
    }

    /// Scores a plain request and encodes its reply: (reply bytes, float32
    /// scores, input_ns, infer_ns), or None when the Python path must take the
    /// request (it is not plain, breaks a rule or a limit, or has more than
    /// `inline_max_rows` rows). Nothing is counted in drift for a None. The reply
    /// is a ModelInferResponse (a ModelStreamInferResponse holding it with
    /// `stream`) naming `model_name`, `model_version`, `request_id`, with string
    /// parameters variant and deployment_revision (`revision`); flagged is
    /// score >= threshold in float32.
    #[pyo3(signature = (
        data, model_name, model_version, request_id, variant, revision, threshold,
        inline_max_rows, stream = false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn infer<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
        model_name: &str,
        model_version: &str,
        request_id: &str,
        variant: &str,
        revision: &str,
        threshold: f64,
        inline_max_rows: usize,
        stream: bool,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let path = self.path();
        let reply = Reply {
            model_name,
            model_version,
            id: request_id,
            variant,
            revision,
            threshold,
        };
        let run = || path.infer(data, &reply, inline_max_rows, stream).ok();
        let done = if data.len() <= KEEP_GIL_BYTES {
            run()
        } else {
            without_gil(py, run)
        };
        let Some((bytes, scored)) = done else {
            return Ok(None);
        };
        let out = (
            PyBytes::new(py, &bytes),
            PyArray1::from_vec(py, scored.scores),
            scored.input_ns,
            scored.infer_ns,
        );
        Ok(Some(out.into_pyobject(py)?))
    }

    /// The float32 scores of a plain request, counted in drift (for shadow
    /// scoring, off the reply path); None under `infer`'s rules, without its
    /// inline row limit.
    fn score_request<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
    ) -> PyResult<Option<Bound<'py, PyArray1<f32>>>> {
        let path = self.path();
        let done = without_gil(py, || path.score(data, None).ok().map(|(_, s)| s.scores));
        Ok(done.map(|s| PyArray1::from_vec(py, s)))
    }
}
