//! A runtime's stdout and stderr, read into log lines: by the engine from a sandbox's pipes, and by
//! the guest agent inside a microVM. One splitting rule for both, so a function logs the same on
//! either backend.

use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};

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

/// What one reader has done with its pipe: how many bytes it took out and how many of those it has
/// turned into lines, so that [`drain`] can tell when everything the runtime wrote before some moment
/// has landed. Holds its own descriptor of the pipe (for `FIONREAD`), so that it never asks a number
/// the reader has closed and the kernel has handed to another file.
#[derive(Debug, Default)]
pub struct ReadProgress {
    pipe: Option<OwnedFd>,
    /// Non-zero while a read of the pipe is under way: its bytes may have left the pipe without being
    /// counted in `read` yet.
    reading: AtomicU32,
    read: AtomicU64,
    handled: AtomicU64,
    finished: AtomicBool,
}

impl ReadProgress {
    /// Progress of a reader of `pipe`.
    pub fn of(pipe: &impl AsFd) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            pipe: Some(pipe.as_fd().try_clone_to_owned()?),
            ..Self::default()
        }))
    }

    fn pending(&self) -> u64 {
        self.pipe
            .as_ref()
            .map_or(0, |fd| voltrun_sandbox::spawn::pending_bytes(fd) as u64)
    }

    /// How many bytes, counted from the pipe's start, the runtime had written by now: what the reader
    /// took plus what still waits. Retried until no read moved bytes between the two looks (a read that
    /// did would have them counted in neither).
    async fn written(&self) -> u64 {
        for _ in 0..1_000 {
            let before = self.read.load(Ordering::SeqCst);
            let idle_before = self.reading.load(Ordering::SeqCst) == 0;
            let waiting = self.pending();
            let idle_after = self.reading.load(Ordering::SeqCst) == 0;
            let after = self.read.load(Ordering::SeqCst);
            if idle_before && idle_after && before == after {
                return before + waiting;
            }
            tokio::task::yield_now().await;
        }
        self.read.load(Ordering::SeqCst) + self.pending()
    }

    fn has_handled(&self, bytes: u64) -> bool {
        self.finished.load(Ordering::SeqCst) || self.handled.load(Ordering::SeqCst) >= bytes
    }
}

/// Reads `pipe` to its end (or a read error) and hands each line to `line`: without its `\n` or a
/// trailing `\r`, decoded as UTF-8 with invalid bytes replaced, and in pieces of [`MAX_LINE_BYTES`]
/// when longer. Stops early when `line` answers `false` (nobody takes lines any more). Counts what it
/// has done in `progress`.
pub async fn read_lines<R, F, Fut>(mut pipe: R, progress: Arc<ReadProgress>, mut line: F)
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
        // Counted around the read itself, so that `drain` never sees bytes that have left the pipe
        // but are not yet in `read`.
        let n = std::future::poll_fn(|cx| {
            progress.reading.fetch_add(1, Ordering::SeqCst);
            let mut buf = ReadBuf::new(&mut chunk);
            let polled = Pin::new(&mut pipe).poll_read(cx, &mut buf);
            let n = buf.filled().len();
            progress.read.fetch_add(n as u64, Ordering::SeqCst);
            progress.reading.fetch_sub(1, Ordering::SeqCst);
            polled.map_ok(|()| n)
        })
        .await;
        let n = match n {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
            if !line(text(&pending[start..start + pos])).await {
                progress.finished.store(true, Ordering::SeqCst);
                return;
            }
            start += pos + 1;
        }
        pending.drain(..start);
        while pending.len() >= MAX_LINE_BYTES {
            if !line(text(&pending[..MAX_LINE_BYTES])).await {
                progress.finished.store(true, Ordering::SeqCst);
                return;
            }
            pending.drain(..MAX_LINE_BYTES);
        }
        progress.handled.fetch_add(n as u64, Ordering::SeqCst);
    }
    if !pending.is_empty() {
        line(text(&pending)).await;
    }
    progress.finished.store(true, Ordering::SeqCst);
}

/// The longest an invocation's end waits for its output: reached only when a reader cannot keep up
/// (a starved host), never by a runtime that keeps writing, whose later bytes are not waited for.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Waits until every byte the runtime wrote to the readers' pipes before this call has been turned
/// into lines (a partial last line stays with its reader): called when an invocation ends, so that
/// its lines land on it and not on the next one. Bytes written after the call are not waited for.
pub async fn drain(readers: &[Arc<ReadProgress>]) {
    let mut targets = Vec::with_capacity(readers.len());
    for reader in readers {
        targets.push(reader.written().await);
    }
    let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
    while !readers
        .iter()
        .zip(&targets)
        .all(|(reader, &target)| reader.has_handled(target))
    {
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        read_lines(input, Arc::default(), |line| {
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

    /// The end of an invocation waits for every line written before it, however slowly the reader
    /// hands lines over, and not for lines written after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drain_waits_for_the_lines_written_before_it_and_only_those() {
        use std::io::Write;
        let (reader, mut writer) = std::io::pipe().unwrap();
        let progress = ReadProgress::of(&reader).unwrap();
        let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into()).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = seen.clone();
        tokio::spawn(read_lines(pipe, progress.clone(), move |line| {
            let lines = lines.clone();
            async move {
                // A reader slower than the old fixed wait: each line takes 20 ms to land.
                tokio::time::sleep(Duration::from_millis(20)).await;
                lines.lock().unwrap().push(line);
                true
            }
        }));
        writer.write_all(b"one\ntwo\nthree\nfour\n").unwrap();
        drain(std::slice::from_ref(&progress)).await;
        assert_eq!(*seen.lock().unwrap(), ["one", "two", "three", "four"]);

        // A runtime that keeps writing does not hold the invocation's end: only the backlog counts.
        let started = std::time::Instant::now();
        writer.write_all(b"five\n").unwrap();
        let spammer = std::thread::spawn(move || {
            for _ in 0..200 {
                if writer.write_all(b"more\n").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        drain(std::slice::from_ref(&progress)).await;
        assert!(seen.lock().unwrap().contains(&"five".to_string()));
        assert!(
            started.elapsed() < DRAIN_LIMIT,
            "drain waited for later lines"
        );
        spammer.join().unwrap();
    }

    #[tokio::test]
    async fn a_reader_that_says_stop_gets_no_more_lines() {
        let mut seen = 0;
        read_lines(&b"1\n2\n3\n"[..], Arc::default(), |_| {
            seen += 1;
            std::future::ready(seen < 2)
        })
        .await;
        assert_eq!(seen, 2);
    }
}
