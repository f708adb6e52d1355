//! Criterion bench of `DriftMonitor::observe` at batch 1, 64 and 1024 over a
//! fraud-like spec: 35 raw inputs, 25 numeric with 9 edges (11 bins) and 10
//! categorical with 10 values (12 bins). Throughput is in elements = rows × fields,
//! so criterion's "time per element" is the cost of one observed value.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use riskserve_core::column::StrColumn;
use riskserve_core::drift::{
    Bins, DriftConfig, DriftMonitor, FieldReference, Reference, SCORE_FIELD,
};
use riskserve_core::{Column, FeatureSpec};

const FLOATS: usize = 18;
const INTS: usize = 7;
const CATEGORICALS: usize = 10;
const VALUES: usize = 10;

fn field(name: String, bins: Bins) -> FieldReference {
    let n = bins.len();
    FieldReference {
        name,
        bins,
        shares: vec![1.0 / n as f64; n],
    }
}

fn monitor() -> Option<DriftMonitor> {
    let edges: Vec<f64> = (1..=9).map(|i| f64::from(i) * 10.0).collect();
    let mut inputs = Vec::new();
    let mut fields = Vec::new();
    for i in 0..FLOATS {
        inputs.push(serde_json::json!({"name": format!("f{i}"), "dtype": "float"}));
        fields.push(field(
            format!("f{i}"),
            Bins::Numeric {
                edges: edges.clone(),
            },
        ));
    }
    for i in 0..INTS {
        inputs.push(serde_json::json!({"name": format!("i{i}"), "dtype": "int"}));
        fields.push(field(
            format!("i{i}"),
            Bins::Numeric {
                edges: edges.clone(),
            },
        ));
    }
    for i in 0..CATEGORICALS {
        inputs.push(serde_json::json!({"name": format!("c{i}"), "dtype": "string"}));
        let values = (0..VALUES).map(|v| format!("value_{i}_{v}")).collect();
        fields.push(field(format!("c{i}"), Bins::Categorical { values }));
    }
    let reference = Reference {
        rule: "bench".into(),
        rows: 1,
        score_rows: 1,
        fields,
        score: field(
            SCORE_FIELD.into(),
            Bins::Numeric {
                edges: vec![0.1, 0.5, 0.9],
            },
        ),
    };
    let spec = serde_json::json!({
        "format": "riskserve.features/v1",
        "inputs": inputs,
        "transforms": [],
        "reference": serde_json::to_value(reference).ok()?,
    });
    let spec = FeatureSpec::from_json(&spec.to_string()).ok()?;
    DriftMonitor::new(&spec, DriftConfig::default()).ok()
}

/// Deterministic pseudo-random numbers (xorshift), no RNG dependency.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn bench(c: &mut Criterion) {
    let Some(mon) = monitor() else {
        return;
    };
    let fields = FLOATS + INTS + CATEGORICALS;
    let now = Some(1_700_000_000);
    let mut g = c.benchmark_group("drift_observe");
    for rows in [1usize, 64, 1024] {
        let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ rows as u64;
        let floats: Vec<Vec<f64>> = (0..FLOATS)
            .map(|_| {
                (0..rows)
                    .map(|_| match xorshift(&mut s) % 100 {
                        0 => f64::NAN,
                        r => (xorshift(&mut s) % 11_000) as f64 / 100.0 + r as f64 * 1e-3,
                    })
                    .collect()
            })
            .collect();
        let ints: Vec<Vec<i64>> = (0..INTS)
            .map(|_| (0..rows).map(|_| (xorshift(&mut s) % 110) as i64).collect())
            .collect();
        // Mostly known values, ~5 % unseen and ~3 % missing.
        let mut data = Vec::new();
        let spans: Vec<Vec<Option<(usize, usize)>>> = (0..CATEGORICALS)
            .map(|i| {
                (0..rows)
                    .map(|_| {
                        let r = xorshift(&mut s) % 100;
                        let text = match r {
                            0..=2 => return None,
                            3..=7 => format!("other_{r}"),
                            _ => format!("value_{i}_{}", r % VALUES as u64),
                        };
                        let start = data.len();
                        data.extend_from_slice(text.as_bytes());
                        Some((start, data.len()))
                    })
                    .collect()
            })
            .collect();
        let mut cols: Vec<Column<'_>> = Vec::with_capacity(fields);
        cols.extend(floats.iter().map(|v| Column::F64(v)));
        cols.extend(ints.iter().map(|v| Column::I64(v)));
        cols.extend(spans.iter().map(|sp| {
            Column::Str(StrColumn {
                data: &data,
                spans: sp,
            })
        }));
        g.throughput(Throughput::Elements((rows * fields) as u64));
        g.bench_with_input(BenchmarkId::from_parameter(rows), &rows, |b, &rows| {
            b.iter(|| mon.observe(&cols, rows, &[], now))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
