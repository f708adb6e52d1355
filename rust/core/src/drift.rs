//! Drift: reference bins fitted at training time, exact streaming per-bin counts
//! (atomics, no lock on the hot path), a sliding window as a ring of sub-windows,
//! and PSI against the reference shares.
//!
//! Bin rule: a numeric field with edges `e_1 < … < e_k` has bins
//! `(-inf, e_1), [e_1, e_2), …, [e_k, +inf)` (bin index = number of edges ≤ x,
//! i.e. `numpy.searchsorted(edges, x, side="right")`), then one `missing` bin for
//! NaN/±inf. A categorical field has one bin per reference value, then
//! `__unseen__`, then `__missing__` (null or empty string).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::column::{bind_columns, Column};
use crate::error::{Error, Result};
use crate::spec::{DType, FeatureSpec, InputSpec};
use crate::stats;

/// Name of the model score among the drift fields.
pub const SCORE_FIELD: &str = "__score__";
/// Shares are floored at this value before PSI (empty bins would be infinite).
pub const SHARE_FLOOR: f64 = 1e-4;
/// Batches of at most this many values (one transaction) skip the dense tally.
const SPARSE_VALUES: usize = 64;

/// How a field is binned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Bins {
    Numeric { edges: Vec<f64> },
    Categorical { values: Vec<String> },
}

impl Bins {
    /// Number of bins including the unseen/missing ones.
    pub fn len(&self) -> usize {
        match self {
            Bins::Numeric { edges } => edges.len() + 2,
            Bins::Categorical { values } => values.len() + 2,
        }
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Human-readable bin labels (used as the Prometheus `bin` label).
    pub fn labels(&self) -> Vec<String> {
        match self {
            Bins::Numeric { edges } => {
                // Edges at 6 significant digits when that keeps them distinct (a
                // label is only a name; binning uses the exact edges).
                let mut shown: Vec<String> = edges.iter().map(|&e| short(e, 6)).collect();
                if shown.windows(2).any(|w| w[0] == w[1]) {
                    shown = edges.iter().map(|e| format!("{e}")).collect();
                }
                let mut out = Vec::with_capacity(edges.len() + 2);
                let mut lo = "-inf".to_owned();
                for hi in shown {
                    out.push(format!("[{lo},{hi})"));
                    lo = hi;
                }
                out.push(format!("[{lo},+inf)"));
                out.push("missing".to_owned());
                out
            }
            Bins::Categorical { values } => {
                let mut out = values.clone();
                out.push("__unseen__".to_owned());
                out.push("__missing__".to_owned());
                out
            }
        }
    }
}

/// `x` with at most `sig` significant digits, trailing zeros dropped.
fn short(x: f64, sig: i32) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let mag = x.abs().log10().floor() as i32;
    let decimals = (sig - 1 - mag).max(0) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// Reference distribution of one field. (No deny_unknown_fields: serde does not
/// support it together with `flatten`.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldReference {
    pub name: String,
    #[serde(flatten)]
    pub bins: Bins,
    /// Share of reference rows per bin, in bin order; sums to 1.
    pub shares: Vec<f64>,
}

/// The reference stored in `features.json`: every raw input plus the score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    pub rule: String,
    pub rows: u64,
    pub score_rows: u64,
    pub fields: Vec<FieldReference>,
    pub score: FieldReference,
}

pub const BIN_RULE: &str =
    "numeric: bin = count of edges <= x, i.e. [e(i-1), e(i)) with -inf/+inf \
ends, then 'missing' (NaN, +-inf); categorical: one bin per value, then '__unseen__', then \
'__missing__' (null or empty)";

enum Binner {
    Numeric(Vec<f64>),
    Categorical(HashMap<Vec<u8>, usize>, usize),
}

impl Binner {
    fn new(bins: &Bins) -> Self {
        match bins {
            Bins::Numeric { edges } => Binner::Numeric(edges.clone()),
            Bins::Categorical { values } => Binner::Categorical(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (v.as_bytes().to_vec(), i))
                    .collect(),
                values.len(),
            ),
        }
    }

    #[inline]
    fn bin_number(edges: &[f64], v: Option<f64>) -> usize {
        match v {
            // A branch-free count is faster than a binary search for deciles.
            Some(x) if edges.len() <= 16 => edges.iter().map(|&e| usize::from(e <= x)).sum(),
            Some(x) => edges.partition_point(|&e| e <= x),
            None => edges.len() + 1,
        }
    }

    /// Bin of row `r` of `col`.
    #[inline]
    fn bin(&self, col: &Column<'_>, r: usize) -> usize {
        match (self, col) {
            (Binner::Numeric(edges), c) => Self::bin_number(edges, c.number(r)),
            (Binner::Categorical(map, k), Column::Str(s)) => match s.get(r) {
                None => k + 1,
                Some(b) => map.get(b).copied().unwrap_or(*k),
            },
            (Binner::Categorical(_, k), _) => k + 1,
        }
    }
}

/// Fits reference bins and shares: deciles (or `quantiles`) of present values for
/// numeric inputs, the `max_categories` most frequent values for categorical
/// inputs, deciles of `scores` for the score.
pub fn fit_reference(
    spec: &FeatureSpec,
    columns: &[(&str, Column<'_>)],
    scores: &[f64],
    quantiles: usize,
    max_categories: usize,
) -> Result<Reference> {
    let index = |n: &str| spec.inputs.iter().position(|i| i.name == n);
    let (cols, rows) = bind_columns(&spec.inputs, columns, true, index)?;
    let mut fields = Vec::with_capacity(spec.inputs.len());
    for (inp, col) in spec.inputs.iter().zip(&cols) {
        let bins = if inp.dtype == DType::String {
            let counts = match col {
                Column::Str(s) => stats::value_counts(s),
                _ => Vec::new(),
            };
            Bins::Categorical {
                values: counts
                    .into_iter()
                    .filter_map(|(b, _)| std::str::from_utf8(b).ok().map(str::to_owned))
                    .take(max_categories)
                    .collect(),
            }
        } else {
            let present: Vec<f64> = (0..rows).filter_map(|r| col.number(r)).collect();
            Bins::Numeric {
                edges: stats::quantile_edges(&present, quantiles),
            }
        };
        let binner = Binner::new(&bins);
        let mut counts = vec![0u64; bins.len()];
        for r in 0..rows {
            counts[binner.bin(col, r)] += 1;
        }
        fields.push(FieldReference {
            name: inp.name.clone(),
            shares: shares(&counts),
            bins,
        });
    }
    let present: Vec<f64> = scores.iter().copied().filter(|s| s.is_finite()).collect();
    let bins = Bins::Numeric {
        edges: stats::quantile_edges(&present, quantiles),
    };
    let binner = Binner::new(&bins);
    let mut counts = vec![0u64; bins.len()];
    let col = Column::F64(scores);
    for r in 0..scores.len() {
        counts[binner.bin(&col, r)] += 1;
    }
    Ok(Reference {
        rule: BIN_RULE.to_owned(),
        rows: rows as u64,
        score_rows: scores.len() as u64,
        fields,
        score: FieldReference {
            name: SCORE_FIELD.to_owned(),
            shares: shares(&counts),
            bins,
        },
    })
}

fn shares(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|&c| {
            if total == 0 {
                0.0
            } else {
                c as f64 / total as f64
            }
        })
        .collect()
}

/// PSI = Σ (a − e)·ln(a / e) over bins, both shares floored at [`SHARE_FLOOR`].
pub fn psi(counts: &[u64], reference: &[f64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    counts
        .iter()
        .zip(reference)
        .map(|(&c, &e)| {
            let a = (c as f64 / total as f64).max(SHARE_FLOOR);
            let e = e.max(SHARE_FLOOR);
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// PSI of `actual` counts against `expected` counts of the same bins (both
/// turned into shares, floored as in [`psi`]); 0 when either side is empty.
pub fn psi_between(actual: &[u64], expected: &[u64]) -> f64 {
    if expected.iter().sum::<u64>() == 0 {
        return 0.0;
    }
    psi(actual, &shares(expected))
}

/// Window configuration.
#[derive(Debug, Clone, Copy)]
pub struct DriftConfig {
    /// Number of sub-windows in the ring.
    pub slots: usize,
    /// Length of one sub-window, seconds.
    pub slot_seconds: u64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            slots: 60,
            slot_seconds: 60,
        }
    }
}

struct Ring {
    /// Absolute slot number each ring position currently holds.
    epochs: Vec<AtomicU64>,
    counts: Vec<AtomicU64>,
}

/// Which counts to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Since the monitor was created (the version went live).
    Cumulative,
    /// The sliding window: the last `slots × slot_seconds` seconds.
    Sliding,
}

/// Streaming per-bin counters for every input field and the score.
pub struct DriftMonitor {
    reference: Reference,
    binners: Vec<Binner>,
    /// Offset of each field's bins in the flat counter arrays; the score is last.
    offsets: Vec<usize>,
    total_bins: usize,
    inputs: Vec<InputSpec>,
    input_index: HashMap<String, usize>,
    cumulative: Vec<AtomicU64>,
    ring: RwLock<Ring>,
    config: DriftConfig,
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl DriftMonitor {
    /// Builds a monitor for a spec whose `reference` is fitted.
    pub fn new(spec: &FeatureSpec, config: DriftConfig) -> Result<Self> {
        let value = spec
            .reference
            .clone()
            .ok_or_else(|| Error::Spec("the feature spec has no drift reference".into()))?;
        let reference: Reference = serde_json::from_value(value)
            .map_err(|e| Error::Spec(format!("drift reference: {e}")))?;
        if config.slots == 0 || config.slot_seconds == 0 {
            return Err(Error::Spec("drift window needs ≥ 1 slot of ≥ 1 s".into()));
        }
        if reference.fields.len() != spec.inputs.len()
            || reference
                .fields
                .iter()
                .zip(&spec.inputs)
                .any(|(f, i)| f.name != i.name)
        {
            return Err(Error::Spec(
                "drift reference fields do not match the spec's inputs".into(),
            ));
        }
        let mut offsets = Vec::with_capacity(reference.fields.len() + 1);
        let mut binners = Vec::with_capacity(reference.fields.len() + 1);
        let mut total = 0;
        for f in reference
            .fields
            .iter()
            .chain(std::iter::once(&reference.score))
        {
            if f.shares.len() != f.bins.len() {
                return Err(Error::Spec(format!(
                    "drift reference '{}': {} shares for {} bins",
                    f.name,
                    f.shares.len(),
                    f.bins.len()
                )));
            }
            if let Bins::Numeric { edges } = &f.bins {
                if edges.iter().any(|e| !e.is_finite()) || edges.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(Error::Spec(format!(
                        "drift reference '{}': edges must be finite and increasing",
                        f.name
                    )));
                }
            }
            offsets.push(total);
            binners.push(Binner::new(&f.bins));
            total += f.bins.len();
        }
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        let ring = Ring {
            epochs: (0..config.slots)
                .map(|_| AtomicU64::new(u64::MAX))
                .collect(),
            counts: zeros(config.slots * total),
        };
        Ok(Self {
            inputs: spec.inputs.clone(),
            input_index: spec
                .inputs
                .iter()
                .enumerate()
                .map(|(i, inp)| (inp.name.clone(), i))
                .collect(),
            reference,
            binners,
            offsets,
            total_bins: total,
            cumulative: zeros(total),
            ring: RwLock::new(ring),
            config,
        })
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// The raw inputs, in the order `observe` expects its columns.
    pub fn inputs(&self) -> &[InputSpec] {
        &self.inputs
    }

    /// Matches named columns to the inputs, as [`crate::FeaturePipeline::bind`] does.
    pub fn bind<'a>(&self, columns: &[(&str, Column<'a>)]) -> Result<(Vec<Column<'a>>, usize)> {
        bind_columns(&self.inputs, columns, false, |n| {
            self.input_index.get(n).copied()
        })
    }

    /// Every field's reference, the score last.
    pub fn fields(&self) -> impl Iterator<Item = &FieldReference> {
        self.reference
            .fields
            .iter()
            .chain(std::iter::once(&self.reference.score))
    }

    /// Minimum observations before a field's PSI is reported: max(200, 20 × bins).
    pub fn min_count(&self, field: usize) -> u64 {
        let bins = self
            .offsets
            .get(field + 1)
            .copied()
            .unwrap_or(self.total_bins)
            - self.offsets[field];
        (20 * bins as u64).max(200)
    }

    /// Counts one batch: `cols` bound in spec input order (as
    /// [`crate::FeaturePipeline::bind`] returns them) and the scores (may be
    /// empty when only inputs are observed).
    pub fn observe(&self, cols: &[Column<'_>], rows: usize, scores: &[f64], now: Option<u64>) {
        let now = now.unwrap_or_else(now_seconds);
        let slot_no = now / self.config.slot_seconds;
        let pos = (slot_no % self.config.slots as u64) as usize;
        let fields = cols.len().min(self.reference.fields.len());
        let score = &self.binners[self.reference.fields.len()];
        let score_off = self.offsets[self.reference.fields.len()];
        let score_col = Column::F64(scores);
        if rows.saturating_mul(fields).saturating_add(scores.len()) <= SPARSE_VALUES {
            // A small batch (one transaction): one atomic add per value, no tally.
            let mut bins = [0usize; SPARSE_VALUES];
            let mut n = 0;
            for (f, col) in cols.iter().enumerate().take(fields) {
                let (b, off) = (&self.binners[f], self.offsets[f]);
                for r in 0..rows {
                    bins[n] = off + b.bin(col, r);
                    n += 1;
                }
            }
            for r in 0..scores.len() {
                bins[n] = score_off + score.bin(&score_col, r);
                n += 1;
            }
            self.add(bins[..n].iter().map(|&i| (i, 1)), slot_no, pos);
            return;
        }
        // Tally the batch locally, then one atomic add per touched bin.
        let mut local = vec![0u64; self.total_bins];
        for (f, col) in cols.iter().enumerate().take(fields) {
            let (b, off) = (&self.binners[f], self.offsets[f]);
            for r in 0..rows {
                local[off + b.bin(col, r)] += 1;
            }
        }
        for r in 0..scores.len() {
            local[score_off + score.bin(&score_col, r)] += 1;
        }
        let touched = local.iter().enumerate().filter(|(_, &n)| n != 0);
        self.add(touched.map(|(i, &n)| (i, n)), slot_no, pos);
    }

    /// Adds `(bin, count)` pairs to the cumulative counters and the ring slot.
    fn add(&self, items: impl Iterator<Item = (usize, u64)> + Clone, slot_no: u64, pos: usize) {
        for (i, n) in items.clone() {
            self.cumulative[i].fetch_add(n, Ordering::Relaxed);
        }
        let counts = |ring: &Ring| {
            let base = pos * self.total_bins;
            for (i, n) in items.clone() {
                ring.counts[base + i].fetch_add(n, Ordering::Relaxed);
            }
        };
        {
            let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
            if ring.epochs[pos].load(Ordering::Acquire) == slot_no {
                counts(&ring);
                return;
            }
        }
        // A new sub-window: reset that ring slot under the write lock (rare).
        let ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
        let epoch = ring.epochs[pos].load(Ordering::Acquire);
        if epoch != slot_no {
            if epoch != u64::MAX && epoch > slot_no {
                // The clock went backwards past this slot: count only cumulatively.
                return;
            }
            let base = pos * self.total_bins;
            for c in &ring.counts[base..base + self.total_bins] {
                c.store(0, Ordering::Relaxed);
            }
            ring.epochs[pos].store(slot_no, Ordering::Release);
        }
        counts(&ring);
    }

    /// Flat per-bin counts (fields in order, the score last).
    pub fn counts(&self, window: Window, now: Option<u64>) -> Vec<u64> {
        match window {
            Window::Cumulative => self
                .cumulative
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            Window::Sliding => {
                let now = now.unwrap_or_else(now_seconds) / self.config.slot_seconds;
                let oldest = now.saturating_sub(self.config.slots as u64 - 1);
                let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
                let mut out = vec![0u64; self.total_bins];
                for (pos, epoch) in ring.epochs.iter().enumerate() {
                    let e = epoch.load(Ordering::Acquire);
                    if e == u64::MAX || e < oldest || e > now {
                        continue;
                    }
                    let base = pos * self.total_bins;
                    for (o, c) in out
                        .iter_mut()
                        .zip(&ring.counts[base..base + self.total_bins])
                    {
                        *o += c.load(Ordering::Relaxed);
                    }
                }
                out
            }
        }
    }

    /// Per field (score last): (observations, PSI or None below the minimum count).
    pub fn psi(&self, window: Window, now: Option<u64>) -> Vec<(u64, Option<f64>)> {
        self.field_psi(&self.counts(window, now))
    }

    /// [`DriftMonitor::psi`] of flat per-bin counts laid out like
    /// [`DriftMonitor::counts`] (e.g. several processes' counts summed); None
    /// when `counts` does not have one entry per bin.
    pub fn psi_of(&self, counts: &[u64]) -> Option<Vec<(u64, Option<f64>)>> {
        (counts.len() == self.total_bins).then(|| self.field_psi(counts))
    }

    fn field_psi(&self, counts: &[u64]) -> Vec<(u64, Option<f64>)> {
        self.fields()
            .enumerate()
            .map(|(i, f)| {
                let off = self.offsets[i];
                let c = &counts[off..off + f.bins.len()];
                let n: u64 = c.iter().sum();
                let value = (n >= self.min_count(i)).then(|| psi(c, &f.shares));
                (n, value)
            })
            .collect()
    }

    /// Number of bins over all fields (the length of [`DriftMonitor::counts`]).
    pub fn total_bins(&self) -> usize {
        self.total_bins
    }

    /// Offsets of each field's bins in [`DriftMonitor::counts`].
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }
}
