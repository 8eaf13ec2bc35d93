//! The export file (`skep audit export --format jsonl`, documented in `docs/audit-export.md`):
//! an optional header line, then one record per line exactly as the daemon serialised it.
//!
//! ```text
//!  {"skep_audit_export":1,"cluster_id":..,"public_key":..,"algorithm":"ed25519",..}   header
//!  {"seq":1,"time":..,"actor":{..},"action":..,..,"prev_hash":..,"hash":..}         records
//! ```
//!
//! A file given to `audit verify --file` is untrusted input: [`parse`] never panics, and names
//! the line that is not what it should be (`fuzz/fuzz_targets/audit_file.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::AuditRecord;

/// The export format's version, the value of the header's `skep_audit_export` field.
pub const FORMAT_VERSION: u32 = 1;

/// The first line of an export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportHeader {
    /// The format version ([`FORMAT_VERSION`]).
    pub skep_audit_export: u32,
    /// The swarm's cluster ID.
    pub cluster_id: String,
    /// The swarm's audit public key (hex Ed25519), which signs checkpoints.
    pub public_key: String,
    /// The signature algorithm, `ed25519`.
    pub algorithm: String,
    /// RFC 3339 time of the export.
    pub exported_at: String,
    /// The filters the export was made with (`since`, `actor`, ...); empty for a whole chain.
    #[serde(default)]
    pub filters: BTreeMap<String, String>,
}

/// A parsed export.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Export {
    /// The header line, if the file has one (`audit ls --json` output has none).
    pub header: Option<ExportHeader>,
    /// The records, in file order.
    pub records: Vec<AuditRecord>,
}

/// Why an export did not parse.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A line is neither a record nor (first) the header.
    #[error("line {line} is not an audit record")]
    Line {
        /// 1-based line number.
        line: usize,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The header names a format this build does not know.
    #[error(
        "line {line}: unsupported export format version {version} (this skep reads {FORMAT_VERSION})"
    )]
    Version {
        /// 1-based line number.
        line: usize,
        /// The version found.
        version: u32,
    },
}

impl ExportError {
    /// The line it is about.
    pub fn line(&self) -> usize {
        match self {
            ExportError::Line { line, .. } | ExportError::Version { line, .. } => *line,
        }
    }
}

/// Parses an export: blank lines are skipped; the first non-blank line may be the header.
pub fn parse(text: &str) -> Result<Export, ExportError> {
    let mut out = Export::default();
    let mut first = true;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if std::mem::take(&mut first) && line.contains("\"skep_audit_export\"") {
            let header: ExportHeader =
                serde_json::from_str(line).map_err(|source| ExportError::Line {
                    line: i + 1,
                    source,
                })?;
            if header.skep_audit_export != FORMAT_VERSION {
                return Err(ExportError::Version {
                    line: i + 1,
                    version: header.skep_audit_export,
                });
            }
            out.header = Some(header);
            continue;
        }
        let record: AuditRecord =
            serde_json::from_str(line).map_err(|source| ExportError::Line {
                line: i + 1,
                source,
            })?;
        out.records.push(record);
    }
    Ok(out)
}

/// One-call entry point for fuzzing: parse untrusted bytes and verify what parsed, the way
/// `audit verify --file` does. Must never panic.
#[doc(hidden)]
pub fn parse_and_verify(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let Ok(export) = parse(text) else {
        return false;
    };
    let key = export.header.as_ref().map(|h| h.public_key.as_str());
    let opts = super::VerifyOptions {
        public_key: key,
        gaps_allowed: export
            .header
            .as_ref()
            .is_some_and(|h| !h.filters.is_empty()),
        require_anchor: true,
    };
    super::verify_with(&export.records, &opts).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, AuditChain, AuditEvent, Outcome};

    #[test]
    fn header_and_records_round_trip() {
        let mut c = AuditChain::default();
        c.append(AuditEvent::now(Actor::system(), "a.b", "t", Outcome::Ok));
        let header = ExportHeader {
            skep_audit_export: FORMAT_VERSION,
            cluster_id: "c1".into(),
            public_key: "ab".into(),
            algorithm: "ed25519".into(),
            exported_at: crate::util::now_rfc3339(),
            filters: BTreeMap::new(),
        };
        let text = format!(
            "{}\n\n{}\n",
            serde_json::to_string(&header).unwrap(),
            serde_json::to_string(&c.records()[0]).unwrap()
        );
        let e = parse(&text).unwrap();
        assert_eq!(e.header, Some(header));
        assert_eq!(e.records, c.records());
        assert!(parse_and_verify(text.as_bytes()));
    }

    #[test]
    fn a_bad_line_or_version_is_named() {
        let e = parse("{\"seq\":1}\n").unwrap_err();
        assert_eq!(e.line(), 1);
        assert_eq!(e.to_string(), "line 1 is not an audit record");
        let e = parse("\n{\"skep_audit_export\":9,\"cluster_id\":\"\",\"public_key\":\"\",\"algorithm\":\"\",\"exported_at\":\"\"}\n").unwrap_err();
        assert!(matches!(
            e,
            ExportError::Version {
                line: 2,
                version: 9
            }
        ));
        assert!(!parse_and_verify(b"\xff\xfe"));
        assert!(!parse_and_verify(b"[1,2"));
        assert!(parse_and_verify(b""));
    }
}
