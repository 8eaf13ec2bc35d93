//! `skep events`: what changed in the cluster, printed as `docker events` prints swarm
//! events, until interrupted or until `--until` passes.

use anyhow::Context as _;
use clap::Args;
use time::OffsetDateTime;

use super::client::status;
use super::template::Compiled;
use crate::api::v1::EventsRequest;
use crate::manager::events::Event;

type Api = super::client::Api;

/// `skep events` flags (Docker's).
#[derive(Debug, Args)]
pub(super) struct EventsArgs {
    /// Show events created since this time: Unix seconds, a duration ago (10m) or an RFC 3339
    /// time. Without it, only new events.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Stream events until this time, then exit; without it, until interrupted.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Filter events (type=service|node|secret|config|network, event=create|update|remove,
    /// service=, node=, secret=, config=, network= NAME or ID, scope=swarm, label=KEY[=VALUE]).
    /// Values of one key match any; different keys must all match.
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    filter: Vec<String>,
    /// `json` (one JSON object a line, Docker's keys) or a Go template
    /// ('{{.Type}} {{.Action}} {{.Actor.Attributes.name}}').
    #[arg(long, value_name = "FORMAT")]
    format: Option<String>,
}

/// How each event is printed.
enum Style {
    Text,
    Json,
    Template(Compiled),
}

impl Style {
    fn of(format: Option<&str>) -> anyhow::Result<Style> {
        Ok(match format.map(str::trim) {
            None | Some("") => Style::Text,
            Some("json" | "{{json .}}") => Style::Json,
            // A template that does not parse is refused before anything is asked.
            Some(t) => Style::Template(Compiled::new(t)?),
        })
    }

    fn line(&self, e: &Event) -> anyhow::Result<String> {
        let mut line = match self {
            Style::Text => text(e),
            Style::Json => serde_json::to_string(e).context("encoding an event")?,
            Style::Template(t) => t.render(&template_value(e)?)?,
        };
        line.push('\n');
        Ok(line)
    }
}

pub(super) async fn run(api: &mut Api, args: EventsArgs) -> anyhow::Result<()> {
    let style = Style::of(args.format.as_deref())?;
    let now = OffsetDateTime::now_utc();
    let when = |flag: &str, v: &Option<String>| -> anyhow::Result<String> {
        v.as_deref()
            .map(|t| {
                super::when::resolve(t, now)
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .context("formatting the time")
                    })
                    .with_context(|| format!("--{flag}"))
            })
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let req = EventsRequest {
        since: when("since", &args.since)?,
        until: when("until", &args.until)?,
        filters: args.filter,
    };
    let mut stream = api.events(req).await.map_err(status)?.into_inner();
    while let Some(msg) = stream.message().await.map_err(status)? {
        let mut text = String::new();
        for m in msg.events {
            text.push_str(&style.line(&Event::from_wire(m))?);
        }
        if !super::audit::write_out(&text)? {
            return Ok(()); // the reader went away (`| head`)
        }
    }
    Ok(())
}

/// Docker's line: `TIME TYPE ACTION ID (k=v, ...)`, the time in UTC with nanoseconds.
fn text(e: &Event) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
    );
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.time_nano))
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| e.time.to_string());
    let mut line = format!("{at} {} {} {}", e.kind, e.action, e.actor.id);
    if !e.actor.attributes.is_empty() {
        let attrs: Vec<String> = e
            .actor
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        line.push_str(&format!(" ({})", attrs.join(", ")));
    }
    line
}

/// What a template sees: Docker's JSON, plus the Go field names of the keys its JSON spells
/// otherwise (`.Scope`, `.Time`, `.TimeNano`), as Docker's templates run on the Go struct.
fn template_value(e: &Event) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(e).context("encoding an event")?;
    if let Some(o) = v.as_object_mut() {
        for (json, go) in [
            ("scope", "Scope"),
            ("time", "Time"),
            ("timeNano", "TimeNano"),
        ] {
            if let Some(x) = o.get(json).cloned() {
                o.insert(go.into(), x);
            }
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::events::EventActor;

    fn event() -> Event {
        Event {
            kind: "service".into(),
            action: "update".into(),
            actor: EventActor {
                id: "k3x9".into(),
                attributes: [("replicas.new", "3"), ("name", "web")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            scope: "swarm".into(),
            time: 1_796_464_800,
            time_nano: 1_796_464_800_000_000_123,
        }
    }

    fn line(format: Option<&str>) -> String {
        Style::of(format).unwrap().line(&event()).unwrap()
    }

    #[test]
    fn the_default_line_is_dockers() {
        assert_eq!(
            line(None),
            "2026-12-05T10:00:00.000000123Z service update k3x9 (name=web, replicas.new=3)\n"
        );
    }

    #[test]
    fn json_is_one_object_a_line_with_dockers_keys() {
        let json = line(Some("json"));
        assert_eq!(
            json,
            "{\"Type\":\"service\",\"Action\":\"update\",\"Actor\":{\"ID\":\"k3x9\",\"Attributes\":{\"name\":\"web\",\"replicas.new\":\"3\"}},\"scope\":\"swarm\",\"time\":1796464800,\"timeNano\":1796464800000000123}\n"
        );
        assert_eq!(line(Some("{{json .}}")), json);
    }

    #[test]
    fn go_templates_see_dockers_field_names() {
        assert_eq!(
            line(Some(
                "{{.Type}} {{.Action}} {{.Actor.ID}} {{.Actor.Attributes.name}}"
            )),
            "service update k3x9 web\n"
        );
        assert_eq!(
            line(Some(
                "{{.Scope}} {{.Time}} {{index .Actor.Attributes \"replicas.new\"}}"
            )),
            "swarm 1796464800 3\n"
        );
        assert_eq!(
            line(Some("{{json .Actor.Attributes}}")),
            "{\"name\":\"web\",\"replicas.new\":\"3\"}\n"
        );
        let e = Style::of(Some("{{.Type")).err().unwrap().to_string();
        assert!(e.starts_with("the --format template does not parse"), "{e}");
    }
}
