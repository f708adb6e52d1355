//! Criterion benches for the native path's request readers on a 35-input request
//! (the fraud spec's mix of FP64, INT64, BOOL and BYTES inputs) at 1 and 64 rows:
//! `peek_request` (request-level fields only), `decode_plain` (validated columns)
//! and, for comparison, `parse_infer_request` (the owned reader behind the codec).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use riskserve_core::fastpath::{decode_plain, peek_request, Limits};
use riskserve_core::wire::parse_infer_request;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field(no: u64, body: &[u8], out: &mut Vec<u8>) {
    varint((no << 3) | 2, out);
    varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// 35 inputs as the fraud spec declares them: 7 FP64, 11 BYTES, 8 BOOL, 9 INT64.
fn request(rows: usize) -> Vec<u8> {
    let kinds = [("FP64", 7), ("BYTES", 11), ("BOOL", 8), ("INT64", 9)];
    let mut req = Vec::new();
    field(1, b"fraud", &mut req);
    field(3, b"0190f3a2-7c1e-7b4d-9a51-3c2f0e8d1a77", &mut req);
    let mut raw = Vec::new();
    let mut k = 0;
    for (datatype, n) in kinds {
        for _ in 0..n {
            let mut inp = Vec::new();
            field(1, format!("input_name_{k:02}").as_bytes(), &mut inp);
            field(2, datatype.as_bytes(), &mut inp);
            let mut shape = Vec::new();
            varint(rows as u64, &mut shape);
            field(3, &shape, &mut inp);
            field(5, &inp, &mut req);
            let body: Vec<u8> = match datatype {
                "FP64" => (0..rows)
                    .flat_map(|r| (r as f64 * 1.5).to_le_bytes())
                    .collect(),
                "INT64" => (0..rows).flat_map(|r| (r as i64).to_le_bytes()).collect(),
                "BOOL" => (0..rows).map(|r| (r % 2) as u8).collect(),
                _ => (0..rows)
                    .flat_map(|_| {
                        let mut e = 9u32.to_le_bytes().to_vec();
                        e.extend_from_slice(b"ecommerce");
                        e
                    })
                    .collect(),
            };
            raw.push(body);
            k += 1;
        }
    }
    for r in &raw {
        field(7, r, &mut req);
    }
    req
}

fn bench(c: &mut Criterion) {
    let limits = Limits {
        max_parameters: 64,
        max_inputs: 1024,
        max_name_bytes: 256,
        max_routing_key_bytes: 256,
        max_parameter_bytes: 1024,
        max_rows: 10_000,
    };
    let mut g = c.benchmark_group("request");
    for rows in [1usize, 64] {
        let data = request(rows);
        g.bench_with_input(BenchmarkId::new("peek_request", rows), &data, |b, d| {
            b.iter(|| peek_request(d, 256, 256, 64).map(|p| p.id.len()))
        });
        g.bench_with_input(BenchmarkId::new("decode_plain", rows), &data, |b, d| {
            b.iter(|| decode_plain(d, &limits).map(|r| r.rows).ok())
        });
        g.bench_with_input(
            BenchmarkId::new("parse_infer_request", rows),
            &data,
            |b, d| b.iter(|| parse_infer_request(d).map(|w| w.n_inputs).ok()),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
