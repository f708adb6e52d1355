//! riskserve-core: the numeric heart of riskserve, with no knowledge of Python.
//!
//! * [`spec`]: the feature spec (`features.json`), versioned with every model.
//! * [`pipeline::FeaturePipeline`]: compiled once from a spec, turns a batch of raw
//!   columns into a row-major `f32` matrix. The training pipeline and the server
//!   both call it, so there is one implementation of every transform.
//! * [`column`]: borrowed views of one raw input column (numbers, flags, strings).
//! * [`gbdt`]: LightGBM models read from model.txt and a tree evaluator that
//!   gives LightGBM's own predictions.
//! * [`fit`]: fits a spec template's statistics (imputation values, means, quantile
//!   edges, vocabularies) on training columns.
//! * [`drift`]: reference bins fitted at training, exact streaming per-bin counts
//!   in a ring of sub-windows, and the one PSI implementation.
//! * [`counters`]: request counts and latency histograms in atomics, in a file
//!   other processes read (the fleet's request metrics).
//! * [`hash`]: MurmurHash3 x86_32, the portable hash behind hashed categories and
//!   sticky traffic assignment.
//! * [`record`]: raw input rows as JSON objects, for the prediction log.
//! * [`wire`]: reads a serialized Open Inference Protocol `ModelInferRequest`
//!   without building protobuf objects.
//! * [`fastpath`]: a plain request's bytes → validated columns → scores → reply
//!   bytes, in one call.
//! * [`error`]: the one typed error enum every fallible function returns.

pub mod column;
pub mod counters;
pub mod drift;
pub mod error;
pub mod fastpath;
pub mod fit;
pub mod gbdt;
pub mod hash;
pub mod pipeline;
pub mod record;
pub mod spec;
mod stats;
pub mod wire;

pub use column::{Column, StrColumn};
pub use error::{Error, Result};
pub use pipeline::FeaturePipeline;
pub use spec::FeatureSpec;
