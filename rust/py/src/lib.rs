//! riskserve._native: thin PyO3 bindings over riskserve-core. Conversion lives in
//! `columns`, the GIL release in `gil`, error mapping in `error`; one file per
//! exposed type or function group.

use pyo3::prelude::*;

mod bytes;
mod columns;
mod counters;
mod drift;
mod error;
mod fastpath;
mod gbdt;
mod gil;
mod hash;
mod pipeline;
mod record;
mod wire;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("FeatureError", py.get_type::<error::FeatureError>())?;
    m.add("SpecError", py.get_type::<error::SpecError>())?;
    m.add("InputError", py.get_type::<error::InputError>())?;
    m.add("ModelError", py.get_type::<error::ModelError>())?;
    m.add("StatsFileError", py.get_type::<counters::StatsFileError>())?;
    m.add_class::<pipeline::FeaturePipeline>()?;
    m.add_class::<drift::DriftMonitor>()?;
    m.add_class::<gbdt::Gbdt>()?;
    m.add_class::<counters::RequestStats>()?;
    m.add_function(wrap_pyfunction!(drift::fit_reference, m)?)?;
    m.add_function(wrap_pyfunction!(drift::psi_between, m)?)?;
    m.add_function(wrap_pyfunction!(pipeline::fit_spec, m)?)?;
    m.add_function(wrap_pyfunction!(hash::murmur3_32, m)?)?;
    m.add_function(wrap_pyfunction!(bytes::packed_count, m)?)?;
    m.add_function(wrap_pyfunction!(record::rows_json, m)?)?;
    m.add_function(wrap_pyfunction!(wire::parse_infer_request, m)?)?;
    m.add_class::<fastpath::Scorer>()?;
    m.add_function(wrap_pyfunction!(fastpath::peek_request, m)?)?;
    m.add_function(wrap_pyfunction!(fastpath::request_rows_json, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
