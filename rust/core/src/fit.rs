//! Fitting a spec template on training columns: fill values, step statistics,
//! quantile edges and vocabularies. The fitted spec is what ships with a model.

use crate::column::{bind_columns, Column, StrColumn};
use crate::error::{Error, Result};
use crate::pipeline::FeaturePipeline;
use crate::spec::{DType, FeatureSpec, Missing, Step, Strategy, Transform};
use crate::stats;

/// How many observed values an input's informational vocabulary keeps.
pub const INPUT_VOCABULARY_CAP: usize = 1000;

/// Fits every unfitted statistic of `template` on `columns` and returns a spec
/// that [`FeaturePipeline::compile`] accepts. Values already present are kept.
pub fn fit(template: &FeatureSpec, columns: &[(&str, Column<'_>)]) -> Result<FeatureSpec> {
    template.check_structure()?;
    // Training tables carry more columns than the spec reads (the target, ids):
    // extra columns are ignored here, unlike at serving time.
    let index = |n: &str| template.inputs.iter().position(|i| i.name == n);
    let (cols, rows) = bind_columns(&template.inputs, columns, true, index)?;
    let col = |name: &str| -> &Column<'_> { &cols[index(name).unwrap_or(0)] };

    let mut spec = template.clone();
    for inp in &mut spec.inputs {
        if inp.dtype == DType::String && inp.vocabulary.is_none() {
            if let Column::Str(s) = col(&inp.name) {
                let mut v = frequent_values(s, 1, &inp.name)?;
                v.truncate(INPUT_VOCABULARY_CAP);
                inp.vocabulary = Some(v);
            }
        }
    }
    for t in &mut spec.transforms {
        let label = format!("{} transform '{}'", t.kind(), t.base_name());
        match t {
            Transform::Numeric {
                input,
                missing,
                steps,
                ..
            } => {
                let c = col(input);
                let raw: Vec<Option<f64>> = (0..rows).map(|r| c.number(r)).collect();
                fit_numeric(&label, &raw, missing, steps)?;
            }
            Transform::Ratio {
                numerator,
                denominator,
                missing,
                steps,
                ..
            } => {
                let (a, b) = (col(numerator), col(denominator));
                let raw: Vec<Option<f64>> = (0..rows)
                    .map(|r| {
                        let (x, y) = (a.number(r)?, b.number(r)?);
                        let q = x / y;
                        (y != 0.0 && q.is_finite()).then_some(q)
                    })
                    .collect();
                fit_numeric(&label, &raw, missing, steps)?;
            }
            Transform::Cyclical { input, missing, .. } => {
                let c = col(input);
                let raw: Vec<Option<f64>> = (0..rows).map(|r| c.number(r)).collect();
                fit_numeric(&label, &raw, missing, &mut [])?;
            }
            Transform::OneHot {
                input,
                vocabulary,
                max_categories,
                min_count,
                ..
            }
            | Transform::Ordinal {
                input,
                vocabulary,
                max_categories,
                min_count,
                ..
            } => {
                if vocabulary.is_none() {
                    if let Column::Str(s) = col(input) {
                        let mut v = frequent_values(s, *min_count, input)?;
                        v.truncate(*max_categories);
                        *vocabulary = Some(v);
                    }
                }
            }
            Transform::Hash { .. } => {}
        }
    }
    // The fitted spec must compile; surface any inconsistency now, not at serve time.
    FeaturePipeline::compile(spec.clone())?;
    Ok(spec)
}

/// Values seen at least `min_count` times, most frequent first, ties by value.
fn frequent_values(s: &StrColumn<'_>, min_count: u64, name: &str) -> Result<Vec<String>> {
    stats::value_counts(s)
        .into_iter()
        .filter(|&(_, c)| c >= min_count.max(1))
        .map(|(b, _)| {
            std::str::from_utf8(b)
                .map(str::to_owned)
                .map_err(|_| Error::Utf8 {
                    name: name.to_owned(),
                    row: 0,
                })
        })
        .collect()
}

fn fit_numeric(
    label: &str,
    raw: &[Option<f64>],
    missing: &mut Missing,
    steps: &mut [Step],
) -> Result<()> {
    let valid: Vec<f64> = raw.iter().flatten().copied().collect();
    if missing.value.is_none() {
        missing.value = Some(match missing.strategy {
            Strategy::Median => stats::quantile_sorted(&stats::sorted(&valid), 0.5).unwrap_or(0.0),
            Strategy::Mean => stats::mean(&valid).unwrap_or(0.0),
            Strategy::Constant => {
                return Err(Error::Spec(format!(
                    "{label}: missing.strategy constant needs missing.value"
                )))
            }
        });
    }
    let fill = missing.value.unwrap_or(0.0);
    let mut x: Vec<f64> = raw.iter().map(|v| v.unwrap_or(fill)).collect();
    for step in steps.iter_mut() {
        match step {
            Step::Log1p => {}
            Step::Clip {
                min,
                max,
                min_quantile,
                max_quantile,
            } => {
                let s = stats::sorted(&x);
                if min.is_none() {
                    if let Some(q) = min_quantile {
                        *min = stats::quantile_sorted(&s, *q);
                    }
                }
                if max.is_none() {
                    if let Some(q) = max_quantile {
                        *max = stats::quantile_sorted(&s, *q);
                    }
                }
            }
            Step::Standardize { mean, std } => {
                if mean.is_none() {
                    *mean = Some(stats::mean(&x).unwrap_or(0.0));
                }
                if std.is_none() {
                    let sd = stats::std(&x).unwrap_or(1.0);
                    *std = Some(if sd > 0.0 && sd.is_finite() { sd } else { 1.0 });
                }
            }
            Step::Bucketize { edges, quantiles } => {
                if edges.is_none() {
                    let q = quantiles.ok_or_else(|| {
                        Error::Spec(format!("{label}: bucketize needs edges or quantiles"))
                    })?;
                    *edges = Some(stats::quantile_edges(&x, q));
                }
            }
        }
        // Apply the now-fitted step so the next one is fitted on its output.
        let op = crate::pipeline::step_fn(label, step)?;
        for v in &mut x {
            *v = op(*v);
        }
    }
    Ok(())
}
