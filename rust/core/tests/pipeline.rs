#![allow(clippy::unwrap_used)]
//! Behaviour and property tests of the feature pipeline and fitting.

use proptest::prelude::*;
use riskserve_core::column::StrColumn;
use riskserve_core::fit::fit;
use riskserve_core::{Column, Error, FeaturePipeline, FeatureSpec};

const TEMPLATE: &str = r#"{
  "format": "riskserve.features/v1",
  "inputs": [
    {"name": "amount", "dtype": "float"},
    {"name": "avg", "dtype": "float"},
    {"name": "hour", "dtype": "int"},
    {"name": "channel", "dtype": "string"}
  ],
  "transforms": [
    {"type": "numeric", "input": "amount", "missing": {"indicator": true},
     "steps": [{"op": "log1p"}, {"op": "clip", "min_quantile": 0.01, "max_quantile": 0.99},
               {"op": "standardize"}]},
    {"type": "numeric", "input": "amount", "name": "amount_bucket",
     "steps": [{"op": "bucketize", "quantiles": 4}]},
    {"type": "ratio", "numerator": "amount", "denominator": "avg", "name": "ratio"},
    {"type": "cyclical", "input": "hour", "period": 24.0},
    {"type": "one_hot", "input": "channel", "min_count": 2},
    {"type": "ordinal", "input": "channel", "name": "channel_ord"},
    {"type": "hash", "input": "channel", "name": "channel_hash", "buckets": 8, "seed": 7}
  ]
}"#;

fn strs(values: &[Option<&str>]) -> (Vec<u8>, Vec<Option<(usize, usize)>>) {
    let mut data = Vec::new();
    let mut spans = Vec::new();
    for v in values {
        match v {
            None => spans.push(None),
            Some(s) => {
                let start = data.len();
                data.extend_from_slice(s.as_bytes());
                spans.push(Some((start, data.len())));
            }
        }
    }
    (data, spans)
}

fn fitted() -> FeaturePipeline {
    let amount = [1.0, 10.0, 100.0, f64::NAN, 1000.0, 5.0, 50.0, 7.0];
    let avg = [1.0, 5.0, 50.0, 20.0, 0.0, 5.0, 25.0, 7.0];
    let hour = [0i64, 6, 12, 18, 23, 1, 2, 3];
    let (d, s) = strs(&[
        Some("pos"),
        Some("pos"),
        Some("web"),
        Some("web"),
        Some("atm"),
        None,
        Some(""),
        Some("pos"),
    ]);
    let cols = [
        ("amount", Column::F64(&amount)),
        ("avg", Column::F64(&avg)),
        ("hour", Column::I64(&hour)),
        (
            "channel",
            Column::Str(StrColumn {
                data: &d,
                spans: &s,
            }),
        ),
        ("is_fraud", Column::I64(&hour)), // extra training columns are ignored
    ];
    let spec = fit(&FeatureSpec::from_json(TEMPLATE).unwrap(), &cols).unwrap();
    FeaturePipeline::compile(spec).unwrap()
}

#[test]
fn fit_fills_statistics_and_names() {
    let p = fitted();
    let names = p.feature_names();
    assert_eq!(
        names,
        [
            "amount",
            "amount__missing",
            "amount_bucket",
            "ratio",
            "hour__sin",
            "hour__cos",
            "channel=pos",
            "channel=web",
            "channel=__unseen__",
            "channel=__missing__",
            "channel_ord",
            "channel_hash"
        ]
    );
    // atm was seen once, below min_count 2: not in the one-hot vocabulary.
    let spec = p.spec();
    let inp = spec.input("channel").unwrap();
    assert_eq!(
        inp.vocabulary.as_deref().unwrap(),
        ["pos", "web", "atm"].map(String::from)
    );
}

#[test]
fn unfitted_template_does_not_compile() {
    let err = FeaturePipeline::from_json(TEMPLATE).unwrap_err();
    assert!(
        matches!(err, Error::Spec(ref m) if m.contains("not fitted")),
        "{err}"
    );
}

#[test]
fn categorical_encodings() {
    let p = fitted();
    let (d, s) = strs(&[Some("web"), Some("mars"), None, Some("")]);
    let amount = [1.0; 4];
    let hour = [0i64; 4];
    let out = p
        .transform(&[
            ("amount", Column::F64(&amount)),
            ("avg", Column::F64(&amount)),
            ("hour", Column::I64(&hour)),
            (
                "channel",
                Column::Str(StrColumn {
                    data: &d,
                    spans: &s,
                }),
            ),
        ])
        .unwrap();
    let n = p.n_features();
    let row = |r: usize| &out[r * n..(r + 1) * n];
    assert_eq!(&row(0)[6..10], &[0.0, 1.0, 0.0, 0.0]);
    assert_eq!(&row(1)[6..10], &[0.0, 0.0, 1.0, 0.0]); // unseen
    assert_eq!(&row(2)[6..10], &[0.0, 0.0, 0.0, 1.0]); // null → missing
    assert_eq!(&row(3)[6..10], &[0.0, 0.0, 0.0, 1.0]); // "" → missing
                                                       // ordinal: vocab (pos, web, atm) → web = 1, unseen = 3, missing = 4
    assert_eq!([row(0)[10], row(1)[10], row(2)[10]], [1.0, 3.0, 4.0]);
    assert_eq!(row(2)[11], 8.0); // hash missing = buckets
}

#[test]
fn input_errors_name_the_field() {
    let p = fitted();
    let a = [1.0, 2.0];
    let short = [1.0];
    let h = [1i64, 2];
    let (d, s) = strs(&[Some("pos"), Some("x")]);
    let ch = Column::Str(StrColumn {
        data: &d,
        spans: &s,
    });
    let base = |extra: Option<(&'static str, Column<'static>)>| {
        let _ = extra;
    };
    base(None);
    let err = p
        .transform(&[
            ("amount", Column::F64(&a)),
            ("hour", Column::I64(&h)),
            ("channel", ch),
        ])
        .unwrap_err();
    assert_eq!(err, Error::MissingInput("avg".into()));
    let err = p
        .transform(&[
            ("amount", Column::F64(&a)),
            ("avg", Column::F64(&short)),
            ("hour", Column::I64(&h)),
            ("channel", ch),
        ])
        .unwrap_err();
    assert!(matches!(err, Error::LengthMismatch { ref name, .. } if name == "avg"));
    let err = p
        .transform(&[
            ("amount", Column::F64(&a)),
            ("avg", Column::F64(&a)),
            ("hour", Column::I64(&h)),
            ("channel", Column::F64(&a)),
        ])
        .unwrap_err();
    assert!(matches!(err, Error::DType { ref name, .. } if name == "channel"));
    let err = p
        .transform(&[
            ("amount", Column::F64(&a)),
            ("avg", Column::F64(&a)),
            ("hour", Column::I64(&h)),
            ("channel", ch),
            ("bogus", Column::F64(&a)),
        ])
        .unwrap_err();
    assert_eq!(err, Error::UnexpectedInput("bogus".into()));
    let bad = [0xffu8, 0xfe];
    let spans = [Some((0usize, 2usize)), Some((0, 1))];
    let err = p
        .transform(&[
            ("amount", Column::F64(&a)),
            ("avg", Column::F64(&a)),
            ("hour", Column::I64(&h)),
            (
                "channel",
                Column::Str(StrColumn {
                    data: &bad,
                    spans: &spans,
                }),
            ),
        ])
        .unwrap_err();
    assert_eq!(
        err,
        Error::Utf8 {
            name: "channel".into(),
            row: 0
        }
    );
}

fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -1e6f64..1e6,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(0.0),
        1 => any::<f64>(),
    ]
}

fn any_str() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(String::new())),
        Just(Some("pos".to_owned())),
        Just(Some("web".to_owned())),
        "[a-zé]{1,6}".prop_map(Some),
    ]
}

proptest! {
    /// Whatever the raw values (NaN, ±inf, huge, unseen, missing), every output
    /// is finite, one-hot rows sum to 1, indicators are 0/1 and match missingness.
    #[test]
    fn outputs_always_finite(
        rows in proptest::collection::vec((any_f64(), any_f64(), -50i64..50, any_str()), 1..40)
    ) {
        let p = fitted();
        let amount: Vec<f64> = rows.iter().map(|r| r.0).collect();
        let avg: Vec<f64> = rows.iter().map(|r| r.1).collect();
        let hour: Vec<i64> = rows.iter().map(|r| r.2).collect();
        let chan: Vec<Option<&str>> = rows.iter().map(|r| r.3.as_deref()).collect();
        let (d, s) = strs(&chan);
        let out = p.transform(&[
            ("amount", Column::F64(&amount)),
            ("avg", Column::F64(&avg)),
            ("hour", Column::I64(&hour)),
            ("channel", Column::Str(StrColumn { data: &d, spans: &s })),
        ]).unwrap();
        let n = p.n_features();
        prop_assert_eq!(out.len(), rows.len() * n);
        for (r, raw) in rows.iter().enumerate() {
            let row = &out[r * n..(r + 1) * n];
            prop_assert!(row.iter().all(|v| v.is_finite()), "row {r}: {row:?}");
            prop_assert_eq!(row[1], if raw.0.is_finite() { 0.0 } else { 1.0 });
            prop_assert_eq!(row[6..10].iter().sum::<f32>(), 1.0);
            let sc = row[4] * row[4] + row[5] * row[5];
            prop_assert!((sc - 1.0).abs() < 1e-5);
            prop_assert!((0.0..=8.0).contains(&row[11]));
        }
    }

    /// Transforming rows one at a time equals transforming the batch.
    #[test]
    fn batch_equals_rows(values in proptest::collection::vec(any_f64(), 1..30)) {
        let p = fitted();
        let hour: Vec<i64> = (0..values.len() as i64).collect();
        let chan: Vec<Option<&str>> = vec![Some("pos"); values.len()];
        let (d, s) = strs(&chan);
        let cols = |a: &'static [f64], h: &'static [i64]| (a, h);
        let _ = cols;
        let batch = p.transform(&[
            ("amount", Column::F64(&values)),
            ("avg", Column::F64(&values)),
            ("hour", Column::I64(&hour)),
            ("channel", Column::Str(StrColumn { data: &d, spans: &s })),
        ]).unwrap();
        let n = p.n_features();
        for r in 0..values.len() {
            let one = p.transform(&[
                ("amount", Column::F64(&values[r..=r])),
                ("avg", Column::F64(&values[r..=r])),
                ("hour", Column::I64(&hour[r..=r])),
                ("channel", Column::Str(StrColumn { data: &d, spans: &s[r..=r] })),
            ]).unwrap();
            prop_assert_eq!(&batch[r * n..(r + 1) * n], &one[..]);
        }
    }

    /// Bucketize is monotone in its input.
    #[test]
    fn bucketize_monotone(a in -1e4f64..1e4, b in -1e4f64..1e4) {
        let p = fitted();
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let vals = [lo, hi];
        let hour = [0i64, 0];
        let (d, s) = strs(&[Some("pos"), Some("pos")]);
        let out = p.transform(&[
            ("amount", Column::F64(&vals)),
            ("avg", Column::F64(&vals)),
            ("hour", Column::I64(&hour)),
            ("channel", Column::Str(StrColumn { data: &d, spans: &s })),
        ]).unwrap();
        let n = p.n_features();
        prop_assert!(out[2] <= out[n + 2]);
        prop_assert!(out[0] <= out[n]); // log1p, clip, standardize are monotone too
    }
}
