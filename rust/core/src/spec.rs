//! The feature spec: raw inputs and the transforms that turn them into model
//! features. A *template* leaves statistics out (`null`/absent); [`crate::fit`]
//! fills them from training data; [`crate::FeaturePipeline::compile`] accepts only
//! a fully fitted spec. The format is documented in docs/feature-spec.md.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The format tag every spec carries.
pub const FORMAT: &str = "riskserve.features/v1";

fn default_format() -> String {
    FORMAT.to_owned()
}

/// A whole `features.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    #[serde(default = "default_format")]
    pub format: String,
    pub inputs: Vec<InputSpec>,
    pub transforms: Vec<Transform>,
    /// Drift reference bins and shares, written at training time (see drift docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<serde_json::Value>,
}

/// Declared element type of a raw input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Float,
    Int,
    Bool,
    String,
}

impl DType {
    pub fn is_numeric(self) -> bool {
        !matches!(self, DType::String)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::Float => "float",
            DType::Int => "int",
            DType::Bool => "bool",
            DType::String => "string",
        }
    }
}

/// One raw field the model reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub dtype: DType,
    /// Observed values of a categorical input, most frequent first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocabulary: Option<Vec<String>>,
}

/// How missing values (NaN, ±inf, null, empty string) are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Median,
    Mean,
    Constant,
}

/// Missing-value imputation, applied to the raw value before any step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Missing {
    #[serde(default)]
    pub strategy: Strategy,
    /// The fill value (fitted for median/mean, given for constant).
    #[serde(default)]
    pub value: Option<f64>,
    /// Emit an extra 0/1 column that is 1 where the value was missing.
    #[serde(default)]
    pub indicator: bool,
}

/// One numeric step, applied in order after imputation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// sign(x)·ln(1+|x|): defined for every real, monotone, 0 at 0.
    Log1p,
    /// Clamp to [min, max]; either bound may be fitted from a quantile.
    Clip {
        #[serde(default)]
        min: Option<f64>,
        #[serde(default)]
        max: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_quantile: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_quantile: Option<f64>,
    },
    /// (x − mean) / std, population statistics.
    Standardize {
        #[serde(default)]
        mean: Option<f64>,
        #[serde(default)]
        std: Option<f64>,
    },
    /// Bucket index = number of edges ≤ x (bucket i is [edges[i−1], edges[i])).
    Bucketize {
        #[serde(default)]
        edges: Option<Vec<f64>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quantiles: Option<usize>,
    },
}

fn default_onehot_max() -> usize {
    16
}
fn default_ordinal_max() -> usize {
    256
}
fn default_min_count() -> u64 {
    1
}

/// One transform: reads one or two raw inputs, writes one or more features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Transform {
    /// Impute, then apply `steps` in order.
    Numeric {
        input: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default)]
        missing: Missing,
        #[serde(default)]
        steps: Vec<Step>,
    },
    /// numerator / denominator; missing when either is missing or the
    /// denominator is 0; then imputed and stepped like `numeric`.
    Ratio {
        numerator: String,
        denominator: String,
        name: String,
        #[serde(default)]
        missing: Missing,
        #[serde(default)]
        steps: Vec<Step>,
    },
    /// sin and cos of 2π·x/period (e.g. hour of day with period 24).
    Cyclical {
        input: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        period: f64,
        #[serde(default)]
        missing: Missing,
    },
    /// One 0/1 column per vocabulary value, then `__unseen__` and `__missing__`.
    OneHot {
        input: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default)]
        vocabulary: Option<Vec<String>>,
        #[serde(default = "default_onehot_max")]
        max_categories: usize,
        #[serde(default = "default_min_count")]
        min_count: u64,
    },
    /// Vocabulary index; unseen = len(vocabulary), missing = len(vocabulary) + 1.
    Ordinal {
        input: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default)]
        vocabulary: Option<Vec<String>>,
        #[serde(default = "default_ordinal_max")]
        max_categories: usize,
        #[serde(default = "default_min_count")]
        min_count: u64,
    },
    /// murmur3_x86_32(utf8, seed) mod buckets; missing = buckets.
    Hash {
        input: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        buckets: u32,
        #[serde(default)]
        seed: u32,
    },
}

impl Transform {
    /// The raw inputs this transform reads.
    pub fn inputs(&self) -> Vec<&str> {
        match self {
            Transform::Ratio {
                numerator,
                denominator,
                ..
            } => vec![numerator, denominator],
            Transform::Numeric { input, .. }
            | Transform::Cyclical { input, .. }
            | Transform::OneHot { input, .. }
            | Transform::Ordinal { input, .. }
            | Transform::Hash { input, .. } => vec![input],
        }
    }

    /// The base name used for this transform's feature columns.
    pub fn base_name(&self) -> &str {
        match self {
            Transform::Ratio { name, .. } => name,
            Transform::Numeric { input, name, .. }
            | Transform::Cyclical { input, name, .. }
            | Transform::OneHot { input, name, .. }
            | Transform::Ordinal { input, name, .. }
            | Transform::Hash { input, name, .. } => name.as_deref().unwrap_or(input),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Transform::Numeric { .. } => "numeric",
            Transform::Ratio { .. } => "ratio",
            Transform::Cyclical { .. } => "cyclical",
            Transform::OneHot { .. } => "one_hot",
            Transform::Ordinal { .. } => "ordinal",
            Transform::Hash { .. } => "hash",
        }
    }

    pub fn wants_strings(&self) -> bool {
        matches!(
            self,
            Transform::OneHot { .. } | Transform::Ordinal { .. } | Transform::Hash { .. }
        )
    }
}

impl FeatureSpec {
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::Spec(e.to_string()))
    }

    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Spec(e.to_string()))
    }

    pub fn input(&self, name: &str) -> Option<&InputSpec> {
        self.inputs.iter().find(|i| i.name == name)
    }

    /// Structural checks shared by fit and compile: known format, unique inputs,
    /// every transform reads declared inputs of a fitting dtype.
    pub fn check_structure(&self) -> Result<()> {
        if self.format != FORMAT {
            return Err(Error::Spec(format!(
                "unknown format '{}', expected '{FORMAT}'",
                self.format
            )));
        }
        if self.inputs.is_empty() {
            return Err(Error::Spec("no inputs declared".into()));
        }
        for (i, inp) in self.inputs.iter().enumerate() {
            if inp.name.is_empty() {
                return Err(Error::Spec(format!("input #{i} has an empty name")));
            }
            if self.inputs[..i].iter().any(|o| o.name == inp.name) {
                return Err(Error::Spec(format!("input '{}' declared twice", inp.name)));
            }
        }
        if self.transforms.is_empty() {
            return Err(Error::Spec("no transforms declared".into()));
        }
        for t in &self.transforms {
            for name in t.inputs() {
                let inp = self.input(name).ok_or_else(|| {
                    Error::Spec(format!(
                        "{} transform '{}' reads undeclared input '{name}'",
                        t.kind(),
                        t.base_name()
                    ))
                })?;
                if t.wants_strings() != (inp.dtype == DType::String) {
                    return Err(Error::Spec(format!(
                        "{} transform '{}' cannot read input '{name}' of dtype {}",
                        t.kind(),
                        t.base_name(),
                        inp.dtype.name()
                    )));
                }
            }
            match t {
                Transform::Cyclical { period, .. } if !(period.is_finite() && *period > 0.0) => {
                    return Err(Error::Spec(format!(
                        "cyclical transform '{}': period must be > 0",
                        t.base_name()
                    )))
                }
                Transform::Hash { buckets: 0, .. } => {
                    return Err(Error::Spec(format!(
                        "hash transform '{}': buckets must be ≥ 1",
                        t.base_name()
                    )))
                }
                _ => {}
            }
        }
        Ok(())
    }
}
