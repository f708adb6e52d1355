//! One error enum for the core; the bindings map it to Python in one place.

/// Everything the core can refuse. Input errors name the field so that a server
/// can hand the message straight to its client.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    /// The spec is not valid JSON, or its contents do not make sense.
    #[error("invalid feature spec: {0}")]
    Spec(String),
    /// A raw input the spec declares was not supplied.
    #[error("missing input '{0}'")]
    MissingInput(String),
    /// A column was supplied that the spec does not declare.
    #[error("unexpected input '{0}': the feature spec does not declare it")]
    UnexpectedInput(String),
    /// The same input was supplied twice.
    #[error("input '{0}' supplied more than once")]
    DuplicateInput(String),
    /// Columns disagree on the number of rows.
    #[error("input '{name}' has {got} rows, expected {expected}")]
    LengthMismatch {
        name: String,
        got: usize,
        expected: usize,
    },
    /// A column's element type does not fit the declared dtype.
    #[error("input '{name}' must be {expected}, got {got}")]
    DType {
        name: String,
        expected: &'static str,
        got: &'static str,
    },
    /// A BYTES value is not UTF-8.
    #[error("input '{name}' row {row}: value is not valid UTF-8")]
    Utf8 { name: String, row: usize },
    /// A protobuf message could not be read.
    #[error("malformed request: {0}")]
    Wire(String),
    /// A packed BYTES buffer is truncated or malformed.
    #[error("input '{name}': malformed BYTES buffer: {reason}")]
    Packed { name: String, reason: String },
    /// A model file is malformed or uses what the evaluator does not support; the
    /// message names the line and field.
    #[error("invalid LightGBM model: {0}")]
    Model(String),
    /// A feature matrix does not have the model's shape.
    #[error("feature matrix: {0}")]
    Matrix(String),
}

/// Result alias for the core.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// True when the caller sent bad data (as opposed to a bad spec or model).
    pub fn is_input_error(&self) -> bool {
        !matches!(self, Error::Spec(_) | Error::Model(_))
    }
}
