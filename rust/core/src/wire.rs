//! A minimal protobuf reader for the Open Inference Protocol's
//! `ModelInferRequest`, so a server can go from request bytes straight to
//! columns without building protobuf objects. Typed `contents` are reported as
//! present but not decoded (callers fall back to the generated code for them).

use crate::error::{Error, Result};

/// A parameter value (`InferParameter.parameter_choice`).
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Bool(bool),
    Int64(i64),
    String(String),
    Double(f64),
    Uint64(u64),
}

/// One input tensor header; `raw` is filled from `raw_input_contents` by index.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WireInput {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub has_contents: bool,
}

/// The parts of a `ModelInferRequest` the data plane needs. Byte ranges point
/// into the request buffer, so raw tensors are never copied.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WireRequest {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub parameters: Vec<(String, Param)>,
    pub inputs: Vec<WireInput>,
    pub outputs: Vec<String>,
    pub raw: Vec<(usize, usize)>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

fn bad(what: &str) -> Error {
    Error::Wire(what.to_owned())
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(bad("varint longer than 10 bytes"))
    }

    /// A length-delimited field: (absolute start, bytes).
    fn bytes(&mut self) -> Result<(usize, &'a [u8])> {
        let n = usize::try_from(self.varint()?).map_err(|_| bad("length overflow"))?;
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| bad("length runs past the end of the message"))?;
        let start = self.pos;
        self.pos = end;
        Ok((self.base + start, &self.buf[start..end]))
    }

    fn string(&mut self, field: &str) -> Result<String> {
        let (_, b) = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| Error::Wire(format!("{field} is not UTF-8")))
    }

    fn fixed64(&mut self) -> Result<u64> {
        let b = self
            .buf
            .get(self.pos..self.pos + 8)
            .ok_or_else(|| bad("truncated fixed64"))?;
        self.pos += 8;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn skip(&mut self, wire_type: u64) -> Result<()> {
        match wire_type {
            0 => self.varint().map(|_| ()),
            1 => self.fixed64().map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 => {
                if self.pos + 4 > self.buf.len() {
                    return Err(bad("truncated fixed32"));
                }
                self.pos += 4;
                Ok(())
            }
            _ => Err(Error::Wire(format!("unsupported wire type {wire_type}"))),
        }
    }

    fn tag(&mut self) -> Result<(u64, u64)> {
        let t = self.varint()?;
        Ok((t >> 3, t & 7))
    }
}

fn param(buf: &[u8]) -> Result<Option<Param>> {
    let mut r = Reader::new(buf, 0);
    let mut out = None;
    while !r.done() {
        match r.tag()? {
            (1, 0) => out = Some(Param::Bool(r.varint()? != 0)),
            (2, 0) => out = Some(Param::Int64(r.varint()? as i64)),
            (3, 2) => out = Some(Param::String(r.string("string_param")?)),
            (4, 1) => out = Some(Param::Double(f64::from_bits(r.fixed64()?))),
            (5, 0) => out = Some(Param::Uint64(r.varint()?)),
            (_, wt) => r.skip(wt)?,
        }
    }
    Ok(out)
}

fn map_entry(buf: &[u8], into: &mut Vec<(String, Param)>) -> Result<()> {
    let mut r = Reader::new(buf, 0);
    let (mut key, mut value) = (String::new(), None);
    while !r.done() {
        match r.tag()? {
            (1, 2) => key = r.string("parameter key")?,
            (2, 2) => value = param(r.bytes()?.1)?,
            (_, wt) => r.skip(wt)?,
        }
    }
    if let Some(v) = value {
        into.push((key, v));
    }
    Ok(())
}

fn input(buf: &[u8]) -> Result<WireInput> {
    let mut r = Reader::new(buf, 0);
    let mut out = WireInput::default();
    while !r.done() {
        match r.tag()? {
            (1, 2) => out.name = r.string("input name")?,
            (2, 2) => out.datatype = r.string("input datatype")?,
            (3, 0) => out.shape.push(r.varint()? as i64),
            (3, 2) => {
                let (_, packed) = r.bytes()?;
                let mut p = Reader::new(packed, 0);
                while !p.done() {
                    out.shape.push(p.varint()? as i64);
                }
            }
            (5, 2) => {
                r.bytes()?;
                out.has_contents = true;
            }
            (_, wt) => r.skip(wt)?,
        }
    }
    Ok(out)
}

fn output_name(buf: &[u8]) -> Result<String> {
    let mut r = Reader::new(buf, 0);
    let mut name = String::new();
    while !r.done() {
        match r.tag()? {
            (1, 2) => name = r.string("output name")?,
            (_, wt) => r.skip(wt)?,
        }
    }
    Ok(name)
}

/// Parses a serialized `ModelInferRequest`.
pub fn parse_infer_request(buf: &[u8]) -> Result<WireRequest> {
    let mut r = Reader::new(buf, 0);
    let mut out = WireRequest::default();
    while !r.done() {
        match r.tag()? {
            (1, 2) => out.model_name = r.string("model_name")?,
            (2, 2) => out.model_version = r.string("model_version")?,
            (3, 2) => out.id = r.string("id")?,
            (4, 2) => map_entry(r.bytes()?.1, &mut out.parameters)?,
            (5, 2) => out.inputs.push(input(r.bytes()?.1)?),
            (6, 2) => out.outputs.push(output_name(r.bytes()?.1)?),
            (7, 2) => {
                let (start, b) = r.bytes()?;
                out.raw.push((start, start + b.len()));
            }
            (_, wt) => r.skip(wt)?,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field(no: u64, body: &[u8], out: &mut Vec<u8>) {
        varint((no << 3) | 2, out);
        varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }

    #[test]
    fn parses_a_hand_built_request() {
        let mut inp = Vec::new();
        field(1, b"amount", &mut inp);
        field(2, b"FP64", &mut inp);
        let mut shape = Vec::new();
        varint(1, &mut shape);
        field(3, &shape, &mut inp);
        let mut req = Vec::new();
        field(1, b"fraud", &mut req);
        field(3, b"r1", &mut req);
        field(5, &inp, &mut req);
        field(7, &[0u8; 8], &mut req);
        let w = parse_infer_request(&req).unwrap();
        assert_eq!(w.model_name, "fraud");
        assert_eq!(w.id, "r1");
        assert_eq!(w.inputs[0].name, "amount");
        assert_eq!(w.inputs[0].shape, vec![1]);
        let (s, e) = w.raw[0];
        assert_eq!(e - s, 8);
        assert!(parse_infer_request(&req[..req.len() - 1]).is_err());
    }
}
