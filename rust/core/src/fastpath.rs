//! The one-call native path: `ModelInferRequest` bytes → validated columns →
//! features → drift counts → model scores → `ModelInferResponse` bytes, with no
//! per-input objects on the way.
//!
//! It takes only *plain* requests: those the Python path (the codec, then the data
//! plane's checks, then `LoadedModel.score`) accepts and scores, sent the one way
//! clients send them (raw contents for every input, no tensor parameters, at most
//! a `routing_key` parameter). Anything else is a [`Decline`]: the caller hands the
//! request to the Python path, which scores it or refuses it with its own message.
//! A decline is always safe; accepting what the Python path would refuse, or
//! scoring differently from it, is a bug.
//!
//! [`decode_plain`] is the one step from bytes to validated columns, shared by
//! scoring ([`FastPath`]) and the prediction log ([`PlainRequest::columns`] with
//! [`crate::record::rows_json`]). [`peek_request`] reads only the request-level
//! fields, for routing before the version is known.

use std::cell::Cell;
use std::time::Instant;

use crate::column::{bind_columns, parse_packed_bytes_into, Column, StrColumn};
use crate::drift::DriftMonitor;
use crate::error::Error;
use crate::gbdt::Gbdt;
use crate::pipeline::FeaturePipeline;
use crate::spec::DType;
use crate::wire::{visit_infer_request, InputView, Param, RequestVisitor};

/// Dimensions an input's shape may have before the request is refused (the
/// Python codec's `MAX_DIMS`).
pub const MAX_DIMS: usize = 8;
/// The model score output (FP32), riskserve.protocol.OUTPUT_NAME.
pub const OUTPUT_NAME: &str = "probability";
/// The decision output (BOOL), riskserve.protocol.FLAGGED_NAME.
pub const FLAGGED_NAME: &str = "flagged";
/// The one request parameter a plain request may carry.
pub const ROUTING_KEY: &str = "routing_key";

/// The bounds a request is held to: the server's `LimitsSettings` and
/// `ScoringSettings.max_request_rows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_parameters: usize,
    /// Inputs, requested outputs and raw contents entries (each).
    pub max_inputs: usize,
    /// Model name and version, parameter, input and output names (UTF-8 bytes).
    pub max_name_bytes: usize,
    /// The `routing_key` parameter and the request id (UTF-8 bytes).
    pub max_routing_key_bytes: usize,
    /// String parameters other than `routing_key`. A plain request carries none,
    /// so this bound never decides anything here; it is kept so that `Limits` is
    /// the whole of the server's settings.
    pub max_parameter_bytes: usize,
    /// Rows one request may carry.
    pub max_rows: usize,
}

impl Limits {
    /// No bound at all (for requests an earlier call already accepted).
    pub const NONE: Limits = Limits {
        max_parameters: usize::MAX,
        max_inputs: usize::MAX,
        max_name_bytes: usize::MAX,
        max_routing_key_bytes: usize::MAX,
        max_parameter_bytes: usize::MAX,
        max_rows: usize::MAX,
    };
}

/// Why a request is not one the native path scores. The Python path takes it
/// and produces the client's error message, if any; these are for tests and logs.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Decline {
    /// The bytes are not a valid `ModelInferRequest`.
    #[error("{0}")]
    Wire(Error),
    /// A count or size is over one of the limits.
    #[error("{0} over the limit")]
    Limit(&'static str),
    /// Request parameters other than one `routing_key` string.
    #[error("parameters: {0}")]
    Parameters(&'static str),
    /// Not the plain shape of request: typed contents, no raw contents, tensor
    /// parameters, outputs other than probability and flagged.
    #[error("{0}")]
    NotPlain(&'static str),
    /// An input's header or raw content, by its position in the request.
    #[error("input #{index}: {why}")]
    Input { index: usize, why: &'static str },
    /// An input's datatype is not the V2 datatype of its spec dtype.
    #[error("input '{0}' does not have the V2 datatype of its spec dtype")]
    Datatype(String),
    /// The feature pipeline or the model refused the columns.
    #[error("{0}")]
    Features(Error),
    /// More rows than the caller scores inline.
    #[error("{rows} rows, over the inline limit of {limit}")]
    Inline { rows: usize, limit: usize },
}

// ---------------------------------------------------------------------------------
// Request-level fields
// ---------------------------------------------------------------------------------

/// The request-level fields of a plain request, as [`peek_request`] reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peeked<'a> {
    pub model_name: &'a str,
    pub model_version: &'a str,
    pub id: &'a str,
    /// The `routing_key` parameter; None when the request carries none.
    pub routing_key: Option<String>,
}

/// Collects the request-level fields and a summary of the parameters.
#[derive(Debug, Default)]
struct Header<'a> {
    model_name: &'a str,
    model_version: &'a str,
    id: &'a str,
    n_parameters: usize,
    /// A parameter other than `routing_key` was seen.
    other_parameter: bool,
    /// The last `routing_key` value (a map keeps the last of a repeated key).
    routing_key: Option<Param>,
}

impl Header<'_> {
    /// The checks the Python path makes of these fields (`Bounds.request`,
    /// `Bounds.parameters`, `_routing_key`), and stricter ones: no parameter but
    /// `routing_key`, and it must be a non-empty string. Returns the routing key.
    fn check(
        &mut self,
        max_name: usize,
        max_key: usize,
        max_parameters: usize,
    ) -> Result<Option<String>, Decline> {
        if self.n_parameters > max_parameters {
            return Err(Decline::Limit("request parameters"));
        }
        if self.other_parameter {
            return Err(Decline::Parameters("a parameter other than routing_key"));
        }
        if self.model_name.len() > max_name || self.model_version.len() > max_name {
            return Err(Decline::Limit("model name or version"));
        }
        if self.id.len() > max_key {
            return Err(Decline::Limit("request id"));
        }
        match self.routing_key.take() {
            None => Ok(None),
            Some(_) if ROUTING_KEY.len() > max_name => Err(Decline::Limit("parameter name")),
            Some(Param::String(s)) if !s.is_empty() && s.len() <= max_key => Ok(Some(s)),
            Some(Param::String(s)) if !s.is_empty() => Err(Decline::Limit("routing_key")),
            Some(_) => Err(Decline::Parameters("routing_key is not a non-empty string")),
        }
    }
}

/// Header reads only the request-level fields (the rest is validated, not kept).
impl<'a> RequestVisitor<'a> for Header<'a> {
    fn model_name(&mut self, name: &'a str) {
        self.model_name = name;
    }

    fn model_version(&mut self, version: &'a str) {
        self.model_version = version;
    }

    fn id(&mut self, id: &'a str) {
        self.id = id;
    }

    fn parameter(&mut self, key: &'a str, value: Param) {
        self.n_parameters += 1;
        if key == ROUTING_KEY {
            self.routing_key = Some(value);
        } else {
            self.other_parameter = true;
        }
    }
}

/// The request-level fields of `data` (model name and version, id, routing key),
/// the rest of the message validated and skipped. None when the bytes do not
/// decode or these fields are not those of a plain request: a name over
/// `max_name`, an id over `max_key`, more than `max_parameters` parameters, a
/// parameter other than `routing_key`, a `routing_key` that is not a non-empty
/// string of at most `max_key` bytes.
pub fn peek_request(
    data: &[u8],
    max_name: usize,
    max_key: usize,
    max_parameters: usize,
) -> Option<Peeked<'_>> {
    let mut h = Header::default();
    visit_infer_request(data, &mut h).ok()?;
    let routing_key = h.check(max_name, max_key, max_parameters).ok()?;
    Some(Peeked {
        model_name: h.model_name,
        model_version: h.model_version,
        id: h.id,
        routing_key,
    })
}

// ---------------------------------------------------------------------------------
// The whole request
// ---------------------------------------------------------------------------------

/// Collects a request's parts, lists up to `cap` entries (the rest counted).
struct Collect<'a> {
    header: Header<'a>,
    cap: usize,
    /// Each input with its first two dimensions.
    inputs: Vec<(InputView<'a>, [i64; 2])>,
    n_inputs: usize,
    /// The first dimensions of the input being read, and how many were read.
    dims: [i64; 2],
    pending_dims: usize,
    max_dims: usize,
    tensor_parameters: usize,
    outputs: Vec<&'a str>,
    n_outputs: usize,
    raw: Vec<(usize, usize)>,
    n_raw: usize,
}

impl<'a> Collect<'a> {
    fn new(cap: usize) -> Self {
        let reserve = cap.min(64);
        Self {
            header: Header::default(),
            cap,
            inputs: Vec::with_capacity(reserve),
            n_inputs: 0,
            dims: [0; 2],
            pending_dims: 0,
            max_dims: 0,
            tensor_parameters: 0,
            outputs: Vec::new(),
            n_outputs: 0,
            raw: Vec::with_capacity(reserve),
            n_raw: 0,
        }
    }
}

impl<'a> RequestVisitor<'a> for Collect<'a> {
    fn model_name(&mut self, name: &'a str) {
        self.header.model_name(name);
    }

    fn model_version(&mut self, version: &'a str) {
        self.header.model_version(version);
    }

    fn id(&mut self, id: &'a str) {
        self.header.id(id);
    }

    fn parameter(&mut self, key: &'a str, value: Param) {
        self.header.parameter(key, value);
    }

    fn dim(&mut self, d: i64) {
        if let Some(slot) = self.dims.get_mut(self.pending_dims) {
            *slot = d;
        }
        self.pending_dims += 1;
    }

    fn input(&mut self, input: InputView<'a>) {
        self.n_inputs += 1;
        self.max_dims = self.max_dims.max(input.n_dims);
        self.tensor_parameters = self.tensor_parameters.max(input.n_parameters);
        if self.inputs.len() < self.cap {
            self.inputs.push((input, self.dims));
        }
        self.dims = [0; 2];
        self.pending_dims = 0;
    }

    fn output(&mut self, name: &'a str, n_parameters: usize) {
        self.n_outputs += 1;
        self.tensor_parameters = self.tensor_parameters.max(n_parameters);
        if self.outputs.len() < self.cap {
            self.outputs.push(name);
        }
    }

    fn raw(&mut self, start: usize, end: usize) {
        self.n_raw += 1;
        if self.raw.len() < self.cap {
            self.raw.push((start, end));
        }
    }
}

/// A requested output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// P(fraud) per row, FP32.
    Probability,
    /// score >= threshold per row, BOOL.
    Flagged,
}

impl Output {
    fn parse(name: &str) -> Option<Self> {
        match name {
            OUTPUT_NAME => Some(Output::Probability),
            FLAGGED_NAME => Some(Output::Flagged),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Output::Probability => OUTPUT_NAME,
            Output::Flagged => FLAGGED_NAME,
        }
    }

    pub fn datatype(self) -> &'static str {
        match self {
            Output::Probability => "FP32",
            Output::Flagged => "BOOL",
        }
    }
}

/// The V2 datatypes a riskserve model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fp64,
    Int64,
    Bool,
    Bytes,
}

impl Kind {
    fn of(datatype: &str) -> Option<Self> {
        match datatype {
            "FP64" => Some(Kind::Fp64),
            "INT64" => Some(Kind::Int64),
            "BOOL" => Some(Kind::Bool),
            "BYTES" => Some(Kind::Bytes),
            _ => None,
        }
    }
}

/// Where one input's values are: a range of one of the request's arenas, or of
/// the request bytes themselves.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// A range of `f64s`.
    F64(usize, usize),
    /// A range of `i64s`.
    I64(usize, usize),
    /// A range of the request bytes (0/1 each).
    Bool(usize, usize),
    /// The packed tensor's range of the request bytes, and its range of `spans`.
    Str(usize, usize, usize, usize),
}

/// A plain request, decoded and validated: its inputs' values are read in place
/// (booleans, strings) or copied into aligned arenas (FP64, INT64: raw contents
/// need not be aligned inside the request).
#[derive(Debug)]
pub struct PlainRequest<'a> {
    data: &'a [u8],
    pub model_name: &'a str,
    pub model_version: &'a str,
    pub id: &'a str,
    pub routing_key: Option<String>,
    /// Rows of every input (≥ 1).
    pub rows: usize,
    outputs: Vec<Output>,
    inputs: Vec<(&'a str, Slot)>,
    f64s: Vec<f64>,
    i64s: Vec<i64>,
    spans: Vec<Option<(usize, usize)>>,
}

impl PlainRequest<'_> {
    /// The requested outputs in the client's order; none requested: probability.
    pub fn outputs(&self) -> &[Output] {
        if self.outputs.is_empty() {
            &[Output::Probability]
        } else {
            &self.outputs
        }
    }

    /// The inputs as named columns, in request order: FP64 → `F64`, INT64 →
    /// `I64`, BOOL → `Bool`, BYTES → `Str` (the columns the Python codec decodes).
    pub fn columns(&self) -> Vec<(&str, Column<'_>)> {
        self.inputs
            .iter()
            .map(|&(name, slot)| {
                let col = match slot {
                    Slot::F64(a, b) => Column::F64(&self.f64s[a..b]),
                    Slot::I64(a, b) => Column::I64(&self.i64s[a..b]),
                    Slot::Bool(a, b) => Column::Bool(&self.data[a..b]),
                    Slot::Str(a, b, s, e) => Column::Str(StrColumn {
                        data: &self.data[a..b],
                        spans: &self.spans[s..e],
                    }),
                };
                (name, col)
            })
            .collect()
    }
}

fn bad_input(index: usize, why: &'static str) -> Decline {
    Decline::Input { index, why }
}

/// Decodes and validates `data` as a plain request under `limits`: the one step
/// from request bytes to columns. Declines unless the Python codec and the data
/// plane's request checks accept it: the bytes decode; counts, names, the id and
/// the routing key are within `limits`; only a `routing_key` string parameter;
/// raw contents for every input and no typed contents; no tensor parameters;
/// outputs among probability and flagged, none twice; every input named, FP64,
/// INT64, BOOL or BYTES, of shape `[rows]` or `[rows, 1]` with the same
/// 1 ≤ rows ≤ `max_rows`, its raw content exactly `rows` values (BOOL bytes 0
/// or 1, BYTES a valid packed tensor), no FP64 value ±inf. Inputs are not yet
/// matched to a spec: see [`bind`].
pub fn decode_plain<'a>(data: &'a [u8], limits: &Limits) -> Result<PlainRequest<'a>, Decline> {
    let mut c = Collect::new(limits.max_inputs);
    visit_infer_request(data, &mut c).map_err(Decline::Wire)?;
    // The counts, as the codec checks them before anything else.
    if c.tensor_parameters > 0 {
        return Err(Decline::NotPlain("an input or output carries parameters"));
    }
    if c.n_inputs.max(c.n_outputs).max(c.n_raw) > limits.max_inputs {
        return Err(Decline::Limit("inputs, outputs or raw contents"));
    }
    if c.max_dims > MAX_DIMS {
        return Err(Decline::Limit("shape dimensions"));
    }
    let routing_key = c.header.check(
        limits.max_name_bytes,
        limits.max_routing_key_bytes,
        limits.max_parameters,
    )?;
    let max_name = limits.max_name_bytes;
    if c.inputs.iter().any(|(i, _)| i.name.len() > max_name)
        || c.outputs.iter().any(|o| o.len() > max_name)
    {
        return Err(Decline::Limit("an input or output name"));
    }
    if c.n_raw == 0 || c.n_raw != c.n_inputs {
        return Err(Decline::NotPlain(
            "raw contents are not sent for every input",
        ));
    }
    if c.inputs.iter().any(|(i, _)| i.has_contents) {
        return Err(Decline::NotPlain("an input has typed contents"));
    }
    let mut outputs = Vec::new();
    for name in &c.outputs {
        let o = Output::parse(name).ok_or(Decline::NotPlain("an unknown output is requested"))?;
        if outputs.contains(&o) {
            return Err(Decline::NotPlain("an output is requested twice"));
        }
        outputs.push(o);
    }
    // Headers first: the kinds and the row count, so the arenas are sized once.
    let mut rows = None;
    let mut kinds = Vec::with_capacity(c.inputs.len());
    let (mut n_f64, mut n_i64) = (0, 0);
    for (index, (inp, dims)) in c.inputs.iter().enumerate() {
        if inp.name.is_empty() {
            return Err(bad_input(index, "no name"));
        }
        let kind = Kind::of(inp.datatype)
            .ok_or(bad_input(index, "a datatype riskserve models do not take"))?;
        let shape_ok = match inp.n_dims {
            1 => true,
            2 => dims[1] == 1,
            _ => false,
        };
        if !shape_ok {
            return Err(bad_input(index, "shape is not [batch] or [batch, 1]"));
        }
        let n = usize::try_from(dims[0])
            .ok()
            .filter(|&n| n >= 1)
            .ok_or(bad_input(index, "batch size below 1"))?;
        if n > limits.max_rows {
            return Err(bad_input(index, "more rows than the limit"));
        }
        match rows {
            None => rows = Some(n),
            Some(r) if r != n => {
                return Err(bad_input(
                    index,
                    "batch size differs from the other inputs'",
                ))
            }
            _ => {}
        }
        match kind {
            Kind::Fp64 => n_f64 += 1,
            Kind::Int64 => n_i64 += 1,
            _ => {}
        }
        kinds.push(kind);
    }
    let rows = rows.ok_or(Decline::NotPlain("no inputs"))?;
    let mut req = PlainRequest {
        data,
        model_name: c.header.model_name,
        model_version: c.header.model_version,
        id: c.header.id,
        routing_key,
        rows,
        outputs,
        inputs: Vec::with_capacity(kinds.len()),
        f64s: Vec::with_capacity(n_f64 * rows),
        i64s: Vec::with_capacity(n_i64 * rows),
        spans: Vec::new(),
    };
    for (index, (((inp, _), &(start, end)), kind)) in
        c.inputs.iter().zip(&c.raw).zip(kinds).enumerate()
    {
        let raw = &data[start..end];
        let slot = match kind {
            Kind::Fp64 | Kind::Int64 => {
                if raw.len() != rows * 8 {
                    return Err(bad_input(index, "raw content is not 8 bytes per row"));
                }
                let words = raw.chunks_exact(8).map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    a
                });
                if kind == Kind::Fp64 {
                    let a = req.f64s.len();
                    req.f64s.extend(words.map(f64::from_le_bytes));
                    if req.f64s[a..].iter().any(|v| v.is_infinite()) {
                        return Err(bad_input(index, "holds +inf or -inf"));
                    }
                    Slot::F64(a, req.f64s.len())
                } else {
                    let a = req.i64s.len();
                    req.i64s.extend(words.map(i64::from_le_bytes));
                    Slot::I64(a, req.i64s.len())
                }
            }
            Kind::Bool => {
                if raw.len() != rows {
                    return Err(bad_input(index, "raw content is not 1 byte per row"));
                }
                if raw.iter().any(|&b| b > 1) {
                    return Err(bad_input(
                        index,
                        "BOOL content holds a byte other than 0 and 1",
                    ));
                }
                Slot::Bool(start, end)
            }
            Kind::Bytes => {
                let s = req.spans.len();
                let n = parse_packed_bytes_into(inp.name, raw, &mut req.spans)
                    .map_err(|_| bad_input(index, "not a valid packed BYTES tensor"))?;
                if n != rows {
                    return Err(bad_input(
                        index,
                        "packed BYTES element count differs from its shape",
                    ));
                }
                Slot::Str(start, end, s, req.spans.len())
            }
        };
        req.inputs.push((inp.name, slot));
    }
    Ok(req)
}

/// The request's columns matched to `pipeline`'s inputs (returned in spec order,
/// with the row count): every input declared, none twice, none missing, each of
/// exactly the V2 datatype of its spec dtype (float FP64, int INT64, bool BOOL,
/// string BYTES), as the data plane requires.
pub fn bind<'r>(
    req: &'r PlainRequest<'_>,
    pipeline: &FeaturePipeline,
) -> Result<(Vec<Column<'r>>, usize), Decline> {
    let named = req.columns();
    let inputs = pipeline.inputs();
    // Clients mostly send the inputs in the spec's order (the order of the model's
    // metadata): try the position after the last match before hashing the name.
    let next = Cell::new(0usize);
    let position = |name: &str| {
        let guess = next.get();
        let found = if inputs.get(guess).is_some_and(|i| i.name == name) {
            Some(guess)
        } else {
            pipeline.input_position(name)
        };
        if let Some(i) = found {
            next.set(i + 1);
        }
        found
    };
    let (cols, rows) = bind_columns(inputs, &named, false, position).map_err(Decline::Features)?;
    for (spec, col) in pipeline.inputs().iter().zip(&cols) {
        let exact = matches!(
            (spec.dtype, col),
            (DType::Float, Column::F64(_))
                | (DType::Int, Column::I64(_))
                | (DType::Bool, Column::Bool(_))
                | (DType::String, Column::Str(_))
        );
        if !exact {
            return Err(Decline::Datatype(spec.name.clone()));
        }
    }
    Ok((cols, rows))
}

// ---------------------------------------------------------------------------------
// Scoring
// ---------------------------------------------------------------------------------

/// What one scoring produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// P(fraud) per row: the model's float64 predictions cast to float32.
    pub scores: Vec<f32>,
    /// Nanoseconds spent parsing, validating and transforming.
    pub input_ns: u64,
    /// Nanoseconds spent in the model and counting drift.
    pub infer_ns: u64,
}

/// The reply's fields other than the scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reply<'s> {
    pub model_name: &'s str,
    pub model_version: &'s str,
    pub id: &'s str,
    /// The `variant` string parameter of the reply.
    pub variant: &'s str,
    /// The `deployment_revision` string parameter of the reply.
    pub revision: &'s str,
    /// A row is flagged when its float32 score is ≥ this as float32 (NumPy 2's
    /// `probs >= threshold` for a float32 array and a Python float).
    pub threshold: f64,
}

/// One model version's parts, borrowed: its compiled feature pipeline, its
/// model and its drift monitor (the one its other paths count in).
#[derive(Clone, Copy)]
pub struct FastPath<'m> {
    pub pipeline: &'m FeaturePipeline,
    pub model: &'m Gbdt,
    pub drift: Option<&'m DriftMonitor>,
    pub limits: Limits,
}

fn nanos(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.duration_since(from).as_nanos()).unwrap_or(u64::MAX)
}

impl<'m> FastPath<'m> {
    /// The parts, refused when they do not fit together: the model must take
    /// as many features as the pipeline produces, and the drift monitor must
    /// have been built for the pipeline's inputs.
    pub fn new(
        pipeline: &'m FeaturePipeline,
        model: &'m Gbdt,
        drift: Option<&'m DriftMonitor>,
        limits: Limits,
    ) -> Result<Self, Error> {
        if model.n_features() != pipeline.n_features() {
            return Err(Error::Matrix(format!(
                "the model takes {} features, the feature pipeline produces {}",
                model.n_features(),
                pipeline.n_features()
            )));
        }
        if drift.is_some_and(|d| d.inputs() != pipeline.inputs()) {
            return Err(Error::Spec(
                "the drift monitor was built for a spec with other inputs".into(),
            ));
        }
        Ok(Self {
            pipeline,
            model,
            drift,
            limits,
        })
    }

    /// Scores a plain request as `LoadedModel.score` does the columns the
    /// Python path decodes from it: features, model, scores cast to float32, and
    /// the inputs and scores counted in drift, only once everything succeeded.
    /// `inline_max_rows`: decline requests with more rows (before any work).
    pub fn score<'a>(
        &self,
        data: &'a [u8],
        inline_max_rows: Option<usize>,
    ) -> Result<(PlainRequest<'a>, Scored), Decline> {
        let t0 = Instant::now();
        let req = decode_plain(data, &self.limits)?;
        if let Some(limit) = inline_max_rows.filter(|&l| req.rows > l) {
            return Err(Decline::Inline {
                rows: req.rows,
                limit,
            });
        }
        let (cols, rows) = bind(&req, self.pipeline)?;
        let mut x = vec![0f32; rows * self.pipeline.n_features()];
        self.pipeline
            .transform_bound(&cols, rows, &mut x)
            .map_err(Decline::Features)?;
        let t1 = Instant::now();
        let mut out = vec![0f64; rows];
        self.model
            .predict(&x, &mut out)
            .map_err(Decline::Features)?;
        let scores: Vec<f32> = out.iter().map(|&s| s as f32).collect();
        if let Some(d) = self.drift {
            // The scores are counted as float32 (LoadedModel.score counts the array
            // the runtime returns), widened.
            let wide: Vec<f64> = scores.iter().map(|&s| f64::from(s)).collect();
            d.observe(&cols, rows, &wide, None);
        }
        let t2 = Instant::now();
        drop(cols);
        let scored = Scored {
            scores,
            input_ns: nanos(t0, t1),
            infer_ns: nanos(t1, t2),
        };
        Ok((req, scored))
    }

    /// [`FastPath::score`] and the reply's bytes: a `ModelInferResponse`, or with
    /// `stream` a `ModelStreamInferResponse` holding it.
    pub fn infer(
        &self,
        data: &[u8],
        reply: &Reply<'_>,
        inline_max_rows: usize,
        stream: bool,
    ) -> Result<(Vec<u8>, Scored), Decline> {
        let (req, scored) = self.score(data, Some(inline_max_rows))?;
        let bytes = encode_reply(reply, req.outputs(), &scored.scores, stream);
        Ok((bytes, scored))
    }
}

// ---------------------------------------------------------------------------------
// The reply
// ---------------------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The tag and length of a length-delimited field (fields 1-15: a 1-byte tag).
fn put_len(out: &mut Vec<u8>, field: u8, len: usize) {
    out.push((field << 3) | 2);
    put_varint(out, len as u64);
}

/// Size of a length-delimited field of `len` bytes (fields 1-15).
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn put_bytes(out: &mut Vec<u8>, field: u8, b: &[u8]) {
    put_len(out, field, b.len());
    out.extend_from_slice(b);
}

/// A proto3 string field: omitted when empty, as protobuf does.
fn put_str(out: &mut Vec<u8>, field: u8, s: &str) {
    if !s.is_empty() {
        put_bytes(out, field, s.as_bytes());
    }
}

/// The `ModelInferResponse` the Python path's `encode_response` builds for these
/// scores (decoded, the same message): model name, version and id; parameters
/// `variant` and `deployment_revision` as string parameters; one output per
/// entry of `outputs` (probability FP32, flagged BOOL), shape `[rows]`, and its
/// raw content (little-endian float32; one 0/1 byte per row). With `stream`, a
/// `ModelStreamInferResponse` holding it (no error message).
pub fn encode_reply(
    reply: &Reply<'_>,
    outputs: &[Output],
    scores: &[f32],
    stream: bool,
) -> Vec<u8> {
    let rows = scores.len();
    let mut out = Vec::with_capacity(128 + outputs.len() * (48 + 4 * rows));
    put_str(&mut out, 1, reply.model_name);
    put_str(&mut out, 2, reply.model_version);
    put_str(&mut out, 3, reply.id);
    for (key, value) in [
        ("variant", reply.variant),
        ("deployment_revision", reply.revision),
    ] {
        // InferParameter { string_param = 3 }, always set (even to "").
        let param = field_len(value.len());
        put_len(&mut out, 4, field_len(key.len()) + field_len(param));
        put_bytes(&mut out, 1, key.as_bytes());
        put_len(&mut out, 2, param);
        put_bytes(&mut out, 3, value.as_bytes());
    }
    let shape = varint_len(rows as u64);
    for o in outputs {
        let (name, datatype) = (o.name(), o.datatype());
        put_len(
            &mut out,
            5,
            field_len(name.len()) + field_len(datatype.len()) + field_len(shape),
        );
        put_bytes(&mut out, 1, name.as_bytes());
        put_bytes(&mut out, 2, datatype.as_bytes());
        put_len(&mut out, 3, shape);
        put_varint(&mut out, rows as u64);
    }
    let threshold = reply.threshold as f32;
    for o in outputs {
        match o {
            Output::Probability => {
                put_len(&mut out, 6, 4 * rows);
                for s in scores {
                    out.extend_from_slice(&s.to_le_bytes());
                }
            }
            Output::Flagged => {
                put_len(&mut out, 6, rows);
                out.extend(scores.iter().map(|&s| u8::from(s >= threshold)));
            }
        }
    }
    if !stream {
        return out;
    }
    let mut wrapped = Vec::with_capacity(out.len() + 6);
    put_bytes(&mut wrapped, 2, &out);
    wrapped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{field, fld, varint};

    /// A `map<string, InferParameter>` entry holding a string parameter.
    fn entry(key: &str, value: &str) -> Vec<u8> {
        let mut entry = fld(1, key.as_bytes());
        entry.extend(fld(2, &fld(3, value.as_bytes())));
        entry
    }

    /// A request parameter (field 4) holding a string.
    fn string_param(key: &str, value: &str) -> Vec<u8> {
        fld(4, &entry(key, value))
    }

    /// An input header: name, datatype, a packed shape.
    fn input(name: &str, datatype: &str, shape: &[u64]) -> Vec<u8> {
        let mut dims = Vec::new();
        for &d in shape {
            varint(d, &mut dims);
        }
        let mut inp = fld(1, name.as_bytes());
        inp.extend(fld(2, datatype.as_bytes()));
        inp.extend(fld(3, &dims));
        fld(5, &inp)
    }

    fn packed(values: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in values {
            out.extend((v.len() as u32).to_le_bytes());
            out.extend(v.as_bytes());
        }
        out
    }

    struct Req {
        head: Vec<u8>,
        inputs: Vec<Vec<u8>>,
        raw: Vec<Vec<u8>>,
        tail: Vec<u8>,
    }

    impl Req {
        /// Two rows of an FP64, an INT64, a BOOL and a BYTES input.
        fn valid() -> Self {
            let mut head = fld(1, b"fraud");
            head.extend(fld(3, b"req-1"));
            let f: Vec<u8> = [1.5f64, f64::NAN]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let i: Vec<u8> = [7i64, -2].iter().flat_map(|v| v.to_le_bytes()).collect();
            Req {
                head,
                inputs: vec![
                    input("amount", "FP64", &[2]),
                    input("hour", "INT64", &[2, 1]),
                    input("new_device", "BOOL", &[2]),
                    input("channel", "BYTES", &[2]),
                ],
                raw: vec![f, i, vec![1, 0], packed(&["web", ""])],
                tail: Vec::new(),
            }
        }

        fn bytes(&self) -> Vec<u8> {
            let mut out = self.head.clone();
            for i in &self.inputs {
                out.extend(i);
            }
            out.extend(&self.tail);
            for r in &self.raw {
                field(7, r, &mut out);
            }
            out
        }
    }

    fn limits() -> Limits {
        Limits {
            max_parameters: 4,
            max_inputs: 8,
            max_name_bytes: 16,
            max_routing_key_bytes: 8,
            max_parameter_bytes: 32,
            max_rows: 10,
        }
    }

    fn decline(r: &Req) -> Decline {
        match decode_plain(&r.bytes(), &limits()) {
            Err(d) => d,
            Ok(p) => panic!("accepted {p:?}"),
        }
    }

    #[test]
    fn decodes_a_plain_request() {
        let data = Req::valid().bytes();
        let req = decode_plain(&data, &limits()).unwrap();
        assert_eq!(
            (req.model_name, req.model_version, req.id),
            ("fraud", "", "req-1")
        );
        assert_eq!(req.rows, 2);
        assert_eq!(req.outputs(), &[Output::Probability]);
        let cols = req.columns();
        let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["amount", "hour", "new_device", "channel"]);
        match &cols[0].1 {
            Column::F64(v) => assert!(v[0] == 1.5 && v[1].is_nan()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(cols[1].1, Column::I64(&[7, -2])));
        assert!(matches!(cols[2].1, Column::Bool(&[1, 0])));
        match &cols[3].1 {
            Column::Str(s) => assert_eq!((s.get(0), s.get(1)), (Some(&b"web"[..]), None)),
            other => panic!("{other:?}"),
        }
        let json = crate::record::rows_json(&cols, 2).unwrap();
        assert_eq!(
            json[0],
            r#"{"amount":1.5,"hour":7,"new_device":true,"channel":"web"}"#
        );
    }

    #[test]
    fn reads_unaligned_numbers() {
        // Shift every raw content by one byte with a leading unknown field.
        let mut r = Req::valid();
        r.head.splice(0..0, [0x58, 0x01]); // field 11, varint 1: unknown, skipped
        let data = r.bytes();
        let req = decode_plain(&data, &limits()).unwrap();
        assert!(matches!(req.columns()[1].1, Column::I64(&[7, -2])));
    }

    #[test]
    fn declines_what_is_not_plain() {
        type Edit = fn(&mut Req);
        let cases: [(&str, Edit); 22] = [
            ("runs past the end", |r| r.tail.push(0x0a)),
            ("typed contents", |r| {
                let body = [
                    fld(1, b"amount"),
                    fld(2, b"FP64"),
                    fld(3, &[2]),
                    fld(5, b""),
                ]
                .concat();
                r.inputs[0] = fld(5, &body);
            }),
            ("raw contents are not sent", |r| r.raw.clear()),
            ("raw contents are not sent", |r| {
                r.raw.pop();
            }),
            ("carries parameters", |r| {
                r.tail = fld(
                    6,
                    &[fld(1, b"probability"), fld(2, &entry("a", "b"))].concat(),
                )
            }),
            ("unknown output", |r| r.tail = fld(6, &fld(1, b"score"))),
            ("requested twice", |r| {
                r.tail = [fld(6, &fld(1, b"flagged")), fld(6, &fld(1, b"flagged"))].concat()
            }),
            ("other than routing_key", |r| {
                r.head.extend(string_param("priority", "x"))
            }),
            ("not a non-empty string", |r| {
                r.head.extend(string_param("routing_key", ""))
            }),
            ("routing_key over the limit", |r| {
                r.head.extend(string_param("routing_key", "123456789"))
            }),
            ("request id over", |r| r.head.extend(fld(3, b"123456789"))),
            ("model name or version over", |r| {
                r.head.extend(fld(1, &[b'm'; 17]))
            }),
            ("input or output name over", |r| {
                r.inputs[0] = input(&"a".repeat(17), "FP64", &[2])
            }),
            ("#0: a datatype", |r| {
                r.inputs[0] = input("amount", "FP32", &[2])
            }),
            ("#0: shape", |r| {
                r.inputs[0] = input("amount", "FP64", &[1, 2])
            }),
            ("#0: batch size below 1", |r| {
                r.inputs[0] = input("amount", "FP64", &[0])
            }),
            ("#0: more rows than the limit", |r| {
                r.inputs[0] = input("amount", "FP64", &[11])
            }),
            ("#1: batch size differs", |r| {
                r.inputs[1] = input("hour", "INT64", &[1])
            }),
            ("#0: raw content is not 8 bytes", |r| r.raw[0].truncate(15)),
            ("#2: BOOL content", |r| r.raw[2][0] = 2),
            ("#3: not a valid packed", |r| r.raw[3].push(9)),
            ("#0: holds +inf", |r| {
                r.raw[0][..8].copy_from_slice(&f64::NEG_INFINITY.to_le_bytes())
            }),
        ];
        for (want, edit) in cases {
            let mut r = Req::valid();
            edit(&mut r);
            let d = decline(&r).to_string(); // panics when accepted
            assert!(d.contains(want), "{d:?} should say {want:?}");
        }
        let mut r = Req::valid();
        r.raw[3] = packed(&["web"]);
        assert_eq!(
            decline(&r),
            bad_input(3, "packed BYTES element count differs from its shape")
        );
    }

    #[test]
    fn accepts_a_routing_key_and_both_outputs() {
        let mut r = Req::valid();
        r.head.extend(string_param("routing_key", "cust-1"));
        r.tail = [fld(6, &fld(1, b"flagged")), fld(6, &fld(1, b"probability"))].concat();
        let data = r.bytes();
        let req = decode_plain(&data, &limits()).unwrap();
        assert_eq!(req.routing_key.as_deref(), Some("cust-1"));
        assert_eq!(req.outputs(), &[Output::Flagged, Output::Probability]);
    }

    #[test]
    fn peeks_the_request_level_fields() {
        let mut r = Req::valid();
        r.head.extend(fld(2, b"3"));
        r.head.extend(string_param("routing_key", "k"));
        let data = r.bytes();
        let p = peek_request(&data, 16, 8, 4).unwrap();
        assert_eq!(
            (p.model_name, p.model_version, p.id),
            ("fraud", "3", "req-1")
        );
        assert_eq!(p.routing_key.as_deref(), Some("k"));
        // The last routing_key wins, as in a protobuf map.
        r.head.extend(string_param("routing_key", "k2"));
        let data = r.bytes();
        assert_eq!(
            peek_request(&data, 16, 8, 4)
                .unwrap()
                .routing_key
                .as_deref(),
            Some("k2")
        );
        assert!(
            peek_request(&data, 16, 8, 1).is_none(),
            "two parameters over a limit of one"
        );
        assert!(
            peek_request(&data, 4, 8, 4).is_none(),
            "model name over 4 bytes"
        );
        assert!(peek_request(&data, 16, 4, 4).is_none(), "id over 4 bytes");
        assert!(
            peek_request(&data[..data.len() - 1], 16, 8, 4).is_none(),
            "truncated"
        );
        let plain = Req::valid().bytes();
        assert_eq!(peek_request(&plain, 16, 8, 4).unwrap().routing_key, None);
        let mut r = Req::valid();
        let mut entry = fld(1, b"routing_key");
        entry.extend(fld(2, &[0x10, 0x05])); // int64_param = 5
        r.head.extend(fld(4, &entry));
        assert!(
            peek_request(&r.bytes(), 16, 8, 4).is_none(),
            "an int routing_key"
        );
    }

    #[test]
    fn encodes_the_reply() {
        let reply = Reply {
            model_name: "m",
            model_version: "1",
            id: "",
            variant: "v1",
            revision: "",
            threshold: 0.5,
        };
        let out = encode_reply(&reply, &[Output::Flagged], &[0.25, 0.5], false);
        let mut want = fld(1, b"m");
        want.extend(fld(2, b"1"));
        want.extend(string_param("variant", "v1"));
        want.extend(string_param("deployment_revision", ""));
        let mut t = fld(1, b"flagged");
        t.extend(fld(2, b"BOOL"));
        t.extend(fld(3, &[2]));
        want.extend(fld(5, &t));
        want.extend(fld(6, &[0, 1]));
        assert_eq!(out, want);
        let stream = encode_reply(&reply, &[Output::Flagged], &[0.25, 0.5], true);
        assert_eq!(stream, fld(2, &want));
        for v in [0, 1, 127, 128, 16383, 16384, u64::from(u32::MAX), u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
    }
}
