//! Request statistics in atomics: per (model, version, variant, code) a request
//! count and, for code `"OK"`, latency and rows-per-request histograms, in one
//! contiguous region of `AtomicU64` cells that another process can read.
//!
//! A [`Table`] lives in anonymous memory (one process) or in a memory-mapped file
//! (`serve --workers N`: each worker writes its own file and the metrics process
//! sums every file at scrape time, so a worker that crashed still counts).
//! Observing is a handful of `Relaxed` atomic adds and takes no lock, from any
//! thread, with or without the GIL; only the first sight of a key (allocating its
//! slot) takes a lock.
//!
//! Capacity is fixed when the table is made ([`DEFAULT_CAPACITY`] slots; slots are
//! never freed). Once the regular keys have filled all but a reserve of slots
//! (capacity / 8, between 3 and 32: 32 of 4096), a new key is counted in the
//! overflow slot `("__overflow__", "", "", code)` of its code, so no observation
//! is lost, only its labels; the last slot is kept for the catch-all
//! `("__overflow__", "", "", "")`, used when even the overflow slots of the codes
//! are full. A key whose UTF-8 parts add up to more than [`KEY_BYTES`]
//! is counted as overflow too.
//!
//! File layout (little-endian `u64` words):
//!
//! * header, [`HEADER_WORDS`] words: magic, format, capacity, words per slot,
//!   number of latency bounds, number of rows bounds, published slot count, pid,
//!   then the latency bounds (ns) and the rows bounds;
//! * `capacity` slots of [`SLOT_WORDS`] words: a tag (`SLOT_TAG ^ index`, 0 while
//!   unwritten), the four key lengths packed as `u16`s, the key bytes
//!   ([`KEY_BYTES`]), then [`CELLS`] cells: [`COUNT`], [`LATENCY_SUM_NS`],
//!   [`ROWS_SUM`], the latency bucket counts from [`LATENCY_BUCKETS`] (one per
//!   bound, then `+Inf`) and the rows bucket counts from [`ROWS_BUCKETS`] (the
//!   same). Bucket counts are per bucket, not cumulative; a value goes to the
//!   first bound it is at most (Prometheus' `le` is inclusive).
//!
//! A slot is published by writing its key and tag, then storing the slot count
//! with `Release`; readers load the count first (`Acquire`, or a separate read of
//! the header) and read only slots below it. The file is made under a temporary
//! name, its header written, then linked to its final name, so a reader never sees
//! a file without its header. [`read_file`] refuses, with a reason, any file that
//! is not a whole table of this build's layout (truncated, garbage, another
//! format): it reads with `read(2)`, never a mapping, so a file cut short under it
//! cannot fault the reader.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use memmap2::MmapMut;
use ReadFailure::{Failed, Short};

/// Latency bucket bounds, ns: riskserve.monitoring.metrics.LATENCY_BUCKETS.
pub const LATENCY_BOUNDS_NS: [u64; 24] = [
    250_000,
    500_000,
    750_000,
    1_000_000,
    1_500_000,
    2_000_000,
    2_500_000,
    3_000_000,
    4_000_000,
    5_000_000,
    7_500_000,
    10_000_000,
    15_000_000,
    20_000_000,
    25_000_000,
    30_000_000,
    40_000_000,
    50_000_000,
    75_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];
/// Rows-per-request bucket bounds: riskserve.monitoring.metrics.BATCH_BUCKETS.
pub const ROWS_BOUNDS: [u64; 13] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 10000];

/// Slots of a table made without an explicit capacity.
pub const DEFAULT_CAPACITY: usize = 4096;
/// Smallest and largest capacity a table may have (a reader refuses beyond).
pub const MIN_CAPACITY: usize = 4;
pub const MAX_CAPACITY: usize = 1 << 20;
/// Room for a key's four UTF-8 parts together.
pub const KEY_BYTES: usize = 248;
/// The model label of the overflow slots.
pub const OVERFLOW_MODEL: &str = "__overflow__";
/// The code label of successful requests, whose slots carry the histograms.
pub const OK: &str = "OK";

/// Cell indices within a slot's cells.
pub const COUNT: usize = 0;
pub const LATENCY_SUM_NS: usize = 1;
/// The rows of every success: riskserve_inference_rows_total and
/// riskserve_request_rows_sum are the same sum, so one cell holds both.
pub const ROWS_SUM: usize = 2;
pub const LATENCY_BUCKETS: usize = 3;
pub const ROWS_BUCKETS: usize = LATENCY_BUCKETS + LATENCY_BOUNDS_NS.len() + 1;
/// Cells per slot.
pub const CELLS: usize = ROWS_BUCKETS + ROWS_BOUNDS.len() + 1;

const MAGIC: u64 = u64::from_le_bytes(*b"RSRQSTAT");
const FORMAT: u64 = 1;
/// Header size in words (fixed; the bounds fit in it).
pub const HEADER_WORDS: usize = 64;
const H_MAGIC: usize = 0;
const H_FORMAT: usize = 1;
const H_CAPACITY: usize = 2;
const H_SLOT_WORDS: usize = 3;
const H_N_LATENCY: usize = 4;
const H_N_ROWS: usize = 5;
const H_SLOTS: usize = 6;
const H_PID: usize = 7;
const H_BOUNDS: usize = 8;

const KEY_WORDS: usize = KEY_BYTES / 8;
const S_TAG: usize = 0;
const S_LENGTHS: usize = 1;
const S_KEY: usize = 2;
const S_CELLS: usize = S_KEY + KEY_WORDS;
/// Words per slot.
pub const SLOT_WORDS: usize = S_CELLS + CELLS;
const SLOT_TAG: u64 = u64::from_le_bytes(*b"RSSLOT\x01\x00");

const _: () = assert!(KEY_BYTES % 8 == 0 && KEY_BYTES <= u16::MAX as usize);
const _: () = assert!(H_BOUNDS + LATENCY_BOUNDS_NS.len() + ROWS_BOUNDS.len() <= HEADER_WORDS);

/// What creating, reading or writing a table can refuse.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The file could not be created, opened or read.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The file is not a whole request-stats table of this build's layout.
    #[error("{path}: not a readable request-stats file: {reason}")]
    Refused { path: String, reason: String },
    /// A slot index this table has not handed out.
    #[error("no request-stats slot {slot} (the table has {published})")]
    NoSuchSlot { slot: usize, published: usize },
    /// A capacity out of range.
    #[error("capacity must be between {MIN_CAPACITY} and {MAX_CAPACITY}, not {0}")]
    Capacity(usize),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, StatsError>;

/// The labels of one slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub model: String,
    pub version: String,
    pub variant: String,
    pub code: String,
}

impl Key {
    pub fn new(model: &str, version: &str, variant: &str, code: &str) -> Self {
        Self {
            model: model.to_owned(),
            version: version.to_owned(),
            variant: variant.to_owned(),
            code: code.to_owned(),
        }
    }

    fn overflow(code: &str) -> Self {
        Self::new(OVERFLOW_MODEL, "", "", code)
    }

    fn parts(&self) -> [&str; 4] {
        [&self.model, &self.version, &self.variant, &self.code]
    }

    fn fits(&self) -> bool {
        self.parts().iter().map(|p| p.len()).sum::<usize>() <= KEY_BYTES
    }

    fn is_overflow(&self) -> bool {
        self.model == OVERFLOW_MODEL && self.version.is_empty() && self.variant.is_empty()
    }
}

/// One slot's key and cells ([`CELLS`] of them) as read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStats {
    pub key: Key,
    pub cells: Vec<u64>,
}

/// The bucket of `value` among `bounds`: the first bound it is at most, or
/// `bounds.len()` (`+Inf`).
#[inline]
pub fn bucket(bounds: &[u64], value: u64) -> usize {
    bounds.partition_point(|&b| b < value)
}

/// The cells: on the heap, or a shared mapping of the table's file.
enum Cells {
    Heap(Box<[AtomicU64]>),
    Mapped {
        _map: MmapMut,
        ptr: NonNull<AtomicU64>,
        len: usize,
    },
}

// SAFETY: `ptr` points into `_map`, which lives as long as `Cells` and is never
// unmapped or resized before it drops; every access to it goes through
// `AtomicU64`, which is Sync.
unsafe impl Send for Cells {}
// SAFETY: as above.
unsafe impl Sync for Cells {}

impl Cells {
    #[inline]
    fn words(&self) -> &[AtomicU64] {
        match self {
            Cells::Heap(b) => b,
            // SAFETY: `ptr` is 8-aligned (checked when mapped), valid for `len`
            // words for the lifetime of the mapping, and only used as atomics.
            Cells::Mapped { ptr, len, .. } => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr(), *len)
            },
        }
    }
}

fn words_for(capacity: usize) -> usize {
    HEADER_WORDS + capacity * SLOT_WORDS
}

/// Slots regular keys may fill; the rest is kept for overflow keys.
fn regular_limit(capacity: usize) -> usize {
    capacity - (capacity / 8).clamp(3, 32)
}

/// The table of request statistics. Thread-safe; see the module docs.
pub struct Table {
    cells: Cells,
    capacity: usize,
    path: Option<PathBuf>,
    index: Mutex<HashMap<Key, usize>>,
}

impl Table {
    /// A table in this process's memory only.
    pub fn anonymous(capacity: usize) -> Result<Self> {
        check_capacity(capacity)?;
        let cells: Box<[AtomicU64]> = (0..words_for(capacity))
            .map(|_| AtomicU64::new(0))
            .collect();
        let table = Self::with_cells(Cells::Heap(cells), capacity, None);
        table.write_header();
        Ok(table)
    }

    /// A table in a new file at `path` (refused if something is there already),
    /// which other processes can read with [`read_file`] while this one writes.
    pub fn create(path: &Path, capacity: usize) -> Result<Self> {
        check_capacity(capacity)?;
        let bytes = (words_for(capacity) * 8) as u64;
        let mut partial = path.as_os_str().to_owned();
        partial.push(format!(".partial-{}", std::process::id()));
        let partial = PathBuf::from(partial);
        let io_err = |what: &str, p: &Path| {
            let context = format!("{what} {}", p.display());
            move |source| StatsError::Io { context, source }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(io_err("cannot create", &partial))?;
        let made = (|| {
            file.set_len(bytes)
                .map_err(io_err("cannot size", &partial))?;
            // SAFETY: the file is ours (created just now, under a name no other
            // table uses); other processes only read it with read(2).
            let mut map =
                unsafe { MmapMut::map_mut(&file) }.map_err(io_err("cannot map", &partial))?;
            let len = words_for(capacity);
            let raw = map.as_mut_ptr().cast::<AtomicU64>();
            let ptr = NonNull::new(raw)
                .filter(|p| p.as_ptr().align_offset(std::mem::align_of::<AtomicU64>()) == 0)
                .ok_or_else(|| StatsError::Io {
                    context: format!("cannot map {}", partial.display()),
                    source: io::Error::other("mapping not aligned"),
                })?;
            let cells = Cells::Mapped {
                _map: map,
                ptr,
                len,
            };
            let table = Self::with_cells(cells, capacity, Some(path.to_owned()));
            table.write_header();
            publish_name(&partial, path).map_err(io_err("cannot publish", path))?;
            Ok(table)
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        made
    }

    fn with_cells(cells: Cells, capacity: usize, path: Option<PathBuf>) -> Self {
        Self {
            cells,
            capacity,
            path,
            index: Mutex::new(HashMap::new()),
        }
    }

    fn write_header(&self) {
        let w = self.cells.words();
        let put = |i: usize, v: u64| w[i].store(v, Ordering::Relaxed);
        put(H_FORMAT, FORMAT);
        put(H_CAPACITY, self.capacity as u64);
        put(H_SLOT_WORDS, SLOT_WORDS as u64);
        put(H_N_LATENCY, LATENCY_BOUNDS_NS.len() as u64);
        put(H_N_ROWS, ROWS_BOUNDS.len() as u64);
        put(H_PID, u64::from(std::process::id()));
        for (i, b) in LATENCY_BOUNDS_NS
            .iter()
            .chain(ROWS_BOUNDS.iter())
            .enumerate()
        {
            put(H_BOUNDS + i, *b);
        }
        w[H_MAGIC].store(MAGIC, Ordering::Release);
    }

    /// Slots this table holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The file behind the table, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Slots handed out so far.
    pub fn len(&self) -> usize {
        self.published()
    }

    pub fn is_empty(&self) -> bool {
        self.published() == 0
    }

    #[inline]
    fn published(&self) -> usize {
        self.cells.words()[H_SLOTS].load(Ordering::Acquire) as usize
    }

    /// The slot of a key, allocated the first time the key is seen (under a lock);
    /// an overflow slot once the table is full (see the module docs).
    pub fn slot(&self, model: &str, version: &str, variant: &str, code: &str) -> usize {
        let mut index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        let key = Key::new(model, version, variant, code);
        if let Some(&i) = index.get(&key) {
            return i;
        }
        for k in [key, Key::overflow(code), Key::overflow("")] {
            if let Some(&i) = index.get(&k) {
                return i;
            }
            let limit = if k.is_overflow() && k.code.is_empty() {
                self.capacity
            } else if k.is_overflow() {
                self.capacity - 1
            } else {
                regular_limit(self.capacity)
            };
            if k.fits() && index.len() < limit {
                return self.publish(&mut index, k);
            }
        }
        // Unreachable: only the catch-all may take the last slot, so it always
        // finds room or is there already.
        self.capacity - 1
    }

    /// Writes `key` into the next slot, then publishes it (the caller holds the lock).
    fn publish(&self, index: &mut HashMap<Key, usize>, key: Key) -> usize {
        let i = index.len();
        let w = self.cells.words();
        let base = HEADER_WORDS + i * SLOT_WORDS;
        let mut bytes = [0u8; KEY_BYTES];
        let mut lengths = 0u64;
        let mut at = 0;
        for (j, part) in key.parts().iter().enumerate() {
            bytes[at..at + part.len()].copy_from_slice(part.as_bytes());
            at += part.len();
            lengths |= (part.len() as u64) << (16 * j);
        }
        for (j, chunk) in bytes.chunks_exact(8).enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            w[base + S_KEY + j].store(u64::from_le_bytes(word), Ordering::Relaxed);
        }
        w[base + S_LENGTHS].store(lengths, Ordering::Relaxed);
        w[base + S_TAG].store(SLOT_TAG ^ i as u64, Ordering::Release);
        w[H_SLOTS].store(i as u64 + 1, Ordering::Release);
        index.insert(key, i);
        i
    }

    #[inline]
    fn slot_cells(&self, slot: usize) -> Result<&[AtomicU64]> {
        let published = self.published();
        if slot >= published {
            return Err(StatsError::NoSuchSlot { slot, published });
        }
        let base = HEADER_WORDS + slot * SLOT_WORDS + S_CELLS;
        Ok(&self.cells.words()[base..base + CELLS])
    }

    /// Records one successful request of `rows` rows that took `ns` nanoseconds
    /// in `slot` (a slot of code "OK"). No lock; callable from any thread.
    #[inline]
    pub fn observe_ok(&self, slot: usize, ns: u64, rows: u64) -> Result<()> {
        let c = self.slot_cells(slot)?;
        c[COUNT].fetch_add(1, Ordering::Relaxed);
        c[LATENCY_SUM_NS].fetch_add(ns, Ordering::Relaxed);
        c[ROWS_SUM].fetch_add(rows, Ordering::Relaxed);
        c[LATENCY_BUCKETS + bucket(&LATENCY_BOUNDS_NS, ns)].fetch_add(1, Ordering::Relaxed);
        c[ROWS_BUCKETS + bucket(&ROWS_BOUNDS, rows)].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Counts one request in `slot` (an error: only its count).
    #[inline]
    pub fn count(&self, slot: usize) -> Result<()> {
        self.slot_cells(slot)?[COUNT].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Every published slot's key and cells, now.
    pub fn snapshot(&self) -> Vec<SlotStats> {
        let w = self.cells.words();
        let n = self.published().min(self.capacity);
        let words: Vec<u64> = w[..HEADER_WORDS + n * SLOT_WORDS]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let mut out = Vec::with_capacity(n);
        for (i, s) in words[HEADER_WORDS..].chunks_exact(SLOT_WORDS).enumerate() {
            // this process wrote every published slot whole: it always decodes
            if let Ok(Some(stats)) = decode_slot(i, s) {
                out.push(stats);
            }
        }
        out
    }
}

fn check_capacity(capacity: usize) -> Result<()> {
    if (MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
        Ok(())
    } else {
        Err(StatsError::Capacity(capacity))
    }
}

/// Gives `partial` its final name `path` without replacing anything there.
fn publish_name(partial: &Path, path: &Path) -> io::Result<()> {
    match std::fs::hard_link(partial, path) {
        Ok(()) => std::fs::remove_file(partial),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        Err(_) if !path.exists() => std::fs::rename(partial, path), // no hard links here
        Err(e) => Err(e),
    }
}

/// One slot's key and cells from its words; `Ok(None)` for a slot not written
/// yet (tag 0), `Err(reason)` for one that is not a slot at all.
fn decode_slot(i: usize, s: &[u64]) -> std::result::Result<Option<SlotStats>, String> {
    if s[S_TAG] == 0 {
        return Ok(None);
    }
    if s[S_TAG] != SLOT_TAG ^ i as u64 {
        return Err(format!("slot {i} has a bad tag"));
    }
    let lengths = s[S_LENGTHS];
    let lens: [usize; 4] = std::array::from_fn(|j| ((lengths >> (16 * j)) & 0xffff) as usize);
    if lens.iter().sum::<usize>() > KEY_BYTES {
        return Err(format!(
            "slot {i}: key lengths {lens:?} exceed {KEY_BYTES} bytes"
        ));
    }
    let bytes: Vec<u8> = s[S_KEY..S_KEY + KEY_WORDS]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let mut at = 0;
    let mut parts: Vec<String> = Vec::with_capacity(4);
    for len in lens {
        let part = std::str::from_utf8(&bytes[at..at + len])
            .map_err(|_| format!("slot {i}: key is not UTF-8"))?;
        parts.push(part.to_owned());
        at += len;
    }
    let [model, version, variant, code]: [String; 4] = parts
        .try_into()
        .map_err(|_| format!("slot {i}: key has not four parts"))?;
    Ok(Some(SlotStats {
        key: Key {
            model,
            version,
            variant,
            code,
        },
        cells: s[S_CELLS..S_CELLS + CELLS].to_vec(),
    }))
}

fn words_of(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect()
}

/// Every published slot of the table file at `path`, written by this process or
/// another (live or dead). Refuses, with the reason, a file that is not a whole
/// table of this build's layout; never maps the file.
pub fn read_file(path: &Path) -> Result<Vec<SlotStats>> {
    let shown = path.display().to_string();
    let refuse = |reason: String| StatsError::Refused {
        path: shown.clone(),
        reason,
    };
    let io_err = |source| StatsError::Io {
        context: format!("cannot read {shown}"),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    let header_bytes = (HEADER_WORDS * 8) as u64;
    if size < header_bytes {
        return Err(refuse(format!(
            "truncated: {size} bytes, shorter than the {header_bytes}-byte header"
        )));
    }
    let mut buf = vec![0u8; HEADER_WORDS * 8];
    read_all(&mut file, &mut buf).map_err(|e| match e {
        Short => refuse("truncated while reading its header".into()),
        Failed(e) => io_err(e),
    })?;
    let h = words_of(&buf);
    if h[H_MAGIC] != MAGIC {
        return Err(refuse(
            "bad magic: not a riskserve request-stats file".into(),
        ));
    }
    if h[H_FORMAT] != FORMAT {
        return Err(refuse(format!(
            "format {} (this build reads {FORMAT})",
            h[H_FORMAT]
        )));
    }
    let bounds_ok = h[H_N_LATENCY] == LATENCY_BOUNDS_NS.len() as u64
        && h[H_N_ROWS] == ROWS_BOUNDS.len() as u64
        && h[H_BOUNDS..H_BOUNDS + LATENCY_BOUNDS_NS.len()] == LATENCY_BOUNDS_NS
        && h[H_BOUNDS + LATENCY_BOUNDS_NS.len()..][..ROWS_BOUNDS.len()] == ROWS_BOUNDS;
    if h[H_SLOT_WORDS] != SLOT_WORDS as u64 || !bounds_ok {
        return Err(refuse(
            "its slot layout or bucket bounds differ from this build's".into(),
        ));
    }
    let capacity = h[H_CAPACITY];
    if !(MIN_CAPACITY as u64..=MAX_CAPACITY as u64).contains(&capacity) {
        return Err(refuse(format!("capacity {capacity} out of range")));
    }
    let capacity = capacity as usize;
    let expected = (words_for(capacity) * 8) as u64;
    if size != expected {
        return Err(refuse(format!(
            "{size} bytes, expected {expected} for {capacity} slots (truncated or damaged)"
        )));
    }
    let n = h[H_SLOTS];
    if n > capacity as u64 {
        return Err(refuse(format!(
            "{n} slots published, more than its capacity {capacity}"
        )));
    }
    let n = n as usize;
    let mut buf = vec![0u8; n * SLOT_WORDS * 8];
    read_all(&mut file, &mut buf).map_err(|e| match e {
        Short => refuse("truncated while reading its slots".into()),
        Failed(e) => io_err(e),
    })?;
    let words = words_of(&buf);
    let mut out = Vec::with_capacity(n);
    for (i, s) in words.chunks_exact(SLOT_WORDS).enumerate() {
        match decode_slot(i, s).map_err(refuse)? {
            Some(stats) => out.push(stats),
            None => break, // counted but not visible yet: the rest is not either
        }
    }
    Ok(out)
}

enum ReadFailure {
    Short,
    Failed(io::Error),
}

fn read_all(file: &mut File, buf: &mut [u8]) -> std::result::Result<(), ReadFailure> {
    file.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Short
        } else {
            Failed(e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "riskserve-counters-{}-{name}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("requests.stats")
    }

    fn cells(t: &Table, key: (&str, &str, &str, &str)) -> Vec<u64> {
        let k = Key::new(key.0, key.1, key.2, key.3);
        t.snapshot().into_iter().find(|s| s.key == k).unwrap().cells
    }

    #[test]
    fn bounds_match_the_python_buckets() {
        let secs = [
            0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005, 0.0075,
            0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let ns: Vec<u64> = secs
            .iter()
            .map(|s: &f64| (s * 1e9).round() as u64)
            .collect();
        assert_eq!(ns, LATENCY_BOUNDS_NS);
    }

    #[test]
    fn le_is_inclusive() {
        for (i, &b) in LATENCY_BOUNDS_NS.iter().enumerate() {
            assert_eq!(bucket(&LATENCY_BOUNDS_NS, b), i);
            assert_eq!(bucket(&LATENCY_BOUNDS_NS, b + 1), i + 1);
            assert_eq!(bucket(&LATENCY_BOUNDS_NS, b - 1), i);
        }
        assert_eq!(bucket(&ROWS_BOUNDS, 0), 0);
        assert_eq!(bucket(&ROWS_BOUNDS, 10_001), ROWS_BOUNDS.len());
    }

    #[test]
    fn observes_into_its_slot() {
        let t = Table::anonymous(16).unwrap();
        let ok = t.slot("fraud", "1", "control", OK);
        assert_eq!(t.slot("fraud", "1", "control", OK), ok);
        let err = t.slot("fraud", "1", "control", "INVALID_ARGUMENT");
        assert_ne!(ok, err);
        t.observe_ok(ok, 1_000_000, 3).unwrap();
        t.observe_ok(ok, 3_000_000_000, 20_000).unwrap();
        t.count(err).unwrap();
        let c = cells(&t, ("fraud", "1", "control", OK));
        assert_eq!(c[COUNT], 2);
        assert_eq!(c[LATENCY_SUM_NS], 3_001_000_000);
        assert_eq!(c[ROWS_SUM], 20_003);
        assert_eq!(c[LATENCY_BUCKETS + 3], 1);
        assert_eq!(c[LATENCY_BUCKETS + LATENCY_BOUNDS_NS.len()], 1);
        assert_eq!(c[ROWS_BUCKETS + 2], 1);
        assert_eq!(c[ROWS_BUCKETS + ROWS_BOUNDS.len()], 1);
        assert_eq!(
            cells(&t, ("fraud", "1", "control", "INVALID_ARGUMENT"))[COUNT],
            1
        );
        assert!(matches!(
            t.observe_ok(2, 1, 1),
            Err(StatsError::NoSuchSlot {
                slot: 2,
                published: 2
            })
        ));
    }

    #[test]
    fn full_table_overflows_per_code_then_to_the_catch_all() {
        let t = Table::anonymous(8).unwrap(); // 5 regular slots, 2 per code, the catch-all
        for i in 0..5 {
            assert_eq!(t.slot(&format!("m{i}"), "1", "", OK), i);
        }
        let o = t.slot("m5", "1", "", OK);
        assert_eq!(o, 5);
        assert_eq!(t.slot("m7", "2", "x", OK), o);
        assert_eq!(t.slot("m8", "1", "", "INTERNAL"), 6);
        // the codes' overflow slots are full: the catch-all
        assert_eq!(t.slot("m9", "1", "", "UNAVAILABLE"), 7);
        assert_eq!(t.slot("m10", "1", "", "NOT_FOUND"), 7);
        assert_eq!(t.slot("m0", "1", "", OK), 0); // known keys keep their slots
        let keys: Vec<Key> = t.snapshot().into_iter().map(|s| s.key).collect();
        assert_eq!(keys[5], Key::overflow(OK));
        assert_eq!(keys[6], Key::overflow("INTERNAL"));
        assert_eq!(keys[7], Key::overflow(""));
        assert_eq!(t.len(), 8);
        // a key too long for a slot
        let long = "x".repeat(KEY_BYTES);
        let t = Table::anonymous(8).unwrap();
        assert_eq!(t.slot(&long, "1", "", OK), 0);
        assert_eq!(t.snapshot()[0].key, Key::overflow(OK));
    }

    #[test]
    fn threads_count_exactly() {
        let t = Arc::new(Table::anonymous(64).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|k| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    for i in 0..50_000u64 {
                        let s = t.slot("m", "1", &format!("v{}", i % 3), OK);
                        t.observe_ok(s, i * 1_000 + k, 1 + i % 5).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let snap = t.snapshot();
        assert_eq!(snap.len(), 3);
        let total: u64 = snap.iter().map(|s| s.cells[COUNT]).sum();
        assert_eq!(total, 200_000);
        for s in &snap {
            let lat: u64 = s.cells[LATENCY_BUCKETS..ROWS_BUCKETS].iter().sum();
            let rows: u64 = s.cells[ROWS_BUCKETS..].iter().sum();
            assert_eq!(lat, s.cells[COUNT]);
            assert_eq!(rows, s.cells[COUNT]);
        }
    }

    #[test]
    fn a_file_reads_back_the_same_and_keeps_its_name() {
        let path = tmp("readback");
        let t = Table::create(&path, 32).unwrap();
        let s = t.slot("fraud", "2", "canary", OK);
        t.observe_ok(s, 42, 7).unwrap();
        let e = t.slot("nosuch", "", "", "NOT_FOUND");
        t.count(e).unwrap();
        assert_eq!(read_file(&path).unwrap(), t.snapshot());
        assert!(matches!(
            Table::create(&path, 32),
            Err(StatsError::Io { .. })
        ));
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("requests.stats")]);
        drop(t);
        assert_eq!(read_file(&path).unwrap().len(), 2); // the data outlives the writer
    }

    #[test]
    fn damaged_files_are_refused_with_a_reason() {
        let path = tmp("damaged");
        {
            let t = Table::create(&path, 16).unwrap();
            let s = t.slot("fraud", "1", "", OK);
            t.observe_ok(s, 1, 1).unwrap();
        }
        let whole = std::fs::read(&path).unwrap();
        let refused = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            match read_file(&path) {
                Err(StatsError::Refused { reason, .. }) => reason,
                other => panic!("not refused: {other:?}"),
            }
        };
        assert!(refused(&whole[..100]).contains("truncated"));
        assert!(refused(&whole[..whole.len() - 8]).contains("expected"));
        assert!(refused(&vec![0xAB; whole.len()]).contains("magic"));
        let mut bad = whole.clone();
        bad[H_SLOTS * 8..H_SLOTS * 8 + 8].copy_from_slice(&1000u64.to_le_bytes());
        assert!(refused(&bad).contains("more than its capacity"));
        let mut bad = whole.clone();
        let at = (HEADER_WORDS + S_LENGTHS) * 8;
        bad[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(refused(&bad).contains("key lengths"));
        let mut bad = whole.clone();
        bad[HEADER_WORDS * 8] ^= 1;
        assert!(refused(&bad).contains("bad tag"));
        let mut bad = whole.clone();
        bad[(H_BOUNDS + 1) * 8] ^= 1;
        assert!(refused(&bad).contains("bounds"));
        // a slot counted but not written yet: read up to it
        let mut early = whole.clone();
        early[H_SLOTS * 8..H_SLOTS * 8 + 8].copy_from_slice(&2u64.to_le_bytes());
        std::fs::write(&path, &early).unwrap();
        assert_eq!(read_file(&path).unwrap().len(), 1);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(read_file(&path), Err(StatsError::Io { .. })));
    }

    #[test]
    fn capacity_is_checked() {
        assert!(matches!(Table::anonymous(1), Err(StatsError::Capacity(1))));
        assert!(Table::anonymous(MAX_CAPACITY + 1).is_err());
    }

    proptest! {
        #[test]
        fn buckets_add_up_and_respect_le(values in proptest::collection::vec((0u64..4_000_000_000, 0u64..20_000), 1..200)) {
            let t = Table::anonymous(4).unwrap();
            let s = t.slot("m", "1", "", OK);
            for &(ns, rows) in &values {
                t.observe_ok(s, ns, rows).unwrap();
            }
            let c = &t.snapshot()[0].cells;
            prop_assert_eq!(c[COUNT], values.len() as u64);
            prop_assert_eq!(c[LATENCY_SUM_NS], values.iter().map(|v| v.0).sum::<u64>());
            prop_assert_eq!(c[ROWS_SUM], values.iter().map(|v| v.1).sum::<u64>());
            // cumulative bucket i counts the values <= bound i
            let mut cum = 0;
            for (i, b) in LATENCY_BOUNDS_NS.iter().enumerate() {
                cum += c[LATENCY_BUCKETS + i];
                prop_assert_eq!(cum, values.iter().filter(|v| v.0 <= *b).count() as u64);
            }
            let mut cum = 0;
            for (i, b) in ROWS_BOUNDS.iter().enumerate() {
                cum += c[ROWS_BUCKETS + i];
                prop_assert_eq!(cum, values.iter().filter(|v| v.1 <= *b).count() as u64);
            }
        }
    }
}
