//! Criterion benches for the feature pipeline at batch 1, 64 and 1024.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use riskserve_core::column::StrColumn;
use riskserve_core::{Column, FeaturePipeline};

const SPEC: &str = r#"{
  "format": "riskserve.features/v1",
  "inputs": [
    {"name": "amount", "dtype": "float"},
    {"name": "avg", "dtype": "float"},
    {"name": "hour", "dtype": "int"},
    {"name": "channel", "dtype": "string"},
    {"name": "country", "dtype": "string"}
  ],
  "transforms": [
    {"type": "numeric", "input": "amount", "missing": {"value": 20.0, "indicator": true},
     "steps": [{"op": "log1p"}, {"op": "clip", "min": 0.0, "max": 12.0},
               {"op": "standardize", "mean": 3.5, "std": 1.2}]},
    {"type": "numeric", "input": "amount", "name": "amount_bucket", "missing": {"value": 20.0},
     "steps": [{"op": "bucketize", "edges": [5.0, 10.0, 20.0, 50.0, 100.0, 500.0]}]},
    {"type": "ratio", "numerator": "amount", "denominator": "avg", "name": "amount_ratio",
     "missing": {"value": 1.0}},
    {"type": "cyclical", "input": "hour", "period": 24.0, "missing": {"value": 12.0}},
    {"type": "one_hot", "input": "channel", "vocabulary": ["pos", "ecommerce", "moto", "atm"]},
    {"type": "ordinal", "input": "country", "vocabulary": ["US", "GB", "DE", "FR", "NL"]},
    {"type": "hash", "input": "country", "name": "country_hash", "buckets": 64}
  ]
}"#;

fn bench(c: &mut Criterion) {
    let Ok(p) = FeaturePipeline::from_json(SPEC) else {
        return;
    };
    let mut g = c.benchmark_group("transform");
    for rows in [1usize, 64, 1024] {
        let amount: Vec<f64> = (0..rows).map(|i| (i % 97) as f64 * 3.7).collect();
        let avg: Vec<f64> = (0..rows).map(|i| 10.0 + (i % 13) as f64).collect();
        let hour: Vec<i64> = (0..rows).map(|i| (i % 24) as i64).collect();
        let chan = ["pos", "ecommerce", "moto", "atm", "other"];
        let ctry = ["US", "GB", "DE", "FR", "NL", "BR"];
        let mut data = Vec::new();
        let mut cs = Vec::new();
        let mut ks = Vec::new();
        for i in 0..rows {
            let s = data.len();
            data.extend_from_slice(chan[i % chan.len()].as_bytes());
            cs.push(Some((s, data.len())));
        }
        for i in 0..rows {
            let s = data.len();
            data.extend_from_slice(ctry[i % ctry.len()].as_bytes());
            ks.push(Some((s, data.len())));
        }
        let cols = [
            ("amount", Column::F64(&amount)),
            ("avg", Column::F64(&avg)),
            ("hour", Column::I64(&hour)),
            (
                "channel",
                Column::Str(StrColumn {
                    data: &data,
                    spans: &cs,
                }),
            ),
            (
                "country",
                Column::Str(StrColumn {
                    data: &data,
                    spans: &ks,
                }),
            ),
        ];
        g.throughput(Throughput::Elements(rows as u64));
        g.bench_with_input(BenchmarkId::from_parameter(rows), &rows, |b, _| {
            b.iter(|| p.transform(&cols))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
