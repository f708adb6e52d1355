//! LightGBM models read from the text format (`model.txt`, as
//! `Booster.model_to_string()` writes it) and a tree evaluator that gives LightGBM's
//! own predictions, bit for bit.
//!
//! LightGBM's rules for a float32 row (include/LightGBM/tree.h, src/c_api.cpp,
//! src/boosting/gbdt_prediction.cpp), which this follows exactly:
//!
//! * each value is widened to double, and one with |x| <= `kZeroThreshold`
//!   (`1e-35f`) is read as 0: the C API leaves such values out of the row and the
//!   predictor's buffer holds 0 there;
//! * numerical split (bit 0 of `decision_type` clear), missing type in bits 2–3
//!   (0 None, 1 Zero, 2 NaN): NaN is read as 0 unless the missing type is NaN; then
//!   with missing type Zero a zero, with NaN a NaN, goes the default direction
//!   (bit 1 set: left); any other value goes left iff `x <= threshold`;
//! * categorical split (bit 0 set): NaN and negative values go right; otherwise the
//!   integer part of `x` is looked up in the split's bitset (words
//!   `cat_boundaries[i]..cat_boundaries[i + 1]` of `cat_threshold`, `i` the
//!   threshold): found goes left;
//! * the raw score is the sum of the trees' leaf values, in f64, in tree order
//!   from 0; with `average_output` (random forests) it is divided by the number of
//!   iterations; the binary objective maps it to `1 / (1 + exp(-sigmoid * raw))`.
//!
//! Evaluation: a numerical threshold is kept as the largest f32 <= the f64
//! threshold; for a float32 `x` that comparison is exactly LightGBM's double one.
//! Models whose trees have at most 64 leaves (riskserve's have 63) are scored by
//! QuickScorer (Lucchese et al., SIGIR 2015: no tree walk, a scan of each
//! feature's nodes in threshold order, several rows per SIMD op); others by a tree
//! walk over one array of 16-byte nodes. Both find the leaves LightGBM finds and add their
//! values in LightGBM's order, so the scores are LightGBM's, bit for bit.
//!
//! The parser refuses, naming the line and field, anything it cannot evaluate
//! exactly as LightGBM would (multiclass, linear trees, objectives other than the
//! ones listed in [`Objective`]) and anything malformed: array lengths, child links
//! that do not form one tree, feature indices out of range, bitsets out of bounds,
//! `tree_sizes` that do not match the blocks (LightGBM locates trees by them). It
//! never panics, and a model it accepts cannot make the evaluator loop or index
//! out of bounds.

use crate::error::{Error, Result};

/// LightGBM's `kZeroThreshold` (`1e-35f`, a float widened to double).
pub const ZERO_THRESHOLD: f32 = 1e-35;

/// Independent tree walks advanced together (the walk, for models the
/// QuickScorer does not take).
const LANES: usize = 4;

/// Rows per block of a batch (values below the zero threshold are copied as 0 per block).
const BLOCK_ROWS: usize = 64;

/// The largest feature index a node can hold (the top byte of `Node::meta` holds flags).
const MAX_FEATURES: usize = 1 << 24;
const FEATURE_MASK: u32 = (1 << 24) - 1;
const CATEGORICAL: u32 = 1 << 24;
/// Where a missing value goes (NaN, and zero with missing type Zero).
const MISSING_LEFT: u32 = 1 << 25;
/// Zero is a missing value (missing type Zero).
const ZERO_MISSING: u32 = 1 << 26;

// decision_type bits (LightGBM's kCategoricalMask, kDefaultLeftMask, missing type).
const DT_CATEGORICAL: i64 = 1;
const DT_DEFAULT_LEFT: i64 = 2;
const MISSING_NONE: i64 = 0;
const MISSING_ZERO: i64 = 1;
const MISSING_NAN: i64 = 2;

/// How raw scores become predictions (the model's `objective=` line).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    /// `binary sigmoid:<s>`: `1 / (1 + exp(-s * raw))`.
    Binary { sigmoid: f64 },
    /// No objective line, `custom`, or a regression objective without `sqrt`
    /// (`regression`, `regression_l1`, `huber`, `fair`, `quantile`, `mape`):
    /// predictions are the raw scores.
    Identity,
}

/// One internal node.
#[derive(Debug, Clone, Copy)]
struct Node {
    /// Numerical: bits of the threshold rounded down to f32. Categorical: index
    /// into `Gbdt::cat_sets`.
    param: u32,
    /// Feature index (low 24 bits) and flags (`CATEGORICAL`, `MISSING_LEFT`,
    /// `ZERO_MISSING`).
    meta: u32,
    /// [left, right]: `>= 0` an index into `Gbdt::nodes`, `< 0` `!i` for leaf `i`.
    children: [i32; 2],
}

/// A categorical split's bitset: `Gbdt::cat_words[start..start + len]`.
#[derive(Debug, Clone, Copy)]
struct CatSet {
    start: u32,
    len: u32,
}

/// A parsed LightGBM model (binary or regression, one tree per iteration).
#[derive(Debug, Clone)]
pub struct Gbdt {
    nodes: Vec<Node>,
    leaves: Vec<f64>,
    cat_sets: Vec<CatSet>,
    cat_words: Vec<u32>,
    /// Per tree: its root (a node index, or `!leaf` for a one-leaf tree).
    roots: Vec<i32>,
    feature_names: Vec<String>,
    objective: Objective,
    average_output: bool,
    /// The fast path, when every tree has at most 64 leaves and no threshold is NaN.
    qs: Option<QuickScorer>,
}

impl Gbdt {
    /// Parses a model in LightGBM's text format (version v3 or v4).
    pub fn from_text(text: &str) -> Result<Self> {
        let mut g = parse(text)?;
        g.qs = QuickScorer::build(&g);
        Ok(g)
    }

    /// The same model scored by the tree walk only (tests compare the two paths).
    #[cfg(test)]
    fn walk_only(mut self) -> Self {
        self.qs = None;
        self
    }

    /// Columns a row must have (`max_feature_idx + 1`).
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    pub fn num_trees(&self) -> usize {
        self.roots.len()
    }

    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    pub fn objective(&self) -> Objective {
        self.objective
    }

    /// Predictions (probabilities for a binary model) of the rows of `x`, a
    /// row-major `out.len() × n_features` matrix, into `out`.
    pub fn predict(&self, x: &[f32], out: &mut [f64]) -> Result<()> {
        self.predict_raw(x, out)?;
        self.transform(out);
        Ok(())
    }

    /// Raw scores (the sum of the trees' outputs, as LightGBM's `raw_score=True`).
    pub fn predict_raw(&self, x: &[f32], out: &mut [f64]) -> Result<()> {
        self.check(x, out)?;
        let nf = self.n_features();
        let mut scratch = Vec::new();
        let mut bits = Vec::new();
        for (block, acc) in x
            .chunks(BLOCK_ROWS * nf.max(1))
            .zip(out.chunks_mut(BLOCK_ROWS))
        {
            let block = zeroed_tiny(block, &mut scratch);
            match &self.qs {
                Some(qs) => qs.score(self, block, acc, &mut bits),
                None => self.walk_rows(block, acc),
            }
        }
        Ok(())
    }

    fn check(&self, x: &[f32], out: &[f64]) -> Result<()> {
        let nf = self.n_features();
        let rows = out.len();
        if rows.checked_mul(nf) == Some(x.len()) {
            Ok(())
        } else {
            Err(Error::Matrix(format!(
                "{} values are not {rows} rows of {nf} features",
                x.len()
            )))
        }
    }

    /// Raw scores → predictions, as LightGBM's `GBDT::Predict`.
    fn transform(&self, out: &mut [f64]) {
        let n_iter = self.roots.len().max(1) as f64;
        for v in out.iter_mut() {
            if self.average_output {
                *v /= n_iter;
            }
            if let Objective::Binary { sigmoid } = self.objective {
                *v = 1.0 / (1.0 + (-sigmoid * *v).exp());
            }
        }
    }

    /// The tree walk for every row (models the QuickScorer does not take).
    fn walk_rows(&self, x: &[f32], acc: &mut [f64]) {
        let nf = self.n_features();
        for (k, a) in acc.iter_mut().enumerate() {
            let row = x.get(k * nf..(k + 1) * nf).unwrap_or(&[]);
            *a = self.walk_row(row);
        }
    }

    /// One row: [`LANES`] trees walked in lock-step, their leaves summed in tree order.
    fn walk_row(&self, row: &[f32]) -> f64 {
        let mut sum = 0.0;
        let mut roots = self.roots.chunks_exact(LANES);
        for group in &mut roots {
            let mut n = [0i32; LANES];
            n.copy_from_slice(group);
            while n.iter().any(|&i| i >= 0) {
                for i in n.iter_mut() {
                    if *i >= 0 {
                        *i = self.next(*i as usize, row);
                    }
                }
            }
            for &leaf in &n {
                sum += self.leaf(leaf);
            }
        }
        for &root in roots.remainder() {
            let mut n = root;
            while n >= 0 {
                n = self.next(n as usize, row);
            }
            sum += self.leaf(n);
        }
        sum
    }

    /// The child node `i` sends `row` to.
    #[inline(always)]
    fn next(&self, i: usize, row: &[f32]) -> i32 {
        let Some(node) = self.nodes.get(i) else {
            return !0; // unreachable: links are checked at parse time
        };
        let v = row
            .get((node.meta & FEATURE_MASK) as usize)
            .copied()
            .unwrap_or(0.0);
        node.children[usize::from(!self.goes_left(node, v))]
    }

    #[inline(always)]
    fn goes_left(&self, node: &Node, v: f32) -> bool {
        if node.meta & CATEGORICAL != 0 {
            return self.in_category(node.param, v);
        }
        let missing = v.is_nan() | ((node.meta & ZERO_MISSING != 0) & (v == 0.0));
        if missing {
            node.meta & MISSING_LEFT != 0
        } else {
            v <= f32::from_bits(node.param)
        }
    }

    /// LightGBM's `CategoricalDecision`: is `v` in bitset `set`?
    #[inline]
    fn in_category(&self, set: u32, v: f32) -> bool {
        if v.is_nan() {
            return false;
        }
        let c = v as i32; // truncates like static_cast<int>; saturates where C++ is undefined
        if c < 0 {
            return false;
        }
        let Some(set) = self.cat_sets.get(set as usize) else {
            return false;
        };
        let word = (c / 32) as u32;
        if word >= set.len {
            return false;
        }
        let bits = self
            .cat_words
            .get((set.start + word) as usize)
            .copied()
            .unwrap_or(0);
        (bits >> (c % 32)) & 1 == 1
    }

    #[inline(always)]
    fn leaf(&self, n: i32) -> f64 {
        self.leaves.get(!n as usize).copied().unwrap_or(0.0)
    }
}

// ---------------------------------------------------------------------------------
// QuickScorer
// ---------------------------------------------------------------------------------

/// Rows scored one at a time below this; blocks of [`VECTOR_ROWS`] (padded) from it.
const MIN_VECTOR_ROWS: usize = 4;
/// Rows scored together by the vectorised QuickScorer.
const VECTOR_ROWS: usize = 8;

/// A numerical node in one of a feature's lists: a row it sends right clears
/// `mask` (the leaves of its left subtree) from the bitvector of `tree`.
#[derive(Debug, Clone, Copy)]
struct QsEntry {
    threshold: f32,
    tree: u32,
    mask: u64,
}

/// One feature's nodes, as ranges of `QuickScorer::entries`.
#[derive(Debug, Clone, Copy, Default)]
struct QsFeature {
    feature: usize,
    /// Nodes where 0 is not missing, by threshold: a value `x` goes right at
    /// those with `threshold < x`.
    regular: (u32, u32),
    /// Nodes where 0 is missing (missing type Zero), by threshold.
    zero: (u32, u32),
    /// Every numerical node that sends NaN right.
    nan_right: (u32, u32),
    /// The missing-type-Zero nodes that send 0 right.
    zero_right: (u32, u32),
}

/// QuickScorer (Lucchese et al., SIGIR 2015) for trees of at most 64 leaves. A
/// tree's leaves, numbered left to right, are the bits of a u64; every node a row
/// sends right clears its left subtree's leaves, and the row's leaf is the lowest
/// bit left. Nodes are visited feature by feature in threshold order, so a row
/// touches only the nodes that send it right, in a sequential scan without
/// data-dependent jumps. Blocks of [`VECTOR_ROWS`] rows share the scan (each
/// node is compared with every row of the block at once: SIMD, AVX2 when the CPU
/// has it). The exit leaves are the walk's, so the sums are the same, bit for bit.
#[derive(Debug, Clone)]
struct QuickScorer {
    entries: Vec<QsEntry>,
    features: Vec<QsFeature>,
    /// Categorical nodes: (node index, tree, mask), tested one by one.
    categorical: Vec<(usize, u32, u64)>,
    /// Leaf values of tree `t`, left to right, from `leaf_base[t]`.
    leaves: Vec<f64>,
    leaf_base: Vec<u32>,
}

impl QuickScorer {
    /// None when a tree has more than 64 leaves or a numerical threshold is NaN.
    fn build(g: &Gbdt) -> Option<Self> {
        let mut lists: Vec<[Vec<QsEntry>; 4]> = vec![Default::default(); g.n_features()];
        let mut categorical = Vec::new();
        let mut leaves = Vec::new();
        let mut leaf_base = Vec::new();
        for (t, &root) in g.roots.iter().enumerate() {
            let tree = u32::try_from(t).ok()?;
            let first = leaves.len();
            leaf_base.push(u32::try_from(first).ok()?);
            // In-order walk: leaves left to right, and for each node the leaves of
            // its left subtree (from where the walk entered it to where it came back).
            let mut stack = vec![(root, false)];
            let mut entered: Vec<(usize, usize)> = Vec::new();
            while let Some((n, back)) = stack.pop() {
                if n < 0 {
                    leaves.push(g.leaf(n));
                    if leaves.len() - first > 64 {
                        return None;
                    }
                    continue;
                }
                let i = n as usize;
                let node = g.nodes.get(i)?;
                if !back {
                    stack.push((node.children[1], false));
                    stack.push((n, true));
                    stack.push((node.children[0], false));
                    entered.push((i, leaves.len() - first));
                    continue;
                }
                let (_, lo) = entered.pop()?;
                let width = leaves.len() - first - lo;
                let left_leaves = u64::MAX.checked_shr(64 - width as u32).unwrap_or(0);
                let mask = !left_leaves.checked_shl(lo as u32).unwrap_or(0);
                if node.meta & CATEGORICAL != 0 {
                    categorical.push((i, tree, mask));
                    continue;
                }
                let threshold = f32::from_bits(node.param);
                if threshold.is_nan() {
                    return None;
                }
                let e = QsEntry {
                    threshold,
                    tree,
                    mask,
                };
                let l = lists.get_mut((node.meta & FEATURE_MASK) as usize)?;
                let zero_missing = node.meta & ZERO_MISSING != 0;
                l[usize::from(zero_missing)].push(e);
                if node.meta & MISSING_LEFT == 0 {
                    l[2].push(e);
                    if zero_missing {
                        l[3].push(e);
                    }
                }
            }
        }
        let mut entries = Vec::new();
        let mut features = Vec::new();
        for (feature, mut l) in lists.into_iter().enumerate() {
            if l.iter().all(Vec::is_empty) {
                continue;
            }
            let mut ranges = [(0u32, 0u32); 4];
            for (k, list) in l.iter_mut().enumerate() {
                if k < 2 {
                    list.sort_by(|a, b| a.threshold.total_cmp(&b.threshold));
                }
                let start = u32::try_from(entries.len()).ok()?;
                entries.extend_from_slice(list);
                ranges[k] = (start, u32::try_from(entries.len()).ok()?);
            }
            let [regular, zero, nan_right, zero_right] = ranges;
            features.push(QsFeature {
                feature,
                regular,
                zero,
                nan_right,
                zero_right,
            });
        }
        Some(Self {
            entries,
            features,
            categorical,
            leaves,
            leaf_base,
        })
    }

    fn list(&self, r: (u32, u32)) -> &[QsEntry] {
        self.entries.get(r.0 as usize..r.1 as usize).unwrap_or(&[])
    }

    /// Raw scores of the `acc.len()` rows of `x` into `acc`.
    fn score(&self, g: &Gbdt, x: &[f32], acc: &mut [f64], bits: &mut Vec<u64>) {
        let nf = g.n_features();
        let mut start = 0;
        while acc.len() - start >= MIN_VECTOR_ROWS {
            let rows = (acc.len() - start).min(VECTOR_ROWS);
            let xb = x.get(start * nf..(start + rows) * nf).unwrap_or(&[]);
            let ab = &mut acc[start..start + rows];
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked on the line above).
                    unsafe { self.block_avx2(g, xb, ab, bits) };
                    start += rows;
                    continue;
                }
            }
            self.block(g, xb, ab, bits);
            start += rows;
        }
        for (k, a) in acc.iter_mut().enumerate().skip(start) {
            *a = self.row(g, x.get(k * nf..(k + 1) * nf).unwrap_or(&[]), bits);
        }
    }

    /// One row.
    fn row(&self, g: &Gbdt, row: &[f32], bits: &mut Vec<u64>) -> f64 {
        let trees = self.leaf_base.len();
        // A power-of-two length, indexed with `& m`: no bounds checks in the scan.
        let m = trees.next_power_of_two() - 1;
        bits.clear();
        bits.resize(m + 1, u64::MAX);
        let v = &mut bits[..=m];
        for lists in &self.features {
            let Some(&x) = row.get(lists.feature) else {
                continue;
            };
            let clear = |v: &mut [u64], list: &[QsEntry]| {
                for e in list {
                    v[e.tree as usize & m] &= e.mask;
                }
            };
            let scan = |v: &mut [u64], list: &[QsEntry], x: f32| {
                // Four at a time while the fourth sends x right (then all four do:
                // the list is sorted); neither is NaN here.
                let mut quads = list.chunks_exact(4);
                for q in &mut quads {
                    if q[3].threshold < x {
                        for e in q {
                            v[e.tree as usize & m] &= e.mask;
                        }
                        continue;
                    }
                    for e in q.iter().take_while(|e| e.threshold < x) {
                        v[e.tree as usize & m] &= e.mask;
                    }
                    return;
                }
                for e in quads.remainder().iter().take_while(|e| e.threshold < x) {
                    v[e.tree as usize & m] &= e.mask;
                }
            };
            if x.is_nan() {
                clear(v, self.list(lists.nan_right));
            } else if x == 0.0 {
                scan(v, self.list(lists.regular), 0.0);
                clear(v, self.list(lists.zero_right));
            } else {
                scan(v, self.list(lists.regular), x);
                scan(v, self.list(lists.zero), x);
            }
        }
        for &(i, tree, mask) in &self.categorical {
            let Some(node) = g.nodes.get(i) else { continue };
            let x = row
                .get((node.meta & FEATURE_MASK) as usize)
                .copied()
                .unwrap_or(0.0);
            if !g.in_category(node.param, x) {
                v[tree as usize & m] &= mask;
            }
        }
        let mut sum = 0.0;
        for (&b, &base) in v.iter().zip(&self.leaf_base) {
            sum += self.leaf(base, b);
        }
        sum
    }

    #[inline(always)]
    fn leaf(&self, base: u32, bits: u64) -> f64 {
        self.leaves
            .get(base as usize + bits.trailing_zeros() as usize)
            .copied()
            .unwrap_or(0.0)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn block_avx2(&self, g: &Gbdt, x: &[f32], acc: &mut [f64], bits: &mut Vec<u64>) {
        self.block_body(g, x, acc, bits);
    }

    fn block(&self, g: &Gbdt, x: &[f32], acc: &mut [f64], bits: &mut Vec<u64>) {
        self.block_body(g, x, acc, bits);
    }

    /// Up to [`VECTOR_ROWS`] rows (`acc.len()`), lanes past them dead. The bits are
    /// laid out [tree][lane], so one node updates every lane with one vector op.
    #[inline(always)]
    fn block_body(&self, g: &Gbdt, x: &[f32], acc: &mut [f64], bits: &mut Vec<u64>) {
        const R: usize = VECTOR_ROWS;
        let nf = g.n_features();
        let rows = acc.len().min(R);
        let trees = self.leaf_base.len();
        bits.clear();
        bits.resize(trees * R, u64::MAX);
        let v = &mut bits[..];
        for lists in &self.features {
            // Per lane: the value the regular and the zero list compare (NaN: none),
            // and whether the lane is NaN or 0.
            let mut regular = [f64::NAN; R];
            let mut zero = [f64::NAN; R];
            let mut nan = [0u64; R];
            let mut zeros = [0u64; R];
            let (mut any_nan, mut any_zero) = (false, false);
            let (mut max_regular, mut max_zero) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
            for r in 0..rows {
                let xv = x.get(r * nf + lists.feature).copied().unwrap_or(f32::NAN);
                if xv.is_nan() {
                    nan[r] = u64::MAX;
                    any_nan = true;
                } else if xv == 0.0 {
                    zeros[r] = u64::MAX;
                    any_zero = true;
                    regular[r] = 0.0;
                    max_regular = max_regular.max(0.0);
                } else {
                    regular[r] = f64::from(xv);
                    zero[r] = regular[r];
                    max_regular = max_regular.max(regular[r]);
                    max_zero = max_zero.max(regular[r]);
                }
            }
            let scan = |v: &mut [u64], list: &[QsEntry], xs: &[f64; R], max: f64| {
                for e in list {
                    // f32 → f64 is exact, so this is the f32 comparison.
                    let t = f64::from(e.threshold);
                    if t >= max {
                        break; // no lane goes right from here on (neither is NaN)
                    }
                    let at = e.tree as usize * R;
                    let Some(lanes) = v.get_mut(at..at + R) else {
                        continue;
                    };
                    for (b, &xr) in lanes.iter_mut().zip(xs) {
                        let right = 0u64.wrapping_sub(u64::from(t < xr));
                        *b &= e.mask | !right;
                    }
                }
            };
            let clear = |v: &mut [u64], list: &[QsEntry], sel: &[u64; R]| {
                for e in list {
                    let at = e.tree as usize * R;
                    let Some(lanes) = v.get_mut(at..at + R) else {
                        continue;
                    };
                    for (b, &s) in lanes.iter_mut().zip(sel) {
                        *b &= e.mask | !s;
                    }
                }
            };
            scan(v, self.list(lists.regular), &regular, max_regular);
            scan(v, self.list(lists.zero), &zero, max_zero);
            if any_nan {
                clear(v, self.list(lists.nan_right), &nan);
            }
            if any_zero {
                clear(v, self.list(lists.zero_right), &zeros);
            }
        }
        for &(i, tree, mask) in &self.categorical {
            let Some(node) = g.nodes.get(i) else { continue };
            let f = (node.meta & FEATURE_MASK) as usize;
            for r in 0..rows {
                let xv = x.get(r * nf + f).copied().unwrap_or(0.0);
                if !g.in_category(node.param, xv) {
                    if let Some(b) = v.get_mut(tree as usize * R + r) {
                        *b &= mask;
                    }
                }
            }
        }
        for (r, a) in acc.iter_mut().enumerate() {
            let mut sum = 0.0;
            for (t, &base) in self.leaf_base.iter().enumerate() {
                sum += self.leaf(base, v.get(t * R + r).copied().unwrap_or(u64::MAX));
            }
            *a = sum;
        }
    }
}

/// `x` with every |value| <= ZERO_THRESHOLD replaced by 0 (a copy only when one is).
fn zeroed_tiny<'a>(x: &'a [f32], scratch: &'a mut Vec<f32>) -> &'a [f32] {
    let tiny = |v: f32| v != 0.0 && v.abs() <= ZERO_THRESHOLD;
    if !x.iter().any(|&v| tiny(v)) {
        return x;
    }
    scratch.clear();
    scratch.extend(x.iter().map(|&v| if tiny(v) { 0.0 } else { v }));
    scratch
}

/// The largest f32 that is <= `t` (NaN stays NaN): for every f32 `x`,
/// `f64::from(x) <= t` exactly when `x <= below_f32(t)`.
pub fn below_f32(t: f64) -> f32 {
    let f = t as f32;
    if f.is_nan() || f64::from(f) <= t {
        return f;
    }
    // f > t: step one f32 towards -inf.
    let bits = f.to_bits();
    if f == 0.0 {
        -f32::from_bits(1) // t is in (-smallest subnormal, 0)
    } else if f > 0.0 {
        f32::from_bits(bits - 1)
    } else {
        f32::from_bits(bits + 1)
    }
}

/// LightGBM's `Common::Atof`, which reads the objective's parameters (it does not
/// always round correctly, so the sigmoid must be read the same way). Only the
/// numeric form; `None` if `s` is not entirely a number.
fn lightgbm_atof(s: &str) -> Option<f64> {
    fn pow10(base: f64, power: i32) -> f64 {
        if power < 0 {
            1.0 / pow10(base, -power)
        } else if power == 0 {
            1.0
        } else if power % 2 == 0 {
            pow10(base * base, power / 2)
        } else if power % 3 == 0 {
            pow10(base * base * base, power / 3)
        } else {
            base * pow10(base, power - 1)
        }
    }
    let b = s.as_bytes();
    let mut p = 0;
    let mut sign = 1.0;
    match b.first() {
        Some(b'-') => {
            sign = -1.0;
            p += 1;
        }
        Some(b'+') => p += 1,
        _ => {}
    }
    let start = p;
    let mut value = 0.0f64;
    while let Some(d) = b.get(p).filter(|c| c.is_ascii_digit()) {
        value = value * 10.0 + f64::from(d - b'0');
        p += 1;
    }
    let mut digits = p - start;
    if b.get(p) == Some(&b'.') {
        p += 1;
        let mut right = 0.0f64;
        let mut nn = 0i32;
        while let Some(d) = b.get(p).filter(|c| c.is_ascii_digit()) {
            right = f64::from(d - b'0') + right * 10.0;
            nn = nn.saturating_add(1);
            p += 1;
            digits += 1;
        }
        value += right / pow10(10.0, nn);
    }
    if digits == 0 {
        return None;
    }
    let mut scale = 1.0f64;
    let mut frac = false;
    if matches!(b.get(p), Some(b'e' | b'E')) {
        p += 1;
        match b.get(p) {
            Some(b'-') => {
                frac = true;
                p += 1;
            }
            Some(b'+') => p += 1,
            _ => {}
        }
        let mut expon: u32 = 0;
        while let Some(d) = b.get(p).filter(|c| c.is_ascii_digit()) {
            expon = expon.wrapping_mul(10).wrapping_add(u32::from(d - b'0'));
            p += 1;
        }
        expon = expon.min(308);
        while expon >= 50 {
            scale *= 1e50;
            expon -= 50;
        }
        while expon >= 8 {
            scale *= 1e8;
            expon -= 8;
        }
        while expon > 0 {
            scale *= 10.0;
            expon -= 1;
        }
    }
    if p != b.len() {
        return None;
    }
    Some(sign * if frac { value / scale } else { value * scale })
}

// ---------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------

struct Line<'a> {
    /// 1-based.
    no: usize,
    /// Byte offset of the line's start.
    at: usize,
    text: &'a str,
}

fn lines(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut at = 0;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let t = raw.strip_suffix('\n').unwrap_or(raw);
        let t = t.strip_suffix('\r').unwrap_or(t);
        out.push(Line {
            no: i + 1,
            at,
            text: t,
        });
        at += raw.len();
    }
    out
}

fn model_err(msg: String) -> Error {
    Error::Model(msg)
}

/// A header or tree field: its value and the line it came from.
struct Field<'a> {
    no: usize,
    key: &'a str,
    value: &'a str,
}

/// Fields of one block, refusing duplicates.
struct Fields<'a> {
    items: Vec<Field<'a>>,
    /// Where the block is, for messages ("the header", "Tree=3").
    what: String,
}

impl<'a> Fields<'a> {
    fn push(&mut self, no: usize, key: &'a str, value: &'a str) -> Result<()> {
        if let Some(prev) = self.items.iter().find(|f| f.key == key) {
            return Err(model_err(format!(
                "line {no}: {} sets '{key}' twice (first on line {})",
                self.what, prev.no
            )));
        }
        self.items.push(Field { no, key, value });
        Ok(())
    }

    fn get(&self, key: &str) -> Option<&Field<'a>> {
        self.items.iter().find(|f| f.key == key)
    }

    fn require(&self, key: &str, end: usize) -> Result<&Field<'a>> {
        self.get(key).ok_or_else(|| {
            model_err(format!(
                "{} (ending at line {end}) has no '{key}' line",
                self.what
            ))
        })
    }
}

impl Field<'_> {
    fn err(&self, what: &str, msg: impl std::fmt::Display) -> Error {
        model_err(format!("line {} ({what} {}): {msg}", self.no, self.key))
    }

    fn int(&self, what: &str) -> Result<i64> {
        self.value.trim().parse::<i64>().map_err(|_| {
            self.err(
                what,
                format!("expected an integer, got {:?}", cut(self.value)),
            )
        })
    }

    fn ints(&self, what: &str, n: usize) -> Result<Vec<i64>> {
        self.array(what, n, |s| s.parse::<i64>().ok(), "an integer")
    }

    fn floats(&self, what: &str, n: usize) -> Result<Vec<f64>> {
        self.array(what, n, |s| s.parse::<f64>().ok(), "a number")
    }

    fn array<T>(
        &self,
        what: &str,
        n: usize,
        parse: impl Fn(&str) -> Option<T>,
        kind: &str,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for (i, tok) in self.value.split_ascii_whitespace().enumerate() {
            if i >= n {
                let found = self.value.split_ascii_whitespace().count();
                return Err(self.err(what, format!("expected {n} values, found {found}")));
            }
            match parse(tok) {
                Some(v) => out.push(v),
                None => {
                    return Err(self.err(
                        what,
                        format!("value #{} is not {kind}: {:?}", i + 1, cut(tok)),
                    ))
                }
            }
        }
        if out.len() != n {
            return Err(self.err(what, format!("expected {n} values, found {}", out.len())));
        }
        Ok(out)
    }
}

/// At most 40 characters of `s`, for messages.
fn cut(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn parse(text: &str) -> Result<Gbdt> {
    let lines = lines(text);
    let mut i = 0;
    while lines.get(i).is_some_and(|l| l.text.trim().is_empty()) {
        i += 1;
    }
    match lines.get(i) {
        Some(l) if l.text == "tree" => i += 1,
        Some(l) => {
            return Err(model_err(format!(
                "line {}: not a LightGBM tree model: expected 'tree', got {:?}",
                l.no,
                cut(l.text)
            )))
        }
        None => return Err(model_err("the model text is empty".into())),
    }

    // Header: key=value lines up to the first tree.
    let mut header = Fields {
        items: Vec::new(),
        what: "the header".into(),
    };
    while let Some(l) = lines.get(i) {
        if l.text.starts_with("Tree=") || l.text == "end of trees" {
            break;
        }
        if !l.text.is_empty() {
            let (key, value) = l.text.split_once('=').unwrap_or((l.text, ""));
            header.push(l.no, key, value)?;
        }
        i += 1;
    }
    let header_end = lines.get(i).map_or(lines.len(), |l| l.no);
    let h = |key: &str| header.require(key, header_end);

    let version = h("version")?;
    if !matches!(version.value, "v3" | "v4") {
        return Err(version.err(
            "header",
            format!(
                "model format {:?} is not supported (v3 or v4)",
                cut(version.value)
            ),
        ));
    }
    let num_class = h("num_class")?;
    if num_class.int("header")? != 1 {
        return Err(num_class.err(
            "header",
            format!(
                "{} classes: only binary and regression models are supported",
                cut(num_class.value)
            ),
        ));
    }
    if let Some(f) = header.get("num_tree_per_iteration") {
        if f.int("header")? != 1 {
            return Err(f.err(
                "header",
                "more than one tree per iteration (multiclass) is not supported",
            ));
        }
    }
    let max_idx = h("max_feature_idx")?;
    let n_features = usize::try_from(max_idx.int("header")? + 1)
        .ok()
        .filter(|&n| n <= MAX_FEATURES)
        .ok_or_else(|| {
            max_idx.err(
                "header",
                format!(
                    "must be in -1..{}, got {}",
                    MAX_FEATURES - 1,
                    cut(max_idx.value)
                ),
            )
        })?;
    let names = h("feature_names")?;
    let feature_names: Vec<String> = if names.value.is_empty() {
        Vec::new()
    } else {
        names.value.split(' ').map(str::to_owned).collect()
    };
    if feature_names.len() != n_features {
        return Err(names.err(
            "header",
            format!(
                "{} names for {n_features} features (max_feature_idx + 1)",
                feature_names.len()
            ),
        ));
    }
    let objective = match header.get("objective") {
        None => Objective::Identity,
        Some(f) => objective(f)?,
    };
    let average_output = header.get("average_output").is_some();

    // Trees.
    let mut b = Builder::default();
    let mut blocks: Vec<(usize, usize)> = Vec::new(); // (line, byte offset) of each Tree= line
    loop {
        let Some(l) = lines.get(i) else {
            return Err(model_err(format!(
                "the model text ends at line {} before 'end of trees' (truncated?)",
                lines.len()
            )));
        };
        if l.text.is_empty() {
            i += 1;
            continue;
        }
        if l.text == "end of trees" {
            blocks.push((l.no, l.at));
            break;
        }
        let Some(index) = l.text.strip_prefix("Tree=") else {
            return Err(model_err(format!(
                "line {}: expected 'Tree={}' or 'end of trees', got {:?}",
                l.no,
                b.roots.len(),
                cut(l.text)
            )));
        };
        if index.parse::<usize>().ok() != Some(b.roots.len()) {
            return Err(model_err(format!(
                "line {}: expected 'Tree={}', got {:?}",
                l.no,
                b.roots.len(),
                cut(l.text)
            )));
        }
        blocks.push((l.no, l.at));
        let what = format!("Tree={}", b.roots.len());
        let mut fields = Fields {
            items: Vec::new(),
            what: what.clone(),
        };
        i += 1;
        while let Some(l) = lines.get(i) {
            if l.text.is_empty() {
                break;
            }
            if l.text.starts_with("Tree=") || l.text == "end of trees" {
                return Err(model_err(format!(
                    "line {}: {what} does not end with an empty line",
                    l.no
                )));
            }
            let Some((key, value)) = l.text.split_once('=') else {
                return Err(model_err(format!(
                    "line {}: {what}: expected key=value, got {:?}",
                    l.no,
                    cut(l.text)
                )));
            };
            fields.push(l.no, key, value)?;
            i += 1;
        }
        let end = lines.get(i).map_or(lines.len(), |l| l.no);
        b.tree(&fields, &what, end, n_features)?;
    }

    if let Some(sizes) = header.get("tree_sizes") {
        check_tree_sizes(sizes, &blocks)?;
    }
    Ok(Gbdt {
        nodes: b.nodes,
        leaves: b.leaves,
        cat_sets: b.cat_sets,
        cat_words: b.cat_words,
        roots: b.roots,
        feature_names,
        objective,
        average_output,
        qs: None,
    })
}

fn objective(f: &Field<'_>) -> Result<Objective> {
    let mut tokens = f.value.split(' ');
    let kind = tokens.next().unwrap_or("");
    match kind {
        "binary" => {
            let mut sigmoid = None;
            for t in tokens {
                if let Some(("sigmoid", v)) = t.split_once(':') {
                    sigmoid = Some(lightgbm_atof(v).ok_or_else(|| {
                        f.err("header", format!("sigmoid {:?} is not a number", cut(v)))
                    })?);
                }
            }
            match sigmoid {
                Some(s) if s > 0.0 && s.is_finite() => Ok(Objective::Binary { sigmoid: s }),
                Some(s) => Err(f.err("header", format!("sigmoid must be > 0, got {s}"))),
                None => Err(f.err("header", "binary objective without 'sigmoid:'")),
            }
        }
        "regression" | "regression_l1" | "huber" | "fair" | "quantile" | "mape" => {
            if tokens.any(|t| t == "sqrt") {
                Err(f.err(
                    "header",
                    "regression with 'sqrt' (reg_sqrt) is not supported",
                ))
            } else {
                Ok(Objective::Identity)
            }
        }
        "custom" => Ok(Objective::Identity),
        other => Err(f.err(
            "header",
            format!(
                "objective {:?} is not supported (binary, regression, regression_l1, huber, \
                 fair, quantile, mape, custom or none)",
                cut(other)
            ),
        )),
    }
}

/// LightGBM finds tree `i` at the first tree's offset plus the sizes before it:
/// the blocks read line by line must sit exactly there.
fn check_tree_sizes(sizes: &Field<'_>, blocks: &[(usize, usize)]) -> Result<()> {
    let trees = blocks.len().saturating_sub(1);
    let sizes_v = sizes.array("header", trees, |s| s.parse::<usize>().ok(), "a byte count")?;
    for (k, (w, &size)) in blocks.windows(2).zip(&sizes_v).enumerate() {
        let (line, start) = w[0];
        let actual = w[1].1 - start;
        if actual != size {
            return Err(model_err(format!(
                "line {line}: Tree={k} is {actual} bytes but tree_sizes (line {}) says {size}",
                sizes.no
            )));
        }
    }
    Ok(())
}

#[derive(Default)]
struct Builder {
    nodes: Vec<Node>,
    leaves: Vec<f64>,
    cat_sets: Vec<CatSet>,
    cat_words: Vec<u32>,
    roots: Vec<i32>,
}

fn index_i32(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| model_err(format!("{what}: the model has too many nodes")))
}

impl Builder {
    fn tree(&mut self, f: &Fields<'_>, what: &str, end: usize, n_features: usize) -> Result<()> {
        let req = |key: &str| f.require(key, end);
        let nl_field = req("num_leaves")?;
        let num_leaves = usize::try_from(nl_field.int(what)?)
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| nl_field.err(what, format!("must be >= 1, got {}", nl_field.value)))?;
        let nc_field = req("num_cat")?;
        let num_cat = usize::try_from(nc_field.int(what)?)
            .map_err(|_| nc_field.err(what, format!("must be >= 0, got {}", nc_field.value)))?;
        if let Some(lin) = f.get("is_linear") {
            match lin.int(what)? {
                0 => {}
                1 => return Err(lin.err(what, "linear trees are not supported")),
                v => return Err(lin.err(what, format!("must be 0 or 1, got {v}"))),
            }
        }
        let leaf_values = req("leaf_value")?.floats(what, num_leaves)?;
        let leaf_base = self.leaves.len();
        let node_base = self.nodes.len();
        index_i32(leaf_base + num_leaves, what)?;
        if num_leaves == 1 {
            self.leaves.extend(leaf_values);
            self.roots.push(!index_i32(leaf_base, what)?);
            return Ok(());
        }
        let n_int = num_leaves - 1;
        index_i32(node_base + n_int, what)?;

        let feat_f = req("split_feature")?;
        let features = feat_f.ints(what, n_int)?;
        let thr_f = req("threshold")?;
        let thresholds = thr_f.floats(what, n_int)?;
        let dt_f = f.get("decision_type");
        let decision = match dt_f {
            Some(d) => d.ints(what, n_int)?,
            None => vec![0; n_int],
        };
        let left_f = req("left_child")?;
        let right_f = req("right_child")?;
        let lefts = left_f.ints(what, n_int)?;
        let rights = right_f.ints(what, n_int)?;

        // Bitsets.
        let cat_base = self.cat_sets.len();
        if num_cat > 0 {
            let bounds_f = req("cat_boundaries")?;
            let bounds = bounds_f.ints(what, num_cat + 1)?;
            if bounds[0] != 0 || bounds.windows(2).any(|w| w[1] < w[0]) {
                return Err(bounds_f.err(what, "must start at 0 and never decrease"));
            }
            let total = usize::try_from(bounds[num_cat]).unwrap_or(usize::MAX);
            let words_f = req("cat_threshold")?;
            let words = words_f.array(what, total, |s| s.parse::<u32>().ok(), "a 32-bit word")?;
            let word_base = self.cat_words.len();
            let too_many = || model_err(format!("{what}: too many categorical words"));
            for w in bounds.windows(2) {
                let start = u32::try_from(word_base + w[0] as usize).map_err(|_| too_many())?;
                let len = u32::try_from(w[1] - w[0]).map_err(|_| too_many())?;
                start.checked_add(len).ok_or_else(too_many)?;
                self.cat_sets.push(CatSet { start, len });
            }
            self.cat_words.extend(words);
        }

        // Links: every internal node but the root and every leaf has exactly one parent,
        // all reachable from the root (so a walk always ends, at most num_leaves - 1 steps).
        let child = |v: i64, f: &Field<'_>, node: usize| -> Result<i32> {
            if v >= 0 && (v as usize) < n_int {
                index_i32(node_base + v as usize, what)
            } else if v < 0 && ((!v) as usize) < num_leaves {
                Ok(!index_i32(leaf_base + (!v) as usize, what)?)
            } else {
                Err(f.err(
                    what,
                    format!(
                        "node {node}: child {v} is neither a node (0..{n_int}) nor a leaf \
                         (-1..-{num_leaves})"
                    ),
                ))
            }
        };
        let mut node_seen = vec![false; n_int];
        let mut leaf_seen = vec![false; num_leaves];
        let mut stack = vec![0usize];
        node_seen[0] = true;
        while let Some(node) = stack.pop() {
            for (v, f) in [(lefts[node], left_f), (rights[node], right_f)] {
                let seen = if v >= 0 {
                    node_seen.get_mut(v as usize)
                } else {
                    leaf_seen.get_mut((!v) as usize)
                };
                match seen {
                    Some(s) if !*s => *s = true,
                    Some(_) => {
                        return Err(f.err(
                            what,
                            format!("node {node}: child {v} has another parent (not a tree)"),
                        ))
                    }
                    None => {
                        child(v, f, node)?;
                    }
                }
                if v >= 0 {
                    stack.push(v as usize);
                }
            }
        }
        if let Some(n) = node_seen.iter().position(|s| !s) {
            return Err(left_f.err(what, format!("node {n} is not reachable from the root")));
        }
        if let Some(n) = leaf_seen.iter().position(|s| !s) {
            return Err(left_f.err(what, format!("leaf {n} is not reachable from the root")));
        }

        for k in 0..n_int {
            let feature = usize::try_from(features[k])
                .ok()
                .filter(|&x| x < n_features)
                .ok_or_else(|| {
                    feat_f.err(
                        what,
                        format!(
                            "node {k}: feature {} is not in 0..{n_features}",
                            features[k]
                        ),
                    )
                })?;
            let dt = decision[k];
            let dt_err = |msg: String| match dt_f {
                Some(d) => d.err(what, format!("node {k}: {msg}")),
                None => model_err(format!("{what}: node {k}: {msg}")),
            };
            if !(0..16).contains(&dt) {
                return Err(dt_err(format!("unknown decision type {dt}")));
            }
            let (param, flags) = if dt & DT_CATEGORICAL != 0 {
                let t = thresholds[k];
                if !(t >= 0.0 && t.fract() == 0.0 && (t as usize) < num_cat) {
                    return Err(thr_f.err(
                        what,
                        format!("node {k}: categorical split #{t} is not in 0..{num_cat}"),
                    ));
                }
                let set = u32::try_from(cat_base + t as usize)
                    .map_err(|_| model_err(format!("{what}: too many categorical splits")))?;
                (set, CATEGORICAL)
            } else {
                let t = thresholds[k];
                let default_left = dt & DT_DEFAULT_LEFT != 0;
                let flags = match (dt >> 2) & 3 {
                    // NaN is read as 0.
                    MISSING_NONE => bool_flag(0.0 <= t, MISSING_LEFT),
                    // NaN is read as 0, and 0 is missing.
                    MISSING_ZERO => bool_flag(default_left, MISSING_LEFT) | ZERO_MISSING,
                    MISSING_NAN => bool_flag(default_left, MISSING_LEFT),
                    m => return Err(dt_err(format!("unknown missing type {m}"))),
                };
                (below_f32(t).to_bits(), flags)
            };
            self.nodes.push(Node {
                param,
                meta: feature as u32 | flags,
                children: [child(lefts[k], left_f, k)?, child(rights[k], right_f, k)?],
            });
        }
        self.leaves.extend(leaf_values);
        self.roots.push(index_i32(node_base, what)?);
        Ok(())
    }
}

fn bool_flag(b: bool, flag: u32) -> u32 {
    if b {
        flag
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Two trees over 3 features: tree 0 numerical (missing NaN default left, then
    /// missing Zero default right, then missing None), tree 1 categorical on
    /// feature 2 (categories 0, 1 and 33 go left) then a one-leaf tree.
    const MODEL: &str = "tree
version=v4
num_class=1
num_tree_per_iteration=1
label_index=0
max_feature_idx=2
objective=binary sigmoid:1
feature_names=a b c
feature_infos=[0:1] [0:1] 1:33
tree_sizes=TS

Tree=0
num_leaves=4
num_cat=0
split_feature=0 1 0
split_gain=1 1 1
threshold=0.5 -1.0000000180025095e-35 2.25
decision_type=10 4 0
left_child=1 -1 -3
right_child=2 -2 -4
leaf_value=0.25 -0.5 0.125 1
leaf_weight=1 1 1 1
leaf_count=1 1 1 1
internal_value=0 0 0
internal_weight=0 0 0
internal_count=4 2 2
is_linear=0
shrinkage=1

Tree=1
num_leaves=2
num_cat=1
split_feature=2
split_gain=1
threshold=0
decision_type=1
left_child=-1
right_child=-2
leaf_value=-0.75 0.5
leaf_weight=1 1
leaf_count=1 1
internal_value=0
internal_weight=0
internal_count=2
cat_boundaries=0 2
cat_threshold=3 2
is_linear=0
shrinkage=1

Tree=2
num_leaves=1
num_cat=0
split_feature=
split_gain=
threshold=
decision_type=
left_child=
right_child=
leaf_value=0.0625
leaf_weight=
leaf_count=
internal_value=
internal_weight=
internal_count=
is_linear=0
shrinkage=1

end of trees

feature_importances:
a=2

parameters:
[boosting: gbdt]
end of parameters
";

    /// MODEL with its real tree sizes filled in.
    fn model_text() -> String {
        let start = MODEL.find("Tree=0").unwrap();
        let end = MODEL.find("end of trees").unwrap();
        let mut sizes = Vec::new();
        let mut at = start;
        for k in 1..=3 {
            let next = if k < 3 {
                MODEL.find(&format!("Tree={k}")).unwrap()
            } else {
                end
            };
            sizes.push((next - at).to_string());
            at = next;
        }
        MODEL.replace("TS", &sizes.join(" "))
    }

    fn model() -> Gbdt {
        Gbdt::from_text(&model_text()).unwrap()
    }

    fn raw(m: &Gbdt, row: [f32; 3]) -> f64 {
        let mut out = [0.0];
        m.predict_raw(&row, &mut out).unwrap();
        out[0]
    }

    /// LightGBM's rules written out directly (tree.h), on the hand-written model.
    fn reference(row: [f32; 3]) -> f64 {
        let x: Vec<f64> = row
            .iter()
            .map(|&v| {
                let v = f64::from(v);
                if v.abs() > f64::from(ZERO_THRESHOLD) || v.is_nan() {
                    v
                } else {
                    0.0
                }
            })
            .collect();
        let num = |v: f64, t: f64, missing: u8, default_left: bool| -> bool {
            let v = if v.is_nan() && missing != 2 { 0.0 } else { v };
            let is_zero = (-f64::from(ZERO_THRESHOLD)..=f64::from(ZERO_THRESHOLD)).contains(&v);
            if (missing == 1 && is_zero) || (missing == 2 && v.is_nan()) {
                default_left
            } else {
                v <= t
            }
        };
        let t0 = if num(x[0], 0.5, 2, true) {
            if num(x[1], -1.0000000180025095e-35, 1, false) {
                0.25
            } else {
                -0.5
            }
        } else if num(x[0], 2.25, 0, false) {
            0.125
        } else {
            1.0
        };
        let c = x[2];
        let t1 = if !c.is_nan() && (c as i32) >= 0 && matches!(c as i32, 0 | 1 | 33) {
            -0.75
        } else {
            0.5
        };
        t0 + t1 + 0.0625
    }

    #[test]
    fn reads_the_header() {
        let m = model();
        assert_eq!(m.n_features(), 3);
        assert_eq!(m.num_trees(), 3);
        assert_eq!(m.feature_names(), ["a", "b", "c"]);
        assert_eq!(m.objective(), Objective::Binary { sigmoid: 1.0 });
    }

    #[test]
    fn follows_lightgbms_rules_on_edge_values() {
        let m = model();
        let odd = [
            f32::NAN,
            0.0,
            -0.0,
            1e-36,
            -1e-36,
            1e-35,
            -1e-35,
            1.1e-35,
            -1.1e-35,
            0.5,
            0.500_000_06,
            2.25,
            -0.5,
            -0.9,
            1.0,
            1.9,
            33.0,
            33.7,
            32.0,
            64.0,
            -1.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            3e9,
            f32::MAX,
        ];
        for &a in &odd {
            for &b in &odd {
                for &c in &odd {
                    let row = [a, b, c];
                    assert_eq!(raw(&m, row).to_bits(), reference(row).to_bits(), "{row:?}");
                }
            }
        }
    }

    #[test]
    fn applies_the_sigmoid_and_batches_agree_with_single_rows() {
        let m = model();
        let rows: Vec<[f32; 3]> = (0..200)
            .map(|i| {
                let f = i as f32;
                [
                    f * 0.02 - 1.0,
                    if i % 3 == 0 { 0.0 } else { f - 90.0 },
                    (i % 40) as f32,
                ]
            })
            .collect();
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let mut batch = vec![0.0; rows.len()];
        m.predict(&flat, &mut batch).unwrap();
        for (row, &p) in rows.iter().zip(&batch) {
            let mut one = [0.0];
            m.predict(row, &mut one).unwrap();
            assert_eq!(one[0].to_bits(), p.to_bits());
            let want = 1.0 / (1.0 + (-reference(*row)).exp());
            assert_eq!(p.to_bits(), want.to_bits(), "{row:?}");
        }
    }

    #[test]
    fn wrong_matrix_sizes_are_errors() {
        let m = model();
        let mut out = [0.0; 2];
        let err = m.predict(&[0.0; 5], &mut out).unwrap_err();
        assert!(matches!(err, Error::Matrix(_)), "{err}");
        assert!(err.to_string().contains("2 rows of 3 features"), "{err}");
        m.predict(&[], &mut []).unwrap();
    }

    fn refused(text: &str) -> String {
        match Gbdt::from_text(text) {
            Err(Error::Model(m)) => m,
            Err(e) => panic!("wrong error kind: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn malformed_models_are_refused_naming_the_line_and_field() {
        let good = model_text();
        let cases: &[(&str, &str, &str)] = &[
            ("version=v4", "version=v9", "v9"),
            ("num_class=1", "num_class=3", "only binary and regression"),
            (
                "num_tree_per_iteration=1",
                "num_tree_per_iteration=3",
                "multiclass",
            ),
            (
                "objective=binary sigmoid:1",
                "objective=multiclass num_class:3",
                "not supported",
            ),
            (
                "objective=binary sigmoid:1",
                "objective=binary sigmoid:-1",
                "sigmoid must be > 0",
            ),
            (
                "objective=binary sigmoid:1",
                "objective=binary",
                "without 'sigmoid:'",
            ),
            (
                "objective=binary sigmoid:1",
                "objective=regression sqrt",
                "sqrt",
            ),
            (
                "feature_names=a b c",
                "feature_names=a b",
                "2 names for 3 features",
            ),
            (
                "max_feature_idx=2",
                "max_feature_idx=x",
                "line 6 (header max_feature_idx)",
            ),
            (
                "split_feature=0 1 0",
                "split_feature=0 1 3",
                "feature 3 is not in 0..3",
            ),
            (
                "split_feature=0 1 0",
                "split_feature=0 1",
                "expected 3 values, found 2",
            ),
            (
                "split_feature=0 1 0",
                "split_feature=0 1 0 1",
                "expected 3 values, found 4",
            ),
            (
                "threshold=0.5 -1",
                "threshold=0.5x -1",
                "value #1 is not a number",
            ),
            (
                "decision_type=10 4 0",
                "decision_type=10 12 0",
                "unknown missing type 3",
            ),
            (
                "decision_type=10 4 0",
                "decision_type=10 4 16",
                "unknown decision type 16",
            ),
            ("left_child=1 -1 -3", "left_child=1 -1 -5", "neither a node"),
            ("left_child=1 -1 -3", "left_child=1 -1 -2", "another parent"),
            ("left_child=1 -1 -3", "left_child=1 0 -3", "another parent"),
            ("left_child=1 -1 -3", "left_child=2 -1 -3", "another parent"),
            ("num_leaves=4", "num_leaves=0", "must be >= 1"),
            (
                "num_leaves=4",
                "num_leaves=5",
                "Tree=0 leaf_value): expected 5 values",
            ),
            ("cat_threshold=3 2", "cat_threshold=3", "expected 2 values"),
            (
                "cat_boundaries=0 2",
                "cat_boundaries=1 2",
                "must start at 0",
            ),
            (
                "threshold=0\n",
                "threshold=1\n",
                "categorical split #1 is not in 0..1",
            ),
            (
                "is_linear=0\nshrinkage=1\n\nTree=2",
                "is_linear=1\nshrinkage=1\n\nTree=2",
                "linear",
            ),
            ("Tree=1", "Tree=7", "expected 'Tree=1'"),
            (
                "leaf_value=-0.75 0.5",
                "leaf_value=-0.75 0.5\nleaf_value=1 2",
                "twice",
            ),
            ("num_cat=1\n", "", "no 'num_cat' line"),
            (
                "shrinkage=1\n\nTree=1",
                "shrinkage=1\nTree=1",
                "does not end with an empty line",
            ),
            ("tree\n", "forest\n", "not a LightGBM tree model"),
        ];
        for (from, to, expect) in cases {
            assert!(good.contains(from), "{from}");
            let msg = refused(&good.replacen(from, to, 1));
            assert!(msg.contains(expect), "{from} -> {to}: {msg}");
            assert!(msg.starts_with("line ") || msg.contains("Tree="), "{msg}");
        }
        let cut_at = good.find("end of trees").unwrap();
        assert!(refused(&good[..cut_at]).contains("before 'end of trees'"));
        assert!(refused("").contains("empty"));
        // tree_sizes that do not match the blocks: LightGBM would read other bytes.
        let sizes_line = good.lines().find(|l| l.starts_with("tree_sizes=")).unwrap();
        let msg = refused(&good.replace(sizes_line, "tree_sizes=1 2 3"));
        assert!(msg.contains("tree_sizes"), "{msg}");
        let msg = refused(&good.replace(sizes_line, "tree_sizes=1 2"));
        assert!(msg.contains("expected 3 values"), "{msg}");
        // Without tree_sizes, the blocks are read in order.
        let no_sizes = good.replace(&format!("{sizes_line}\n"), "");
        assert_eq!(Gbdt::from_text(&no_sizes).unwrap().num_trees(), 3);
        // CRLF line endings: same trees, but tree_sizes no longer match.
        let crlf = no_sizes.replace('\n', "\r\n");
        assert_eq!(Gbdt::from_text(&crlf).unwrap().num_trees(), 3);
    }

    #[test]
    fn objectives() {
        let good = model_text();
        let with = |obj: &str| {
            Gbdt::from_text(&good.replace("objective=binary sigmoid:1", obj))
                .unwrap()
                .objective()
        };
        assert_eq!(with("objective=regression"), Objective::Identity);
        assert_eq!(with("objective=custom"), Objective::Identity);
        assert_eq!(with(""), Objective::Identity);
        assert_eq!(
            with("objective=binary sigmoid:0.7"),
            Objective::Binary {
                sigmoid: lightgbm_atof("0.7").unwrap()
            }
        );
        let m = Gbdt::from_text(&good.replace("objective=binary sigmoid:1", "")).unwrap();
        let mut p = [0.0];
        m.predict(&[1.0, 0.0, 2.0], &mut p).unwrap();
        assert_eq!(p[0], reference([1.0, 0.0, 2.0]));
    }

    #[test]
    fn average_output_divides_by_the_iterations() {
        let m = Gbdt::from_text(
            &model_text().replace("feature_names=", "average_output\nfeature_names="),
        )
        .unwrap();
        let mut p = [0.0];
        m.predict(&[1.0, 0.0, 2.0], &mut p).unwrap();
        let want = 1.0 / (1.0 + (-(reference([1.0, 0.0, 2.0]) / 3.0)).exp());
        assert_eq!(p[0].to_bits(), want.to_bits());
    }

    #[test]
    fn atof_matches_lightgbm() {
        assert_eq!(lightgbm_atof("1"), Some(1.0));
        assert_eq!(lightgbm_atof("-2.5"), Some(-2.5));
        assert_eq!(lightgbm_atof("1e3"), Some(1000.0));
        assert_eq!(lightgbm_atof("1.5E-2"), Some(1.5 / 100.0));
        assert_eq!(lightgbm_atof(".5"), Some(0.5));
        assert_eq!(lightgbm_atof(""), None);
        assert_eq!(lightgbm_atof("1x"), None);
        assert_eq!(lightgbm_atof("nan"), None);
    }

    /// A random tree as LightGBM stores it (the reference evaluates these arrays).
    #[derive(Debug, Clone)]
    struct RefTree {
        split_feature: Vec<usize>,
        threshold: Vec<f64>,
        decision_type: Vec<i64>,
        left: Vec<i64>,
        right: Vec<i64>,
        leaf_value: Vec<f64>,
        cat_boundaries: Vec<usize>,
        cat_threshold: Vec<u32>,
    }

    /// LightGBM's Tree::Predict on a row already read as doubles (tiny values 0).
    fn ref_tree(t: &RefTree, x: &[f64]) -> f64 {
        if t.leaf_value.len() == 1 {
            return t.leaf_value[0];
        }
        let mut node: i64 = 0;
        while node >= 0 {
            let k = node as usize;
            let mut v = x[t.split_feature[k]];
            let dt = t.decision_type[k];
            let left = if dt & 1 != 0 {
                if v.is_nan() || (v as i32) < 0 {
                    false
                } else {
                    let c = v as i32;
                    let idx = t.threshold[k] as usize;
                    let (lo, hi) = (t.cat_boundaries[idx], t.cat_boundaries[idx + 1]);
                    let word = (c / 32) as usize;
                    word < hi - lo && (t.cat_threshold[lo + word] >> (c % 32)) & 1 == 1
                }
            } else {
                let missing = (dt >> 2) & 3;
                if v.is_nan() && missing != 2 {
                    v = 0.0;
                }
                let z = f64::from(ZERO_THRESHOLD);
                if (missing == 1 && (-z..=z).contains(&v)) || (missing == 2 && v.is_nan()) {
                    dt & 2 != 0
                } else {
                    v <= t.threshold[k]
                }
            };
            node = if left { t.left[k] } else { t.right[k] };
        }
        t.leaf_value[(!node) as usize]
    }

    fn ref_raw(trees: &[RefTree], row: &[f32]) -> f64 {
        let z = f64::from(ZERO_THRESHOLD);
        let x: Vec<f64> = row
            .iter()
            .map(|&v| {
                let v = f64::from(v);
                if v.abs() > z || v.is_nan() {
                    v
                } else {
                    0.0
                }
            })
            .collect();
        let mut sum = 0.0;
        for t in trees {
            sum += ref_tree(t, &x);
        }
        sum
    }

    /// Thresholds that make ties and edge cases likely.
    const THRESHOLDS: [f64; 10] = [
        0.0,
        1.0000000180025095e-35,
        -1.0000000180025095e-35,
        0.5,
        1.5,
        -2.25,
        0.1,
        1e30,
        f64::NEG_INFINITY,
        3.000_000_000_000_000_4,
    ];

    fn tree_strategy(n_features: usize) -> impl Strategy<Value = RefTree> {
        (1usize..=70, any::<u64>()).prop_map(move |(leaves, seed)| {
            let mut s = seed | 1;
            let mut rnd = move |n: u64| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s % n
            };
            let n_int = leaves - 1;
            let mut t = RefTree {
                split_feature: vec![0; n_int],
                threshold: vec![0.0; n_int],
                decision_type: vec![0; n_int],
                left: vec![0; n_int],
                right: vec![0; n_int],
                leaf_value: (0..leaves)
                    .map(|i| (i as f64 + 1.0) * 0.015625 - 0.3)
                    .collect(),
                cat_boundaries: vec![0],
                cat_threshold: Vec::new(),
            };
            // Leaf-wise growth, numbered as LightGBM numbers nodes.
            let mut parent = vec![-1i64; leaves];
            for node in 0..n_int {
                let leaf = rnd(node as u64 + 1) as usize;
                if parent[leaf] >= 0 {
                    let p = parent[leaf] as usize;
                    if t.left[p] == !(leaf as i64) {
                        t.left[p] = node as i64;
                    } else {
                        t.right[p] = node as i64;
                    }
                }
                t.left[node] = !(leaf as i64);
                t.right[node] = !((node + 1) as i64);
                parent[leaf] = node as i64;
                parent[node + 1] = node as i64;
                t.split_feature[node] = rnd(n_features as u64) as usize;
                if rnd(5) == 0 {
                    let words = 1 + rnd(3) as usize;
                    t.threshold[node] = (t.cat_boundaries.len() - 1) as f64;
                    for _ in 0..words {
                        t.cat_threshold.push(rnd(u64::from(u32::MAX)) as u32);
                    }
                    t.cat_boundaries.push(t.cat_threshold.len());
                    t.decision_type[node] = 1 | (rnd(3) as i64) << 2;
                } else {
                    t.threshold[node] = if rnd(3) == 0 {
                        (rnd(2000) as f64 - 1000.0) / 7.0
                    } else {
                        THRESHOLDS[rnd(THRESHOLDS.len() as u64) as usize]
                    };
                    t.decision_type[node] = (rnd(3) as i64) << 2 | (rnd(2) as i64) << 1;
                }
            }
            t
        })
    }

    fn model_strategy() -> impl Strategy<Value = (usize, Vec<RefTree>)> {
        (1usize..6)
            .prop_flat_map(|nf| (Just(nf), proptest::collection::vec(tree_strategy(nf), 1..6)))
    }

    fn to_text(nf: usize, trees: &[RefTree]) -> String {
        let join = |v: Vec<String>| v.join(" ");
        let names: Vec<String> = (0..nf).map(|i| format!("f{i}")).collect();
        let mut s = format!(
            "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\n\
             max_feature_idx={}\nobjective=binary sigmoid:1\nfeature_names={}\n\n",
            nf - 1,
            names.join(" ")
        );
        for (i, t) in trees.iter().enumerate() {
            let num_cat = t.cat_boundaries.len() - 1;
            s += &format!(
                "Tree={i}\nnum_leaves={}\nnum_cat={num_cat}\n",
                t.leaf_value.len()
            );
            s += &format!(
                "split_feature={}\n",
                join(t.split_feature.iter().map(|v| v.to_string()).collect())
            );
            // LightGBM writes thresholds with %.17g; Rust's shortest repr round-trips too.
            s += &format!(
                "threshold={}\n",
                join(t.threshold.iter().map(|v| format!("{v:e}")).collect())
            );
            s += &format!(
                "decision_type={}\n",
                join(t.decision_type.iter().map(|v| v.to_string()).collect())
            );
            s += &format!(
                "left_child={}\n",
                join(t.left.iter().map(|v| v.to_string()).collect())
            );
            s += &format!(
                "right_child={}\n",
                join(t.right.iter().map(|v| v.to_string()).collect())
            );
            s += &format!(
                "leaf_value={}\n",
                join(t.leaf_value.iter().map(|v| format!("{v:e}")).collect())
            );
            if num_cat > 0 {
                s += &format!(
                    "cat_boundaries={}\n",
                    join(t.cat_boundaries.iter().map(|v| v.to_string()).collect())
                );
                s += &format!(
                    "cat_threshold={}\n",
                    join(t.cat_threshold.iter().map(|v| v.to_string()).collect())
                );
            }
            s += "is_linear=0\nshrinkage=1\n\n";
        }
        s + "end of trees\n"
    }

    /// Row values: missing, zeros, tiny values, the thresholds and their f32
    /// neighbours, infinities, categories (also negative and huge).
    fn value_strategy() -> impl Strategy<Value = f32> {
        let special = prop_oneof![
            Just(f32::NAN),
            Just(0.0f32),
            Just(-0.0f32),
            Just(1e-36f32),
            Just(-1e-36f32),
            Just(1e-35f32),
            Just(-1e-35f32),
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
            Just(3e9f32),
            Just(-0.5f32),
        ];
        let near = (0..THRESHOLDS.len(), -2i32..=2).prop_map(|(i, d)| {
            let f = THRESHOLDS[i] as f32;
            f32::from_bits(f.to_bits().wrapping_add_signed(d))
        });
        prop_oneof![
            special,
            near,
            (-5i32..100).prop_map(|c| c as f32),
            (-150.0f32..150.0),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Random forests (every missing type, both default directions, categorical
        /// splits, trees up to 70 leaves) on edge-case rows: the QuickScorer (one
        /// row and blocks), the tree walk and LightGBM's rules written out directly
        /// agree bit for bit.
        #[test]
        fn random_models_score_like_lightgbm(
            (nf, trees) in model_strategy(),
            values in proptest::collection::vec(value_strategy(), 1..200),
            rows in 1usize..24,
        ) {
            let m = Gbdt::from_text(&to_text(nf, &trees)).unwrap();
            let fits = trees.iter().all(|t| t.leaf_value.len() <= 64);
            prop_assert_eq!(m.qs.is_some(), fits);
            let x: Vec<f32> = (0..rows * nf).map(|k| values[k % values.len()]).collect();
            let want: Vec<f64> = x.chunks(nf).map(|r| ref_raw(&trees, r)).collect();
            let walk = m.clone().walk_only();
            let mut batch = vec![0.0; rows];
            m.predict_raw(&x, &mut batch).unwrap();
            let mut walked = vec![0.0; rows];
            walk.predict_raw(&x, &mut walked).unwrap();
            for (k, row) in x.chunks(nf).enumerate() {
                let mut one = [0.0];
                m.predict_raw(row, &mut one).unwrap();
                prop_assert_eq!(one[0].to_bits(), want[k].to_bits(), "row {} {:?}", k, row);
                prop_assert_eq!(batch[k].to_bits(), want[k].to_bits(), "batch row {} {:?}", k, row);
                prop_assert_eq!(walked[k].to_bits(), want[k].to_bits(), "walked row {} {:?}", k, row);
            }
        }
    }

    proptest! {
        #[test]
        fn f32_thresholds_compare_like_f64(x in any::<u32>(), t in any::<u64>()) {
            let x = f32::from_bits(x);
            let t = f64::from_bits(t);
            prop_assert_eq!(f64::from(x) <= t, x <= below_f32(t));
        }

        #[test]
        fn f32_thresholds_near_f32_values(x in any::<u32>(), delta in -3i64..=3) {
            let x = f32::from_bits(x);
            let t = f64::from_bits((f64::from(x).to_bits() as i64).wrapping_add(delta) as u64);
            let y = f32::from_bits(x.to_bits().wrapping_add(delta as u32));
            prop_assert_eq!(f64::from(x) <= t, x <= below_f32(t));
            prop_assert_eq!(f64::from(y) <= t, y <= below_f32(t));
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Random byte edits of a valid model (digits, signs, separators, newlines
        /// or any byte) never panic; what still parses scores rows, one at a time
        /// and in a block, without panicking or looping.
        #[test]
        fn edited_models_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..5),
            row in proptest::array::uniform3(any::<u32>()),
            sizes in any::<bool>(),
        ) {
            // Without tree_sizes, more edits inside trees survive to the checks after.
            let text = model_text();
            let mut bytes = if sizes {
                text.into_bytes()
            } else {
                let line = text.lines().find(|l| l.starts_with("tree_sizes=")).unwrap();
                text.replace(&format!("{line}\n"), "").into_bytes()
            };
            for (at, byte, op) in edits {
                let i = at.index(bytes.len() + 1);
                let ch = b"0123456789-=.\n e"
                    .get(usize::from(byte) % 20)
                    .copied()
                    .unwrap_or(byte);
                match op {
                    0 if i < bytes.len() => bytes[i] = ch,
                    1 => bytes.insert(i, ch),
                    _ if i < bytes.len() => {
                        bytes.remove(i);
                    }
                    _ => {}
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(m) = Gbdt::from_text(&text) {
                let nf = m.n_features();
                let x: Vec<f32> = (0..nf * 9).map(|k| f32::from_bits(row[k % 3])).collect();
                let mut out = [0.0; 9];
                m.predict(&x, &mut out).unwrap();
                m.predict(&x[..nf], &mut out[..1]).unwrap();
            }
        }
    }
}
