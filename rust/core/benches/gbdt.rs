//! Criterion bench of the LightGBM tree evaluator at batch 1 and 64 (and 1024).
//!
//! The model is `GBDT_MODEL` (a model.txt) when set, else a synthetic forest shaped
//! like riskserve's demo model: 300 trees of 63 leaves over 97 features, grown
//! leaf-wise like LightGBM's, with every missing type and both default directions.
//! Rows are standard normal × 3 with 10% NaN and 20% zeros. Throughput is in rows.

use std::fmt::Write as _;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use riskserve_core::gbdt::Gbdt;

const TREES: usize = 300;
const LEAVES: usize = 63;
const FEATURES: usize = 97;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        // Irwin–Hall approximation: good enough for thresholds and rows.
        (0..12).map(|_| self.unit()).sum::<f64>() - 6.0
    }
}

fn join<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One tree grown leaf-wise (split a random leaf, as LightGBM numbers nodes).
fn tree(rng: &mut Rng, out: &mut String, index: usize) {
    let n_int = LEAVES - 1;
    let mut left = vec![0i64; n_int];
    let mut right = vec![0i64; n_int];
    let mut parent_of_leaf = vec![-1i64; LEAVES];
    let mut feature = vec![0usize; n_int];
    let mut threshold = vec![0f64; n_int];
    let mut decision = vec![0i64; n_int];
    for node in 0..n_int {
        let leaf = rng.below(node + 1);
        let parent = parent_of_leaf[leaf];
        if parent >= 0 {
            let p = parent as usize;
            if left[p] == !(leaf as i64) {
                left[p] = node as i64;
            } else {
                right[p] = node as i64;
            }
        }
        left[node] = !(leaf as i64);
        right[node] = !((node + 1) as i64);
        parent_of_leaf[leaf] = node as i64;
        parent_of_leaf[node + 1] = node as i64;
        feature[node] = rng.below(FEATURES);
        threshold[node] = rng.normal() * 2.0;
        decision[node] = (rng.below(3) as i64) << 2 | (rng.below(2) as i64) << 1;
    }
    let leaves: Vec<f64> = (0..LEAVES).map(|_| rng.normal() * 0.05).collect();
    let _ = writeln!(out, "Tree={index}\nnum_leaves={LEAVES}\nnum_cat=0");
    let _ = writeln!(out, "split_feature={}", join(&feature));
    let _ = writeln!(out, "threshold={}", join(&threshold));
    let _ = writeln!(out, "decision_type={}", join(&decision));
    let _ = writeln!(out, "left_child={}", join(&left));
    let _ = writeln!(out, "right_child={}", join(&right));
    let _ = writeln!(out, "leaf_value={}", join(&leaves));
    let _ = writeln!(out, "is_linear=0\nshrinkage=0.05\n");
}

fn synthetic_model() -> String {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let names: Vec<String> = (0..FEATURES).map(|i| format!("f{i}")).collect();
    let mut s = format!(
        "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\n\
         max_feature_idx={}\nobjective=binary sigmoid:1\nfeature_names={}\n\n",
        FEATURES - 1,
        names.join(" ")
    );
    for t in 0..TREES {
        tree(&mut rng, &mut s, t);
    }
    s.push_str("end of trees\n");
    s
}

fn rows(n: usize, nf: usize) -> Vec<f32> {
    let mut rng = Rng(42);
    (0..n * nf)
        .map(|_| {
            let u = rng.unit();
            if u < 0.1 {
                f32::NAN
            } else if u < 0.3 {
                0.0
            } else {
                (rng.normal() * 3.0) as f32
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let text = match std::env::var("GBDT_MODEL") {
        Ok(path) => std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")),
        Err(_) => synthetic_model(),
    };
    let model = Gbdt::from_text(&text).unwrap_or_else(|e| panic!("{e}"));
    let nf = model.n_features();
    let mut g = c.benchmark_group("gbdt_predict");
    for batch in [1usize, 64, 1024] {
        let x = rows(batch, nf);
        let mut out = vec![0f64; batch];
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &x, |b, x| {
            b.iter(|| model.predict(x, &mut out).unwrap_or_else(|e| panic!("{e}")))
        });
    }
    g.finish();
    c.bench_function("gbdt_parse", |b| {
        b.iter(|| Gbdt::from_text(&text).unwrap_or_else(|e| panic!("{e}")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
