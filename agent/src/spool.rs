//! The on-disk spool of one job's output, kept until the control plane acknowledges it.
//!
//! A job's directory holds its raw output files (`stdout`, `stderr`, `system`, written
//! directly by the job's process or by the agent) and an append-only `index` with one
//! line per numbered chunk: `seq stream start end`, a byte range of one of those files.
//! `acked` holds the highest seq the control plane has stored. Because the process
//! writes to files (not pipes), a job keeps running and its output keeps landing on
//! disk while the agent restarts; the new agent continues numbering where the index
//! ends, so no byte is sent twice under two numbers and none is skipped.
//!
//! Every file here is owner-only (`0600`, see [`crate::private_fs`]): the output
//! holds secret values unmasked until it is sent.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use dynserv_shared::proto::{OutputChunk, OutputStream};

/// One numbered chunk: a byte range of one output file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Which output file.
    pub stream: OutputStream,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// A job's spool: its chunk index and acknowledgement state.
pub struct Spool {
    dir: PathBuf,
    entries: Vec<Entry>,
    /// Bytes of output recorded in chunks so far.
    bytes: u64,
    acked: Option<u64>,
    index: File,
}

fn stream_code(stream: OutputStream) -> &'static str {
    match stream {
        OutputStream::Stdout => "o",
        OutputStream::Stderr => "e",
        OutputStream::System => "s",
    }
}

fn parse_line(line: &str, expected_seq: u64) -> Option<Entry> {
    let mut parts = line.split(' ');
    let seq: u64 = parts.next()?.parse().ok()?;
    let stream = match parts.next()? {
        "o" => OutputStream::Stdout,
        "e" => OutputStream::Stderr,
        "s" => OutputStream::System,
        _ => return None,
    };
    let start: u64 = parts.next()?.parse().ok()?;
    let end: u64 = parts.next()?.parse().ok()?;
    (seq == expected_seq && start <= end && parts.next().is_none()).then_some(Entry {
        stream,
        start,
        end,
    })
}

/// The output file of a stream inside a job directory.
pub fn stream_path(dir: &Path, stream: OutputStream) -> PathBuf {
    dir.join(stream.as_str())
}

impl Spool {
    /// Opens (or creates) the spool in `dir`. A torn last index line (the agent died
    /// while writing it) is dropped and the index truncated to the last whole line.
    pub fn open(dir: &Path) -> io::Result<Spool> {
        let index_path = dir.join("index");
        let text = std::fs::read_to_string(&index_path).unwrap_or_default();
        let mut entries = Vec::new();
        let mut good_len = 0usize;
        for line in text.split_inclusive('\n') {
            if !line.ends_with('\n') {
                break;
            }
            match parse_line(line.trim_end(), entries.len() as u64) {
                Some(entry) => entries.push(entry),
                None => break,
            }
            good_len += line.len();
        }
        let index = crate::private_fs::open_append(&index_path)?;
        if good_len < text.len() {
            index.set_len(good_len as u64)?;
        }
        let acked = std::fs::read_to_string(dir.join("acked"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        let bytes = entries.iter().map(|e: &Entry| e.end - e.start).sum();
        Ok(Spool {
            dir: dir.to_path_buf(),
            bytes,
            entries,
            acked,
            index,
        })
    }

    /// Bytes of output recorded in chunks so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of chunks so far (the next seq).
    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Whether no chunk was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Where the next chunk of `stream` starts: the end of its last chunk.
    pub fn offset(&self, stream: OutputStream) -> u64 {
        self.entries
            .iter()
            .rev()
            .find(|e| e.stream == stream)
            .map(|e| e.end)
            .unwrap_or(0)
    }

    /// Records the next chunk and returns its seq.
    pub fn append(&mut self, stream: OutputStream, start: u64, end: u64) -> io::Result<u64> {
        let seq = self.len();
        let line = format!("{seq} {} {start} {end}\n", stream_code(stream));
        self.index.write_all(line.as_bytes())?;
        self.entries.push(Entry { stream, start, end });
        self.bytes += end.saturating_sub(start);
        Ok(seq)
    }

    /// Appends a note of the agent's own to the `system` file and records it as a
    /// chunk.
    pub fn append_system(&mut self, text: &str) -> io::Result<u64> {
        let path = stream_path(&self.dir, OutputStream::System);
        let mut file = crate::private_fs::open_append(&path)?;
        let start = file.metadata()?.len();
        file.write_all(text.as_bytes())?;
        self.append(OutputStream::System, start, start + text.len() as u64)
    }

    /// Reads chunk `seq` back from its output file.
    pub fn read_chunk(&self, seq: u64) -> io::Result<OutputChunk> {
        let entry = self
            .entries
            .get(seq as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no chunk {seq}")))?;
        let file = File::open(stream_path(&self.dir, entry.stream))?;
        let mut buf = vec![0u8; (entry.end - entry.start) as usize];
        file.read_exact_at(&mut buf, entry.start)?;
        Ok(OutputChunk {
            seq,
            stream: entry.stream,
            data: String::from_utf8_lossy(&buf).into_owned(),
        })
    }

    /// The highest acknowledged seq.
    pub fn acked(&self) -> Option<u64> {
        self.acked
    }

    /// The first seq the control plane has not acknowledged.
    pub fn first_unacked(&self) -> u64 {
        self.acked.map(|a| a + 1).unwrap_or(0)
    }

    /// Records an acknowledgement (never moving backwards, never past what exists).
    pub fn ack(&mut self, up_to_seq: u64) -> io::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let up_to = up_to_seq.min(self.len() - 1);
        if self.acked.is_some_and(|a| a >= up_to) {
            return Ok(());
        }
        self.acked = Some(up_to);
        let tmp = self.dir.join("acked.tmp");
        crate::private_fs::write(&tmp, format!("{up_to}\n"))?;
        std::fs::rename(tmp, self.dir.join("acked"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn write(dir: &Path, stream: OutputStream, text: &str) -> (u64, u64) {
        let path = stream_path(dir, stream);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        let start = f.metadata().unwrap().len();
        f.write_all(text.as_bytes()).unwrap();
        (start, start + text.len() as u64)
    }

    /// Chunks survive a reopen with their numbers, offsets, data and acks.
    #[test]
    fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        let (s, e) = write(dir.path(), OutputStream::Stdout, "one\n");
        assert_eq!(spool.append(OutputStream::Stdout, s, e).unwrap(), 0);
        let (s, e) = write(dir.path(), OutputStream::Stderr, "oops\n");
        assert_eq!(spool.append(OutputStream::Stderr, s, e).unwrap(), 1);
        assert_eq!(spool.append_system("resumed\n").unwrap(), 2);
        spool.ack(0).unwrap();
        drop(spool);

        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.len(), 3);
        assert_eq!(spool.acked(), Some(0));
        assert_eq!(spool.first_unacked(), 1);
        assert_eq!(spool.offset(OutputStream::Stdout), 4);
        assert_eq!(spool.offset(OutputStream::Stderr), 5);
        let chunk = spool.read_chunk(1).unwrap();
        assert_eq!(
            (chunk.seq, chunk.stream, chunk.data.as_str()),
            (1, OutputStream::Stderr, "oops\n")
        );
        assert_eq!(spool.read_chunk(2).unwrap().data, "resumed\n");
        assert!(spool.read_chunk(3).is_err());
    }

    /// A torn index line is dropped and the next chunk takes its number.
    #[test]
    fn torn_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), OutputStream::Stdout, "a\nb\n");
        std::fs::write(dir.path().join("index"), "0 o 0 2\n1 o 2").unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.len(), 1);
        assert_eq!(spool.offset(OutputStream::Stdout), 2);
        assert_eq!(spool.append(OutputStream::Stdout, 2, 4).unwrap(), 1);
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.len(), 2);
        assert_eq!(spool.read_chunk(1).unwrap().data, "b\n");
    }

    /// Acks never move backwards and are clamped to what exists.
    #[test]
    fn acks_are_monotonic() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        spool.ack(5).unwrap();
        assert_eq!(spool.acked(), None, "nothing to ack yet");
        for _ in 0..3 {
            spool.append_system("x\n").unwrap();
        }
        spool.ack(1).unwrap();
        spool.ack(0).unwrap();
        assert_eq!(spool.acked(), Some(1));
        spool.ack(99).unwrap();
        assert_eq!(spool.acked(), Some(2));
    }
}
