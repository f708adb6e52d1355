//! `RequestStats`: the request counters and histograms of riskserve-core's
//! `counters::Table`, in this process's memory or in a file the fleet's metrics
//! process reads.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::create_exception;
use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use riskserve_core::counters::{self, SlotStats, StatsError, Table};

use crate::gil::without_gil;

create_exception!(
    _native,
    StatsFileError,
    PyValueError,
    "A request-stats file that is not a whole table of this build's layout; the message says why."
);

/// One slot as Python sees it: (model, version, variant, code, cells).
type PySlot = (String, String, String, String, Vec<u64>);

fn to_py(e: StatsError) -> PyErr {
    match e {
        StatsError::Io { context, source } => {
            // keeps the errno class: FileNotFoundError for a file gone meanwhile
            PyErr::from(std::io::Error::new(
                source.kind(),
                format!("{context}: {source}"),
            ))
        }
        StatsError::Refused { .. } => StatsFileError::new_err(e.to_string()),
        StatsError::NoSuchSlot { .. } => PyIndexError::new_err(e.to_string()),
        StatsError::Capacity(_) => PyValueError::new_err(e.to_string()),
    }
}

fn slots(stats: Vec<SlotStats>) -> Vec<PySlot> {
    stats
        .into_iter()
        .map(|s| {
            (
                s.key.model,
                s.key.version,
                s.key.variant,
                s.key.code,
                s.cells,
            )
        })
        .collect()
}

/// Request counts and, for code "OK", latency and rows-per-request histograms,
/// per (model, version, variant, code), in atomics: observing takes no lock.
/// With `path`, the table is a new file there (refused if one exists) that other
/// processes read with `RequestStats.read`. Capacity is fixed: once full, new
/// keys count in the overflow slot ("__overflow__", "", "", code).
///
/// Cells of a slot: count, latency sum (ns), rows sum, then one count per
/// latency bucket (LATENCY_BOUNDS_NS, then +Inf) and per rows bucket
/// (ROWS_BOUNDS, then +Inf); a value goes to the first bound it is at most.
#[pyclass(module = "riskserve._native", frozen)]
pub struct RequestStats {
    /// The core table, for other native modules that record into it.
    pub inner: Arc<Table>,
}

#[pymethods]
impl RequestStats {
    #[new]
    #[pyo3(signature = (path = None, capacity = counters::DEFAULT_CAPACITY))]
    fn new(path: Option<PathBuf>, capacity: usize) -> PyResult<Self> {
        let table = match path {
            None => Table::anonymous(capacity),
            Some(p) => Table::create(&p, capacity),
        }
        .map_err(to_py)?;
        Ok(Self {
            inner: Arc::new(table),
        })
    }

    /// The slot of a key (allocated on first sight, the overflow slot once full).
    fn slot(&self, model: &str, version: &str, variant: &str, code: &str) -> usize {
        self.inner.slot(model, version, variant, code)
    }

    /// Records one successful request: its time in ns (negative counts as 0) and rows.
    fn observe_ok(&self, slot: usize, seconds_ns: i64, rows: u64) -> PyResult<()> {
        let ns = u64::try_from(seconds_ns).unwrap_or(0);
        self.inner.observe_ok(slot, ns, rows).map_err(to_py)
    }

    /// Counts one request (an error: its count only) in `slot`.
    fn count(&self, slot: usize) -> PyResult<()> {
        self.inner.count(slot).map_err(to_py)
    }

    /// Every slot's (model, version, variant, code, cells), now.
    fn snapshot(&self) -> Vec<PySlot> {
        slots(self.inner.snapshot())
    }

    /// The slots of another process's table file (live or dead), as `snapshot`.
    /// StatsFileError names what is wrong with a file that is not a whole table.
    #[staticmethod]
    fn read(py: Python<'_>, path: PathBuf) -> PyResult<Vec<PySlot>> {
        without_gil(py, || counters::read_file(&path))
            .map(slots)
            .map_err(to_py)
    }

    /// The table's file, or None in memory.
    #[getter]
    fn path(&self) -> Option<String> {
        self.inner.path().map(|p| p.display().to_string())
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    /// Slots handed out so far.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    #[classattr]
    #[allow(non_snake_case)]
    fn LATENCY_BOUNDS_NS() -> Vec<u64> {
        counters::LATENCY_BOUNDS_NS.to_vec()
    }

    #[classattr]
    #[allow(non_snake_case)]
    fn ROWS_BOUNDS() -> Vec<u64> {
        counters::ROWS_BOUNDS.to_vec()
    }

    #[classattr]
    #[allow(non_snake_case)]
    fn OVERFLOW_MODEL() -> &'static str {
        counters::OVERFLOW_MODEL
    }
}
