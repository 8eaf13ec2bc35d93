//! Relaying two TCP connections in the kernel: splice(2) moves each direction's bytes from one
//! socket into a pipe and from the pipe into the other socket, so they never pass through this
//! process's memory (no copy into user buffers and back, as `tokio::io::copy_bidirectional`
//! does). The routing mesh relays connections to this node's tasks this way.
//!
//! ```text
//!  a ──splice──► pipe a→b ──splice──► b
//!  a ◄──splice── pipe b→a ◄──splice── b      (each direction a future; both run at once)
//! ```
//!
//! A direction reads only into an empty pipe and then drains it, so a `WouldBlock` always
//! comes from the socket waited on, never from the pipe: tokio's readiness stays true to the
//! socket. The end of one direction (EOF) shuts the other socket's write side, as
//! `copy_bidirectional` does; an error ends both. Each pipe holds at most [`PIPE_BYTES`] of
//! kernel memory: a relayed connection costs at most two of them, whatever it carries.

use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The most bytes one pipe holds (and one splice call moves). Larger than Linux's default
/// (64 KiB) to halve the system calls of a bulk transfer; a pipe that cannot grow (the user's
/// pipe quota, `/proc/sys/fs/pipe-max-size`) keeps its size and works as well.
pub const PIPE_BYTES: usize = 256 << 10;

/// Why connections could not be spliced.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// No pipe could be made: usually the process is out of file descriptors.
    #[error(
        "cannot make a pipe to splice through: {0}; the daemon may be out of file descriptors (raise its open-file limit)"
    )]
    Pipe(#[source] io::Error),
}

/// One direction's pipe: its read end and its write end, both non-blocking.
#[derive(Debug)]
struct Pipe {
    rd: OwnedFd,
    wr: OwnedFd,
    /// What a splice call asks for: the pipe's capacity.
    capacity: usize,
}

impl Pipe {
    fn new() -> Result<Pipe, SpliceError> {
        let (rd, wr) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
            .map_err(|e| SpliceError::Pipe(e.into()))?;
        let capacity = match fcntl(&wr, FcntlArg::F_SETPIPE_SZ(PIPE_BYTES as i32)) {
            Ok(n) => usize::try_from(n).unwrap_or(PIPE_BYTES),
            // The default size (64 KiB on Linux).
            Err(_) => 64 << 10,
        };
        Ok(Pipe { rd, wr, capacity })
    }
}

/// The two pipes of a relayed connection, made before the relay starts so that a process out
/// of file descriptors can still relay another way.
#[derive(Debug)]
pub struct Pipes {
    a_to_b: Pipe,
    b_to_a: Pipe,
}

impl Pipes {
    /// Makes the two pipes.
    pub fn new() -> Result<Pipes, SpliceError> {
        Ok(Pipes {
            a_to_b: Pipe::new()?,
            b_to_a: Pipe::new()?,
        })
    }
}

/// What a relay carried each way, and how it ended: `Ok` when both directions reached their
/// end, or the first error (a reset, a write to a closed peer).
#[derive(Debug)]
pub struct Relayed {
    /// Bytes from `a` to `b`.
    pub a_to_b: u64,
    /// Bytes from `b` to `a`.
    pub b_to_a: u64,
    /// How it ended.
    pub result: io::Result<()>,
}

/// Relays `a` and `b` both ways through `pipes` until both directions end or one fails.
pub async fn splice_bidirectional(a: &TcpStream, b: &TcpStream, pipes: Pipes) -> Relayed {
    let (mut a_to_b, mut b_to_a) = (0u64, 0u64);
    let result = tokio::try_join!(
        one_way(a, b, &pipes.a_to_b, &mut a_to_b),
        one_way(b, a, &pipes.b_to_a, &mut b_to_a),
    )
    .map(|_| ());
    Relayed {
        a_to_b,
        b_to_a,
        result,
    }
}

/// Moves `from`'s bytes to `to` through `pipe` until `from` ends (then shuts `to`'s write
/// side), adding each byte delivered to `moved`.
async fn one_way(from: &TcpStream, to: &TcpStream, pipe: &Pipe, moved: &mut u64) -> io::Result<()> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        // The pipe is empty here: a WouldBlock can only be the socket's.
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from, None, &pipe.wr, None, pipe.capacity, flags).map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // The peer closed its write side: so does this relay towards `to`. A socket
            // already gone has nothing left to tell.
            let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
            return Ok(());
        }
        // Drained before reading again: the pipe never holds more than it can.
        let mut left = n;
        while left > 0 {
            match to.try_io(Interest::WRITABLE, || {
                splice(&pipe.rd, None, to, None, left, flags).map_err(io::Error::from)
            }) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the connection took no bytes",
                    ));
                }
                Ok(m) => {
                    left -= m;
                    *moved += m as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
#[path = "splice_tests.rs"]
mod tests;
