//! Running the `skep` CLI (and other commands) with a timeout, and reading what they printed:
//! text, JSON lines, and the shapes of a refused command.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cli_timeout;

/// The `skep` binary under test.
pub fn skep_bin() -> &'static str {
    env!("CARGO_BIN_EXE_skep")
}

/// Runs `skep` with these arguments and no daemon behind it unless `--host` names one.
pub fn skep(args: &[&str]) -> Output {
    run(Command::new(skep_bin()).args(args), None)
}

/// Runs `skep` with `stdin` piped in.
pub fn skep_stdin(args: &[&str], stdin: &str) -> Output {
    run(Command::new(skep_bin()).args(args), Some(stdin))
}

/// Runs a command to completion, feeding `stdin`, killing it after [`cli_timeout`].
pub fn run(cmd: &mut Command, stdin: Option<&str>) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A command that exits without reading its input closes the pipe: not our failure.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + cli_timeout();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {:?}", cli_timeout());
            }
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    Output {
        status,
        stdout: join(out),
        stderr: join(err),
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

fn join(h: std::thread::JoinHandle<Vec<u8>>) -> Vec<u8> {
    h.join().unwrap_or_default()
}

/// The stdout of a command as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stderr of a command as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A command's outcome for a panic message.
pub fn describe(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        stdout(out),
        stderr(out)
    )
}

/// Asserts the CLI failed the way a refused or failed command does: exit 1 and a one-line
/// `Error: ...` on stderr that contains `needle`, with no panic and no gRPC debug output.
pub fn assert_error(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1\n{}",
        describe(out)
    );
    assert!(
        err.starts_with("Error: "),
        "stderr should start with `Error: `\n{}",
        describe(out)
    );
    assert!(
        err.contains(needle),
        "stderr should contain {needle:?}\n{}",
        describe(out)
    );
    assert!(
        !err.contains("panicked"),
        "the CLI panicked\n{}",
        describe(out)
    );
    assert!(
        !err.contains("Status {"),
        "a tonic::Status debug leaked\n{}",
        describe(out)
    );
}

/// Asserts clap refused the arguments: exit 2 and clap's `error: ...` message.
pub fn assert_usage_error(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected a usage error (exit 2)\n{}",
        describe(out)
    );
    assert!(
        stderr(out).starts_with("error: "),
        "expected clap's message\n{}",
        describe(out)
    );
}

/// Parses JSON lines (`node ls --format json`, `audit ls --json`).
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}
