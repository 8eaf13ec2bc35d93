//! `skep audit ls` and `skep audit verify`. The CLI re-hashes the chain itself: a daemon's
//! word that its log is whole is worth nothing to an auditor.

use std::io::Read as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use tonic::transport::Channel;

use super::client::status;
use super::output::Table;
use super::{AuditLsArgs, AuditVerifyArgs, print};
use crate::api::v1::AuditListRequest;
use crate::api::v1::control_client::ControlClient;
use crate::audit::AuditRecord;

type Api = ControlClient<Channel>;

pub(super) async fn ls(api: &mut Api, args: AuditLsArgs) -> anyhow::Result<()> {
    let lines = fetch(api).await?;
    if args.json {
        // The daemon's JSON as it is: the export must re-hash exactly as received.
        let text: String = lines
            .iter()
            .map(|l| format!("{}\n", l.trim_end()))
            .collect();
        return print(&text);
    }
    let records = parse_lines(lines.iter().map(String::as_str), "the daemon's record")?;
    print(&table(&records))
}

async fn fetch(api: &mut Api) -> anyhow::Result<Vec<String>> {
    Ok(api
        .audit_list(AuditListRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .records_json)
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

pub(super) async fn verify(api: Option<&mut Api>, args: AuditVerifyArgs) -> anyhow::Result<()> {
    let records = match (&args.file, api) {
        (Some(file), _) => {
            let text = read_file(file)?;
            parse_lines(text.lines(), &format!("line {{}} of {}", file.display()))?
        }
        (None, Some(api)) => {
            let lines = fetch(api).await?;
            parse_lines(lines.iter().map(String::as_str), "the daemon's record")?
        }
        (None, None) => bail!("nothing to verify: give --file or a daemon"),
    };
    print(&check(&records)?)
}

/// Verifies a whole exported chain and says what was checked.
fn check(records: &[AuditRecord]) -> anyhow::Result<String> {
    // An export is the whole chain: without this, dropping its first records would pass.
    if let Some(first) = records.first()
        && first.seq != 1
    {
        bail!(
            "audit record {} is out of sequence: expected 1 (the chain must start at its first record)",
            first.seq
        );
    }
    crate::audit::verify(records)?;
    Ok(match records.last() {
        None => "The audit chain is empty.\n".to_string(),
        Some(last) => format!(
            "The audit chain is whole: {} records, 1 to {}, last hash {}.\n",
            records.len(),
            last.seq,
            last.hash
        ),
    })
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
        assert!(e.contains("audit record 2 is out of sequence"), "{e}");
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
