//! Raw input rows as JSON objects, for the prediction log: one
//! `{"name":value,...}` text per row, numbers in their shortest round-trip form,
//! NaN (a missing value) and ±inf as `null`, strings as JSON strings (invalid
//! UTF-8 replaced, so the text is always valid JSON).

use std::fmt::Write as _;

use crate::column::Column;
use crate::error::{Error, Result};

fn push_str(out: &mut String, raw: &[u8]) {
    let text = String::from_utf8_lossy(raw);
    // serde_json escapes exactly what JSON needs; writing into a String cannot fail.
    if let Ok(quoted) = serde_json::to_string(text.as_ref()) {
        out.push_str(&quoted);
    }
}

/// A finite number in serde_json's shortest round-trip form; anything else `null`.
fn push_number<T: serde::Serialize>(out: &mut String, v: T, finite: bool) {
    match serde_json::to_string(&v) {
        Ok(text) if finite => out.push_str(&text),
        _ => out.push_str("null"),
    }
}

fn push_value(out: &mut String, col: &Column<'_>, row: usize) {
    match col {
        Column::F64(v) => push_number(out, v[row], v[row].is_finite()),
        Column::F32(v) => push_number(out, v[row], v[row].is_finite()),
        Column::I64(v) => {
            let _ = write!(out, "{}", v[row]);
        }
        Column::I32(v) => {
            let _ = write!(out, "{}", v[row]);
        }
        Column::Bool(v) => out.push_str(if v[row] != 0 { "true" } else { "false" }),
        Column::Str(s) => match s.spans[row] {
            Some((a, b)) => push_str(out, &s.data[a..b]),
            None => out.push_str("null"),
        },
    }
}

/// One JSON object text per row over `columns` (in their order). Every column
/// must hold `rows` values.
pub fn rows_json(columns: &[(&str, Column<'_>)], rows: usize) -> Result<Vec<String>> {
    for (name, col) in columns {
        if col.len() != rows {
            return Err(Error::LengthMismatch {
                name: (*name).to_string(),
                got: col.len(),
                expected: rows,
            });
        }
    }
    let mut keys = Vec::with_capacity(columns.len());
    for (name, _) in columns {
        let mut k = String::new();
        push_str(&mut k, name.as_bytes());
        k.push(':');
        keys.push(k);
    }
    let mut out = Vec::with_capacity(rows);
    for row in 0..rows {
        let mut text = String::with_capacity(16 * columns.len() + 2);
        text.push('{');
        for (i, ((_, col), key)) in columns.iter().zip(&keys).enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(key);
            push_value(&mut text, col, row);
        }
        text.push('}');
        out.push(text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::column::StrColumn;

    #[test]
    fn rows_are_json_objects() {
        let f = [1.5, f64::NAN, 1e300];
        let i = [7_i64, -2, 0];
        let b = [1_u8, 0, 2];
        let data = b"web\xffa\"b";
        let spans = [Some((0, 3)), Some((3, 4)), None];
        let cols = [
            ("amount", Column::F64(&f)),
            ("n", Column::I64(&i)),
            ("flag", Column::Bool(&b)),
            (
                "ch",
                Column::Str(StrColumn {
                    data,
                    spans: &spans,
                }),
            ),
        ];
        let rows = rows_json(&cols, 3).unwrap();
        assert_eq!(rows[0], r#"{"amount":1.5,"n":7,"flag":true,"ch":"web"}"#);
        assert_eq!(
            rows[1],
            "{\"amount\":null,\"n\":-2,\"flag\":false,\"ch\":\"\u{fffd}\"}"
        );
        assert_eq!(rows[2], r#"{"amount":1e+300,"n":0,"flag":true,"ch":null}"#);
        for r in &rows {
            let v: serde_json::Value = serde_json::from_str(r).unwrap();
            assert!(v.is_object());
        }
        let short = [("n", Column::I64(&i[..2]))];
        assert!(rows_json(&short, 3).is_err());
    }

    #[test]
    fn floats_round_trip() {
        let f = [0.1_f64, 1.0 / 3.0, 123456.789e-10, -0.0];
        let rows = rows_json(&[("x", Column::F64(&f))], 4).unwrap();
        for (r, want) in rows.iter().zip(f) {
            let v: serde_json::Value = serde_json::from_str(r).unwrap();
            assert_eq!(v["x"].as_f64().unwrap().to_bits(), want.to_bits(), "{r}");
        }
    }
}
