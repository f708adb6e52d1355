//! A validating protobuf reader for the Open Inference Protocol's
//! `ModelInferRequest`, so a server can go from request bytes straight to
//! columns without building protobuf objects.
//!
//! It accepts exactly the messages protobuf accepts (upb, the runtime behind
//! Python's `protobuf`), so one parser decides whether a request decodes and
//! the generated code, used for typed `contents`, never refuses what this one
//! passed. protobuf's rules, as upb applies them:
//!
//! * a tag is a varint of at most 5 bytes whose value fits 32 bits; field
//!   number 0 and wire types 6 and 7 are invalid;
//! * a varint has at most 10 bytes; a length at most 5, and it must not run
//!   past the end of its message;
//! * a group (wire type 3) must end with the end-group tag of its own field
//!   number; an end-group tag outside a group is invalid; inside a group
//!   (always an unknown field here) field number 0 is accepted;
//! * messages and groups nest at most [`MAX_DEPTH`] levels below the request;
//! * `string` fields (and map keys) must be UTF-8; packed `float` / `double`
//!   runs must be whole multiples of 4 / 8 bytes;
//! * a known field sent with another wire type is an unknown field (skipped);
//!   repeated scalars take both packed and unpacked encodings;
//! * a map entry holding any unknown field is kept among the message's unknown
//!   fields, not in the map; an entry without a value maps its key to an empty
//!   `InferParameter`; repeated singular fields: the last wins, and a repeated
//!   `InferParameter` value merges (the last `parameter_choice` set wins).
//!
//! One reader validates: [`visit_infer_request`] hands the request's parts
//! (borrowed from the buffer) to a [`RequestVisitor`] as it reads them;
//! [`parse_infer_request_capped`] is the visitor that builds a [`WireRequest`],
//! and `crate::fastpath` has visitors that keep only what they need.
//!
//! Lists are stored only up to [`Caps`] and counted in full, so a server can
//! refuse an oversized request without this reader (or the generated code)
//! first materialising millions of entries from a few bytes each. Typed
//! `contents` are validated and reported as present, not decoded.

use crate::error::{Error, Result};

/// How deep messages and groups may nest below the request (upb's default
/// depth limit: the request itself is level 0).
pub const MAX_DEPTH: u32 = 100;

/// A parameter value (`InferParameter.parameter_choice`); `Unset` when the
/// parameter names no choice (a map entry without a value, or an empty one).
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Bool(bool),
    Int64(i64),
    String(String),
    Double(f64),
    Uint64(u64),
    Unset,
}

/// How many list entries the reader stores; the rest are validated and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Request-level parameters kept.
    pub parameters: usize,
    /// Inputs, requested outputs and `raw_input_contents` entries kept (each).
    pub tensors: usize,
    /// Dimensions kept per input shape.
    pub dims: usize,
}

impl Caps {
    /// Store everything.
    pub const NONE: Caps = Caps {
        parameters: usize::MAX,
        tensors: usize::MAX,
        dims: usize::MAX,
    };
}

impl Default for Caps {
    fn default() -> Self {
        Self::NONE
    }
}

/// One input tensor header; its raw content is `raw[i]` of the request, by index.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WireInput {
    pub name: String,
    pub datatype: String,
    /// At most `Caps::dims` dimensions; `n_dims` says how many were sent.
    pub shape: Vec<i64>,
    pub n_dims: usize,
    /// The typed `contents` field is present (even empty).
    pub has_contents: bool,
}

/// The parts of a `ModelInferRequest` the data plane needs. Byte ranges point
/// into the request buffer, so raw tensors are never copied. Every list holds at
/// most its `Caps` entries; the `n_*` fields count what the request carried.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WireRequest {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    /// In wire order; a repeated key appears again (the last one wins).
    pub parameters: Vec<(String, Param)>,
    pub n_parameters: usize,
    pub inputs: Vec<WireInput>,
    pub n_inputs: usize,
    pub outputs: Vec<String>,
    pub n_outputs: usize,
    pub raw: Vec<(usize, usize)>,
    pub n_raw: usize,
    /// The most parameters any one input or requested output carries.
    pub tensor_parameters: usize,
}

impl WireRequest {
    /// The UTF-8 size of the longest name stored: model name and version,
    /// parameter keys, input names and datatypes, output names.
    pub fn longest_name(&self) -> usize {
        let names = [self.model_name.len(), self.model_version.len()].into_iter();
        names
            .chain(self.parameters.iter().map(|(k, _)| k.len()))
            .chain(
                self.inputs
                    .iter()
                    .map(|i| i.name.len().max(i.datatype.len())),
            )
            .chain(self.outputs.iter().map(String::len))
            .max()
            .unwrap_or(0)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` in the whole request, for error messages and raw ranges.
    base: usize,
}

fn bad(what: String) -> Error {
    Error::Wire(what)
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Absolute position of the next byte.
    fn at(&self) -> usize {
        self.base + self.pos
    }

    /// A varint of at most `max_bytes` bytes (bits beyond 64 are dropped, as
    /// protobuf does).
    #[inline(always)]
    fn varint_of(&mut self, max_bytes: usize, what: &str) -> Result<u64> {
        // Most tags and lengths are one byte.
        match self.buf.get(self.pos) {
            Some(&b) if b < 0x80 => {
                self.pos += 1;
                Ok(u64::from(b))
            }
            _ => self.long_varint(max_bytes, what),
        }
    }

    fn long_varint(&mut self, max_bytes: usize, what: &str) -> Result<u64> {
        let start = self.at();
        let mut out = 0u64;
        for i in 0..max_bytes {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| bad(format!("truncated {what} at byte {start}")))?;
            self.pos += 1;
            if i < 10 {
                out |= u64::from(b & 0x7f) << (7 * i);
            }
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(bad(format!(
            "{what} at byte {start} is longer than {max_bytes} bytes"
        )))
    }

    fn varint(&mut self) -> Result<u64> {
        self.varint_of(10, "varint")
    }

    /// The next tag of a message as (field number, wire type); wire types 0-5 only.
    #[inline(always)]
    fn tag(&mut self) -> Result<(u32, u8)> {
        self.tag_of(false)
    }

    /// A tag; field number 0 is valid only inside an unknown group (protobuf
    /// skips a group's fields without looking at their numbers).
    #[inline(always)]
    fn tag_of(&mut self, in_group: bool) -> Result<(u32, u8)> {
        let start = self.at();
        let t = self.varint_of(5, "tag")?;
        let t = u32::try_from(t)
            .map_err(|_| bad(format!("tag at byte {start} does not fit 32 bits")))?;
        let (field, wire_type) = (t >> 3, (t & 7) as u8);
        if field == 0 && !in_group {
            return Err(bad(format!("field number 0 at byte {start}")));
        }
        if wire_type > 5 {
            return Err(bad(format!(
                "invalid wire type {wire_type} at byte {start}"
            )));
        }
        Ok((field, wire_type))
    }

    /// A length-delimited field: (absolute start, bytes).
    #[inline(always)]
    fn bytes(&mut self) -> Result<(usize, &'a [u8])> {
        let at = self.at();
        let n = self.varint_of(5, "length")?;
        let left = self.buf.len() - self.pos;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= left)
            .ok_or_else(|| {
                bad(format!(
                    "length {n} at byte {at} runs past the end of the message ({left} bytes left)"
                ))
            })?;
        let start = self.pos;
        self.pos += n;
        Ok((self.base + start, &self.buf[start..start + n]))
    }

    /// A sub-message: a reader over its bytes.
    #[inline(always)]
    fn message(&mut self) -> Result<Reader<'a>> {
        let (start, b) = self.bytes()?;
        Ok(Reader::new(b, start))
    }

    #[inline(always)]
    fn str(&mut self, field: &str) -> Result<&'a str> {
        let (start, b) = self.bytes()?;
        std::str::from_utf8(b).map_err(|_| bad(format!("{field} at byte {start} is not UTF-8")))
    }

    fn string(&mut self, field: &str) -> Result<String> {
        self.str(field).map(str::to_owned)
    }

    fn fixed(&mut self, n: usize) -> Result<&'a [u8]> {
        let start = self.pos;
        let b = self
            .buf
            .get(start..start + n)
            .ok_or_else(|| bad(format!("truncated fixed{} at byte {}", n * 8, self.at())))?;
        self.pos += n;
        Ok(b)
    }

    fn fixed64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.fixed(8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// Skips an unknown field whose tag was just read; `depth` is the level of
    /// the message holding it.
    fn skip(&mut self, field: u32, wire_type: u8, depth: u32) -> Result<()> {
        match wire_type {
            0 => self.varint().map(|_| ()),
            1 => self.fixed(8).map(|_| ()),
            2 => self.bytes().map(|_| ()),
            3 => self.skip_group(field, depth + 1),
            5 => self.fixed(4).map(|_| ()),
            _ => Err(bad(format!(
                "end-group tag for field {field} before byte {} closes no group",
                self.at()
            ))),
        }
    }

    /// The body of a group of `field` at `depth`, through its end-group tag.
    fn skip_group(&mut self, field: u32, depth: u32) -> Result<()> {
        let start = self.at();
        check_depth(depth, start)?;
        while !self.done() {
            let (f, wt) = self.tag_of(true)?;
            if wt == 4 {
                if f == field {
                    return Ok(());
                }
                return Err(bad(format!(
                    "end-group tag for field {f} before byte {} closes the group of field {field}",
                    self.at()
                )));
            }
            self.skip(f, wt, depth)?;
        }
        Err(bad(format!(
            "group of field {field} started before byte {start} never ends"
        )))
    }

    /// Packed varints: the whole field must be whole varints.
    fn packed_varints(&mut self, mut each: impl FnMut(u64)) -> Result<()> {
        let mut p = self.message()?;
        while !p.done() {
            each(p.varint()?);
        }
        Ok(())
    }
}

fn check_depth(depth: u32, at: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(bad(format!(
            "messages nest deeper than {MAX_DEPTH} levels at byte {at}"
        )));
    }
    Ok(())
}

/// Merges one `InferParameter` message into `into` (the last choice set wins).
fn param(mut r: Reader<'_>, depth: u32, into: &mut Param) -> Result<()> {
    check_depth(depth, r.at())?;
    while !r.done() {
        match r.tag()? {
            (1, 0) => *into = Param::Bool(r.varint()? != 0),
            (2, 0) => *into = Param::Int64(r.varint()? as i64),
            (3, 2) => *into = Param::String(r.string("string_param")?),
            (4, 1) => *into = Param::Double(f64::from_bits(r.fixed64()?)),
            (5, 0) => *into = Param::Uint64(r.varint()?),
            (f, wt) => r.skip(f, wt, depth)?,
        }
    }
    Ok(())
}

/// One `map<string, InferParameter>` entry; None when protobuf would keep it
/// among the unknown fields (it holds a field other than key and value).
fn map_entry<'a>(mut r: Reader<'a>, depth: u32) -> Result<Option<(&'a str, Param)>> {
    check_depth(depth, r.at())?;
    let (mut key, mut value, mut unknown) = ("", Param::Unset, false);
    while !r.done() {
        match r.tag()? {
            (1, 2) => key = r.str("parameter key")?,
            (2, 2) => param(r.message()?, depth + 1, &mut value)?,
            (f, wt) => {
                unknown = true;
                r.skip(f, wt, depth)?;
            }
        }
    }
    Ok((!unknown).then_some((key, value)))
}

/// Validates an `InferTensorContents` message.
fn contents(mut r: Reader<'_>, depth: u32) -> Result<()> {
    check_depth(depth, r.at())?;
    while !r.done() {
        match r.tag()? {
            (1..=5, 0) => r.varint().map(|_| ())?,
            (1..=5, 2) => r.packed_varints(|_| ())?,
            (6, 5) => r.fixed(4).map(|_| ())?,
            (7, 1) => r.fixed(8).map(|_| ())?,
            (f @ (6 | 7), 2) => {
                let size = if f == 6 { 4 } else { 8 };
                let (start, b) = r.bytes()?;
                if b.len() % size != 0 {
                    let name = if f == 6 {
                        "fp32_contents"
                    } else {
                        "fp64_contents"
                    };
                    return Err(bad(format!(
                        "packed {name} at byte {start} is {} bytes, not a multiple of {size}",
                        b.len()
                    )));
                }
            }
            (8, 2) => r.bytes().map(|_| ())?,
            (f, wt) => r.skip(f, wt, depth)?,
        }
    }
    Ok(())
}

/// One input tensor header as the reader sees it, its strings borrowed from the
/// request buffer (its shape went to [`RequestVisitor::dim`] as it was read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InputView<'a> {
    pub name: &'a str,
    pub datatype: &'a str,
    /// How many dimensions its shape has.
    pub n_dims: usize,
    /// The typed `contents` field is present (even empty).
    pub has_contents: bool,
    /// How many parameters it carries.
    pub n_parameters: usize,
}

/// Receives the parts of a `ModelInferRequest` in wire order while
/// [`visit_infer_request`] validates the whole message. Strings borrow the
/// buffer; every method defaults to ignoring its part, so a visitor that needs
/// only the request-level fields stores nothing else (and allocates nothing).
pub trait RequestVisitor<'a> {
    fn model_name(&mut self, _name: &'a str) {}
    fn model_version(&mut self, _version: &'a str) {}
    fn id(&mut self, _id: &'a str) {}
    /// A request parameter (a map entry holding an unknown field is none).
    fn parameter(&mut self, _key: &'a str, _value: Param) {}
    /// One dimension of the shape of the input being read: its dimensions come
    /// before the [`RequestVisitor::input`] call that ends it.
    fn dim(&mut self, _d: i64) {}
    fn input(&mut self, _input: InputView<'a>) {}
    /// A requested output: its name and how many parameters it carries.
    fn output(&mut self, _name: &'a str, _n_parameters: usize) {}
    /// A `raw_input_contents` entry as its byte range in the buffer.
    fn raw(&mut self, _start: usize, _end: usize) {}
}

/// An `InferInputTensor`; its dimensions go to `v` as they are read.
fn input<'a>(
    mut r: Reader<'a>,
    depth: u32,
    v: &mut impl RequestVisitor<'a>,
) -> Result<InputView<'a>> {
    check_depth(depth, r.at())?;
    let mut out = InputView::default();
    while !r.done() {
        match r.tag()? {
            (1, 2) => out.name = r.str("input name")?,
            (2, 2) => out.datatype = r.str("input datatype")?,
            (3, 0) => {
                let d = r.varint()? as i64;
                out.n_dims += 1;
                v.dim(d);
            }
            (3, 2) => r.packed_varints(|d| {
                out.n_dims += 1;
                v.dim(d as i64);
            })?,
            (4, 2) => {
                out.n_parameters += usize::from(map_entry(r.message()?, depth + 1)?.is_some());
            }
            (5, 2) => {
                contents(r.message()?, depth + 1)?;
                out.has_contents = true;
            }
            (f, wt) => r.skip(f, wt, depth)?,
        }
    }
    Ok(out)
}

/// An `InferRequestedOutputTensor`: its name and how many parameters it carries.
fn output(mut r: Reader<'_>, depth: u32) -> Result<(&str, usize)> {
    check_depth(depth, r.at())?;
    let (mut name, mut n_params) = ("", 0);
    while !r.done() {
        match r.tag()? {
            (1, 2) => name = r.str("output name")?,
            (2, 2) => n_params += usize::from(map_entry(r.message()?, depth + 1)?.is_some()),
            (f, wt) => r.skip(f, wt, depth)?,
        }
    }
    Ok((name, n_params))
}

/// Validates a serialized `ModelInferRequest` exactly as [`parse_infer_request`]
/// does, handing its parts to `v` in wire order. On an error `v` may have seen
/// part of the request.
pub fn visit_infer_request<'a>(buf: &'a [u8], v: &mut impl RequestVisitor<'a>) -> Result<()> {
    let mut r = Reader::new(buf, 0);
    while !r.done() {
        match r.tag()? {
            (1, 2) => v.model_name(r.str("model_name")?),
            (2, 2) => v.model_version(r.str("model_version")?),
            (3, 2) => v.id(r.str("id")?),
            (4, 2) => {
                if let Some((k, value)) = map_entry(r.message()?, 1)? {
                    v.parameter(k, value);
                }
            }
            (5, 2) => {
                let inp = input(r.message()?, 1, v)?;
                v.input(inp);
            }
            (6, 2) => {
                let (name, n_params) = output(r.message()?, 1)?;
                v.output(name, n_params);
            }
            (7, 2) => {
                let (start, b) = r.bytes()?;
                v.raw(start, start + b.len());
            }
            (f, wt) => r.skip(f, wt, 0)?,
        }
    }
    Ok(())
}

/// Builds a [`WireRequest`], storing lists up to its caps.
struct Owned<'c> {
    caps: &'c Caps,
    out: WireRequest,
    /// The dimensions of the input being read (at most `caps.dims`).
    shape: Vec<i64>,
}

impl<'a> RequestVisitor<'a> for Owned<'_> {
    fn model_name(&mut self, name: &'a str) {
        self.out.model_name = name.to_owned();
    }

    fn model_version(&mut self, version: &'a str) {
        self.out.model_version = version.to_owned();
    }

    fn id(&mut self, id: &'a str) {
        self.out.id = id.to_owned();
    }

    fn parameter(&mut self, key: &'a str, value: Param) {
        self.out.n_parameters += 1;
        if self.out.parameters.len() < self.caps.parameters {
            self.out.parameters.push((key.to_owned(), value));
        }
    }

    fn dim(&mut self, d: i64) {
        if self.shape.len() < self.caps.dims {
            self.shape.push(d);
        }
    }

    fn input(&mut self, i: InputView<'a>) {
        let shape = std::mem::take(&mut self.shape);
        let out = &mut self.out;
        out.n_inputs += 1;
        out.tensor_parameters = out.tensor_parameters.max(i.n_parameters);
        if out.inputs.len() < self.caps.tensors {
            out.inputs.push(WireInput {
                name: i.name.to_owned(),
                datatype: i.datatype.to_owned(),
                shape,
                n_dims: i.n_dims,
                has_contents: i.has_contents,
            });
        }
    }

    fn output(&mut self, name: &'a str, n_parameters: usize) {
        let out = &mut self.out;
        out.n_outputs += 1;
        out.tensor_parameters = out.tensor_parameters.max(n_parameters);
        if out.outputs.len() < self.caps.tensors {
            out.outputs.push(name.to_owned());
        }
    }

    fn raw(&mut self, start: usize, end: usize) {
        self.out.n_raw += 1;
        if self.out.raw.len() < self.caps.tensors {
            self.out.raw.push((start, end));
        }
    }
}

/// Parses a serialized `ModelInferRequest`, storing everything.
pub fn parse_infer_request(buf: &[u8]) -> Result<WireRequest> {
    parse_infer_request_capped(buf, &Caps::NONE)
}

/// Parses a serialized `ModelInferRequest`, storing lists only up to `caps`
/// (and counting them in full).
pub fn parse_infer_request_capped(buf: &[u8], caps: &Caps) -> Result<WireRequest> {
    let mut v = Owned {
        caps,
        out: WireRequest::default(),
        shape: Vec::new(),
    };
    visit_infer_request(buf, &mut v)?;
    Ok(v.out)
}

/// The index of the first input whose raw `FP16`, `FP32` or `FP64` content
/// holds +inf or -inf (raw contents belong to inputs by position; None when
/// the counts differ). Sizes are not checked here: a trailing partial element
/// is ignored.
pub fn first_infinite_input(buf: &[u8], req: &WireRequest) -> Option<usize> {
    if req.n_raw != req.n_inputs || req.raw.len() != req.inputs.len() {
        return None;
    }
    req.inputs
        .iter()
        .zip(&req.raw)
        .position(|(inp, &(start, end))| {
            let data = buf.get(start..end).unwrap_or_default();
            match inp.datatype.as_str() {
                "FP64" => data.chunks_exact(8).any(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    f64::from_le_bytes(a).is_infinite()
                }),
                "FP32" => data
                    .chunks_exact(4)
                    .any(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_infinite()),
                // Exponent all ones, mantissa zero.
                "FP16" => data
                    .chunks_exact(2)
                    .any(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7fff == 0x7c00),
                _ => false,
            }
        })
}

/// Protobuf encoding helpers for the tests of this module and of `fastpath`.
#[cfg(test)]
pub(crate) mod testing {
    pub(crate) fn varint(mut v: u64, out: &mut Vec<u8>) {
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

    /// A length-delimited field `no` holding `body`, appended to `out`.
    pub(crate) fn field(no: u64, body: &[u8], out: &mut Vec<u8>) {
        varint((no << 3) | 2, out);
        varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }

    pub(crate) fn fld(no: u64, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        field(no, body, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{field, fld, varint};
    use super::*;

    fn err(buf: &[u8]) -> String {
        match parse_infer_request(buf) {
            Err(Error::Wire(m)) => m,
            other => panic!("{buf:02x?} should be refused, got {other:?}"),
        }
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
        assert_eq!((w.n_inputs, w.n_raw), (1, 1));
        assert_eq!(w.longest_name(), "amount".len());
        let (s, e) = w.raw[0];
        assert_eq!(e - s, 8);
        assert!(parse_infer_request(&req[..req.len() - 1]).is_err());
    }

    #[test]
    fn refuses_what_protobuf_refuses() {
        assert!(err(&[0x05, 0, 0, 0, 0]).contains("field number 0"));
        assert!(err(&[0x80, 0x00]).contains("field number 0"));
        assert!(err(&[0x0e]).contains("wire type 6"));
        assert!(err(&[0x0f]).contains("wire type 7"));
        assert!(err(&[0x0a, 0xff]).contains("truncated length"));
        assert!(err(&[0x0c]).contains("closes no group"));
        assert!(err(&[0x0b]).contains("never ends"));
        assert!(err(&[0x0b, 0x14]).contains("closes the group of field 1"));
        assert!(err(&[0x0b, 0x04, 0x0c]).contains("closes the group of field 1"));
        // A tag of 6 bytes, a tag over 32 bits, an 11-byte varint, a 6-byte length.
        assert!(err(&[0x8a, 0x80, 0x80, 0x80, 0x80, 0x00]).contains("tag"));
        assert!(err(&[0xf8, 0xff, 0xff, 0xff, 0x1f, 0x00]).contains("32 bits"));
        let mut v = vec![0x58];
        v.extend([0xff; 10]);
        v.push(0x01);
        assert!(err(&v).contains("longer than 10 bytes"));
        assert!(err(&[0x0a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]).contains("longer than 5"));
        assert!(err(&[0x0a, 0x01, 0xff]).contains("not UTF-8"));
        assert!(err(&[0x09, 0, 0, 0]).contains("truncated fixed64"));
        assert!(err(&[0x0d, 0, 0]).contains("truncated fixed32"));
        // Inside an input's contents: a packed FP32 run of 3 bytes.
        let bad = fld(5, &fld(5, &fld(6, &[0, 0, 0])));
        assert!(err(&bad).contains("multiple of 4"));
    }

    #[test]
    fn accepts_what_protobuf_accepts() {
        for ok in [
            &[0x0b, 0x0c][..],                     // an empty group (unknown field)
            &[0x08, 0x01],                         // model_name as a varint: unknown
            &[0x0b, 0x00, 0x00, 0x03, 0x04, 0x0c], // field number 0 inside a group
            &[0x8a, 0x80, 0x80, 0x80, 0x00, 0x00], // field 1 with a 5-byte tag
            &[0xf8, 0xff, 0xff, 0xff, 0x0f, 0x00], // the largest field number
            &[0x0a, 0x80, 0x80, 0x80, 0x80, 0x00], // a 5-byte length
        ] {
            assert!(parse_infer_request(ok).is_ok(), "{ok:02x?}");
        }
        let mut ten = vec![0x58];
        ten.extend([0xff; 9]);
        ten.push(0x7f);
        assert!(parse_infer_request(&ten).is_ok());
    }

    #[test]
    fn nesting_is_limited_to_protobufs_depth() {
        let groups = |d: usize| [vec![0x0b; d], vec![0x0c; d]].concat();
        assert!(parse_infer_request(&groups(100)).is_ok());
        assert!(err(&groups(101)).contains("deeper than 100"));
        // request > input (1) > contents (2) > 98 groups = 100 levels.
        assert!(parse_infer_request(&fld(5, &fld(5, &groups(98)))).is_ok());
        assert!(err(&fld(5, &fld(5, &groups(99)))).contains("deeper"));
    }

    #[test]
    fn map_entries_follow_protobuf() {
        let entry = |body: &[u8]| fld(4, body);
        // No value: the key maps to an empty parameter.
        let w = parse_infer_request(&entry(&fld(1, b"k"))).unwrap();
        assert_eq!(w.parameters, vec![("k".to_owned(), Param::Unset)]);
        // An unknown field in the entry: not a parameter at all.
        let mut body = fld(1, b"k");
        body.extend(fld(9, b"zz"));
        let w = parse_infer_request(&entry(&body)).unwrap();
        assert!(w.parameters.is_empty() && w.n_parameters == 0);
        // Two values merge: an empty second value keeps the first choice.
        let mut body = fld(1, b"k");
        body.extend(fld(2, &fld(3, b"x")));
        body.extend(fld(2, b""));
        let w = parse_infer_request(&entry(&body)).unwrap();
        assert_eq!(w.parameters[0].1, Param::String("x".to_owned()));
    }

    #[test]
    fn caps_bound_storage_not_validation() {
        let mut req = Vec::new();
        for _ in 0..50 {
            field(4, &fld(1, b"k"), &mut req);
            field(5, &fld(3, &[1, 2, 3, 4]), &mut req);
            field(7, b"", &mut req);
        }
        let caps = Caps {
            parameters: 2,
            tensors: 3,
            dims: 2,
        };
        let w = parse_infer_request_capped(&req, &caps).unwrap();
        assert_eq!((w.parameters.len(), w.n_parameters), (2, 50));
        assert_eq!((w.inputs.len(), w.n_inputs), (3, 50));
        assert_eq!((w.raw.len(), w.n_raw), (3, 50));
        assert_eq!((w.inputs[0].shape.len(), w.inputs[0].n_dims), (2, 4));
        req.extend([0x0f]);
        assert!(parse_infer_request_capped(&req, &caps).is_err());
    }

    #[test]
    fn finds_infinite_raw_values() {
        let mut req = Vec::new();
        for (name, dt) in [("a", "INT64"), ("b", "FP64"), ("c", "FP32")] {
            let mut inp = fld(1, name.as_bytes());
            inp.extend(fld(2, dt.as_bytes()));
            field(5, &inp, &mut req);
        }
        let with = |b: &[u8], c: &[u8]| {
            let mut r = req.clone();
            field(7, &f64::INFINITY.to_bits().to_le_bytes(), &mut r); // INT64: not a float
            field(7, b, &mut r);
            field(7, c, &mut r);
            let w = parse_infer_request(&r).unwrap();
            first_infinite_input(&r, &w)
        };
        let nan = f64::NAN.to_le_bytes();
        assert_eq!(with(&nan, &1.0f32.to_le_bytes()), None);
        assert_eq!(with(&f64::NEG_INFINITY.to_le_bytes(), &[0; 4]), Some(1));
        assert_eq!(with(&nan, &f32::INFINITY.to_le_bytes()), Some(2));
    }
}
