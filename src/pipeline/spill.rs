//! An external sort for comparing two sides that do not stream in the same order (`--sync-deletes`
//! and `verify` when target ids do not follow the source key order): records `(key, payload)` are
//! gathered in memory up to [`RUN_BYTES`], sorted and written to an anonymous temporary file as a
//! run; reading them back merges the runs into one stream sorted by key (then payload).
//!
//! Memory bound: at most [`RUN_BYTES`] of records in memory while pushing; while merging, one
//! buffered reader ([`READ_BUFFER`]) and one record per run, with at most [`MAX_RUNS`] runs (when
//! that many exist they are merged into one first). So memory does not grow with the number of
//! records; disk does (the records once, plus one intermediate merge per `MAX_RUNS` runs).
//! It must not hold records beyond that, nor interpret them: keys compare as bytes.
//!
//! `CUTOVER_SORT_MEMORY_MB` (whole mebibytes, at least 1) sets the bytes held before a run is
//! written in place of [`RUN_BYTES`]: less memory on a small machine, more files on disk.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};

/// Bytes of records (plus a per-record overhead) held before a run is written.
pub const RUN_BYTES: usize = 32 << 20;
/// Runs merged at once.
pub const MAX_RUNS: usize = 64;
/// The read buffer of each run while merging.
pub const READ_BUFFER: usize = 64 << 10;
/// What a record costs in memory beyond its bytes (two `Vec` headers and the allocator).
const RECORD_OVERHEAD: usize = 64;

type Record = (Vec<u8>, Vec<u8>);

/// Records being gathered: push them in any order, then [`Spill::sorted`].
pub struct Spill {
    buf: Vec<Record>,
    buf_bytes: usize,
    run_bytes: usize,
    runs: Vec<File>,
}

impl Default for Spill {
    fn default() -> Self {
        Spill::with_run_bytes(run_bytes())
    }
}

/// [`RUN_BYTES`], or `CUTOVER_SORT_MEMORY_MB` mebibytes when that is set to a whole number.
fn run_bytes() -> usize {
    std::env::var("CUTOVER_SORT_MEMORY_MB")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(|mb| mb.max(1) << 20)
        .unwrap_or(RUN_BYTES)
}

impl Spill {
    pub fn new() -> Spill {
        Spill::default()
    }

    /// A spill whose runs hold about `run_bytes` (small values make unit tests use files).
    pub fn with_run_bytes(run_bytes: usize) -> Spill {
        Spill {
            buf: Vec::new(),
            buf_bytes: 0,
            run_bytes,
            runs: Vec::new(),
        }
    }

    pub fn push(&mut self, key: Vec<u8>, payload: Vec<u8>) -> io::Result<()> {
        self.buf_bytes += key.len() + payload.len() + RECORD_OVERHEAD;
        self.buf.push((key, payload));
        if self.buf_bytes >= self.run_bytes {
            self.write_run()?;
        }
        Ok(())
    }

    fn write_run(&mut self) -> io::Result<()> {
        if self.runs.len() >= MAX_RUNS {
            let runs = std::mem::take(&mut self.runs);
            let mut merged = Sorted::of_runs(runs, Vec::new())?;
            let mut out = BufWriter::new(tempfile::tempfile()?);
            while let Some((k, p)) = merged.next_record()? {
                write_record(&mut out, &k, &p)?;
            }
            self.runs.push(rewind(out)?);
        }
        let mut buf = std::mem::take(&mut self.buf);
        self.buf_bytes = 0;
        buf.sort_unstable();
        let mut out = BufWriter::new(tempfile::tempfile()?);
        for (k, p) in &buf {
            write_record(&mut out, k, p)?;
        }
        self.runs.push(rewind(out)?);
        Ok(())
    }

    /// Every record pushed, sorted by key then payload (duplicates kept).
    pub fn sorted(mut self) -> io::Result<Sorted> {
        if self.runs.len() >= MAX_RUNS {
            self.write_run()?;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.sort_unstable();
        Sorted::of_runs(self.runs, buf)
    }
}

fn rewind(out: BufWriter<File>) -> io::Result<File> {
    let mut f = out.into_inner().map_err(|e| e.into_error())?;
    f.rewind()?;
    Ok(f)
}

fn write_record(out: &mut impl Write, key: &[u8], payload: &[u8]) -> io::Result<()> {
    out.write_all(&(key.len() as u32).to_le_bytes())?;
    out.write_all(&(payload.len() as u32).to_le_bytes())?;
    out.write_all(key)?;
    out.write_all(payload)
}

fn read_record(r: &mut impl Read) -> io::Result<Option<Record>> {
    let mut lens = [0u8; 8];
    match r.read_exact(&mut lens) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let klen = u32::from_le_bytes(lens[..4].try_into().expect("4 bytes")) as usize;
    let plen = u32::from_le_bytes(lens[4..].try_into().expect("4 bytes")) as usize;
    let mut key = vec![0u8; klen];
    r.read_exact(&mut key)?;
    let mut payload = vec![0u8; plen];
    r.read_exact(&mut payload)?;
    Ok(Some((key, payload)))
}

enum Run {
    Memory(std::vec::IntoIter<Record>),
    File(BufReader<File>),
}

impl Run {
    fn next_record(&mut self) -> io::Result<Option<Record>> {
        match self {
            Run::Memory(it) => Ok(it.next()),
            Run::File(r) => read_record(r),
        }
    }
}

/// The merged, sorted stream of a [`Spill`].
pub struct Sorted {
    runs: Vec<Run>,
    heap: BinaryHeap<Reverse<(Record, usize)>>,
    /// A record looked at but not taken ([`Sorted::peek_key`]).
    peeked: Option<Record>,
}

impl Sorted {
    fn of_runs(files: Vec<File>, memory: Vec<Record>) -> io::Result<Sorted> {
        let mut runs: Vec<Run> = files
            .into_iter()
            .map(|f| Run::File(BufReader::with_capacity(READ_BUFFER, f)))
            .collect();
        runs.push(Run::Memory(memory.into_iter()));
        let mut heap = BinaryHeap::with_capacity(runs.len());
        for (i, r) in runs.iter_mut().enumerate() {
            if let Some(rec) = r.next_record()? {
                heap.push(Reverse((rec, i)));
            }
        }
        Ok(Sorted {
            runs,
            heap,
            peeked: None,
        })
    }

    /// The next record in order.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        if let Some(rec) = self.peeked.take() {
            return Ok(Some(rec));
        }
        let Some(Reverse((rec, i))) = self.heap.pop() else {
            return Ok(None);
        };
        if let Some(next) = self.runs[i].next_record()? {
            self.heap.push(Reverse((next, i)));
        }
        Ok(Some(rec))
    }

    /// Whether the stream holds `key`, passing over the records before it (keys asked must not
    /// decrease).
    pub fn holds(&mut self, key: &[u8]) -> io::Result<bool> {
        loop {
            match self.peek_key()? {
                Some(p) if p < key => {
                    self.next_record()?;
                }
                Some(p) => return Ok(p == key),
                None => return Ok(false),
            }
        }
    }

    /// The key of the next record, without taking it.
    pub fn peek_key(&mut self) -> io::Result<Option<&[u8]>> {
        if self.peeked.is_none() {
            self.peeked = self.next_record()?;
        }
        Ok(self.peeked.as_ref().map(|(k, _)| k.as_slice()))
    }
}

/// Keys of `candidates` that `present` does not hold, in key order, each once (both sorted by key).
pub struct Absent {
    candidates: Sorted,
    present: Sorted,
    last: Option<Vec<u8>>,
}

impl Absent {
    pub fn new(candidates: Sorted, present: Sorted) -> Absent {
        Absent {
            candidates,
            present,
            last: None,
        }
    }

    /// The next absent record (key and payload) of `candidates`.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        while let Some((key, payload)) = self.candidates.next_record()? {
            if self.last.as_deref() == Some(key.as_slice()) {
                continue;
            }
            self.last = Some(key.clone());
            if !self.present.holds(&key)? {
                return Ok(Some((key, payload)));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(mut s: Sorted) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some((k, _)) = s.next_record().unwrap() {
            out.push(k);
        }
        out
    }

    #[test]
    fn runs_on_disk_merge_into_key_order() {
        // Tiny runs: every few records go to a file, and more than MAX_RUNS of them are merged.
        let mut s = Spill::with_run_bytes(RECORD_OVERHEAD * 3);
        let n = 1000u32;
        for i in 0..n {
            let k = (i.wrapping_mul(7919) % n).to_be_bytes().to_vec();
            s.push(k, vec![1]).unwrap();
        }
        assert!(s.runs.len() <= MAX_RUNS + 1);
        let got = keys(s.sorted().unwrap());
        let want: Vec<Vec<u8>> = (0..n).map(|i| i.to_be_bytes().to_vec()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn holds_walks_forward_through_the_keys_asked() {
        let mut s = Spill::with_run_bytes(RECORD_OVERHEAD * 2);
        for k in [b"d", b"b", b"f", b"b"] {
            s.push(k.to_vec(), Vec::new()).unwrap();
        }
        let mut sorted = s.sorted().unwrap();
        let asked: Vec<bool> = [b"a", b"b", b"c", b"d", b"f", b"g"]
            .iter()
            .map(|k| sorted.holds(*k).unwrap())
            .collect();
        assert_eq!(asked, [false, true, false, true, true, false]);
    }

    #[test]
    fn absent_names_each_missing_key_once() {
        let mut have = Spill::with_run_bytes(RECORD_OVERHEAD * 2);
        let mut all = Spill::with_run_bytes(RECORD_OVERHEAD * 5);
        for k in [b"b", b"d", b"a", b"d"] {
            have.push(k.to_vec(), Vec::new()).unwrap();
        }
        for k in [b"e", b"a", b"c", b"c", b"d", b"b", b"f"] {
            all.push(k.to_vec(), k.to_vec()).unwrap();
        }
        let mut gone = Absent::new(all.sorted().unwrap(), have.sorted().unwrap());
        let mut out = Vec::new();
        while let Some((k, p)) = gone.next_record().unwrap() {
            assert_eq!(k, p);
            out.push(String::from_utf8(k).unwrap());
        }
        assert_eq!(out, ["c", "e", "f"]);
    }
}
