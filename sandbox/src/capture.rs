//! Bounded capture of a command's output stream, and detection of the end-of-command sentinel in it.
//!
//! A command may print gigabytes; memory must stay bounded whatever it prints. [`CappedOutput`] keeps the first and
//! last `cap / 2` bytes and counts the rest; [`SentinelScanner`] finds the sentinel that ends a command even when it
//! is split across reads, holding back only `marker.len() - 1` bytes at a time.

use std::collections::VecDeque;

/// Output kept as head + tail with everything in between counted but dropped.
#[derive(Debug)]
pub struct CappedOutput {
    cap_bytes: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total_bytes: u64,
}

impl CappedOutput {
    /// A buffer that keeps at most `cap_bytes` bytes (half head, half tail).
    pub fn new(cap_bytes: usize) -> Self {
        Self {
            cap_bytes,
            head: Vec::new(),
            tail: VecDeque::new(),
            total_bytes: 0,
        }
    }

    /// Appends bytes, dropping the middle once the cap is reached.
    pub fn push(&mut self, mut bytes: &[u8]) {
        self.total_bytes += bytes.len() as u64;
        let head_cap = self.cap_bytes / 2;
        if self.head.len() < head_cap {
            let take = (head_cap - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        let tail_cap = self.cap_bytes - head_cap;
        if bytes.len() >= tail_cap {
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - tail_cap..]);
            return;
        }
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(tail_cap);
        self.tail.drain(..overflow);
        self.tail.extend(bytes);
    }

    /// Total bytes seen, including the dropped middle.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Whether anything was dropped.
    pub fn is_truncated(&self) -> bool {
        self.total_bytes > (self.head.len() + self.tail.len()) as u64
    }

    /// The kept bytes; when truncated, a marker line saying how much was cut sits between head and tail.
    pub fn into_bytes(self) -> Vec<u8> {
        let dropped = self.total_bytes - (self.head.len() + self.tail.len()) as u64;
        let mut out = self.head;
        if dropped > 0 {
            out.extend_from_slice(
                format!("\n[... {dropped} bytes of output omitted ...]\n").as_bytes(),
            );
        }
        out.extend(self.tail);
        out
    }
}

/// What the scanner found in a chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum ScanEvent {
    /// Keep scanning: no complete sentinel yet.
    Pending,
    /// The sentinel was complete: the bytes after the marker up to (not including) the terminator byte.
    Done(Vec<u8>),
}

/// Longest sentinel trailer (exit code + working directory) we accept before giving up on a line.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Finds `marker` followed by a trailer ended by a terminator byte in a byte stream; everything before the marker
/// is command output.
#[derive(Debug)]
pub struct SentinelScanner {
    marker: Vec<u8>,
    terminator: u8,
    pending: Vec<u8>,
    trailer: Option<Vec<u8>>,
    rest: Vec<u8>,
}

impl SentinelScanner {
    /// A scanner for one command's unique marker whose trailer ends at `terminator` (the shell protocol uses NUL,
    /// which no path contains).
    pub fn new(marker: impl Into<Vec<u8>>, terminator: u8) -> Self {
        Self {
            marker: marker.into(),
            terminator,
            pending: Vec::new(),
            trailer: None,
            rest: Vec::new(),
        }
    }

    /// Feeds a chunk; output bytes that certainly precede the marker are pushed into `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut CappedOutput) -> ScanEvent {
        if let Some(trailer) = self.trailer.as_mut() {
            return finish_trailer(trailer, chunk, self.terminator, &mut self.rest);
        }
        self.pending.extend_from_slice(chunk);
        if let Some(at) = find(&self.pending, &self.marker) {
            out.push(&self.pending[..at]);
            let rest = self.pending[at + self.marker.len()..].to_vec();
            self.pending.clear();
            let mut trailer = Vec::new();
            let event = finish_trailer(&mut trailer, &rest, self.terminator, &mut self.rest);
            self.trailer = Some(trailer);
            return event;
        }
        let keep = self.marker.len().saturating_sub(1).min(self.pending.len());
        let flush_to = self.pending.len() - keep;
        out.push(&self.pending[..flush_to]);
        self.pending.drain(..flush_to);
        ScanEvent::Pending
    }

    /// Bytes that came after the trailer's terminator in the chunk that completed it.
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.rest)
    }

    /// Bytes held back as a possible marker prefix (emitted when the stream ends without a sentinel).
    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

fn finish_trailer(
    trailer: &mut Vec<u8>,
    chunk: &[u8],
    terminator: u8,
    rest: &mut Vec<u8>,
) -> ScanEvent {
    match chunk.iter().position(|&b| b == terminator) {
        Some(nl) => {
            trailer.extend_from_slice(&chunk[..nl]);
            rest.extend_from_slice(&chunk[nl + 1..]);
            ScanEvent::Done(std::mem::take(trailer))
        }
        None => {
            if trailer.len() + chunk.len() > MAX_TRAILER_BYTES {
                // A trailer this long cannot be ours; end the command with what we have.
                return ScanEvent::Done(std::mem::take(trailer));
            }
            trailer.extend_from_slice(chunk);
            ScanEvent::Pending
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_output_keeps_head_and_tail() {
        let mut out = CappedOutput::new(10);
        for chunk in [&b"0123"[..], b"4567", b"89abcdef", b"ghij"] {
            out.push(chunk);
        }
        assert_eq!(out.total_bytes(), 20);
        assert!(out.is_truncated());
        let text = String::from_utf8(out.into_bytes()).unwrap();
        assert!(
            text.starts_with("01234\n[... 10 bytes of output omitted ...]\n"),
            "{text}"
        );
        assert!(text.ends_with("fghij"), "{text}");
    }

    #[test]
    fn capped_output_small_is_exact() {
        let mut out = CappedOutput::new(100);
        out.push(b"hello\r\n\xff");
        assert!(!out.is_truncated());
        assert_eq!(out.into_bytes(), b"hello\r\n\xff");
    }

    #[test]
    fn scanner_finds_marker_split_across_chunks() {
        let mut scanner = SentinelScanner::new(&b"@@END@@"[..], b'\n');
        let mut out = CappedOutput::new(1024);
        assert_eq!(
            scanner.feed(b"some output @@E", &mut out),
            ScanEvent::Pending
        );
        assert_eq!(scanner.feed(b"ND@@0:/te", &mut out), ScanEvent::Pending);
        assert_eq!(
            scanner.feed(b"stbed\nlater", &mut out),
            ScanEvent::Done(b"0:/testbed".to_vec())
        );
        assert_eq!(out.into_bytes(), b"some output ");
        assert_eq!(scanner.take_rest(), b"later");
    }

    #[test]
    fn scanner_ignores_partial_marker_in_output() {
        let mut scanner = SentinelScanner::new(&b"@@END@@"[..], b'\n');
        let mut out = CappedOutput::new(1024);
        assert_eq!(scanner.feed(b"@@EN", &mut out), ScanEvent::Pending);
        assert_eq!(
            scanner.feed(b"x @@END@@1:/\n", &mut out),
            ScanEvent::Done(b"1:/".to_vec())
        );
        assert_eq!(out.into_bytes(), b"@@ENx ");
    }
}
