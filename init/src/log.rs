//! The task's log files, and stage 1's copying of its output into them: whole lines, each
//! appended with one `write` to its stream's file and, tagged `o<unix ns> ` or `e<unix ns> `,
//! to the combined file. Memory is bounded whatever the task prints: a line longer than
//! [`MAX_LINE`] is split, and the buffers never hold more than one line per stream.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::{OUTPUT_FILE, STDERR_FILE, STDOUT_FILE};

/// Lines longer than this are split.
pub(crate) const MAX_LINE: usize = 64 * 1024;
/// How much one `read` of a pipe takes.
const CHUNK: usize = 4096;

/// Which of the task's streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    Out,
    Err,
}

/// The task's log files, opened for appending.
pub(crate) struct Log {
    out: File,
    err: File,
    output: File,
    /// One line as written (reused).
    scratch: Vec<u8>,
}

impl Log {
    pub(crate) fn open(dir: &Path) -> std::io::Result<Log> {
        let open = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(dir.join(name))
        };
        Ok(Log {
            out: open(STDOUT_FILE)?,
            err: open(STDERR_FILE)?,
            output: open(OUTPUT_FILE)?,
            scratch: Vec::new(),
        })
    }

    /// Appends one line (without its newline) to its stream's file and to the combined file.
    pub(crate) fn line(&mut self, stream: Stream, line: &[u8]) {
        let (file, tag) = match stream {
            Stream::Out => (&mut self.out, 'o'),
            Stream::Err => (&mut self.err, 'e'),
        };
        let raw = &mut self.scratch;
        raw.clear();
        raw.extend_from_slice(line);
        raw.push(b'\n');
        // Log writes are best effort: a full disk must not kill the task.
        let _ = file.write_all(raw);
        // `o<unix ns> line`: the time lets `service logs --since/--timestamps/-f` work.
        raw.clear();
        let _ = write!(raw, "{tag}{} ", crate::now_nanos());
        raw.extend_from_slice(line);
        raw.push(b'\n');
        let _ = self.output.write_all(raw);
        if raw.capacity() > 4 * CHUNK {
            // A long line passed: give its memory back.
            *raw = Vec::new();
        }
    }

    /// A message from the init itself, on the task's stderr.
    pub(crate) fn note(&mut self, msg: &str) {
        self.line(Stream::Err, format!("skep-init: {msg}").as_bytes());
    }
}

/// One of the task's streams as it is read: the pipe and the line not yet ended.
pub(crate) struct Lines<R> {
    pub(crate) pipe: R,
    stream: Stream,
    pending: Vec<u8>,
}

impl<R: Read> Lines<R> {
    pub(crate) fn new(pipe: R, stream: Stream) -> Lines<R> {
        Lines {
            pipe,
            stream,
            pending: Vec::new(),
        }
    }

    /// Reads what the pipe has (one `read`) and logs the lines it ends. `false` at the end of
    /// the stream (or on an error other than an interruption), after logging what was left.
    pub(crate) fn read_some(&mut self, log: &mut Log) -> bool {
        let mut chunk = [0u8; CHUNK];
        match self.pipe.read(&mut chunk) {
            Ok(0) => {
                self.finish(log);
                false
            }
            Ok(n) => {
                self.feed(&chunk[..n], log);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => true,
            Err(_) => {
                self.finish(log);
                false
            }
        }
    }

    /// Logs each line `data` ends (split at [`MAX_LINE`]) and keeps the rest.
    fn feed(&mut self, mut data: &[u8], log: &mut Log) {
        while !data.is_empty() {
            let room = MAX_LINE - self.pending.len();
            let window = &data[..data.len().min(room)];
            match window.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    self.pending.extend_from_slice(&window[..i]);
                    data = &data[i + 1..];
                    self.flush(log);
                }
                None => {
                    self.pending.extend_from_slice(window);
                    data = &data[window.len()..];
                    if self.pending.len() == MAX_LINE {
                        self.flush(log);
                    }
                }
            }
        }
    }

    /// Logs the pending line, and lets go of a long one's memory.
    fn flush(&mut self, log: &mut Log) {
        log.line(self.stream, &self.pending);
        self.pending.clear();
        if self.pending.capacity() > 4 * CHUNK {
            self.pending = Vec::new();
        }
    }

    /// Logs a last line that had no newline.
    fn finish(&mut self, log: &mut Log) {
        if !self.pending.is_empty() {
            self.flush(log);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(data: &[u8], stream: Stream, log: &mut Log) {
        let mut lines = Lines::new(data, stream);
        while lines.read_some(log) {}
    }

    #[test]
    fn lines_are_copied_in_order_and_split_when_long() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        copy(b"a\nb", Stream::Out, &mut log);
        copy(b"c\n", Stream::Err, &mut log);
        log.note("hi");
        let read = |n| std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert_eq!(read(STDOUT_FILE), "a\nb\n");
        assert_eq!(read(STDERR_FILE), "c\nskep-init: hi\n");
        let tags: Vec<(char, String)> = read(OUTPUT_FILE)
            .lines()
            .map(|l| {
                let (head, text) = l.split_once(' ').unwrap();
                assert!(head[1..].parse::<i64>().unwrap() > 0, "{l:?} has no time");
                (head.chars().next().unwrap(), text.to_string())
            })
            .collect();
        let want = [('o', "a"), ('o', "b"), ('e', "c"), ('e', "skep-init: hi")];
        assert_eq!(tags, want.map(|(t, s)| (t, s.to_string())).to_vec());

        // Longer than a line may be: split; exactly as long with its newline: one line.
        let long = vec![b'x'; MAX_LINE + 10];
        copy(&long, Stream::Out, &mut log);
        let mut edge = vec![b'y'; MAX_LINE - 1];
        edge.push(b'\n');
        copy(&edge, Stream::Out, &mut log);
        let out = read(STDOUT_FILE);
        let lens: Vec<usize> = out.lines().map(str::len).collect();
        assert_eq!(lens, [1, 1, MAX_LINE, 10, MAX_LINE - 1]);
    }

    /// A line that arrives in pieces (one `read` each) is still one line.
    #[test]
    fn a_line_read_in_pieces_is_one_line() {
        struct Drip<'a>(&'a [u8]);
        impl Read for Drip<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(3).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        let mut lines = Lines::new(Drip(b"hello world\nbye"), Stream::Out);
        while lines.read_some(&mut log) {}
        let out = std::fs::read_to_string(dir.path().join(STDOUT_FILE)).unwrap();
        assert_eq!(out, "hello world\nbye\n");
    }
}
