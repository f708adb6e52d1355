//! The compiled feature pipeline: the one implementation of every transform.

use std::collections::HashMap;

use crate::column::{bind_columns, Column};
use crate::error::{Error, Result};
use crate::hash::murmur3_x86_32;
use crate::spec::{FeatureSpec, InputSpec, Missing, Step, Transform};

/// A numeric step with every parameter resolved.
#[derive(Debug, Clone)]
enum Op {
    Log1p,
    Clip(f64, f64),
    Standardize { mean: f64, inv_std: f64 },
    Bucketize(Vec<f64>),
}

impl Op {
    #[inline]
    fn apply(&self, x: f64) -> f64 {
        match self {
            Op::Log1p => x.signum() * x.abs().ln_1p(),
            Op::Clip(lo, hi) => x.clamp(*lo, *hi),
            Op::Standardize { mean, inv_std } => (x - mean) * inv_std,
            Op::Bucketize(edges) => edges.partition_point(|&e| e <= x) as f64,
        }
    }
}

#[derive(Debug, Clone)]
struct Fill {
    value: f64,
    indicator: bool,
}

#[derive(Debug, Clone)]
enum Kernel {
    Numeric {
        input: usize,
        fill: Fill,
        ops: Vec<Op>,
    },
    Ratio {
        num: usize,
        den: usize,
        fill: Fill,
        ops: Vec<Op>,
    },
    Cyclical {
        input: usize,
        fill: Fill,
        omega: f64,
        period: f64,
    },
    OneHot {
        input: usize,
        vocab: HashMap<Vec<u8>, usize>,
        n: usize,
    },
    Ordinal {
        input: usize,
        vocab: HashMap<Vec<u8>, usize>,
        n: usize,
    },
    Hash {
        input: usize,
        buckets: u32,
        seed: u32,
    },
}

#[derive(Debug, Clone)]
struct Compiled {
    kernel: Kernel,
    offset: usize,
}

/// A feature spec compiled for fast batch transforms. Immutable and `Sync`: one
/// instance serves every thread.
#[derive(Debug, Clone)]
pub struct FeaturePipeline {
    spec: FeatureSpec,
    compiled: Vec<Compiled>,
    feature_names: Vec<String>,
    input_index: HashMap<String, usize>,
}

fn label(t: &Transform) -> String {
    format!("{} transform '{}'", t.kind(), t.base_name())
}

fn resolve_fill(label: &str, m: &Missing) -> Result<Fill> {
    let value = m
        .value
        .ok_or_else(|| Error::Spec(format!("{label} is not fitted: missing.value is absent")))?;
    if !value.is_finite() {
        return Err(Error::Spec(format!(
            "{label}: missing.value must be finite"
        )));
    }
    Ok(Fill {
        value,
        indicator: m.indicator,
    })
}

fn resolve_ops(label: &str, steps: &[Step]) -> Result<Vec<Op>> {
    let unfitted = |what: &str| Error::Spec(format!("{label} is not fitted: {what}"));
    let finite = |v: f64, what: &str| {
        if v.is_finite() {
            Ok(v)
        } else {
            Err(Error::Spec(format!("{label}: {what} must be finite")))
        }
    };
    steps
        .iter()
        .map(|s| {
            Ok(match s {
                Step::Log1p => Op::Log1p,
                Step::Clip { min, max, .. } => {
                    let lo = finite(min.unwrap_or(f64::MIN), "clip.min")?;
                    let hi = finite(max.unwrap_or(f64::MAX), "clip.max")?;
                    if lo > hi {
                        return Err(Error::Spec(format!("{label}: clip.min > clip.max")));
                    }
                    Op::Clip(lo, hi)
                }
                Step::Standardize { mean, std } => {
                    let mean = finite(mean.ok_or_else(|| unfitted("standardize.mean"))?, "mean")?;
                    let std = finite(std.ok_or_else(|| unfitted("standardize.std"))?, "std")?;
                    if std <= 0.0 {
                        return Err(Error::Spec(format!("{label}: standardize.std must be > 0")));
                    }
                    Op::Standardize {
                        mean,
                        inv_std: 1.0 / std,
                    }
                }
                Step::Bucketize { edges, .. } => {
                    let edges = edges.clone().ok_or_else(|| unfitted("bucketize.edges"))?;
                    if edges.iter().any(|e| !e.is_finite())
                        || edges.windows(2).any(|w| w[0] >= w[1])
                    {
                        return Err(Error::Spec(format!(
                            "{label}: bucketize.edges must be finite and strictly increasing"
                        )));
                    }
                    Op::Bucketize(edges)
                }
            })
        })
        .collect()
}

fn vocab_map(label: &str, vocab: &Option<Vec<String>>) -> Result<(HashMap<Vec<u8>, usize>, usize)> {
    let vocab = vocab
        .as_ref()
        .ok_or_else(|| Error::Spec(format!("{label} is not fitted: vocabulary is absent")))?;
    let mut map = HashMap::with_capacity(vocab.len());
    for (i, v) in vocab.iter().enumerate() {
        if v.is_empty() {
            return Err(Error::Spec(format!(
                "{label}: the empty string means missing and cannot be in the vocabulary"
            )));
        }
        if map.insert(v.as_bytes().to_vec(), i).is_some() {
            return Err(Error::Spec(format!(
                "{label}: vocabulary value '{v}' appears twice"
            )));
        }
    }
    Ok((map, vocab.len()))
}

/// A single fitted step as a function, for fitting the step that follows it.
pub(crate) fn step_fn(label: &str, step: &Step) -> Result<impl Fn(f64) -> f64> {
    let op = resolve_ops(label, std::slice::from_ref(step))?
        .pop()
        .ok_or_else(|| Error::Spec(format!("{label}: empty step")))?;
    Ok(move |x| op.apply(x))
}

/// Feature column names a transform writes, in order.
pub fn transform_feature_names(t: &Transform) -> Vec<String> {
    let base = t.base_name();
    let indicator = |m: &Missing, v: &mut Vec<String>| {
        if m.indicator {
            v.push(format!("{base}__missing"));
        }
    };
    match t {
        Transform::Numeric { missing, .. } | Transform::Ratio { missing, .. } => {
            let mut v = vec![base.to_owned()];
            indicator(missing, &mut v);
            v
        }
        Transform::Cyclical { missing, .. } => {
            let mut v = vec![format!("{base}__sin"), format!("{base}__cos")];
            indicator(missing, &mut v);
            v
        }
        Transform::OneHot { vocabulary, .. } => {
            let mut v: Vec<String> = vocabulary
                .iter()
                .flatten()
                .map(|c| format!("{base}={c}"))
                .collect();
            v.push(format!("{base}=__unseen__"));
            v.push(format!("{base}=__missing__"));
            v
        }
        Transform::Ordinal { .. } | Transform::Hash { .. } => vec![base.to_owned()],
    }
}

impl FeaturePipeline {
    /// Compiles a fitted spec; refuses unfitted or inconsistent ones.
    pub fn compile(spec: FeatureSpec) -> Result<Self> {
        spec.check_structure()?;
        let input_index: HashMap<String, usize> = spec
            .inputs
            .iter()
            .enumerate()
            .map(|(i, inp)| (inp.name.clone(), i))
            .collect();
        let idx = |name: &str| input_index[name];
        let mut compiled = Vec::with_capacity(spec.transforms.len());
        let mut feature_names = Vec::new();
        for t in &spec.transforms {
            let l = label(t);
            let kernel = match t {
                Transform::Numeric {
                    input,
                    missing,
                    steps,
                    ..
                } => Kernel::Numeric {
                    input: idx(input),
                    fill: resolve_fill(&l, missing)?,
                    ops: resolve_ops(&l, steps)?,
                },
                Transform::Ratio {
                    numerator,
                    denominator,
                    missing,
                    steps,
                    ..
                } => Kernel::Ratio {
                    num: idx(numerator),
                    den: idx(denominator),
                    fill: resolve_fill(&l, missing)?,
                    ops: resolve_ops(&l, steps)?,
                },
                Transform::Cyclical {
                    input,
                    period,
                    missing,
                    ..
                } => Kernel::Cyclical {
                    input: idx(input),
                    fill: resolve_fill(&l, missing)?,
                    omega: std::f64::consts::TAU / period,
                    period: *period,
                },
                Transform::OneHot {
                    input, vocabulary, ..
                } => {
                    let (vocab, n) = vocab_map(&l, vocabulary)?;
                    Kernel::OneHot {
                        input: idx(input),
                        vocab,
                        n,
                    }
                }
                Transform::Ordinal {
                    input, vocabulary, ..
                } => {
                    let (vocab, n) = vocab_map(&l, vocabulary)?;
                    Kernel::Ordinal {
                        input: idx(input),
                        vocab,
                        n,
                    }
                }
                Transform::Hash {
                    input,
                    buckets,
                    seed,
                    ..
                } => Kernel::Hash {
                    input: idx(input),
                    buckets: *buckets,
                    seed: *seed,
                },
            };
            compiled.push(Compiled {
                kernel,
                offset: feature_names.len(),
            });
            feature_names.extend(transform_feature_names(t));
        }
        for (i, f) in feature_names.iter().enumerate() {
            if feature_names[..i].contains(f) {
                return Err(Error::Spec(format!("feature name '{f}' produced twice")));
            }
        }
        Ok(Self {
            spec,
            compiled,
            feature_names,
            input_index,
        })
    }

    pub fn from_json(text: &str) -> Result<Self> {
        Self::compile(FeatureSpec::from_json(text)?)
    }

    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    pub fn inputs(&self) -> &[InputSpec] {
        &self.spec.inputs
    }

    /// The position of the declared input `name` among [`FeaturePipeline::inputs`].
    pub fn input_position(&self, name: &str) -> Option<usize> {
        self.input_index.get(name).copied()
    }

    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// Matches named columns to the declared inputs (in declaration order) and
    /// checks names, dtypes and lengths. Returns the columns and the row count.
    pub fn bind<'a>(&self, columns: &[(&str, Column<'a>)]) -> Result<(Vec<Column<'a>>, usize)> {
        bind_columns(&self.spec.inputs, columns, false, |n| {
            self.input_index.get(n).copied()
        })
    }

    /// Transforms a batch into a row-major `[rows, n_features]` matrix.
    pub fn transform(&self, columns: &[(&str, Column<'_>)]) -> Result<Vec<f32>> {
        let (cols, rows) = self.bind(columns)?;
        let mut out = vec![0f32; rows * self.n_features()];
        self.transform_bound(&cols, rows, &mut out)?;
        Ok(out)
    }

    /// Transforms already-bound columns into `out` (`rows * n_features`).
    pub fn transform_bound(&self, cols: &[Column<'_>], rows: usize, out: &mut [f32]) -> Result<()> {
        let n = self.n_features();
        debug_assert_eq!(out.len(), rows * n);
        for c in &self.compiled {
            let off = c.offset;
            match &c.kernel {
                Kernel::Numeric { input, fill, ops } => {
                    let col = &cols[*input];
                    write_numeric(out, n, off, rows, fill, ops, |r| col.number(r));
                }
                Kernel::Ratio {
                    num,
                    den,
                    fill,
                    ops,
                } => {
                    let (a, b) = (&cols[*num], &cols[*den]);
                    write_numeric(out, n, off, rows, fill, ops, |r| {
                        let (x, y) = (a.number(r)?, b.number(r)?);
                        let q = x / y;
                        (y != 0.0 && q.is_finite()).then_some(q)
                    });
                }
                Kernel::Cyclical {
                    input,
                    fill,
                    omega,
                    period,
                } => {
                    let col = &cols[*input];
                    for r in 0..rows {
                        let v = col.number(r);
                        // Reduce to one period first (exact), so huge inputs and
                        // tiny periods still give a finite, meaningful angle.
                        let x = v.unwrap_or(fill.value).rem_euclid(*period) * omega;
                        let row = &mut out[r * n + off..];
                        row[0] = x.sin() as f32;
                        row[1] = x.cos() as f32;
                        if fill.indicator {
                            row[2] = f32::from(u8::from(v.is_none()));
                        }
                    }
                }
                Kernel::OneHot { input, vocab, n: k } => {
                    let s = strings(&cols[*input])?;
                    for r in 0..rows {
                        let j = categorize(&self.spec.inputs[*input].name, s, r, vocab, *k)?;
                        let row = &mut out[r * n + off..r * n + off + k + 2];
                        row.fill(0.0);
                        row[j] = 1.0;
                    }
                }
                Kernel::Ordinal { input, vocab, n: k } => {
                    let s = strings(&cols[*input])?;
                    for r in 0..rows {
                        let j = categorize(&self.spec.inputs[*input].name, s, r, vocab, *k)?;
                        out[r * n + off] = j as f32;
                    }
                }
                Kernel::Hash {
                    input,
                    buckets,
                    seed,
                } => {
                    let s = strings(&cols[*input])?;
                    let name = &self.spec.inputs[*input].name;
                    for r in 0..rows {
                        out[r * n + off] = match s.get(r) {
                            None => *buckets as f32,
                            Some(b) => {
                                check_utf8(name, r, b)?;
                                (murmur3_x86_32(b, *seed) % buckets) as f32
                            }
                        };
                    }
                }
            }
        }
        Ok(())
    }
}

/// f64 → f32 without overflowing to ±inf: values beyond f32's range saturate,
/// so the model never sees an infinity the spec did not ask for.
#[inline]
fn saturate(x: f64) -> f32 {
    x.clamp(f64::from(f32::MIN), f64::from(f32::MAX)) as f32
}

#[inline]
fn write_numeric(
    out: &mut [f32],
    n: usize,
    off: usize,
    rows: usize,
    fill: &Fill,
    ops: &[Op],
    value: impl Fn(usize) -> Option<f64>,
) {
    for r in 0..rows {
        let v = value(r);
        let mut x = v.unwrap_or(fill.value);
        for op in ops {
            x = op.apply(x);
        }
        out[r * n + off] = saturate(x);
        if fill.indicator {
            out[r * n + off + 1] = f32::from(u8::from(v.is_none()));
        }
    }
}

fn strings<'a>(col: &'a Column<'a>) -> Result<&'a crate::column::StrColumn<'a>> {
    match col {
        Column::Str(s) => Ok(s),
        // bind() already refused numeric columns for string inputs.
        other => Err(Error::DType {
            name: String::new(),
            expected: "string",
            got: other.type_name(),
        }),
    }
}

#[inline]
fn check_utf8(name: &str, row: usize, b: &[u8]) -> Result<()> {
    std::str::from_utf8(b).map(|_| ()).map_err(|_| Error::Utf8 {
        name: name.to_owned(),
        row,
    })
}

/// Index of row `r` among vocab (0..k), unseen = k, missing = k + 1.
#[inline]
fn categorize(
    name: &str,
    s: &crate::column::StrColumn<'_>,
    r: usize,
    vocab: &HashMap<Vec<u8>, usize>,
    k: usize,
) -> Result<usize> {
    Ok(match s.get(r) {
        None => k + 1,
        Some(b) => match vocab.get(b) {
            Some(&j) => j,
            None => {
                check_utf8(name, r, b)?;
                k
            }
        },
    })
}
