//! The one helper every long-running core call goes through: it releases the GIL
//! so other Python threads (the event loop) run while the batch computes.

use pyo3::Python;

/// Runs `f` with the GIL released.
#[inline]
pub fn without_gil<T, F>(py: Python<'_>, f: F) -> T
where
    F: Send + FnOnce() -> T,
    T: Send,
{
    py.detach(f)
}
