//! Borrowed views of raw input columns: numbers are read in place, strings are
//! spans into one byte buffer (which may be a V2 packed BYTES tensor).

use crate::error::{Error, Result};
use crate::spec::{DType, InputSpec};

/// Strings as spans `(start, end)` into `data`. `None` spans are missing values
/// (a Python `None`); an empty span is an empty string, also treated as missing.
#[derive(Debug, Clone, Copy)]
pub struct StrColumn<'a> {
    pub data: &'a [u8],
    pub spans: &'a [Option<(usize, usize)>],
}

impl<'a> StrColumn<'a> {
    /// The raw bytes of row `i`, `None` when missing (null or empty).
    #[inline]
    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        match self.spans[i] {
            Some((s, e)) if e > s => Some(&self.data[s..e]),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// One raw input column.
#[derive(Debug, Clone, Copy)]
pub enum Column<'a> {
    F64(&'a [f64]),
    F32(&'a [f32]),
    I64(&'a [i64]),
    I32(&'a [i32]),
    /// numpy bool memory, read as bytes: any nonzero byte is true.
    Bool(&'a [u8]),
    Str(StrColumn<'a>),
}

impl Column<'_> {
    pub fn len(&self) -> usize {
        match self {
            Column::F64(v) => v.len(),
            Column::F32(v) => v.len(),
            Column::I64(v) => v.len(),
            Column::I32(v) => v.len(),
            Column::Bool(v) => v.len(),
            Column::Str(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Column::F64(_) => "float64",
            Column::F32(_) => "float32",
            Column::I64(_) => "int64",
            Column::I32(_) => "int32",
            Column::Bool(_) => "bool",
            Column::Str(_) => "string",
        }
    }

    /// Row `i` as a float; `None` for missing (NaN or ±inf).
    #[inline]
    pub(crate) fn number(&self, i: usize) -> Option<f64> {
        let v = match self {
            Column::F64(v) => v[i],
            Column::F32(v) => f64::from(v[i]),
            Column::I64(v) => v[i] as f64,
            Column::I32(v) => f64::from(v[i]),
            Column::Bool(v) => f64::from(u8::from(v[i] != 0)),
            Column::Str(_) => return None,
        };
        v.is_finite().then_some(v)
    }
}

/// Matches named columns to declared `inputs` (returned in declaration order)
/// and checks names, dtypes and lengths; returns the columns and the row count.
/// `index` maps a name to its position in `inputs`. With `allow_extra`, columns
/// the spec does not declare are ignored instead of refused.
pub fn bind_columns<'a>(
    inputs: &[InputSpec],
    columns: &[(&str, Column<'a>)],
    allow_extra: bool,
    index: impl Fn(&str) -> Option<usize>,
) -> Result<(Vec<Column<'a>>, usize)> {
    let mut slots: Vec<Option<Column<'a>>> = vec![None; inputs.len()];
    for (name, col) in columns {
        let Some(i) = index(name) else {
            if allow_extra {
                continue;
            }
            return Err(Error::UnexpectedInput((*name).to_owned()));
        };
        if slots[i].is_some() {
            return Err(Error::DuplicateInput((*name).to_owned()));
        }
        let inp = &inputs[i];
        if inp.dtype.is_numeric() == matches!(col, Column::Str(_)) {
            return Err(Error::DType {
                name: inp.name.clone(),
                expected: if inp.dtype == DType::String {
                    "string"
                } else {
                    "numeric"
                },
                got: col.type_name(),
            });
        }
        slots[i] = Some(*col);
    }
    let mut rows = None;
    let mut out = Vec::with_capacity(slots.len());
    for (slot, inp) in slots.into_iter().zip(inputs) {
        let col = slot.ok_or_else(|| Error::MissingInput(inp.name.clone()))?;
        match rows {
            None => rows = Some(col.len()),
            Some(r) if r != col.len() => {
                return Err(Error::LengthMismatch {
                    name: inp.name.clone(),
                    got: col.len(),
                    expected: r,
                })
            }
            _ => {}
        }
        out.push(col);
    }
    Ok((out, rows.unwrap_or(0)))
}

/// Parses a V2 packed BYTES buffer (each element a 4-byte little-endian length,
/// then that many bytes) into spans over `buf`.
pub fn parse_packed_bytes(name: &str, buf: &[u8]) -> Result<Vec<Option<(usize, usize)>>> {
    let mut spans = Vec::new();
    parse_packed_bytes_into(name, buf, &mut spans)?;
    Ok(spans)
}

/// [`parse_packed_bytes`] appending to `spans` (several columns can share one
/// vector); returns how many elements it appended. On an error `spans` may hold
/// part of the buffer's spans.
pub fn parse_packed_bytes_into(
    name: &str,
    buf: &[u8],
    spans: &mut Vec<Option<(usize, usize)>>,
) -> Result<usize> {
    let first = spans.len();
    let mut pos = 0usize;
    while pos < buf.len() {
        let Some(header) = buf.get(pos..pos + 4) else {
            return Err(Error::Packed {
                name: name.to_owned(),
                reason: format!("truncated length prefix at byte {pos}"),
            });
        };
        let n = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let start = pos + 4;
        let end = start
            .checked_add(n)
            .filter(|&e| e <= buf.len())
            .ok_or_else(|| Error::Packed {
                name: name.to_owned(),
                reason: format!(
                    "element {} declares {n} bytes but only {} remain",
                    spans.len() - first,
                    buf.len() - start
                ),
            })?;
        spans.push(Some((start, end)));
        pos = end;
    }
    Ok(spans.len() - first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_roundtrip_and_errors() {
        let mut buf = Vec::new();
        for s in ["pos", "", "ecommerce"] {
            buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
        let spans = parse_packed_bytes("channel", &buf).unwrap();
        let col = StrColumn {
            data: &buf,
            spans: &spans,
        };
        assert_eq!(col.get(0), Some(&b"pos"[..]));
        assert_eq!(col.get(1), None);
        assert_eq!(col.get(2), Some(&b"ecommerce"[..]));
        assert!(parse_packed_bytes("c", &buf[..buf.len() - 1]).is_err());
        assert!(parse_packed_bytes("c", &[1, 0]).is_err());
        assert!(parse_packed_bytes("c", &[]).unwrap().is_empty());
    }
}
