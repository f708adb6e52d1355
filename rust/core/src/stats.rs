//! Small statistics helpers for fitting, matching numpy's defaults.

/// Quantile with numpy's default ("linear") interpolation over sorted data.
pub(crate) fn quantile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let t = pos - lo as f64;
    let (a, b) = (sorted[lo], sorted[hi]);
    Some(if t >= 0.5 {
        b - (b - a) * (1.0 - t)
    } else {
        a + (b - a) * t
    })
}

/// Edges at the quantiles i/q (i = 1..q-1) of `values`, de-duplicated: what
/// bucketize steps and numeric drift bins are fitted with.
pub(crate) fn quantile_edges(values: &[f64], q: usize) -> Vec<f64> {
    let s = sorted(values);
    let mut e: Vec<f64> = (1..q)
        .filter_map(|i| quantile_sorted(&s, i as f64 / q as f64))
        .collect();
    e.dedup();
    e
}

/// Distinct present values of a string column with their counts, most frequent
/// first, ties by byte order.
pub(crate) fn value_counts<'a>(s: &crate::column::StrColumn<'a>) -> Vec<(&'a [u8], u64)> {
    let mut counts: std::collections::HashMap<&'a [u8], u64> = std::collections::HashMap::new();
    for r in 0..s.len() {
        if let Some(b) = s.get(r) {
            *counts.entry(b).or_insert(0) += 1;
        }
    }
    let mut pairs: Vec<(&[u8], u64)> = counts.into_iter().collect();
    pairs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    pairs
}

pub(crate) fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// Neumaier-compensated sum: no cancellation error worth the name.
fn compensated_sum(values: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut comp) = (0.0f64, 0.0f64);
    for v in values {
        let t = sum + v;
        if sum.abs() >= v.abs() {
            comp += (sum - t) + v;
        } else {
            comp += (v - t) + sum;
        }
        sum = t;
    }
    sum + comp
}

/// A power of two near max|v|: dividing by it is exact and keeps squares and sums
/// of huge or tiny values inside f64's range.
fn pow2_scale(values: impl Iterator<Item = f64>) -> f64 {
    let max = values.fold(0.0f64, |m, v| m.max(v.abs()));
    if max == 0.0 || !max.is_finite() {
        return 1.0;
    }
    2f64.powi(max.log2().floor() as i32)
}

/// Mean with a compensated, rescaled sum (no overflow, no cancellation).
pub(crate) fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let s = pow2_scale(values.iter().copied());
    Some(s * (compensated_sum(values.iter().map(|v| v / s)) / values.len() as f64))
}

/// Population standard deviation (numpy's ddof=0), exactly 0 for a constant
/// column, rescaled so squares neither overflow nor underflow.
pub(crate) fn std(values: &[f64]) -> Option<f64> {
    let m = mean(values)?;
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if lo == hi {
        return Some(0.0);
    }
    let s = pow2_scale(values.iter().map(|v| v - m));
    let ss = compensated_sum(values.iter().map(|v| {
        let d = (v - m) / s;
        d * d
    }));
    Some(s * (ss / values.len() as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_like_numpy() {
        let s = sorted(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!(quantile_sorted(&s, 0.5), Some(2.5));
        assert_eq!(quantile_sorted(&s, 0.0), Some(1.0));
        assert_eq!(quantile_sorted(&s, 1.0), Some(10.0));
        // numpy.quantile([1,2,3,10], 0.9) == 7.9
        assert!((quantile_sorted(&s, 0.9).unwrap() - 7.9).abs() < 1e-12);
        assert_eq!(quantile_sorted(&[], 0.5), None);
        assert_eq!(std(&[1.0, 3.0]), Some(1.0));
        assert_eq!(std(&[0.1; 8]), Some(0.0));
        assert_eq!(mean(&[1.0, 1e30, -1e30]), Some(1.0 / 3.0));
        let big = std(&[2e299, 8e299]).unwrap();
        assert!((big / 3e299 - 1.0).abs() < 1e-12);
        let tiny = std(&[1e-200, 4e-200]).unwrap();
        assert!((tiny / 1.5e-200 - 1.0).abs() < 1e-12);
    }
}
