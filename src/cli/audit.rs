//! `skep audit ls|verify|export`. The manager filters; the CLI re-hashes and checks
//! signatures itself: a daemon's word that its log is whole is worth nothing to an auditor.

use std::io::{Read as _, Write as _};
use std::path::Path;

use anyhow::{Context as _, bail};

use super::client::status;
use super::output::Table;
use super::{AuditExportArgs, AuditFilterArgs, AuditLsArgs, AuditVerifyArgs, print};
use crate::api::v1::AuditListRequest;
use crate::audit::export::{ExportHeader, FORMAT_VERSION};
use crate::audit::{Anchor, AuditRecord, VerifyOptions, VerifyReport};

type Api = super::client::Api;

pub(super) async fn ls(api: &mut Api, args: AuditLsArgs) -> anyhow::Result<()> {
    let req = request(&args.filter, "ls")?;
    if args.follow {
        return follow(api, req, args.json).await;
    }
    let lines = api
        .audit_list(req)
        .await
        .map_err(status)?
        .into_inner()
        .records_json;
    if args.json {
        // The daemon's JSON as it is: the export must re-hash exactly as received.
        return print(&json_lines(&lines));
    }
    let records = parse_lines(lines.iter().map(String::as_str), "the daemon's record")?;
    print(&table(&records))
}

/// Prints records as the manager commits them, until interrupted or stdout closes.
async fn follow(api: &mut Api, req: AuditListRequest, json: bool) -> anyhow::Result<()> {
    let mut stream = api.audit_follow(req).await.map_err(status)?.into_inner();
    if !json && !write_out(&format!("{}\n", row_text(None)))? {
        return Ok(());
    }
    while let Some(msg) = stream.message().await.map_err(status)? {
        let text = if json {
            json_lines(&msg.records_json)
        } else {
            parse_lines(
                msg.records_json.iter().map(String::as_str),
                "the daemon's record",
            )?
            .iter()
            .map(|r| format!("{}\n", row_text(Some(r))))
            .collect()
        };
        if !write_out(&text)? {
            return Ok(()); // the reader went away (`| head`)
        }
    }
    Ok(())
}

/// Writes and flushes stdout; `false` once the reader has gone away.
pub(super) fn write_out(text: &str) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to standard output"),
    }
}

fn json_lines(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect()
}

/// A streamed row: fixed widths, since later rows are not known yet.
fn row_text(r: Option<&AuditRecord>) -> String {
    let cells = match r {
        None => ["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME"].map(String::from),
        Some(r) => [
            r.seq.to_string(),
            r.event.time.clone(),
            format!("{}:{}", r.event.actor.kind, r.event.actor.id),
            r.event.action.clone(),
            r.event.target.clone(),
            r.event.outcome.as_str().to_string(),
        ],
    };
    format!(
        "{:<7}{:<22}{:<40}{:<22}{:<28}{}",
        cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]
    )
    .trim_end()
    .to_string()
}

/// The request for `filter`, with `--since/--until` resolved to RFC 3339 by this clock.
fn request(filter: &AuditFilterArgs, purpose: &str) -> anyhow::Result<AuditListRequest> {
    let now = time::OffsetDateTime::now_utc();
    let when = |flag: &str, v: &Option<String>| -> anyhow::Result<String> {
        v.as_deref()
            .map(|t| {
                super::when::resolve(t, now)
                    .map(crate::util::rfc3339)
                    .with_context(|| format!("--{flag}"))
            })
            .transpose()
            .map(Option::unwrap_or_default)
    };
    Ok(AuditListRequest {
        since: when("since", &filter.since)?,
        until: when("until", &filter.until)?,
        actor: filter.actor.clone().unwrap_or_default(),
        action: filter.action.clone().unwrap_or_default(),
        target: filter.target.clone().unwrap_or_default(),
        outcome: filter.outcome.clone().unwrap_or_default(),
        from_seq: 0,
        purpose: purpose.to_string(),
    })
}

fn table(records: &[AuditRecord]) -> String {
    let mut t = Table::new(&["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME"]);
    for r in records {
        let e = &r.event;
        t.row(vec![
            r.seq.to_string(),
            e.time.clone(),
            format!("{}:{}", e.actor.kind, e.actor.id),
            e.action.clone(),
            e.target.clone(),
            e.outcome.as_str().to_string(),
        ]);
    }
    t.render()
}

/// `audit export --format jsonl`: the header line, then the selected records as the daemon
/// serialised them.
pub(super) async fn export(api: &mut Api, args: AuditExportArgs) -> anyhow::Result<()> {
    let req = request(&args.filter, "export")?;
    let filters: std::collections::BTreeMap<String, String> = [
        ("since", &req.since),
        ("until", &req.until),
        ("actor", &req.actor),
        ("action", &req.action),
        ("target", &req.target),
        ("outcome", &req.outcome),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| (k.to_string(), v.clone()))
    .collect();
    let resp = api.audit_list(req).await.map_err(status)?.into_inner();
    let header = ExportHeader {
        skep_audit_export: FORMAT_VERSION,
        cluster_id: resp.cluster_id,
        public_key: resp.public_key,
        algorithm: crate::audit::checkpoint::ALGORITHM.to_string(),
        exported_at: crate::util::now_rfc3339(),
        filters,
    };
    let mut text = serde_json::to_string(&header).context("encoding the export header")?;
    text.push('\n');
    text.push_str(&json_lines(&resp.records_json));
    match &args.output {
        None => print(&text),
        Some(path) => write_private(path, text.as_bytes()),
    }
}

/// Writes an export readable by its owner only: it names every actor and target.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

pub(super) async fn verify(api: Option<&mut Api>, args: AuditVerifyArgs) -> anyhow::Result<()> {
    let from = args.from.unwrap_or(0);
    let now = time::OffsetDateTime::now_utc();
    let (mut records, key, filtered, source, swarm) = match (&args.file, api) {
        (Some(file), _) => {
            let text = read_file(file)?;
            let export = crate::audit::export::parse(&text).map_err(|e| {
                let msg = e.to_string();
                let named = msg.replacen(
                    &format!("line {}", e.line()),
                    &format!("line {} of {}", e.line(), file.display()),
                    1,
                );
                anyhow::Error::new(e).context(named)
            })?;
            let header_key = export.header.as_ref().map(|h| h.public_key.clone());
            let filtered = export
                .header
                .as_ref()
                .is_some_and(|h| !h.filters.is_empty());
            let (key, source) = match (&args.public_key, header_key) {
                (Some(k), _) => (Some(k.clone()), KeySource::Given),
                (None, Some(k)) if !k.is_empty() => (Some(k), KeySource::FileHeader),
                _ => (None, KeySource::None),
            };
            // The unsigned tail is judged at the time of the export (or of its newest record,
            // for a file without a header), not now: an export does not grow.
            let swarm = Swarm {
                cluster_id: export
                    .header
                    .as_ref()
                    .map(|h| h.cluster_id.clone())
                    .filter(|c| !c.is_empty()),
                at: export
                    .header
                    .as_ref()
                    .and_then(|h| crate::util::parse_rfc3339(&h.exported_at))
                    .or_else(|| {
                        export
                            .records
                            .last()
                            .and_then(|r| crate::util::parse_rfc3339(&r.event.time))
                    })
                    .unwrap_or(now),
            };
            (export.records, key, filtered, source, swarm)
        }
        (None, Some(api)) => {
            let resp = api
                .audit_list(AuditListRequest {
                    from_seq: from,
                    purpose: "verify".into(),
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            let records = parse_lines(
                resp.records_json.iter().map(String::as_str),
                "the daemon's record",
            )?;
            let (key, source) = match (&args.public_key, resp.public_key) {
                (Some(k), _) => (Some(k.clone()), KeySource::Given),
                (None, k) if !k.is_empty() => (Some(k), KeySource::Daemon),
                _ => (None, KeySource::None),
            };
            let swarm = Swarm {
                cluster_id: Some(resp.cluster_id).filter(|c| !c.is_empty()),
                at: now,
            };
            (records, key, false, source, swarm)
        }
        (None, None) => bail!("nothing to verify: give --file or a daemon"),
    };
    if from > 0 {
        records.retain(|r| r.seq >= from);
    }
    let opts = VerifyOptions {
        public_key: key.as_deref(),
        gaps_allowed: filtered,
        require_anchor: from == 0 && !filtered,
    };
    let report = crate::audit::verify_with(&records, &opts)?;
    let reached = match key.as_deref() {
        Some(key) if !filtered => trusted(&records, &report, key, source, &swarm, from)?,
        _ => None,
    };
    let mut text = describe(&report, filtered, source);
    if let Some(seq) = reached {
        text.push_str(&format!(
            "It reaches checkpoint {seq}, the newest this client verified before.\n"
        ));
    }
    print(&text)
}

/// Which swarm a chain is said to be of, and the time its unsigned tail is judged at.
struct Swarm {
    cluster_id: Option<String>,
    at: time::OffsetDateTime,
}

/// With a key: the chain must hold records, keep its unsigned tail within the checkpoint
/// interval, and reach the newest checkpoint this client verified before (which it then
/// remembers, when the key is one the caller trusts). Returns the checkpoint it reached.
fn trusted(
    records: &[AuditRecord],
    report: &VerifyReport,
    key: &str,
    source: KeySource,
    swarm: &Swarm,
    from: u64,
) -> anyhow::Result<Option<u64>> {
    use crate::audit::trust;
    if from == 0 || !records.is_empty() {
        let policy = crate::audit::checkpoint::CheckpointPolicy::default();
        trust::signed_enough(records, report, &policy, swarm.at)?;
    }
    let path = match super::audit_seen::path() {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "Warning: {e:#}; the chain was not compared with a checkpoint verified before"
            );
            return Ok(None);
        }
    };
    let mut seen = super::audit_seen::SeenCheckpoints::load(&path)?;
    let reached = match seen.get(swarm.cluster_id.as_deref(), key) {
        Some(s) => {
            trust::reaches(records, s)?;
            Some(s.seq)
        }
        None => None,
    };
    // A key named only by the file itself vouches for nothing worth remembering.
    if matches!(source, KeySource::Given | KeySource::Daemon)
        && let Some(newest) = trust::newest(records, key, &crate::util::now_rfc3339())
        && seen.remember(swarm.cluster_id.as_deref(), newest)
        && let Err(e) = seen.save(&path)
    {
        eprintln!(
            "Warning: cannot remember the newest checkpoint: {e:#}; a later verify cannot tell whether the chain was cut after it"
        );
    }
    Ok(reached.filter(|seq| records.first().is_some_and(|r| r.seq <= *seq)))
}

/// Where the key checkpoints were checked against came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeySource {
    Given,
    Daemon,
    FileHeader,
    None,
}

/// Says what was checked, and what that does not prove.
fn describe(r: &VerifyReport, filtered: bool, source: KeySource) -> String {
    let (Some(first), Some(last), Some(hash)) = (r.first_seq, r.last_seq, &r.last_hash) else {
        return "The audit chain is empty.\n".to_string();
    };
    let mut out = if filtered {
        format!(
            "The filtered export verifies: {} records between {first} and {last}, each matching its hash; links between records that are not adjacent cannot be checked.\n",
            r.records
        )
    } else {
        format!(
            "The audit chain is whole: {} records, {first} to {last}, last hash {hash}.\n",
            r.records
        )
    };
    match r.anchor {
        Anchor::Checkpoint(seq) => out.push_str(&format!(
            "It starts at checkpoint {seq} (older records were trimmed), whose signature vouches for the records before it.\n"
        )),
        Anchor::Unanchored(seq) if !filtered => out.push_str(&format!(
            "It was checked from record {seq} on; what precedes it was not checked.\n"
        )),
        _ => {}
    }
    let key = match source {
        KeySource::Given => "the key given",
        KeySource::Daemon => "the swarm's audit key",
        KeySource::FileHeader => {
            "the key in the export's header (give --public-key to check against a key you trust)"
        }
        KeySource::None => "the keys they name (no swarm key was known)",
    };
    match r.last_checkpoint {
        Some(cp) => out.push_str(&format!(
            "{} signed checkpoints verify against {key}; the last is {cp}{}.\n",
            r.checkpoints,
            match last - cp {
                0 => String::new(),
                n => format!(", {n} records after it are not signed yet"),
            }
        )),
        None => out.push_str("No signed checkpoint covers these records yet.\n"),
    }
    out
}

fn read_file(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the audit export from stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(path)
        .with_context(|| format!("reading the audit export {}", path.display()))
}

/// Parses JSON lines, skipping blank ones. `what` names a line in errors; a `{}` in it is
/// replaced by the line number.
fn parse_lines<'a>(
    lines: impl Iterator<Item = &'a str>,
    what: &str,
) -> anyhow::Result<Vec<AuditRecord>> {
    let mut records = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: AuditRecord = serde_json::from_str(line).with_context(|| {
            let at = what.replace("{}", &(i + 1).to_string());
            format!("{at} is not an audit record")
        })?;
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, AuditChain, AuditEvent, Outcome};

    fn export(n: usize) -> String {
        let mut chain = AuditChain::default();
        for i in 0..n {
            chain.append(AuditEvent::now(
                Actor::local_admin("node1"),
                "token.read",
                &format!("t{i}"),
                Outcome::Ok,
            ));
        }
        chain
            .records()
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect()
    }

    fn parse(text: &str) -> anyhow::Result<Vec<AuditRecord>> {
        parse_lines(text.lines(), "line {} of f")
    }

    /// Verifies a whole export as `verify --file` does without a key.
    fn check(records: &[AuditRecord]) -> anyhow::Result<String> {
        let opts = VerifyOptions {
            require_anchor: true,
            ..Default::default()
        };
        let report = crate::audit::verify_with(records, &opts)?;
        Ok(describe(&report, false, KeySource::None))
    }

    #[test]
    fn whole_export_verifies() {
        let recs = parse(&export(4)).unwrap();
        let msg = check(&recs).unwrap();
        assert!(
            msg.starts_with("The audit chain is whole: 4 records, 1 to 4"),
            "{msg}"
        );
        assert_eq!(check(&[]).unwrap(), "The audit chain is empty.\n");
    }

    #[test]
    fn edited_target_names_the_record() {
        let text = export(4).replace("\"t2\"", "\"forged\"");
        let e = check(&parse(&text).unwrap()).unwrap_err().to_string();
        assert!(e.contains("audit record 3"), "{e}");
    }

    #[test]
    fn cut_head_is_refused() {
        let text: String = export(4)
            .lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect();
        let e = check(&parse(&text).unwrap()).unwrap_err().to_string();
        assert!(
            e.contains("audit record 2 starts the chain, but a chain must start at record 1 or at a signed checkpoint"),
            "{e}"
        );
    }

    #[test]
    fn garbage_line_is_named() {
        let text = export(2) + "\nnot json\n";
        let e = format!("{:#}", parse(&text).unwrap_err());
        assert!(e.starts_with("line 4 of f is not an audit record"), "{e}");
    }

    #[test]
    fn table_columns() {
        let recs = parse(&export(1)).unwrap();
        let t = table(&recs);
        let mut lines = t.lines();
        assert!(lines.next().unwrap().starts_with("SEQ  TIME"));
        let row = lines.next().unwrap();
        assert!(row.starts_with("1    "), "{row}");
        assert!(
            row.contains("local-admin:node1  token.read  t0      ok"),
            "{row}"
        );
    }
}
