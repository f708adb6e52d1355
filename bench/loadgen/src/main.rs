//! A light closed-loop gRPC load generator for riskserve (Open Inference Protocol, ModelInfer).
//!
//! ```text
//! loadgen --target HOST:PORT --requests FILE [--concurrency C] [--connections N]
//!     [--duration S] [--warmup S] [--rows R] [--threads T] [--timeout S] [--out FILE.json]
//! ```
//!
//! FILE holds serialized `inference.ModelInferRequest` messages, each prefixed by its length
//! as a little-endian u32 (bench/make_requests.py writes it). They are framed as gRPC
//! messages once, at start-up, and sent as they are, round-robin: no protobuf encoding on the
//! hot path, and the reply is checked by walking its wire format (no codegen).
//!
//! The client speaks gRPC over the `h2` crate directly (the HTTP/2 layer under hyper and
//! tonic): each request's HEADERS and DATA(END_STREAM) frames are queued together and leave
//! in one write, as from a gRPC C-core client. Through tonic (`Grpc::unary` with a
//! pass-through codec) every request took three writes (HEADERS, DATA, an empty END_STREAM
//! DATA), so ~1.7x the generator's CPU per request and three reads for the server.
//!
//! C clients each keep one request in flight (send, wait for the reply, send the next), spread
//! over N HTTP/2 connections, on a tokio runtime of T threads (1 by default: the generator is
//! meant to take a small share of a core). The first W seconds are warm-up; measured are the
//! requests that complete inside the following S seconds. A reply counts when its status is
//! OK and it holds a `raw_output_contents` entry of 4 x R bytes (one FP32 per row); else it is
//! an error "bad_reply". Reported: req/s, rows/s, latency percentiles, errors by status code
//! and the generator's own CPU use (getrusage user + system over the measured window).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::{BufMut, Bytes, BytesMut};
use clap::Parser;
use h2::Reason;
use h2::client::SendRequest;
use http::header::{CONTENT_TYPE, TE, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use serde_json::json;
use tokio::net::TcpStream;

const METHOD: &str = "/inference.GRPCInferenceService/ModelInfer";

#[derive(Parser)]
#[command(about = "Closed-loop gRPC ModelInfer load generator (pre-serialized requests)")]
struct Args {
    /// HOST:PORT of the gRPC server.
    #[arg(long)]
    target: String,
    /// Length-prefixed (u32 LE) serialized ModelInferRequest messages, cycled round-robin.
    #[arg(long)]
    requests: PathBuf,
    /// Requests in flight: each client sends, waits for the reply, sends the next.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// HTTP/2 connections the clients are spread over [default: min(concurrency, 4)].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    connections: Option<u32>,
    /// Measured seconds.
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// Seconds before measuring.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Rows per request: a good reply holds a raw output of 4 x rows bytes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rows: u32,
    /// Tokio worker threads (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    threads: u32,
    /// Per-request deadline, seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Write the report as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Open loop: send at this constant rate (requests/s) whatever the replies do;
    /// latency then runs from each request's scheduled send time, and --concurrency
    /// caps the requests in flight (one due beyond the cap is counted as dropped).
    #[arg(long)]
    rate: Option<f64>,
    /// Accept any reply with an output tensor (e.g. MLServer's FP64 typed contents),
    /// instead of a raw FP32 output of 4 x rows bytes.
    #[arg(long)]
    any_output: bool,
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode> {
    let args = Args::parse();
    let secs = |name: &str, v: f64, min: f64| -> Result<Duration> {
        if v.is_nan() || v < min {
            bail!("--{name} must be at least {min} s (got {v})");
        }
        Duration::try_from_secs_f64(v).with_context(|| format!("--{name} {v}"))
    };
    let duration = secs("duration", args.duration, 0.001)?;
    let warmup = secs("warmup", args.warmup, 0.0)?;
    let timeout = secs("timeout", args.timeout, 0.001)?;
    let payloads = read_requests(&args.requests)?;

    let rt = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads as usize)
            .enable_all()
            .build()
    }
    .context("cannot start the tokio runtime")?;
    if let Some(r) = args.rate
        && !(r.is_finite() && r > 0.0)
    {
        bail!("--rate must be > 0 requests/s (got {r})");
    }
    let cfg = Config {
        rate: args.rate,
        concurrency: args.concurrency as usize,
        connections: args.connections.unwrap_or(args.concurrency.min(4)) as usize,
        rows: args.rows as usize,
        any_output: args.any_output,
        warmup,
        duration,
        timeout,
    };
    let res = rt.block_on(load(&args.target, payloads.clone(), &cfg))?;

    let doc = report(&args, &cfg, &payloads, &res);
    print_table(&args, &cfg, payloads.len(), &doc);
    if let Some(out) = &args.out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir:?}"))?;
        }
        let text = serde_json::to_string_pretty(&doc)? + "\n";
        std::fs::write(out, text).with_context(|| format!("cannot write {out:?}"))?;
        println!("wrote {}", out.display());
    }
    Ok(if res.lat_us.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The messages of a length-prefixed file, each framed as a gRPC message (5-byte prefix).
fn read_requests(path: &Path) -> Result<Arc<[Bytes]>> {
    let buf = Bytes::from(std::fs::read(path).with_context(|| format!("cannot read {path:?}"))?);
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let Some(head) = buf.get(at..at + 4) else {
            bail!("{path:?}: truncated length prefix at byte {at}");
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if buf.len() - at - 4 < len {
            bail!("{path:?}: message at byte {at} claims {len} bytes, the file ends first");
        }
        let mut framed = BytesMut::with_capacity(5 + len);
        framed.put_u8(0); // not compressed
        framed.put_u32(len as u32);
        framed.put_slice(&buf[at + 4..at + 4 + len]);
        out.push(framed.freeze());
        at += 4 + len;
    }
    if out.is_empty() {
        bail!("{path:?} holds no requests");
    }
    Ok(out.into())
}

/// Reads a protobuf varint off the front of `p`.
fn varint(p: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let (&b, rest) = p.split_first()?;
        *p = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// A well-formed ModelInferResponse with a raw_output_contents (field 6) of `want`
/// bytes, or (`want` None) with at least one output tensor (field 5), raw or typed.
fn reply_ok(msg: &[u8], want: Option<usize>) -> bool {
    let mut p = msg;
    let mut found = false;
    while !p.is_empty() {
        let Some(key) = varint(&mut p) else {
            return false;
        };
        let skip = match key & 7 {
            0 => match varint(&mut p) {
                Some(_) => 0,
                None => return false,
            },
            1 => 8,
            5 => 4,
            2 => match varint(&mut p).and_then(|n| usize::try_from(n).ok()) {
                Some(n) => {
                    found |= match want {
                        Some(w) => key >> 3 == 6 && n == w,
                        None => key >> 3 == 5,
                    };
                    n
                }
                None => return false,
            },
            _ => return false, // groups are not used by this protocol
        };
        let Some(rest) = p.get(skip..) else {
            return false;
        };
        p = rest;
    }
    found
}

/// Why a call failed: a gRPC status code name and a message.
struct Fail {
    code: &'static str,
    msg: String,
}

fn fail(code: &'static str, msg: impl Into<String>) -> Fail {
    Fail {
        code,
        msg: msg.into(),
    }
}

const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// An HTTP/2 error as gRPC maps it (stream resets by reason; connection loss: UNAVAILABLE).
fn h2_fail(e: h2::Error) -> Fail {
    let code = match e.reason() {
        _ if e.is_io() || e.is_go_away() => "UNAVAILABLE",
        Some(Reason::REFUSED_STREAM) => "UNAVAILABLE",
        Some(Reason::CANCEL) => "CANCELLED",
        Some(Reason::ENHANCE_YOUR_CALM) => "RESOURCE_EXHAUSTED",
        Some(Reason::INADEQUATE_SECURITY) => "PERMISSION_DENIED",
        _ => "INTERNAL",
    };
    fail(code, e.to_string())
}

/// grpc-status (and grpc-message) of a header block, when it has one.
fn grpc_status(h: &HeaderMap) -> Option<Result<(), Fail>> {
    let raw = h.get("grpc-status")?;
    let code = std::str::from_utf8(raw.as_bytes())
        .ok()
        .and_then(|s| s.parse::<usize>().ok());
    Some(match code {
        Some(0) => Ok(()),
        c => Err(fail(
            c.and_then(|c| CODES.get(c)).copied().unwrap_or("UNKNOWN"),
            h.get("grpc-message")
                .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                .unwrap_or_default(),
        )),
    })
}

/// What every request carries: the URI and the gRPC headers.
struct Call {
    uri: Uri,
    headers: HeaderMap,
    timeout: Duration,
}

impl Call {
    /// One ModelInfer with the deadline: `framed` is the gRPC message (5-byte prefix +
    /// request). Returns the reply message's bytes.
    async fn run(&self, h2: &mut SendRequest<Bytes>, framed: Bytes) -> Result<Bytes, Fail> {
        match tokio::time::timeout(self.timeout, self.send(h2, framed)).await {
            Ok(res) => res, // on timeout the dropped stream is reset (CANCEL)
            Err(_) => Err(fail("DEADLINE_EXCEEDED", "deadline exceeded")),
        }
    }

    async fn send(&self, h2: &mut SendRequest<Bytes>, framed: Bytes) -> Result<Bytes, Fail> {
        std::future::poll_fn(|cx| h2.poll_ready(cx))
            .await
            .map_err(h2_fail)?;
        let mut req = Request::new(());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        // HEADERS and DATA(END_STREAM) are queued together, so they leave in one write.
        let (reply, mut body_tx) = h2.send_request(req, false).map_err(h2_fail)?;
        body_tx.send_data(framed, true).map_err(h2_fail)?;
        let (head, mut body) = reply.await.map_err(h2_fail)?.into_parts();
        if head.status != http::StatusCode::OK {
            return Err(fail("UNKNOWN", format!("HTTP status {}", head.status)));
        }
        if let Some(status) = grpc_status(&head.headers) {
            return status.map(|()| Bytes::new()); // trailers-only reply
        }
        let mut data = Bytes::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(h2_fail)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data = if data.is_empty() {
                chunk
            } else {
                [&data[..], &chunk[..]].concat().into()
            };
        }
        let trailers = body.trailers().await.map_err(h2_fail)?.unwrap_or_default();
        grpc_status(&trailers).unwrap_or_else(|| Err(fail("INTERNAL", "no grpc-status")))?;
        // One uncompressed message: flag 0, big-endian u32 length, the message.
        let len = data
            .get(1..5)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
        Ok(match (data.first(), len) {
            (Some(0), Some(n)) if data.len() == 5 + n => data.slice(5..),
            _ => Bytes::new(), // not one message: fails the reply check
        })
    }
}

/// Opens one HTTP/2 connection; its driver runs as its own task.
async fn connect(target: &str) -> Result<SendRequest<Bytes>> {
    let tcp = match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(target)).await
    {
        Ok(tcp) => tcp.with_context(|| format!("cannot connect to {target}"))?,
        Err(_) => bail!("cannot connect to {target}: no answer in 10 s"),
    };
    tcp.set_nodelay(true)?;
    let (h2, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .handshake(tcp)
        .await
        .with_context(|| format!("HTTP/2 handshake with {target}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("loadgen: connection lost: {e}");
        }
    });
    Ok(h2)
}

struct Config {
    rate: Option<f64>,
    concurrency: usize,
    connections: usize,
    rows: usize,
    any_output: bool,
    warmup: Duration,
    duration: Duration,
    timeout: Duration,
}

#[derive(Default)]
struct Tally {
    lat_us: Vec<u32>,
    errors: BTreeMap<&'static str, u64>,
}

struct Results {
    lat_us: Vec<u32>, // sorted
    errors: BTreeMap<&'static str, u64>,
    /// Open loop: requests due while --concurrency were in flight, not sent.
    dropped: u64,
    /// Open loop: how late sends left against their schedule, sorted µs.
    lag_us: Vec<u32>,
    /// Open loop: latency of failed calls by status code (e.g. how fast a
    /// RESOURCE_EXHAUSTED refusal came back), sorted µs.
    error_lat_us: BTreeMap<&'static str, Vec<u32>>,
    cpu_seconds: f64,
    cpu_wall: f64,
}

async fn load(target: &str, payloads: Arc<[Bytes]>, cfg: &Config) -> Result<Results> {
    let uri: Uri = format!("http://{target}{METHOD}")
        .parse()
        .with_context(|| format!("bad --target {target:?} (want HOST:PORT)"))?;
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    headers.insert(USER_AGENT, HeaderValue::from_static("riskserve-loadgen"));
    let call_with = |timeout: Duration| -> Result<Call> {
        let mut headers = headers.clone();
        // grpc-timeout: at most 8 digits, in milliseconds.
        let ms = timeout.as_millis().clamp(1, 99_999_999);
        headers.insert("grpc-timeout", HeaderValue::try_from(format!("{ms}m"))?);
        Ok(Call {
            uri: uri.clone(),
            headers,
            timeout,
        })
    };
    let call = Arc::new(call_with(cfg.timeout)?);
    // The probe checks the server and the request file, not the deadline under test.
    let probe = call_with(cfg.timeout.max(Duration::from_secs(10)))?;
    let want = (!cfg.any_output).then_some(4 * cfg.rows);
    let mut conns = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        let mut h2 = connect(target).await?;
        // One real request per connection before the clock starts.
        let reply = probe.run(&mut h2, payloads[0].clone()).await.map_err(|f| {
            anyhow::anyhow!("first ModelInfer to {target} failed: {} {}", f.code, f.msg)
        })?;
        if !reply_ok(&reply, want) {
            bail!(
                "first ModelInfer reply from {target} ({} bytes) has no {} (is --rows {} right?)",
                reply.len(),
                want.map_or("output tensor".into(), |w| format!(
                    "raw output of {w} bytes"
                )),
                cfg.rows
            );
        }
        conns.push(h2);
    }

    let start = Instant::now();
    let (from, to) = (start + cfg.warmup, start + cfg.warmup + cfg.duration);
    // The generator's CPU over the measured window.
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(from.into()).await;
        let (t0, c0) = (Instant::now(), cpu_seconds());
        tokio::time::sleep_until(to.into()).await;
        let (t1, c1) = (Instant::now(), cpu_seconds());
        (c1 - c0, (t1 - t0).as_secs_f64())
    });
    let (mut lat_us, errors, dropped, mut lag_us, mut error_lat_us) = match cfg.rate {
        Some(rate) => open_loop(&conns, payloads, call, want, rate, cfg, start, from, to).await?,
        None => {
            let (lat, err) = closed_loop(&conns, payloads, call, want, cfg, from, to).await?;
            (lat, err, 0, Vec::new(), BTreeMap::new())
        }
    };
    let (cpu_seconds, cpu_wall) = cpu.await.context("the CPU sampler failed")?;
    lat_us.sort_unstable();
    lag_us.sort_unstable();
    for v in error_lat_us.values_mut() {
        v.sort_unstable();
    }
    Ok(Results {
        lat_us,
        errors,
        dropped,
        lag_us,
        error_lat_us,
        cpu_seconds,
        cpu_wall,
    })
}

type Errors = BTreeMap<&'static str, u64>;

/// C clients, each with one request in flight: send, wait for the reply, send the next.
async fn closed_loop(
    conns: &[SendRequest<Bytes>],
    payloads: Arc<[Bytes]>,
    call: Arc<Call>,
    want: Option<usize>,
    cfg: &Config,
    from: Instant,
    to: Instant,
) -> Result<(Vec<u32>, Errors)> {
    let clients: Vec<_> = (0..cfg.concurrency)
        .map(|k| {
            let mut h2 = conns[k % conns.len()].clone();
            let (payloads, call) = (payloads.clone(), call.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut i = k * 7919; // spread the clients over the request set
                loop {
                    let t0 = Instant::now();
                    if t0 >= to {
                        return tally;
                    }
                    let body = payloads[i % payloads.len()].clone();
                    i += 1;
                    let failed = match call.run(&mut h2, body).await {
                        Ok(reply) if reply_ok(&reply, want) => None,
                        Ok(_) => Some("bad_reply"),
                        Err(f) => Some(f.code),
                    };
                    let t1 = Instant::now();
                    if (from..=to).contains(&t1) {
                        match failed {
                            None => {
                                let us = (t1 - t0).as_micros();
                                tally.lat_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                            }
                            Some(code) => *tally.errors.entry(code).or_default() += 1,
                        }
                    }
                    if failed == Some("UNAVAILABLE") {
                        // The connection is gone: no busy loop until the end of the run.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect();

    let mut lat_us = Vec::new();
    let mut errors = BTreeMap::new();
    for c in clients {
        let tally = c.await.context("a client task failed")?;
        lat_us.extend(tally.lat_us);
        for (code, n) in tally.errors {
            *errors.entry(code).or_default() += n;
        }
    }
    Ok((lat_us, errors))
}

/// Requests sent at start + i / rate, whatever the replies do; latency from the
/// scheduled time (no coordinated omission); at most `cfg.concurrency` in flight.
#[allow(clippy::too_many_arguments)]
async fn open_loop(
    conns: &[SendRequest<Bytes>],
    payloads: Arc<[Bytes]>,
    call: Arc<Call>,
    want: Option<usize>,
    rate: f64,
    cfg: &Config,
    start: Instant,
    from: Instant,
    to: Instant,
) -> Result<(
    Vec<u32>,
    Errors,
    u64,
    Vec<u32>,
    BTreeMap<&'static str, Vec<u32>>,
)> {
    let inflight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(Instant, Instant, Option<&'static str>)>();
    let conns: Vec<SendRequest<Bytes>> = conns.to_vec();
    let cap = cfg.concurrency;
    let handle = tokio::runtime::Handle::current();
    // The schedule is kept by an OS thread: tokio's timer ticks in whole
    // milliseconds, and spinning instead would steal from the server when the two
    // vCPUs are hyperthreads of one core. A thread sleep wakes within ~60 µs.
    let scheduler = tokio::task::spawn_blocking(move || {
        let (mut dropped, mut lag_us) = (0u64, Vec::new());
        let mut i: u64 = 0;
        loop {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if due >= to {
                break;
            }
            let now = Instant::now();
            if now < due {
                std::thread::sleep(due - now);
            }
            let counted = due >= from;
            if inflight.load(std::sync::atomic::Ordering::Relaxed) >= cap {
                if counted {
                    dropped += 1;
                }
                i += 1;
                continue;
            }
            if counted {
                let lag = Instant::now().saturating_duration_since(due).as_micros();
                lag_us.push(u32::try_from(lag).unwrap_or(u32::MAX));
            }
            inflight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut h2 = conns[i as usize % conns.len()].clone();
            let body = payloads[i as usize % payloads.len()].clone();
            let (call, tx, inflight) = (call.clone(), tx.clone(), inflight.clone());
            handle.spawn(async move {
                let failed = match call.run(&mut h2, body).await {
                    Ok(reply) if reply_ok(&reply, want) => None,
                    Ok(_) => Some("bad_reply"),
                    Err(f) => Some(f.code),
                };
                inflight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                let _ = tx.send((due, Instant::now(), failed));
            });
            i += 1;
        }
        (dropped, lag_us)
    });
    let (dropped, lag_us) = scheduler.await.context("the open-loop scheduler failed")?;
    let (mut lat_us, mut errors) = (Vec::new(), Errors::new());
    let mut error_lat_us: BTreeMap<&'static str, Vec<u32>> = BTreeMap::new();
    while let Some((due, done, failed)) = rx.recv().await {
        if !(from..to).contains(&due) {
            continue;
        }
        let us = u32::try_from(done.saturating_duration_since(due).as_micros()).unwrap_or(u32::MAX);
        match failed {
            None => lat_us.push(us),
            Some(code) => {
                *errors.entry(code).or_default() += 1;
                error_lat_us.entry(code).or_default().push(us);
            }
        }
    }
    Ok((lat_us, errors, dropped, lag_us, error_lat_us))
}

/// User + system CPU seconds of this process (all threads).
fn cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the rusage it is given; on failure it stays zeroed.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Percentile q (0..=100) of sorted microseconds, in ms, interpolated as numpy's default.
fn pct_ms(sorted: &[u32], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let pos = q / 100.0 * last as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let (a, b) = (f64::from(sorted[lo]), f64::from(sorted[hi]));
    Some((a + (b - a) * (pos - lo as f64)) / 1e3)
}

fn report(args: &Args, cfg: &Config, payloads: &[Bytes], res: &Results) -> serde_json::Value {
    let secs = cfg.duration.as_secs_f64();
    let n = res.lat_us.len();
    let lat = |q| pct_ms(&res.lat_us, q);
    let framed = payloads.iter().map(Bytes::len).sum::<usize>() as f64 / payloads.len() as f64;
    let mean_bytes = framed - 5.0;
    json!({
        "benchmark": "loadgen",
        "target": args.target,
        "concurrency": cfg.concurrency,
        "connections": cfg.connections,
        "threads": args.threads,
        "rows": cfg.rows,
        "warmup_s": cfg.warmup.as_secs_f64(),
        "duration_s": secs,
        "timeout_s": cfg.timeout.as_secs_f64(),
        "requests_file": args.requests.display().to_string(),
        "distinct_requests": payloads.len(),
        "request_bytes_mean": mean_bytes,
        "requests": n,
        "req_per_s": n as f64 / secs,
        "rows_per_s": (n * cfg.rows) as f64 / secs,
        "latency_ms": {
            "p50": lat(50.0), "p95": lat(95.0), "p99": lat(99.0), "p999": lat(99.9),
            "max": res.lat_us.last().map(|&us| f64::from(us) / 1e3),
        },
        "errors": res.errors,
        "error_latency_ms": res.error_lat_us.iter().map(|(code, v)| (code.to_string(), json!({
            "p50": pct_ms(v, 50.0), "p95": pct_ms(v, 95.0), "p99": pct_ms(v, 99.0),
            "max": v.last().map(|&us| f64::from(us) / 1e3),
        }))).collect::<serde_json::Map<String, serde_json::Value>>(),
        "mode": if cfg.rate.is_some() { "open" } else { "closed" },
        "offered_rps": cfg.rate,
        "dropped": res.dropped,
        "send_lag_ms": {
            "p50": pct_ms(&res.lag_us, 50.0), "p99": pct_ms(&res.lag_us, 99.0),
        },
        "generator_cpu_seconds": res.cpu_seconds,
        "generator_cpu_cores": if res.cpu_wall > 0.0 { res.cpu_seconds / res.cpu_wall } else { 0.0 },
    })
}

fn print_table(args: &Args, cfg: &Config, distinct: usize, doc: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.2}"));
    let lat = &doc["latency_ms"];
    println!(
        "\nloadgen: {} concurrency={} connections={} threads={} rows/req={} warmup={}s \
         duration={}s ({distinct} distinct requests)",
        args.target,
        cfg.concurrency,
        cfg.connections,
        args.threads,
        cfg.rows,
        cfg.warmup.as_secs_f64(),
        cfg.duration.as_secs_f64(),
    );
    let hdr = format!(
        "{:>9} {:>10} | {:>7} {:>7} {:>7} {:>7} {:>7}  (ms) | {:>8} {:>6} | gen cpu",
        "req/s", "rows/s", "p50", "p95", "p99", "p99.9", "max", "requests", "errors"
    );
    println!("{hdr}\n{}", "-".repeat(hdr.len()));
    let errors = doc["errors"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum());
    println!(
        "{:>9.1} {:>10.1} | {:>7} {:>7} {:>7} {:>7} {:>7}       | {:>8} {:>6} | {:.0}%",
        doc["req_per_s"].as_f64().unwrap_or(0.0),
        doc["rows_per_s"].as_f64().unwrap_or(0.0),
        f(&lat["p50"]),
        f(&lat["p95"]),
        f(&lat["p99"]),
        f(&lat["p999"]),
        f(&lat["max"]),
        doc["requests"].as_u64().unwrap_or(0),
        errors,
        100.0 * doc["generator_cpu_cores"].as_f64().unwrap_or(0.0),
    );
    if let Some(rate) = cfg.rate {
        println!(
            "open loop: offered {rate:.1} req/s, latency from each request's scheduled time; \
             dropped (cap {} in flight) {}, send lag p50 {} p99 {} ms",
            cfg.concurrency,
            doc["dropped"],
            f(&doc["send_lag_ms"]["p50"]),
            f(&doc["send_lag_ms"]["p99"]),
        );
    }
    if let Some(m) = doc["errors"].as_object().filter(|m| !m.is_empty()) {
        let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("errors by status: {}", parts.join(", "));
    }
    if let Some(m) = doc["error_latency_ms"]
        .as_object()
        .filter(|m| !m.is_empty())
    {
        for (code, l) in m {
            println!(
                "  {code} latency (ms, from schedule): p50 {} p95 {} p99 {} max {}",
                f(&l["p50"]),
                f(&l["p95"]),
                f(&l["p99"]),
                f(&l["max"]),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_check() {
        // field 1 (string "m"), field 6 (4 bytes), field 7 varint
        let good = [0x0a, 1, b'm', 0x32, 4, 0, 0, 0, 0, 0x38, 0x96, 0x01];
        assert!(reply_ok(&good, Some(4)));
        assert!(!reply_ok(&good, Some(8)));
        assert!(!reply_ok(&good[..7], Some(4))); // truncated
        assert!(!reply_ok(&[], Some(4)));
        assert!(!reply_ok(&[0x0a, 1, b'm'], Some(4))); // no output
        // field 5 (an output tensor message of 2 bytes): typed contents are accepted
        let typed = [0x0a, 1, b'm', 0x2a, 2, 0x0a, 0];
        assert!(reply_ok(&typed, None));
        assert!(!reply_ok(&typed, Some(4)));
        assert!(!reply_ok(&[0x0a, 1, b'm'], None));
    }

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=101).map(|x| x * 1000).collect();
        assert_eq!(pct_ms(&v, 50.0), Some(51.0));
        assert_eq!(pct_ms(&v, 100.0), Some(101.0));
        assert_eq!(pct_ms(&[], 50.0), None);
    }
}
