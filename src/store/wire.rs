//! How Raft traffic is encoded between managers, and how big it may be.
//!
//! Every Raft RPC (append, vote, snapshot chunk) and every forwarded proposal travels as
//! postcard bytes in one `RaftMessage` (bytes stay bytes: a 500 KiB secret is ~500 KiB on the
//! wire, not the 1.6 MB of a JSON number array). The budgets below are the one place the
//! sizes are agreed; both ends of the `Manager` gRPC service are configured from them.
//!
//! ```text
//!  proposal ──► check_command (≤ MAX_COMMAND_BYTES, refused with the size otherwise)
//!  AppendEntries ──► cut_entries (≤ APPEND_BUDGET_BYTES of entries, at least one entry)
//!  snapshot ──► openraft chunks of SNAPSHOT_CHUNK_BYTES
//!  every RaftMessage ≤ MAX_MESSAGE_BYTES (tonic's encode and decode limits, both sides)
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TypeConfig;

/// The largest command a proposal may carry, encoded: a 500 KiB secret, a batch of a
/// thousand tasks or a long audit detail fit with room to spare.
pub const MAX_COMMAND_BYTES: usize = 4 << 20;

/// How many bytes of log entries one AppendEntries carries at most (a single larger entry
/// still goes alone: it is bounded by [`MAX_COMMAND_BYTES`]). openraft gives each
/// AppendEntries one heartbeat interval to complete, so this stays small.
pub const APPEND_BUDGET_BYTES: usize = 1 << 20;

/// The size of one snapshot chunk (openraft's `snapshot_max_chunk_size`).
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1 << 20;

/// The largest `RaftMessage` either side sends or accepts: one full AppendEntries budget
/// plus the largest single entry, plus room for the envelope.
pub const MAX_MESSAGE_BYTES: usize = APPEND_BUDGET_BYTES + MAX_COMMAND_BYTES + (1 << 20);

/// The encoding of what the Raft log stores and managers send each other. postcard writes no
/// field names, so adding, removing or reordering a field of anything stored (a spec, a task,
/// a node) makes entries of one build unreadable, or worse misread, by another: a log of
/// another format is refused when opened ([`super::log`]), and a Raft message of another
/// format when received, naming both. 1 is every build before this number existed. Raise it
/// with any change to the encoding (the test `the_log_format_names_this_encoding` fails until
/// it is raised); a swarm moves to a build of another format with `swarm backup` and
/// `swarm restore`, whose state is JSON and reads older backups.
pub const LOG_FORMAT: u32 = 2;

/// Why bytes could not be encoded or decoded, or were too large.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Encoding failed (a bug: every type here encodes).
    #[error("encoding a raft message: {0}")]
    Encode(#[source] postcard::Error),
    /// The bytes are not a message of the expected kind.
    #[error("malformed raft message ({len} bytes): {source}")]
    Decode {
        /// How many bytes arrived.
        len: usize,
        /// The decoder's complaint.
        #[source]
        source: postcard::Error,
    },
    /// A peer of another build sent a Raft message of another log format.
    #[error(
        "the peer runs a skep build of Raft log format {found} and this manager one of format {LOG_FORMAT}{}: run the same skep build on every manager",
        if *found == 0 { " (0: a build from before formats were sent)" } else { "" }
    )]
    Format {
        /// The format the message carried.
        found: u32,
    },
    /// A command is larger than any manager accepts.
    #[error(
        "the command is {size} bytes encoded, over the limit of {limit} bytes; split it (fewer objects per request) or make the values smaller"
    )]
    CommandTooLarge {
        /// Its encoded size.
        size: usize,
        /// [`MAX_COMMAND_BYTES`].
        limit: usize,
    },
}

/// Refuses a Raft message whose sender's log format is not [`LOG_FORMAT`].
pub fn check_format(found: u32) -> Result<(), WireError> {
    if found == LOG_FORMAT {
        Ok(())
    } else {
        Err(WireError::Format { found })
    }
}

/// Encodes a Raft message.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, WireError> {
    postcard::to_allocvec(value).map_err(WireError::Encode)
}

/// Decodes a Raft message (untrusted bytes from a peer: never panics).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    postcard::from_bytes(bytes).map_err(|source| WireError::Decode {
        len: bytes.len(),
        source,
    })
}

/// The encoded size of a value.
pub fn size_of<T: Serialize + ?Sized>(value: &T) -> Result<usize, WireError> {
    postcard::serialize_with_flavor::<T, _, usize>(value, postcard::ser_flavors::Size::default())
        .map_err(WireError::Encode)
}

/// Refuses a command whose encoding is over [`MAX_COMMAND_BYTES`]: it could never be
/// replicated within the message budget.
pub fn check_command(cmd: &super::model::Command) -> Result<usize, WireError> {
    let size = size_of(cmd)?;
    if size > MAX_COMMAND_BYTES {
        return Err(WireError::CommandTooLarge {
            size,
            limit: MAX_COMMAND_BYTES,
        });
    }
    Ok(size)
}

/// How many of `entries` (from the front) fit in `budget` bytes: at least one, so a single
/// large entry still moves.
pub fn cut_entries(
    entries: &[openraft::Entry<TypeConfig>],
    budget: usize,
) -> Result<usize, WireError> {
    let mut total = 0usize;
    for (i, e) in entries.iter().enumerate() {
        total = total.saturating_add(size_of(e)?);
        if total > budget && i > 0 {
            return Ok(i);
        }
    }
    Ok(entries.len())
}

/// The Raft RPC decoder for fuzzing: any bytes as an AppendEntries request.
#[doc(hidden)]
pub fn fuzz_decode_append(bytes: &[u8]) {
    let _ = decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(bytes);
    let _ = decode::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(bytes);
    let _ = decode::<openraft::raft::VoteRequest<u64>>(bytes);
    let _ = decode::<super::model::Command>(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model::Command;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    fn entry(index: u64, payload_len: usize) -> openraft::Entry<TypeConfig> {
        openraft::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Audit(crate::audit::AuditEvent::now(
                crate::audit::Actor::node("n"),
                "test",
                &"x".repeat(payload_len),
                crate::audit::Outcome::Ok,
            ))),
        }
    }

    /// A tripwire: what the log stores, encoded: a service with every optional part of its
    /// spec filled in, its task, a node, the cluster, and a secret and a config with an older
    /// version and a rollout. When this fails, the encoding changed: raise [`LOG_FORMAT`], then put the new
    /// digest here.
    #[test]
    fn the_log_format_names_this_encoding() {
        use crate::store::fixtures;
        use crate::store::service::{HealthCheck, SecretRef};
        let mut service = fixtures::service("s1", "web");
        let t = &mut service.spec.task;
        t.healthcheck = Some(HealthCheck::new(vec!["CMD".into(), "true".into()]));
        t.secrets = vec![SecretRef::new("db")];
        t.configs = vec![SecretRef::new("conf")];
        t.mounts = vec![crate::spec::mount::parse("type=volume,source=data,target=/data").unwrap()];
        t.limits.pids = 1;
        service.spec.ports = vec![crate::spec::service::parse_publish("8080:80").unwrap()];
        let mut task = fixtures::task();
        task.spec = service.spec.task.clone();
        let value = crate::secret::SecretBytes::new(b"v".to_vec());
        let secret = crate::store::secret_obj::Secret {
            id: "x1".into(),
            name: "db".into(),
            labels: [("k".to_string(), "v".to_string())].into(),
            digest: "d".into(),
            size: 1,
            value: value.clone(),
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            version: 2,
            others: vec![crate::store::secret_obj::SecretVersion {
                version: 1,
                digest: "d".into(),
                size: 1,
                value,
                created_at: "2026-01-01T00:00:00Z".into(),
            }],
            rollout: Some(crate::store::secret_obj::Rollout::start(
                1,
                2,
                false,
                "2026-01-01T00:00:00Z",
            )),
        };
        let mut bytes = encode(&Command::PutService(Box::new(service))).unwrap();
        bytes.extend(encode(&Command::PutNode(fixtures::node("n1"))).unwrap());
        bytes.extend(encode(&Command::InitCluster(Box::new(fixtures::cluster()))).unwrap());
        bytes.extend(encode(&Command::PutSecret(Box::new(secret.clone()))).unwrap());
        bytes.extend(encode(&Command::PutConfig(Box::new(secret))).unwrap());
        bytes.extend(encode(&Command::PutTasks(vec![task])).unwrap());
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            (LOG_FORMAT, hex.as_str()),
            (
                2,
                "a473f23da406641b221bda003bbf990b0f427577aed03ea50e77b6f837082b31"
            ),
            "the Raft log's encoding changed: raise LOG_FORMAT and put the new digest here"
        );
    }

    #[test]
    fn a_message_of_another_format_is_refused_naming_both() {
        assert!(check_format(LOG_FORMAT).is_ok());
        let e = check_format(0).unwrap_err().to_string();
        assert!(
            e.contains("format 0") && e.contains(&format!("format {LOG_FORMAT}")),
            "{e}"
        );
        assert!(e.contains("same skep build"), "{e}");
    }

    #[test]
    fn bytes_travel_as_bytes() {
        let v = vec![0xffu8; 500 << 10];
        let enc = encode(&v).unwrap();
        assert!(enc.len() < (500 << 10) + 8, "{} bytes", enc.len());
        assert_eq!(decode::<Vec<u8>>(&enc).unwrap(), v);
    }

    #[test]
    fn entries_are_cut_by_bytes_but_at_least_one_moves() {
        let entries: Vec<_> = (1..=10).map(|i| entry(i, 1000)).collect();
        assert_eq!(cut_entries(&entries, 1 << 20).unwrap(), 10);
        let n = cut_entries(&entries, 3500).unwrap();
        assert_eq!(n, 3, "three ~1 KB entries fit in 3.5 KB");
        assert_eq!(cut_entries(&entries, 10).unwrap(), 1);
        assert_eq!(cut_entries(&[], 10).unwrap(), 0);
    }

    #[test]
    fn an_entry_round_trips() {
        let e = entry(7, 10);
        let back: openraft::Entry<TypeConfig> = decode(&encode(&e).unwrap()).unwrap();
        assert_eq!(back.log_id, e.log_id);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\x05abc",
        ] {
            assert!(decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(bytes).is_err());
        }
        fuzz_decode_append(&[0xff; 64]);
    }

    #[test]
    fn oversized_commands_are_refused_with_their_size() {
        let mut event = crate::audit::AuditEvent::now(
            crate::audit::Actor::node("n"),
            "test",
            "",
            crate::audit::Outcome::Ok,
        );
        // Built whole, past the bounds `AuditEvent::now` and `with` apply.
        event.target = "x".repeat(MAX_COMMAND_BYTES + 1);
        let big = Command::Audit(event);
        let e = check_command(&big).unwrap_err().to_string();
        assert!(e.contains("over the limit of 4194304 bytes"), "{e}");
        assert!(e.len() < 300, "the error does not quote the command");
        let small = Command::Batch(vec![]);
        assert!(check_command(&small).is_ok());
    }
}
