//! The one place core errors become Python exceptions. `SpecError` and
//! `InputError` subclass `FeatureError`; it and `ModelError` are `ValueError`s, so
//! callers' `except ValueError` works.

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::PyErr;
use riskserve_core::Error;

create_exception!(
    _native,
    FeatureError,
    PyValueError,
    "Base class of riskserve feature errors."
);
create_exception!(
    _native,
    SpecError,
    FeatureError,
    "The feature spec is invalid or not fitted."
);
create_exception!(
    _native,
    InputError,
    FeatureError,
    "A batch does not match the feature spec; the message names the input."
);

create_exception!(
    _native,
    ModelError,
    PyValueError,
    "A LightGBM model text is malformed or not supported; the message names the line and field."
);

/// Newtype so that `?` converts core errors into the right Python exception.
pub struct NativeError(pub Error);

impl From<Error> for NativeError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl From<NativeError> for PyErr {
    fn from(e: NativeError) -> Self {
        if matches!(e.0, Error::Model(_)) {
            ModelError::new_err(e.0.to_string())
        } else if e.0.is_input_error() {
            InputError::new_err(e.0.to_string())
        } else {
            SpecError::new_err(e.0.to_string())
        }
    }
}

/// An input error raised by the bindings themselves (shape, element type).
pub fn input_error(msg: String) -> PyErr {
    InputError::new_err(msg)
}
