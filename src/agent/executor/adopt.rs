//! What lets a restarted agent take back the exec tasks it left running: a record of each
//! task's init helper, written by the agent when it starts the helper, and the checks that a
//! process found later is really that helper and not another one that got its PID.
//!
//! ```text
//!  <tasks>/<task>/helper.json   {task_id, pid, start_ticks, exe, ports}   root, 0600, in 0700 dirs
//!  <tasks>/<task>/exit          stage 1's exit code, written as it ends (see skep_init)
//!
//!  restart ─► read helper.json ─► /proc/<pid>/{stat,exe,cmdline} ─► same start time, same
//!             binary, `init-helper --task-dir <this dir>`?  yes: adopt   no: it ended
//! ```
//!
//! The binary is the recorded one: `skep-init` for helpers of this skep, `skep` for those an
//! older skep started as `skep init-helper` (the command line has the same shape), so an
//! upgrade across the change adopts its running tasks.
//!
//! The record is trusted as far as root-owned files under the node's 0700 data directory are:
//! tasks run as "nobody" with that directory hidden, so only root can have written it. Even so
//! it is checked against the kernel: a PID alone is never trusted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The record's file in the task directory.
pub(super) const RECORD_FILE: &str = "helper.json";
/// The largest record read (a few ports and paths; anything bigger is not ours).
const MAX_RECORD: u64 = 64 * 1024;
/// The most ports a record may list.
const MAX_PORTS: usize = 256;

/// What the agent knows of a running task's init helper.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HelperRecord {
    /// The task the helper runs.
    pub task_id: String,
    /// The helper's (stage 1's) PID.
    pub pid: i32,
    /// Its start time in clock ticks after boot (`/proc/PID/stat` field 22): a PID reused by
    /// another process has another start time.
    pub start_ticks: u64,
    /// The binary it runs (an upgrade may replace or delete the file; the kernel keeps the
    /// path, with " (deleted)" after it).
    pub exe: PathBuf,
    /// The local ports given to the task, by target port (`SKEP_PORT_<target>`), in order.
    pub ports: Vec<(u16, u16)>,
}

/// Why a process is not the recorded helper (or cannot be checked).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Mismatch {
    /// No such process (it ended), or it is a zombie.
    #[error("the process has ended")]
    Gone,
    /// Another process has the PID now.
    #[error("the PID belongs to another process now ({0})")]
    Other(&'static str),
}

/// What the kernel says of a process.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProcView {
    /// `/proc/PID/stat` as read.
    pub stat: String,
    /// The target of `/proc/PID/exe`.
    pub exe: PathBuf,
    /// `/proc/PID/cmdline`: NUL-separated arguments.
    pub cmdline: Vec<u8>,
}

impl ProcView {
    /// Reads process `pid`'s view; `None` if it does not exist (or cannot be read).
    pub(crate) fn read(pid: i32) -> Option<ProcView> {
        if pid <= 1 {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        Some(ProcView { stat, exe, cmdline })
    }
}

/// The process state letter and start time (field 3 and field 22) of a `/proc/PID/stat`
/// line. The command name (field 2) is in parentheses and may hold anything, so fields are
/// counted after its last `)`.
pub(crate) fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `rest` starts at field 3; field 22 is 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Whether `view` (of the PID in `rec`) is the helper `rec` describes, running the task in
/// `task_dir`.
pub(crate) fn verify(rec: &HelperRecord, view: &ProcView, task_dir: &Path) -> Result<(), Mismatch> {
    let (state, start) = parse_stat(&view.stat).ok_or(Mismatch::Other("unreadable stat"))?;
    if state == 'Z' || state == 'X' {
        return Err(Mismatch::Gone);
    }
    if start != rec.start_ticks {
        return Err(Mismatch::Other("another start time"));
    }
    let exe = view.exe.as_os_str().as_encoded_bytes();
    let want = rec.exe.as_os_str().as_encoded_bytes();
    if exe != want && exe.strip_suffix(b" (deleted)") != Some(want) {
        return Err(Mismatch::Other("another binary"));
    }
    if !cmdline_is_helper_of(&view.cmdline, task_dir) {
        return Err(Mismatch::Other("another command line"));
    }
    Ok(())
}

/// Checks the live process against the record.
pub(crate) fn check_live(rec: &HelperRecord, task_dir: &Path) -> Result<(), Mismatch> {
    match ProcView::read(rec.pid) {
        Some(view) => verify(rec, &view, task_dir),
        None => Err(Mismatch::Gone),
    }
}

/// Whether `cmdline` is that of the stage 1 init helper of the task in `dir`.
pub(crate) fn cmdline_is_helper_of(cmdline: &[u8], dir: &Path) -> bool {
    let dir = dir.as_os_str().as_encoded_bytes();
    let mut args = cmdline.split(|b| *b == 0);
    // Only the helper's own arguments count (before `--`), not the task's command.
    let mut helper = false;
    let mut has_dir = false;
    let mut stage1 = true;
    let mut prev: &[u8] = b"";
    for a in args.by_ref() {
        if a == b"--" {
            break;
        }
        helper |= a == skep_init::HELPER_ARG.as_bytes();
        stage1 &= a != b"--stage2" && a != b"--exec";
        has_dir |= prev == b"--task-dir" && a == dir;
        prev = a;
    }
    helper && has_dir && stage1
}

/// Reads the record of the task in `task_dir`, if there is a sound one for that task.
pub(crate) fn read_record(task_dir: &Path, task_id: &str) -> Option<HelperRecord> {
    use std::io::Read;
    let f = std::fs::File::open(task_dir.join(RECORD_FILE)).ok()?;
    let mut text = Vec::new();
    f.take(MAX_RECORD).read_to_end(&mut text).ok()?;
    let rec: HelperRecord = serde_json::from_slice(&text).ok()?;
    (rec.task_id == task_id && rec.pid > 1 && rec.ports.len() <= MAX_PORTS).then_some(rec)
}

/// Writes the record (mode 0600: written aside, then renamed into place).
pub(crate) fn write_record(task_dir: &Path, rec: &HelperRecord) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = task_dir.join(".helper.json.tmp");
    let bytes = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&bytes)?;
    drop(f);
    std::fs::rename(&tmp, task_dir.join(RECORD_FILE))
}

/// Removes the record: the agent saw the task end, so no later run is to adopt it.
pub(crate) fn forget_record(task_dir: &Path) {
    let _ = std::fs::remove_file(task_dir.join(RECORD_FILE));
}

/// The exit code stage 1 recorded as it ended, if it did.
pub(crate) fn read_exit(task_dir: &Path) -> Option<i64> {
    let text = std::fs::read(task_dir.join(skep_init::EXIT_FILE)).ok()?;
    let text = std::str::from_utf8(text.get(..text.len().min(16))?).ok()?;
    text.trim().parse::<u8>().ok().map(i64::from)
}

/// The ports given to a task, from its environment's `SKEP_PORT_<target>=<port>` entries, in
/// order; entries that do not parse are left out.
pub(crate) fn ports_from_env(env: &[String]) -> Vec<(u16, u16)> {
    env.iter()
        .filter_map(|e| {
            let (k, v) = e.split_once('=')?;
            let target = k.strip_prefix("SKEP_PORT_")?.parse().ok()?;
            Some((target, v.parse().ok()?))
        })
        .take(MAX_PORTS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(state: char, start: u64) -> String {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime priority nice threads itrealvalue starttime vsize ...
        format!(
            "42 (skep) x) {state} 1 42 42 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 3 0 {start} 1000 50"
        )
    }

    fn rec() -> HelperRecord {
        HelperRecord {
            task_id: "t1".into(),
            pid: 42,
            start_ticks: 777,
            exe: "/usr/bin/skep".into(),
            ports: vec![(80, 40000)],
        }
    }

    fn view(state: char, start: u64, exe: &str, cmdline: &[u8]) -> ProcView {
        ProcView {
            stat: stat(state, start),
            exe: exe.into(),
            cmdline: cmdline.to_vec(),
        }
    }

    const DIR: &str = "/var/lib/skep/tasks/t1";
    const GOOD: &[u8] =
        b"/usr/bin/skep\0init-helper\0--task-dir\0/var/lib/skep/tasks/t1\0--\0sleep\0x\0";

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        assert_eq!(parse_stat(&stat('S', 777)), Some(('S', 777)));
        assert_eq!(parse_stat("1 (a) S 1"), None);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn only_the_recorded_helper_is_adopted() {
        let dir = Path::new(DIR);
        assert_eq!(
            verify(&rec(), &view('S', 777, "/usr/bin/skep", GOOD), dir),
            Ok(())
        );
        // An upgrade replaced the binary file: still the same process.
        assert_eq!(
            verify(
                &rec(),
                &view('S', 777, "/usr/bin/skep (deleted)", GOOD),
                dir
            ),
            Ok(())
        );
        // A reused PID: another start time, even with a forged command line.
        assert_eq!(
            verify(&rec(), &view('S', 778, "/usr/bin/skep", GOOD), dir),
            Err(Mismatch::Other("another start time"))
        );
        assert_eq!(
            verify(&rec(), &view('S', 777, "/bin/sleep", GOOD), dir),
            Err(Mismatch::Other("another binary"))
        );
        let other_task =
            b"/usr/bin/skep\0init-helper\0--task-dir\0/var/lib/skep/tasks/t2\0--\0sleep\0";
        assert_eq!(
            verify(&rec(), &view('S', 777, "/usr/bin/skep", other_task), dir),
            Err(Mismatch::Other("another command line"))
        );
        // Stage 2 (inside the namespace) is not the helper the agent signals.
        let stage2 =
            b"/usr/bin/skep\0init-helper\0--stage2\0--task-dir\0/var/lib/skep/tasks/t1\0--\0x\0";
        assert!(verify(&rec(), &view('S', 777, "/usr/bin/skep", stage2), dir).is_err());
        assert_eq!(
            verify(&rec(), &view('Z', 777, "/usr/bin/skep", GOOD), dir),
            Err(Mismatch::Gone)
        );
    }

    /// A helper of an older skep (the `skep` binary, before `skep-init` existed) and one of
    /// this skep are recognised by the same rule, each against its recorded binary.
    #[test]
    fn helpers_of_either_binary_are_adopted() {
        let dir = Path::new(DIR);
        let mut new = rec();
        new.exe = "/usr/bin/skep-init".into();
        let cmdline =
            b"/usr/bin/skep-init\0init-helper\0--task-dir\0/var/lib/skep/tasks/t1\0--\0sleep\0x\0";
        assert_eq!(
            verify(&new, &view('S', 777, "/usr/bin/skep-init", cmdline), dir),
            Ok(())
        );
        assert_eq!(
            verify(
                &rec(),
                &view('S', 777, "/usr/bin/skep (deleted)", GOOD),
                dir
            ),
            Ok(())
        );
        // An old helper is not taken for a new one, nor the other way round.
        assert!(verify(&new, &view('S', 777, "/usr/bin/skep", GOOD), dir).is_err());
        assert!(verify(&rec(), &view('S', 777, "/usr/bin/skep-init", cmdline), dir).is_err());
    }

    #[test]
    fn cmdline_match() {
        let dir = Path::new(DIR);
        assert!(cmdline_is_helper_of(GOOD, dir));
        // The task's own arguments do not count.
        let task_args = b"/bin/sh\0--\0init-helper\0--task-dir\0/var/lib/skep/tasks/t1\0";
        assert!(!cmdline_is_helper_of(task_args, dir));
        assert!(!cmdline_is_helper_of(b"", dir));
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let d = tempfile::tempdir().unwrap();
        write_record(d.path(), &rec()).unwrap();
        assert_eq!(read_record(d.path(), "t1"), Some(rec()));
        // A record of another task (a copied directory) is not this task's.
        assert_eq!(read_record(d.path(), "t2"), None);
        std::fs::write(d.path().join(RECORD_FILE), b"{not json").unwrap();
        assert_eq!(read_record(d.path(), "t1"), None);
        std::fs::write(d.path().join(RECORD_FILE), vec![b' '; 100_000]).unwrap();
        assert_eq!(read_record(d.path(), "t1"), None);
        let mut low = rec();
        low.pid = 1;
        write_record(d.path(), &low).unwrap();
        assert_eq!(read_record(d.path(), "t1"), None);
        forget_record(d.path());
        assert_eq!(read_record(d.path(), "t1"), None);
    }

    #[test]
    fn exit_codes_are_read_only_when_sound() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_exit(d.path()), None);
        std::fs::write(d.path().join(skep_init::EXIT_FILE), "3\n").unwrap();
        assert_eq!(read_exit(d.path()), Some(3));
        std::fs::write(d.path().join(skep_init::EXIT_FILE), "300\n").unwrap();
        assert_eq!(read_exit(d.path()), None);
    }

    #[test]
    fn ports_are_read_from_the_environment() {
        let env = [
            "A=1".to_string(),
            "PORT=40000".into(),
            "SKEP_PORT_80=40000".into(),
            "SKEP_PORT_443=40001".into(),
            "SKEP_PORT_x=1".into(),
            "SKEP_PORT_53=nope".into(),
        ];
        assert_eq!(ports_from_env(&env), vec![(80, 40000), (443, 40001)]);
    }
}
