//! The daemon's log: one line per event on stderr, as text for people or as a JSON object for
//! a collector, every line stamped with this node's ID once it has one.
//!
//! ```text
//!  tracing event ──filter (SKEP_LOG, else --log-level)──► Line ──► stderr
//!     fields of the event, of its spans (task_id, service_id), and node_id ─┘
//! ```
//!
//! One daemon process is one node, so the node ID is process-wide ([`set_node_id`]) and goes
//! on every line, those of tasks that tonic, hyper or openraft spawn included (no span of ours
//! reaches them). Task and service IDs come from the `task` span the agent enters around each
//! task's work. Control characters in text lines are escaped, so no peer-supplied string can
//! forge a line. What is logged is never a secret value: callers log names, IDs and digests
//! (`tests/it/daemon_logs.rs` scans real daemons' logs for the values).

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::sync::{Arc, RwLock};

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written (`skep daemon --log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `TIMESTAMP LEVEL target: message key=value ...`
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message, node_id and the fields.
    Json,
}

/// The least severe events logged (`skep daemon --log-level`), unless `SKEP_LOG` says more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// What the node does (the default).
    #[default]
    Info,
    /// And what it decides and retries.
    Debug,
    /// Everything, libraries' wire-level detail included.
    Trace,
}

impl LogLevel {
    fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `SKEP_LOG` does not parse as a filter.
    #[error(
        "SKEP_LOG={value} is not a log filter: {reason}; give a level (info) or directives such as info,skep::agent=debug, or unset it to use --log-level"
    )]
    BadFilter {
        /// The start of the variable's value, quoted.
        value: String,
        /// What the parser said.
        reason: String,
    },
    /// `SKEP_LOG` is not valid UTF-8.
    #[error("SKEP_LOG is not valid UTF-8: unset it or give a filter such as info,skep=debug")]
    NotUnicode,
    /// Another logger was installed first.
    #[error("cannot install the logger: {0}")]
    Init(String),
}

/// Off whatever the level: openraft logs every failed replication call, several times a second
/// while a peer is down; skep's Raft network logs each distinct reason once instead
/// (`skep::manager::network`).
const QUIETED: &str =
    "openraft::replication=off,openraft::engine::handler::replication_handler=off";

/// The filter directives: `SKEP_LOG`'s value when it is set and not empty (per-module filters
/// such as `info,skep::agent=debug`; it wins over `--log-level`), else `level` for every
/// module but [`QUIETED`].
pub fn directives(level: LogLevel, skep_log: Option<&str>) -> String {
    match skep_log.map(str::trim).filter(|s| !s.is_empty()) {
        Some(custom) => custom.to_string(),
        None => format!("{},{QUIETED}", level.as_str()),
    }
}

/// Installs the daemon's logger on stderr: `format`, filtered by `SKEP_LOG` or else `level`.
pub fn init(format: LogFormat, level: LogLevel) -> Result<(), LogError> {
    let env = match std::env::var("SKEP_LOG") {
        Ok(v) => Some(v),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => return Err(LogError::NotUnicode),
    };
    let dirs = directives(level, env.as_deref());
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(&dirs)
        .map_err(|e| LogError::BadFilter {
            value: crate::util::quote(&dirs),
            reason: e.to_string(),
        })?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(JsonFields::new())
        .event_format(Line::new(format, &NODE))
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| LogError::Init(e.to_string()))
}

/// The ID of the node a process runs, for its log lines.
#[derive(Debug, Default)]
pub struct NodeId(RwLock<Option<Arc<str>>>);

impl NodeId {
    /// No ID yet.
    pub const fn new() -> Self {
        NodeId(RwLock::new(None))
    }

    /// Sets (or, with `None`, clears) the ID.
    pub fn set(&self, id: Option<&str>) {
        let mut slot = self.0.write().unwrap_or_else(|p| p.into_inner());
        *slot = id.map(Arc::from);
    }

    fn get(&self) -> Option<Arc<str>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

static NODE: NodeId = NodeId::new();

/// From now on every log line of this process carries `node_id` = `id` (`None`: the node left
/// its swarm, and lines carry none).
pub fn set_node_id(id: Option<&str>) {
    NODE.set(id);
}

/// The event formatter: gathers an event into a [`Record`] and writes it as `format`.
pub struct Line {
    format: LogFormat,
    node: &'static NodeId,
}

impl Line {
    /// Writes `format`, stamping lines with `node`'s ID.
    pub fn new(format: LogFormat, node: &'static NodeId) -> Self {
        Line { format, node }
    }
}

impl<S> FormatEvent<S, JsonFields> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Gather::default();
        // Outer spans first: an inner span's field, then the event's, replaces theirs.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(formatted) = ext.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(formatted) {
                    for (k, v) in map {
                        fields.put(Cow::Owned(k), v);
                    }
                }
            }
        }
        event.record(&mut fields);
        let meta = event.metadata();
        let record = Record {
            timestamp: timestamp(),
            level: *meta.level(),
            target: fields
                .log_target
                .take()
                .unwrap_or_else(|| meta.target().into()),
            message: fields.message.take().unwrap_or_default(),
            node_id: self.node.get(),
            fields: fields.list,
        };
        let line = match self.format {
            LogFormat::Json => record.json(),
            LogFormat::Text => record.text(),
        };
        w.write_str(&line)
    }
}

fn timestamp() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

/// Keys of a line that no field may take: a field so named is written as `field.<name>`.
const RESERVED: [&str; 5] = ["timestamp", "level", "target", "message", "node_id"];

/// The fields of an event and its spans, in order, each name once.
#[derive(Default)]
struct Gather {
    message: Option<String>,
    /// The `log` crate's target, for events that came through `tracing-log`.
    log_target: Option<String>,
    list: Vec<(String, Value)>,
}

impl Gather {
    fn put(&mut self, name: Cow<'_, str>, value: Value) {
        let name = if RESERVED.contains(&name.as_ref()) {
            format!("field.{name}")
        } else {
            name.into_owned()
        };
        match self.list.iter_mut().find(|(k, _)| *k == name) {
            Some((_, v)) => *v = value,
            None => self.list.push((name, value)),
        }
    }

    fn field(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => {
                self.message = Some(match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            "log.target" => self.log_target = value.as_str().map(str::to_string),
            // `tracing-log`'s module path, file and line: the target says enough.
            n if n.starts_with("log.") => {}
            n => self.put(Cow::Borrowed(n), value),
        }
    }
}

impl Visit for Gather {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(value.to_string()));
        self.field(field, v);
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, Value::String(value.to_string()));
    }
}

/// One log line's content, before it is written.
#[derive(Debug)]
struct Record {
    timestamp: String,
    level: Level,
    target: String,
    message: String,
    node_id: Option<Arc<str>>,
    fields: Vec<(String, Value)>,
}

impl Record {
    /// `{"timestamp":..,"level":"INFO","target":..,"message":..,"node_id":..,<fields>}` and a
    /// newline.
    fn json(&self) -> String {
        let mut out = String::with_capacity(128);
        out.push('{');
        let mut put = |k: &str, v: &Value| {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&Value::from(k).to_string());
            out.push(':');
            out.push_str(&v.to_string());
        };
        put("timestamp", &Value::from(self.timestamp.as_str()));
        put("level", &Value::from(self.level.as_str()));
        put("target", &Value::from(self.target.as_str()));
        put("message", &Value::from(self.message.as_str()));
        if let Some(id) = &self.node_id {
            put("node_id", &Value::from(&**id));
        }
        for (k, v) in &self.fields {
            put(k, v);
        }
        out.push_str("}\n");
        out
    }

    /// `TIMESTAMP LEVEL target: message key=value ... node_id=ID` and a newline.
    fn text(&self) -> String {
        let mut out = String::with_capacity(128);
        let _ = write!(
            out,
            "{} {:>5} {}: {}",
            self.timestamp,
            self.level.as_str(),
            escaped(&self.target),
            escaped(&self.message)
        );
        for (k, v) in &self.fields {
            let _ = write!(out, " {}={}", escaped(k), text_value(v));
        }
        if let Some(id) = &self.node_id {
            let _ = write!(out, " node_id={}", escaped(id));
        }
        out.push('\n');
        out
    }
}

/// A field's value in a text line: plain when it is one word, else quoted.
fn text_value(v: &Value) -> String {
    match v {
        Value::String(s)
            if !s.is_empty()
                && !s
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '=')) =>
        {
            s.clone()
        }
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// `s` with control characters (a newline that would start a forged line) escaped.
fn escaped(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `f` logs through a subscriber writing `format` with `node`'s ID.
    fn lines(format: LogFormat, node: &'static NodeId, f: impl FnOnce()) -> Vec<String> {
        let out = Capture::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .fmt_fields(JsonFields::new())
            .event_format(Line::new(format, node))
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn json_lines_carry_the_node_and_the_task_and_flatten_fields() {
        static NODE: NodeId = NodeId::new();
        let got = lines(LogFormat::Json, &NODE, || {
            tracing::info!("before the node has an ID");
            NODE.set(Some("n0de"));
            let span = tracing::error_span!("task", task_id = "t1", service_id = "s1");
            let _in = span.enter();
            tracing::warn!(peer = %"10.0.0.1:2377", count = 3, ok = true, "task {} stopped", "t1");
            tracing::debug!(target = 80, task_id = "t2", "inner field wins");
        });
        assert_eq!(got.len(), 3, "{got:#?}");
        let parse = |l: &str| serde_json::from_str::<serde_json::Map<String, Value>>(l).unwrap();
        let first = parse(&got[0]);
        assert_eq!(first["message"], "before the node has an ID");
        assert_eq!(first["level"], "INFO");
        assert!(!first.contains_key("node_id"), "{first:?}");
        let second = parse(&got[1]);
        let keys: Vec<&str> = second.keys().map(String::as_str).collect();
        // Order on the line is the one written, not the map's: check the text.
        assert!(
            got[1].starts_with(r#"{"timestamp":""#),
            "the timestamp comes first: {}",
            got[1]
        );
        assert_eq!(second["level"], "WARN", "{keys:?}");
        assert_eq!(second["target"], module_path!());
        assert_eq!(second["message"], "task t1 stopped");
        assert_eq!(second["node_id"], "n0de");
        assert_eq!(second["task_id"], "t1");
        assert_eq!(second["service_id"], "s1");
        assert_eq!(second["peer"], "10.0.0.1:2377");
        assert_eq!(second["count"], 3);
        assert_eq!(second["ok"], true);
        assert!(crate::util::parse_rfc3339(second["timestamp"].as_str().unwrap()).is_some());
        let third = parse(&got[2]);
        assert_eq!(third["task_id"], "t2", "the event's own field wins");
        assert_eq!(third["service_id"], "s1");
        assert_eq!(
            third["target"],
            module_path!(),
            "a field cannot take a line's key"
        );
        assert_eq!(third["field.target"], 80);
        assert_eq!(third["level"], "DEBUG");
    }

    #[test]
    fn text_lines_are_one_line_each_with_the_node_last() {
        static NODE: NodeId = NodeId::new();
        NODE.set(Some("n0de"));
        let got = lines(LogFormat::Text, &NODE, || {
            tracing::info!(
                task_id = "t1",
                reason = "two words",
                "a peer said \"hi\nFORGED 2099 ERROR line\""
            );
        });
        assert_eq!(got.len(), 1, "a newline in a message is escaped: {got:#?}");
        let line = &got[0];
        assert!(
            line.contains(&format!(" INFO {}: a peer said", module_path!())),
            "{line}"
        );
        assert!(line.contains(r"\nFORGED"), "{line}");
        assert!(line.contains(r#"task_id=t1 reason="two words""#), "{line}");
        assert!(line.ends_with(" node_id=n0de"), "{line}");
    }

    #[test]
    fn skep_log_wins_over_the_level_and_the_level_keeps_raft_quiet() {
        assert_eq!(
            directives(LogLevel::Debug, None),
            format!("debug,{QUIETED}")
        );
        assert_eq!(
            directives(LogLevel::Info, Some("  ")),
            format!("info,{QUIETED}")
        );
        assert_eq!(
            directives(LogLevel::Error, Some("info,skep::agent=trace")),
            "info,skep::agent=trace"
        );
        for level in [
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ] {
            tracing_subscriber::EnvFilter::builder()
                .parse(directives(level, None))
                .unwrap();
        }
    }

    #[test]
    fn reserved_names_and_log_crate_fields() {
        let mut g = Gather::default();
        g.put(Cow::Borrowed("node_id"), Value::from("other"));
        g.put(Cow::Borrowed("a"), Value::from(1));
        g.put(Cow::Borrowed("a"), Value::from(2));
        assert_eq!(
            g.list,
            vec![
                ("field.node_id".to_string(), Value::from("other")),
                ("a".to_string(), Value::from(2))
            ]
        );
        assert_eq!(text_value(&Value::from("")), r#""""#);
        assert_eq!(text_value(&Value::from("a=b")), r#""a=b""#);
        assert_eq!(text_value(&Value::from("plain")), "plain");
        assert_eq!(escaped("a\u{1b}[31mb"), r"a\u{1b}[31mb");
    }
}
