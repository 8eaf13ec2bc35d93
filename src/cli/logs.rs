//! `skep service logs [-f] [--since T] [-t] [-n N]`: a service's task output, gathered from
//! the nodes that ran its tasks, as Docker prints it (`web.1.k3x9qabcdefg@w1    | line`).
//!
//! `--follow` asks again every half second for lines written since the newest one seen (less
//! a window for nodes whose clocks trail), and prints each line once: a [`Cursor`] remembers,
//! per task, the time of the last line printed and how many lines carried that time. Each
//! poll is a fresh Control call, so RBAC and a revoked operator certificate take effect at
//! once; the command ends when the service is removed, or on Ctrl-C.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;

use super::client::status;
use super::print;
use super::tasks::hostnames;
use super::tasks::short_id;
use crate::api::v1::{LogLine, ServiceLogsRequest};

type Api = super::client::Api;

/// How often `--follow` asks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// How far behind the newest line seen `--follow` still looks (for nodes whose clocks trail
/// or report late): lines older than that, not yet seen, are not shown.
const FOLLOW_WINDOW_NANOS: i64 = 30_000_000_000;

#[derive(Debug, Args)]
pub(super) struct LogsArgs {
    /// Follow log output.
    #[arg(short, long)]
    follow: bool,
    /// Show logs since timestamp (e.g. 2026-12-05T10:00:00Z, 1733400000) or relative (42m).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Show timestamps.
    #[arg(short, long)]
    timestamps: bool,
    /// Number of lines to show from the end of the logs ("all" for every line).
    #[arg(short = 'n', long, value_name = "N", default_value = "all", value_parser = parse_tail)]
    tail: u64,
    /// Do not add any prefix to the log lines.
    #[arg(long)]
    raw: bool,
    /// Do not truncate task IDs.
    #[arg(long)]
    no_trunc: bool,
    /// Service name, ID or ID prefix.
    #[arg(value_name = "SERVICE")]
    service: String,
}

/// `--tail`: a count, or `all` (0 on the wire).
fn parse_tail(text: &str) -> Result<u64, String> {
    if text == "all" {
        return Ok(0);
    }
    text.parse()
        .map_err(|_| format!("invalid --tail {text:?}: expected a number of lines or \"all\""))
}

pub(super) async fn logs(api: &mut Api, a: LogsArgs) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let since = match &a.since {
        Some(t) => nanos(super::when::resolve(t, now)?),
        None => 0,
    };
    let mut lines = fetch(api, &a.service, a.tail, since).await?;
    sort(&mut lines);
    let hosts = if a.raw {
        HashMap::new()
    } else {
        hostnames(api).await
    };
    emit(&lines, &hosts, &a)?;
    if !a.follow {
        return Ok(());
    }
    // From a window before now (this clock may lead the nodes'), never before --since: a
    // line not printed yet of a task already printed from is told apart by its time.
    let mut cursor = Cursor::new(since.max(nanos(now) - FOLLOW_WINDOW_NANOS));
    cursor.seen(&lines);
    let mut tick = tokio::time::interval(FOLLOW_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let fresh = fetch(api, &a.service, 0, cursor.since()).await?;
        let new = cursor.take(fresh);
        if new.is_empty() {
            continue;
        }
        let hosts = if a.raw || new.iter().all(|l| hosts_known(&hosts, l)) {
            hosts.clone()
        } else {
            hostnames(api).await
        };
        emit(&new, &hosts, &a)?;
    }
}

fn hosts_known(hosts: &HashMap<String, String>, l: &LogLine) -> bool {
    hosts.contains_key(&l.node_id)
}

async fn fetch(
    api: &mut Api,
    service: &str,
    tail: u64,
    since: i64,
) -> anyhow::Result<Vec<LogLine>> {
    Ok(api
        .service_logs(ServiceLogsRequest {
            service: service.to_string(),
            tail,
            since_nanos: since,
        })
        .await
        .map_err(status)?
        .into_inner()
        .lines)
}

fn emit(lines: &[LogLine], hosts: &HashMap<String, String>, a: &LogsArgs) -> anyhow::Result<()> {
    let (out, err) = logs_text(lines, hosts, a.raw, a.no_trunc, a.timestamps);
    print(&out)?;
    if !err.is_empty() {
        eprint!("{err}");
    }
    Ok(())
}

fn nanos(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(0)
}

/// Lines of several tasks and nodes, by the time they were written (stable: a task's lines
/// keep their order; lines of unknown time first, as they are the oldest).
fn sort(lines: &mut [LogLine]) {
    lines.sort_by_key(|l| l.time_nanos);
}

/// What `--follow` has printed: per task, the time of its newest line printed and how many
/// printed lines had exactly that time (a task's lines come in the order written, so they
/// are the first ones of that time in the next answer).
#[derive(Debug, Default)]
pub(super) struct Cursor {
    start: i64,
    newest: i64,
    tasks: HashMap<String, (i64, usize)>,
}

impl Cursor {
    /// A cursor for lines from `start` (Unix ns) on.
    pub(super) fn new(start: i64) -> Self {
        Cursor {
            start,
            newest: start,
            tasks: HashMap::new(),
        }
    }

    /// The `since` of the next request.
    pub(super) fn since(&self) -> i64 {
        self.start
            .max(self.newest.saturating_sub(FOLLOW_WINDOW_NANOS))
    }

    /// Records lines as printed.
    pub(super) fn seen(&mut self, lines: &[LogLine]) {
        for l in lines {
            let e = self.tasks.entry(l.task_id.clone()).or_insert((i64::MIN, 0));
            if l.time_nanos > e.0 {
                *e = (l.time_nanos, 1);
            } else if l.time_nanos == e.0 {
                e.1 += 1;
            }
            self.newest = self.newest.max(l.time_nanos);
        }
    }

    /// Of an answer, the lines not printed yet, in time order; records them as printed.
    pub(super) fn take(&mut self, lines: Vec<LogLine>) -> Vec<LogLine> {
        let mut skip: HashMap<String, usize> = HashMap::new();
        let mut new = Vec::new();
        for l in lines {
            let fresh = match self.tasks.get(&l.task_id) {
                None => true,
                Some(&(last, count)) => {
                    if l.time_nanos > last {
                        true
                    } else if l.time_nanos == last {
                        let n = skip.entry(l.task_id.clone()).or_default();
                        *n += 1;
                        *n > count
                    } else {
                        false
                    }
                }
            };
            if fresh {
                new.push(l);
            }
        }
        sort(&mut new);
        self.seen(&new);
        new
    }
}

/// Docker's fixed-width RFC 3339 time with nanoseconds, as `-t` prints it.
fn timestamp(nanos: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// `web.1.k3x9qabcdefg@w1    | line`, prefixes padded to the same width, after the time
/// with `-t`; stdout and stderr lines go to the CLI's stdout and stderr.
pub(super) fn logs_text(
    lines: &[LogLine],
    hosts: &HashMap<String, String>,
    raw: bool,
    no_trunc: bool,
    timestamps: bool,
) -> (String, String) {
    let prefix = |l: &LogLine| {
        let id = if no_trunc {
            l.task_id.as_str()
        } else {
            short_id(&l.task_id)
        };
        let node = hosts
            .get(&l.node_id)
            .map_or_else(|| short_id(&l.node_id).to_string(), Clone::clone);
        if l.task_name.is_empty() {
            format!("{id}@{node}")
        } else {
            format!("{}.{id}@{node}", l.task_name)
        }
    };
    let prefixes: Vec<String> = if raw {
        Vec::new()
    } else {
        lines.iter().map(prefix).collect()
    };
    let width = prefixes
        .iter()
        .map(|p| p.chars().count())
        .max()
        .unwrap_or(0);
    let (mut out, mut err) = (String::new(), String::new());
    for (i, l) in lines.iter().enumerate() {
        let target = if l.stream == "stderr" {
            &mut err
        } else {
            &mut out
        };
        if timestamps {
            let _ = write!(target, "{} ", timestamp(l.time_nanos));
        }
        let text = l.line.trim_end_matches('\n');
        if raw {
            let _ = writeln!(target, "{text}");
        } else {
            let _ = writeln!(target, "{:<width$}    | {text}", prefixes[i]);
        }
    }
    (out, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, name: &str, node: &str, stream: &str, text: &str, t: i64) -> LogLine {
        LogLine {
            task_id: id.into(),
            task_name: name.into(),
            node_id: node.into(),
            stream: stream.into(),
            line: text.into(),
            time_nanos: t,
        }
    }

    #[test]
    fn logs_are_prefixed_like_docker() {
        let lines = vec![
            line("task1aaaaaaaaaaaaaa", "web.1", "n1", "stdout", "hello\n", 1),
            line("task2bbbbbbbbbbbbbb", "web.10", "n2", "stderr", "oops", 2),
        ];
        let hosts = HashMap::from([
            ("n1".to_string(), "m1".to_string()),
            ("n2".to_string(), "w1".to_string()),
        ]);
        let (out, err) = logs_text(&lines, &hosts, false, false, false);
        assert_eq!(out, "web.1.task1aaaaaaa@m1     | hello\n");
        assert_eq!(err, "web.10.task2bbbbbbb@w1    | oops\n");
        let (out, err) = logs_text(&lines, &hosts, true, false, false);
        assert_eq!((out.as_str(), err.as_str()), ("hello\n", "oops\n"));
        let (out, _) = logs_text(&lines[..1], &hosts, false, false, true);
        assert_eq!(
            out,
            "1970-01-01T00:00:00.000000001Z web.1.task1aaaaaaa@m1    | hello\n"
        );
    }

    #[test]
    fn tail_values() {
        assert_eq!(parse_tail("all"), Ok(0));
        assert_eq!(parse_tail("20"), Ok(20));
        assert!(parse_tail("-1").is_err());
    }

    #[test]
    fn following_prints_each_line_once() {
        let mut c = Cursor::new(100);
        c.seen(&[line("a", "w.1", "n", "stdout", "a1", 100)]);
        // The next answer repeats a1 and has two lines written in the same nanosecond.
        let got = c.take(vec![
            line("a", "w.1", "n", "stdout", "a1", 100),
            line("a", "w.1", "n", "stdout", "a2", 100),
            line("b", "w.2", "n", "stdout", "b1", 150),
            line("a", "w.1", "n", "stdout", "a3", 200),
        ]);
        let text = |v: &[LogLine]| v.iter().map(|l| l.line.clone()).collect::<Vec<_>>();
        assert_eq!(text(&got), ["a2", "b1", "a3"]);
        // Asked again: nothing new; then one more line of b.
        let again = vec![
            line("a", "w.1", "n", "stdout", "a1", 100),
            line("a", "w.1", "n", "stdout", "a2", 100),
            line("b", "w.2", "n", "stdout", "b1", 150),
            line("a", "w.1", "n", "stdout", "a3", 200),
        ];
        assert!(c.take(again.clone()).is_empty());
        let mut more = again;
        more.push(line("b", "w.2", "n", "stdout", "b2", 150));
        assert_eq!(text(&c.take(more)), ["b2"]);
        assert_eq!(c.since(), 100);
    }

    #[test]
    fn the_follow_window_trails_the_newest_line() {
        let mut c = Cursor::new(0);
        c.seen(&[line("a", "w.1", "n", "stdout", "x", 100 * 1_000_000_000)]);
        assert_eq!(c.since(), 70 * 1_000_000_000);
    }
}
