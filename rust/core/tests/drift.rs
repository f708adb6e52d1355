#![allow(clippy::unwrap_used)]
//! Property and behaviour tests of the drift monitor: exact per-bin counts against
//! a naive reference, the missing bin, merge = addition, PSI, the sliding window
//! under an injected clock (including one that goes backwards), and concurrent
//! observers that must not lose a single count.

use std::sync::atomic::{AtomicBool, Ordering};

use proptest::prelude::*;
use riskserve_core::column::StrColumn;
use riskserve_core::drift::{
    self, Bins, DriftConfig, DriftMonitor, FieldReference, Reference, Window, SCORE_FIELD,
};
use riskserve_core::{Column, FeatureSpec};

/// Categories the generated vocabularies and values are drawn from.
const POOL: [&str; 6] = ["pos", "ecommerce", "moto", "atm", "contactless", "é"];

/// One raw row: float `x`, int `n`, bool `b`, categorical `c` (None = null).
type Row = (f64, i64, bool, Option<String>);

/// Bins of the four inputs and the score.
#[derive(Debug, Clone)]
struct Layout {
    x: Vec<f64>,
    n: Vec<f64>,
    b: Vec<f64>,
    vocab: Vec<String>,
    score: Vec<f64>,
}

impl Layout {
    fn simple() -> Self {
        Self {
            x: vec![-1.0, 0.0, 2.5, 10.0],
            n: vec![0.0, 5.0, 20.0],
            b: vec![1.0],
            vocab: vec!["pos".into(), "ecommerce".into(), "atm".into()],
            score: vec![0.1, 0.5, 0.9],
        }
    }

    fn bins(&self) -> [Bins; 5] {
        let num = |edges: &Vec<f64>| Bins::Numeric {
            edges: edges.clone(),
        };
        [
            num(&self.x),
            num(&self.n),
            num(&self.b),
            Bins::Categorical {
                values: self.vocab.clone(),
            },
            num(&self.score),
        ]
    }

    fn total_bins(&self) -> usize {
        self.bins().iter().map(Bins::len).sum()
    }

    /// A spec whose reference has these bins and uniform shares. Built from a
    /// `serde_json::Value`, so the edges are the exact f64s (no text round trip).
    fn spec(&self) -> FeatureSpec {
        let [x, n, b, c, s] = self.bins();
        let field = |name: &str, bins: Bins| {
            let k = bins.len();
            FieldReference {
                name: name.into(),
                bins,
                shares: vec![1.0 / k as f64; k],
            }
        };
        let reference = Reference {
            rule: drift::BIN_RULE.into(),
            rows: 1,
            score_rows: 1,
            fields: vec![field("x", x), field("n", n), field("b", b), field("c", c)],
            score: field(SCORE_FIELD, s),
        };
        serde_json::from_value(serde_json::json!({
            "format": "riskserve.features/v1",
            "inputs": [
                {"name": "x", "dtype": "float"},
                {"name": "n", "dtype": "int"},
                {"name": "b", "dtype": "bool"},
                {"name": "c", "dtype": "string"}
            ],
            "transforms": [],
            "reference": serde_json::to_value(reference).unwrap(),
        }))
        .unwrap()
    }

    fn monitor(&self, slots: usize, slot_seconds: u64) -> DriftMonitor {
        DriftMonitor::new(
            &self.spec(),
            DriftConfig {
                slots,
                slot_seconds,
            },
        )
        .unwrap()
    }

    /// Expected flat counts of a batch, binned naively (hand-written binary
    /// search, cross-checked by a linear count).
    fn expected(&self, batch: &Batch) -> Vec<u64> {
        let mut out = vec![0u64; self.total_bins()];
        let offs = {
            let lens: Vec<usize> = self.bins().iter().map(Bins::len).collect();
            let mut o = vec![0; lens.len()];
            for i in 1..lens.len() {
                o[i] = o[i - 1] + lens[i - 1];
            }
            o
        };
        for r in 0..batch.rows() {
            out[offs[0] + naive_numeric(&self.x, batch.x[r])] += 1;
            out[offs[1] + naive_numeric(&self.n, batch.n[r] as f64)] += 1;
            out[offs[2] + naive_numeric(&self.b, f64::from(batch.b[r]))] += 1;
            out[offs[3] + naive_categorical(&self.vocab, batch.c[r].as_deref())] += 1;
        }
        for &s in &batch.scores {
            out[offs[4] + naive_numeric(&self.score, s)] += 1;
        }
        out
    }
}

/// Number of edges ≤ v (binary search), `edges.len() + 1` for NaN/±inf.
fn naive_numeric(edges: &[f64], v: f64) -> usize {
    if !v.is_finite() {
        return edges.len() + 1;
    }
    let (mut lo, mut hi) = (0usize, edges.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if edges[mid] <= v {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    assert_eq!(lo, edges.iter().filter(|&&e| e <= v).count());
    lo
}

/// Vocabulary index, then `__unseen__`, then `__missing__` (null or "").
fn naive_categorical(vocab: &[String], v: Option<&str>) -> usize {
    match v {
        None | Some("") => vocab.len() + 1,
        Some(s) => vocab.iter().position(|x| x == s).unwrap_or(vocab.len()),
    }
}

/// Owned columns of a batch.
#[derive(Debug, Clone, Default)]
struct Batch {
    x: Vec<f64>,
    n: Vec<i64>,
    b: Vec<u8>,
    c: Vec<Option<String>>,
    data: Vec<u8>,
    spans: Vec<Option<(usize, usize)>>,
    scores: Vec<f64>,
}

impl Batch {
    fn new(rows: &[Row], scores: &[f64]) -> Self {
        let mut b = Batch::default();
        for (x, n, flag, c) in rows {
            b.x.push(*x);
            b.n.push(*n);
            b.b.push(u8::from(*flag));
            b.c.push(c.clone());
            b.spans.push(c.as_ref().map(|s| {
                let start = b.data.len();
                b.data.extend_from_slice(s.as_bytes());
                (start, b.data.len())
            }));
        }
        b.scores = scores.to_vec();
        b
    }

    fn rows(&self) -> usize {
        self.x.len()
    }

    fn cols(&self) -> Vec<Column<'_>> {
        vec![
            Column::F64(&self.x),
            Column::I64(&self.n),
            Column::Bool(&self.b),
            Column::Str(StrColumn {
                data: &self.data,
                spans: &self.spans,
            }),
        ]
    }

    fn observe(&self, mon: &DriftMonitor, now: u64) {
        mon.observe(&self.cols(), self.rows(), &self.scores, Some(now));
    }
}

fn add(a: &mut [u64], b: &[u64]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// Per field (score last): the sum of its bins.
fn field_totals(mon: &DriftMonitor, counts: &[u64]) -> Vec<u64> {
    let offs = mon.offsets();
    (0..offs.len())
        .map(|i| {
            let end = offs.get(i + 1).copied().unwrap_or(counts.len());
            counts[offs[i]..end].iter().sum()
        })
        .collect()
}

/// The next float above `v` (finite, ≥ 0 or < 0), without `f64::next_up` (MSRV).
fn next_up(v: f64) -> f64 {
    if v == 0.0 {
        f64::from_bits(1)
    } else if v > 0.0 {
        f64::from_bits(v.to_bits() + 1)
    } else {
        f64::from_bits(v.to_bits() - 1)
    }
}

fn next_down(v: f64) -> f64 {
    -next_up(-v)
}

// ---------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------

fn sorted_edges(values: Vec<f64>) -> Vec<f64> {
    let mut v = values;
    v.sort_by(f64::total_cmp);
    v.dedup();
    v
}

fn edges(range: std::ops::Range<f64>, max: usize) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(range, 0..max).prop_map(sorted_edges)
}

/// A value that is often exactly an edge or its neighbour, sometimes NaN/±inf.
fn value(edges: &[f64], range: std::ops::Range<f64>) -> BoxedStrategy<f64> {
    let mut options = vec![
        (3, range.boxed()),
        (1, Just(f64::NAN).boxed()),
        (1, Just(f64::INFINITY).boxed()),
        (1, Just(f64::NEG_INFINITY).boxed()),
        (1, Just(0.0).boxed()),
        (1, Just(-0.0).boxed()),
    ];
    if !edges.is_empty() {
        let exact = edges.to_vec();
        let near: Vec<f64> = edges
            .iter()
            .flat_map(|&e| [next_up(e), next_down(e)])
            .collect();
        options.push((3, prop::sample::select(exact).boxed()));
        options.push((2, prop::sample::select(near).boxed()));
    }
    prop::strategy::Union::new_weighted(options).boxed()
}

fn category() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        6 => prop::sample::select(POOL.to_vec()).prop_map(|s| Some(s.to_owned())),
        1 => Just(None),
        1 => Just(Some(String::new())),
        1 => "[a-z]{1,4}".prop_map(Some),
    ]
}

fn layout() -> impl Strategy<Value = Layout> {
    (
        edges(-1000.0..1000.0, 40),
        prop::collection::vec(-60i32..60, 0..10)
            .prop_map(|v| sorted_edges(v.into_iter().map(|i| f64::from(i) / 2.0).collect())),
        prop::sample::select(vec![vec![], vec![1.0], vec![0.0, 1.0], vec![0.5]]),
        prop::sample::subsequence(POOL.to_vec(), 0..=POOL.len())
            .prop_map(|v| v.into_iter().map(str::to_owned).collect()),
        edges(0.0..1.0, 10),
    )
        .prop_map(|(x, n, b, vocab, score)| Layout {
            x,
            n,
            b,
            vocab,
            score,
        })
}

fn rows(layout: &Layout, max: usize) -> impl Strategy<Value = (Vec<Row>, Vec<f64>)> {
    let row = (
        value(&layout.x, -2000.0..2000.0),
        -70i64..70,
        any::<bool>(),
        category(),
    );
    (
        prop::collection::vec(row, 0..max),
        prop::collection::vec(value(&layout.score, 0.0..1.0), 0..max),
    )
}

fn case(max: usize) -> impl Strategy<Value = (Layout, Vec<Row>, Vec<f64>)> {
    layout().prop_flat_map(move |l| {
        let r = rows(&l, max);
        (Just(l), r).prop_map(|(l, (rows, scores))| (l, rows, scores))
    })
}

/// A batch observed at a time offset: (seconds after NOW, rows, scores).
type Timed = (u64, Vec<Row>, Vec<f64>);

/// A layout and several timestamped batches for the window tests.
fn timed_case() -> impl Strategy<Value = (Layout, Vec<Timed>)> {
    layout().prop_flat_map(|l| {
        let batch = (0u64..400, rows(&l, 8)).prop_map(|(t, (r, s))| (t, r, s));
        (Just(l), prop::collection::vec(batch, 1..24))
    })
}

// ---------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------

const NOW: u64 = 1_700_000_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Cumulative and sliding counts equal the naive binning exactly; each field's
    /// bins add up to the rows observed (the score's to the scores); NaN/±inf (and
    /// null/"" for the categorical) land in the last bin.
    #[test]
    fn counts_match_naive_reference((l, rows, scores) in case(64)) {
        let mon = l.monitor(60, 60);
        let batch = Batch::new(&rows, &scores);
        batch.observe(&mon, NOW);
        let want = l.expected(&batch);
        let got = mon.counts(Window::Cumulative, None);
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(mon.counts(Window::Sliding, Some(NOW)), want);

        let n = rows.len() as u64;
        prop_assert_eq!(field_totals(&mon, &got), vec![n, n, n, n, scores.len() as u64]);

        let offs = mon.offsets();
        let non_finite = rows.iter().filter(|r| !r.0.is_finite()).count() as u64;
        prop_assert_eq!(got[offs[1] - 1], non_finite, "x: missing bin");
        let missing_c = rows.iter().filter(|r| r.3.as_deref().unwrap_or("").is_empty()).count();
        prop_assert_eq!(got[offs[4] - 1], missing_c as u64, "c: __missing__ bin");
        let bad_scores = scores.iter().filter(|s| !s.is_finite()).count() as u64;
        prop_assert_eq!(got[got.len() - 1], bad_scores, "score: missing bin");
        // int and bool columns are never missing
        prop_assert_eq!(got[offs[2] - 1], 0);
        prop_assert_eq!(got[offs[3] - 1], 0);
    }

    /// Observing A then B counts exactly what observing A ∪ B at once does, and
    /// that is the sum of the two batches' counts.
    #[test]
    fn merge_is_addition(
        (l, a, sa, b, sb) in layout().prop_flat_map(|l| {
            (Just(l.clone()), rows(&l, 40), rows(&l, 40))
                .prop_map(|(l, (a, sa), (b, sb))| (l, a, sa, b, sb))
        })
    ) {
        let (ba, bb) = (Batch::new(&a, &sa), Batch::new(&b, &sb));
        let both = Batch::new(
            &a.iter().chain(&b).cloned().collect::<Vec<_>>(),
            &sa.iter().chain(&sb).copied().collect::<Vec<_>>(),
        );
        let split = l.monitor(4, 10);
        ba.observe(&split, NOW);
        bb.observe(&split, NOW + 5);
        let whole = l.monitor(4, 10);
        both.observe(&whole, NOW);
        let mut sum = l.expected(&ba);
        add(&mut sum, &l.expected(&bb));
        for w in [Window::Cumulative, Window::Sliding] {
            prop_assert_eq!(split.counts(w, Some(NOW + 5)), whole.counts(w, Some(NOW + 5)));
            prop_assert_eq!(split.counts(w, Some(NOW + 5)), sum.clone());
        }
    }

    /// PSI is finite and ≥ 0 for any counts and any reference shares.
    #[test]
    fn psi_is_non_negative(
        pairs in prop::collection::vec((0u64..10_000, 0.0f64..1.0), 1..30)
    ) {
        let counts: Vec<u64> = pairs.iter().map(|p| p.0).collect();
        let raw: f64 = pairs.iter().map(|p| p.1).sum();
        let shares: Vec<f64> = pairs.iter().map(|p| if raw > 0.0 { p.1 / raw } else { 0.0 }).collect();
        let v = drift::psi(&counts, &shares);
        prop_assert!(v.is_finite() && v >= 0.0, "psi {v}");
    }

    /// PSI between two count vectors is PSI against the expected side's shares,
    /// 0 against itself (scaled), and 0 when the expected side is empty.
    #[test]
    fn psi_between_counts(
        pairs in prop::collection::vec((0u64..10_000, 0u64..10_000), 1..30),
        scale in 1u64..20,
    ) {
        let a: Vec<u64> = pairs.iter().map(|p| p.0).collect();
        let e: Vec<u64> = pairs.iter().map(|p| p.1).collect();
        let total: u64 = e.iter().sum();
        let got = drift::psi_between(&a, &e);
        if total == 0 {
            prop_assert_eq!(got, 0.0);
        } else {
            let shares: Vec<f64> = e.iter().map(|&c| c as f64 / total as f64).collect();
            prop_assert_eq!(got, drift::psi(&a, &shares));
            let scaled: Vec<u64> = e.iter().map(|&c| c * scale).collect();
            prop_assert!(drift::psi_between(&scaled, &e).abs() < 1e-9);
        }
    }

    /// Counts proportional to the reference shares have PSI ≈ 0.
    #[test]
    fn psi_of_reference_shares_is_zero(
        counts in prop::collection::vec(0u64..100_000, 1..30),
        scale in 1u64..50,
    ) {
        let total: u64 = counts.iter().sum();
        prop_assume!(total > 0);
        let shares: Vec<f64> = counts.iter().map(|&c| c as f64 / total as f64).collect();
        let scaled: Vec<u64> = counts.iter().map(|c| c * scale).collect();
        let v = drift::psi(&scaled, &shares);
        prop_assert!((0.0..1e-12).contains(&v), "psi {v}");
    }

    /// With an injected clock, in any order (the clock may go backwards), the
    /// sliding window at any time at or after the latest observation holds exactly
    /// the batches of the last `slots` sub-windows; the cumulative window holds
    /// everything.
    #[test]
    fn sliding_window_with_injected_clock(
        (l, batches) in timed_case(),
        slots in 1usize..6,
        slot_seconds in 1u64..20,
        later in 0u64..200,
    ) {
        let mon = l.monitor(slots, slot_seconds);
        let mut all = vec![0u64; l.total_bins()];
        let mut latest = 0;
        let batches: Vec<(u64, Batch)> = batches
            .iter()
            .map(|(t, r, s)| (NOW + t, Batch::new(r, s)))
            .collect();
        for (t, b) in &batches {
            b.observe(&mon, *t);
            add(&mut all, &l.expected(b));
            latest = latest.max(*t);
        }
        prop_assert_eq!(mon.counts(Window::Cumulative, None), all);
        for q in [latest, latest + later, latest + slots as u64 * slot_seconds] {
            let mut want = vec![0u64; l.total_bins()];
            for (t, b) in &batches {
                if q / slot_seconds - t / slot_seconds < slots as u64 {
                    add(&mut want, &l.expected(b));
                }
            }
            prop_assert_eq!(mon.counts(Window::Sliding, Some(q)), want, "q = {}", q);
        }
    }
}

// ---------------------------------------------------------------------------------
// Behaviour
// ---------------------------------------------------------------------------------

fn simple_batch(k: usize, seed: u64) -> Batch {
    let rows: Vec<Row> = (0..k)
        .map(|i| {
            let j = i as u64 + seed * 7919;
            (
                match j % 11 {
                    0 => f64::NAN,
                    r => r as f64 * 1.5 - 3.0,
                },
                (j % 30) as i64 - 5,
                j % 3 == 0,
                match j % 6 {
                    0 => None,
                    1 => Some(String::new()),
                    2 => Some("moto".into()),
                    r => Some(POOL[r as usize % 3].into()),
                },
            )
        })
        .collect();
    let scores: Vec<f64> = (0..k).map(|i| (i % 10) as f64 / 10.0).collect();
    Batch::new(&rows, &scores)
}

fn sliding_rows(mon: &DriftMonitor, now: u64) -> u64 {
    field_totals(mon, &mon.counts(Window::Sliding, Some(now)))[0]
}

#[test]
fn window_expiry_with_explicit_clock() {
    let l = Layout::simple();
    let mon = l.monitor(3, 10); // 30 s window
    let (a, b, c) = (simple_batch(5, 1), simple_batch(7, 2), simple_batch(11, 3));
    a.observe(&mon, 1000); // slot 100
    b.observe(&mon, 1015); // slot 101
    c.observe(&mon, 1029); // slot 102
    assert_eq!(sliding_rows(&mon, 1029), 23);
    assert_eq!(sliding_rows(&mon, 1030), 18); // slot 103: a (slot 100) dropped out
    assert_eq!(sliding_rows(&mon, 1040), 11);
    assert_eq!(sliding_rows(&mon, 1050), 0);
    assert_eq!(sliding_rows(&mon, 5000), 0);
    // A query for an earlier time does not see later sub-windows.
    assert_eq!(sliding_rows(&mon, 1009), 5);
    assert_eq!(sliding_rows(&mon, 1010), 12);
    let cum = mon.counts(Window::Cumulative, None);
    assert_eq!(field_totals(&mon, &cum), vec![23, 23, 23, 23, 23]);

    // Later: a's ring position is reused (and reset) for a new sub-window.
    let d = simple_batch(4, 4);
    d.observe(&mon, 1060); // slot 106, position 1 like a (slot 100)
    assert_eq!(sliding_rows(&mon, 1060), 4);
    let mut want = l.expected(&d);
    assert_eq!(mon.counts(Window::Sliding, Some(1060)), want);

    // The clock goes backwards past the ring: counted cumulatively only.
    let e = simple_batch(9, 5);
    e.observe(&mon, 1030); // slot 103, position 1 holds slot 106 > 103
    assert_eq!(mon.counts(Window::Sliding, Some(1060)), want);
    // Backwards but inside the window: still counted in it.
    let f = simple_batch(3, 6);
    f.observe(&mon, 1045); // slot 104, position 2 held b's 101 < 104: reset, counted
    add(&mut want, &l.expected(&f));
    assert_eq!(mon.counts(Window::Sliding, Some(1060)), want);
    assert_eq!(sliding_rows(&mon, 1061), 7);
    assert_eq!(sliding_rows(&mon, 1070), 4); // slot 107: oldest 105, f (104) gone
    assert_eq!(sliding_rows(&mon, 1080), 4); // slot 108: oldest 106, d still in
    assert_eq!(sliding_rows(&mon, 1090), 0);

    let cum = mon.counts(Window::Cumulative, None);
    assert_eq!(field_totals(&mon, &cum), vec![39, 39, 39, 39, 39]);
    let mut all = vec![0u64; l.total_bins()];
    for batch in [&a, &b, &c, &d, &e, &f] {
        add(&mut all, &l.expected(batch));
    }
    assert_eq!(cum, all);
}

#[test]
fn psi_needs_the_minimum_count_and_is_zero_on_the_reference_data() {
    let l = Layout::simple();
    let spec = l.spec();
    let batch = simple_batch(2_000, 9);
    let names = ["x", "n", "b", "c"];
    let named: Vec<(&str, Column<'_>)> = names.iter().copied().zip(batch.cols()).collect();
    let reference = drift::fit_reference(&spec, &named, &batch.scores, 10, 50).unwrap();
    let mut fitted = spec.clone();
    fitted.reference = Some(serde_json::to_value(&reference).unwrap());
    let mon = DriftMonitor::new(&fitted, DriftConfig::default()).unwrap();
    let n_fields = names.len() + 1;
    for i in 0..n_fields {
        let bins = mon.fields().nth(i).unwrap().bins.len() as u64;
        assert_eq!(mon.min_count(i), (20 * bins).max(200));
    }

    // Below the minimum: no PSI.
    let small = simple_batch(150, 9);
    small.observe(&mon, NOW);
    assert!(mon
        .psi(Window::Cumulative, None)
        .iter()
        .all(|&(n, p)| n == 150 && p.is_none()));

    // The reference data itself: PSI ≈ 0 on every field.
    let mon = DriftMonitor::new(&fitted, DriftConfig::default()).unwrap();
    batch.observe(&mon, NOW);
    for (i, (n, p)) in mon.psi(Window::Cumulative, None).into_iter().enumerate() {
        assert_eq!(n, 2_000);
        let p = p.unwrap();
        assert!((0.0..1e-12).contains(&p), "field {i}: psi {p}");
    }
    // Shifting x shifts its PSI and nothing else.
    let mut shifted = batch.clone();
    for v in &mut shifted.x {
        *v += 100.0;
    }
    let mon = DriftMonitor::new(&fitted, DriftConfig::default()).unwrap();
    shifted.observe(&mon, NOW);
    let psi = mon.psi(Window::Sliding, Some(NOW));
    assert!(psi[0].1.unwrap() > 1.0, "{psi:?}");
    assert!(psi[1..].iter().all(|p| p.1.unwrap() < 1e-12), "{psi:?}");

    // Two processes' counts summed give the PSI of their combined traffic.
    let a = DriftMonitor::new(&fitted, DriftConfig::default()).unwrap();
    let b = DriftMonitor::new(&fitted, DriftConfig::default()).unwrap();
    let both = DriftMonitor::new(&fitted, DriftConfig::default()).unwrap();
    batch.observe(&a, NOW);
    shifted.observe(&b, NOW);
    batch.observe(&both, NOW);
    shifted.observe(&both, NOW);
    let mut sum = a.counts(Window::Cumulative, None);
    add(&mut sum, &b.counts(Window::Cumulative, None));
    assert_eq!(sum.len(), a.total_bins());
    assert_eq!(a.psi_of(&sum).unwrap(), both.psi(Window::Cumulative, None));
    assert!(a.psi_of(&sum[1..]).is_none());
}

const THREADS: usize = 8;

/// Runs 8 writer threads (`calls` observe calls each, thread `t`'s call `k` at
/// time `time(k, t)`) and a scraping reader; returns the monitor and, per thread
/// and call, the expected counts and the time.
fn hammer(
    l: &Layout,
    slots: usize,
    slot_seconds: u64,
    calls: usize,
    time: impl Fn(usize, usize) -> u64 + Sync,
) -> (DriftMonitor, Vec<(u64, Vec<u64>)>) {
    let mon = l.monitor(slots, slot_seconds);
    let batches: Vec<Vec<Batch>> = (0..THREADS)
        .map(|t| {
            (0..8)
                .map(|k| simple_batch(1 + (k * 5) % 17, (t * 8 + k) as u64))
                .collect()
        })
        .collect();
    let pick = |t: usize, call: usize| (call * 3 + t) % 8;
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        // A reader that scrapes while the writers run: totals only ever grow.
        let reader = s.spawn(|| {
            let mut last = [0u64; 5];
            let mut reads = 0u64;
            while !done.load(Ordering::Acquire) {
                let totals = field_totals(&mon, &mon.counts(Window::Cumulative, None));
                for (prev, now) in last.iter_mut().zip(&totals) {
                    assert!(*now >= *prev);
                    *prev = *now;
                }
                let _ = mon.psi(Window::Sliding, None);
                reads += 1;
            }
            reads
        });
        let writers: Vec<_> = batches
            .iter()
            .enumerate()
            .map(|(t, own)| {
                let (mon, time) = (&mon, &time);
                s.spawn(move || {
                    for call in 0..calls {
                        own[pick(t, call)].observe(mon, time(call, t));
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Release);
        assert!(reader.join().unwrap() > 0);
    });
    let expected: Vec<Vec<Vec<u64>>> = batches
        .iter()
        .map(|own| own.iter().map(|b| l.expected(b)).collect())
        .collect();
    let log = (0..THREADS)
        .flat_map(|t| (0..calls).map(move |call| (t, call)))
        .map(|(t, call)| (time(call, t), expected[t][pick(t, call)].clone()))
        .collect();
    (mon, log)
}

#[test]
fn eight_threads_lose_no_count() {
    let l = Layout::simple();
    let (slots, slot_seconds) = (16usize, 2u64);
    let window = slots as u64 * slot_seconds;
    // Times sweep one whole window, so threads race to open ring slots as well
    // as to count into them; NOW is a multiple of the slot length, so every
    // observation is inside the window seen at NOW + window - 1.
    assert_eq!(NOW % slot_seconds, 0);
    let (mon, log) = hammer(&l, slots, slot_seconds, 3_000, |call, t| {
        NOW + (call as u64 * 3 + t as u64) % window
    });
    let mut want = vec![0u64; l.total_bins()];
    for (_, c) in &log {
        add(&mut want, c);
    }
    assert_eq!(mon.counts(Window::Cumulative, None), want);
    assert_eq!(mon.counts(Window::Sliding, Some(NOW + window - 1)), want);
    let totals = field_totals(&mon, &want);
    assert!(totals.iter().all(|&n| n == totals[0]));
}

#[test]
fn eight_threads_racing_ring_resets_lose_no_count() {
    // The clock moves on every few calls, so the ring is reset over and over
    // while other threads (each at its own pace, i.e. with a clock that is
    // behind or ahead) count into it.
    let l = Layout::simple();
    let (slots, slot_seconds) = (4usize, 1u64);
    let (mon, log) = hammer(&l, slots, slot_seconds, 6_000, |call, _| {
        NOW + call as u64 / 3
    });
    let latest = log.iter().map(|e| e.0).max().unwrap();
    let mut all = vec![0u64; l.total_bins()];
    let mut recent = vec![0u64; l.total_bins()];
    for (t, c) in &log {
        add(&mut all, c);
        if latest - t < slots as u64 * slot_seconds {
            add(&mut recent, c);
        }
    }
    assert_eq!(mon.counts(Window::Cumulative, None), all);
    assert_eq!(mon.counts(Window::Sliding, Some(latest)), recent);
}

#[test]
fn bad_references_are_refused() {
    let l = Layout::simple();
    let ok = l.spec();
    let config = DriftConfig::default();
    assert!(DriftMonitor::new(&ok, config).is_ok());
    for (slots, slot_seconds) in [(0, 60), (60, 0)] {
        let c = DriftConfig {
            slots,
            slot_seconds,
        };
        assert!(DriftMonitor::new(&ok, c).is_err());
    }
    let mut none = ok.clone();
    none.reference = None;
    assert!(DriftMonitor::new(&none, config).is_err());
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut spec = ok.clone();
        f(spec.reference.as_mut().unwrap());
        DriftMonitor::new(&spec, config).is_err()
    };
    assert!(edit(
        &|r| r["fields"][0]["edges"] = serde_json::json!([1.0, 1.0])
    ));
    assert!(edit(
        &|r| r["fields"][0]["edges"] = serde_json::json!([2.0, 1.0])
    ));
    assert!(edit(
        &|r| r["fields"][0]["shares"] = serde_json::json!([1.0])
    ));
    assert!(edit(
        &|r| r["fields"][1]["name"] = serde_json::json!("other")
    ));
    assert!(edit(&|r| {
        r["fields"].as_array_mut().unwrap().pop();
    }));
    assert!(edit(&|r| r["score"]["shares"] = serde_json::json!([])));
}

/// The reference is written to `features.json` as text and read back by the
/// server: its edges must come back bit for bit, or values equal to an edge are
/// binned differently at serving time than at fit time (and than numpy bins
/// them). Without serde_json's `float_roundtrip` feature about 1 in 10 17-digit
/// decimals came back one ulp off (e.g. 14.668000000000001 → 14.668, an `amount`
/// decile edge of the fraud spec on seed-0 data).
#[test]
fn reference_edges_survive_features_json() {
    let mut bad = Vec::new();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut edges = Vec::new();
    for _ in 0..2_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        edges.push((x >> 11) as f64 / (1u64 << 53) as f64 * 1000.0);
    }
    let l = Layout {
        x: sorted_edges(edges),
        ..Layout::simple()
    };
    let text = l.spec().to_json().unwrap();
    let mon = DriftMonitor::new(
        &FeatureSpec::from_json(&text).unwrap(),
        DriftConfig::default(),
    )
    .unwrap();
    let Bins::Numeric { edges: back } = &mon.reference().fields[0].bins else {
        panic!("x is numeric");
    };
    for (a, b) in l.x.iter().zip(back) {
        if a.to_bits() != b.to_bits() {
            bad.push((*a, *b));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} edges changed: {:?}",
        bad.len(),
        l.x.len(),
        &bad[..bad.len().min(5)]
    );
}
