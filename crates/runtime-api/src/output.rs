//! A runtime's stdout and stderr, read into log lines: by the engine from a sandbox's pipes, and by
//! the guest agent inside a microVM. One splitting rule for both, so a function logs the same on
//! either backend.

use std::os::fd::RawFd;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Lines longer than this are handed over in pieces: a runaway line cannot grow a buffer without
/// bound.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// What a kept line costs against a log budget beyond its text: about what holding it takes (a
/// timestamp, a stream, a string header), so that empty lines are not free and the line count is
/// capped at the budget over this (131,072 lines for 4 MiB). Lambda's log service charges 26 bytes
/// an event for the same reason. Storage counts the same (`LOG_LINE_OVERHEAD_BYTES`).
pub const LINE_OVERHEAD_BYTES: usize = 32;

/// Counts the lines a buffer keeps between two invocations' ends against a byte budget; past it it
/// refuses lines and counts them as dropped. The engine's buffer and the guest agent's host side
/// both keep their lines under one.
#[derive(Debug, Clone, Default)]
pub struct LineBudget {
    bytes: usize,
    dropped: u64,
}

impl LineBudget {
    /// Whether a line of `text` may be kept under `cap_bytes` (and counts it either way).
    pub fn admit(&mut self, text: &str, cap_bytes: usize) -> bool {
        let cost = text.len() + LINE_OVERHEAD_BYTES;
        if self.bytes + cost > cap_bytes {
            self.dropped += 1;
            return false;
        }
        self.bytes += cost;
        true
    }

    /// Starts a new invocation's budget; returns how many lines the last one dropped.
    pub fn reset(&mut self) -> u64 {
        std::mem::take(self).dropped
    }
}

/// The line that says how many lines were dropped.
pub fn dropped_lines_note(dropped: u64) -> String {
    format!(
        "[voltrun] {dropped} log lines dropped: the function wrote more than one invocation keeps"
    )
}

/// Reads `pipe` to its end (or a read error) and hands each line to `line`: without its `\n` or a
/// trailing `\r`, decoded as UTF-8 with invalid bytes replaced, and in pieces of [`MAX_LINE_BYTES`]
/// when longer. Stops early when `line` answers `false` (nobody takes lines any more).
pub async fn read_lines<R, F, Fut>(mut pipe: R, mut line: F)
where
    R: AsyncRead + Unpin,
    F: FnMut(String) -> Fut,
    Fut: Future<Output = bool>,
{
    let text = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .trim_end_matches('\r')
            .to_string()
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
            if !line(text(&pending[start..start + pos])).await {
                return;
            }
            start += pos + 1;
        }
        pending.drain(..start);
        while pending.len() >= MAX_LINE_BYTES {
            if !line(text(&pending[..MAX_LINE_BYTES])).await {
                return;
            }
            pending.drain(..MAX_LINE_BYTES);
        }
    }
    if !pending.is_empty() {
        line(text(&pending)).await;
    }
}

/// Waits (at most about 50 ms) until what the runtime wrote to `fds` so far has been read, then lets
/// the readers turn their last bytes into lines: called when an invocation ends, so that its lines
/// land on it and not on the next one.
pub async fn drain(fds: &[RawFd]) {
    for _ in 0..50 {
        let pending: usize = fds
            .iter()
            .map(|&fd| voltrun_sandbox::spawn::pending_bytes_raw(fd))
            .sum();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        read_lines(input, |line| {
            out.push(line);
            std::future::ready(true)
        })
        .await;
        out
    }

    #[tokio::test]
    async fn lines_are_split_trimmed_decoded_and_cut_at_the_limit() {
        assert_eq!(lines_of(b"a\r\nb\n\nlast").await, ["a", "b", "", "last"]);
        assert_eq!(lines_of(b"\xff ok\n").await, ["\u{fffd} ok"]);
        let long = vec![b'x'; MAX_LINE_BYTES * 2 + 5];
        let pieces = lines_of(&long).await;
        let lengths: Vec<usize> = pieces.iter().map(String::len).collect();
        assert_eq!(lengths, [MAX_LINE_BYTES, MAX_LINE_BYTES, 5]);
    }

    #[test]
    fn empty_lines_are_not_free() {
        let mut budget = LineBudget::default();
        let cap = 100 * LINE_OVERHEAD_BYTES;
        let kept = (0..1_000).filter(|_| budget.admit("", cap)).count();
        assert_eq!(kept, 100, "each empty line costs the overhead");
        assert_eq!(budget.reset(), 900);
        assert!(budget.admit("", cap), "a reset budget admits again");
    }

    #[tokio::test]
    async fn a_reader_that_says_stop_gets_no_more_lines() {
        let mut seen = 0;
        read_lines(&b"1\n2\n3\n"[..], |_| {
            seen += 1;
            std::future::ready(seen < 2)
        })
        .await;
        assert_eq!(seen, 2);
    }
}
