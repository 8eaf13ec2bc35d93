//! `skep swarm backup -o FILE` and `skep swarm restore FILE`.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use zeroize::Zeroizing;

use super::client::status;
use super::{SwarmBackupArgs, SwarmRestoreArgs, print};
use crate::api::v1::{SwarmBackupRequest, SwarmRestoreChunk};
use crate::store::backup;

type Api = super::client::Api;

/// Bytes of backup per message sent to the daemon.
const CHUNK: usize = 1 << 20;
/// The largest key file read (a passphrase is at most 1 KiB).
const MAX_KEY_FILE: u64 = 4096;

/// The key or passphrase in `path`, without its trailing newline.
fn read_key_file(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read --key-file {}", path.display()))?
        .len();
    if len > MAX_KEY_FILE {
        bail!(
            "--key-file {} is {len} bytes: a key or passphrase is at most {MAX_KEY_FILE}",
            path.display()
        );
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --key-file {}", path.display()))?,
    );
    Ok(Zeroizing::new(
        text.trim_end_matches(['\r', '\n']).to_string(),
    ))
}

fn read_key_stdin() -> anyhow::Result<Zeroizing<String>> {
    super::prompt::secret_line(
        "Enter the backup key or passphrase: ",
        "the backup key",
        "no backup key given: type it at the prompt, pipe it on stdin, or use --key-file",
    )
}

pub(super) async fn backup(api: &mut Api, args: SwarmBackupArgs) -> anyhow::Result<()> {
    if args.output.exists() {
        bail!(
            "{} exists: choose another file (a backup never replaces one)",
            args.output.display()
        );
    }
    let key = match &args.key_file {
        Some(p) => read_key_file(p)?,
        None => Zeroizing::new(String::new()),
    };
    let mut stream = api
        .swarm_backup(SwarmBackupRequest {
            key: key.to_string(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let dir = args
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".skep-backup-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let mut summary = String::new();
    let mut generated = Zeroizing::new(String::new());
    let mut size = 0usize;
    while let Some(chunk) = stream.message().await.map_err(status)? {
        if !chunk.summary.is_empty() {
            summary = chunk.summary;
        }
        if !chunk.generated_key.is_empty() {
            generated = Zeroizing::new(chunk.generated_key);
        }
        size += chunk.data.len();
        tmp.write_all(&chunk.data)
            .with_context(|| format!("writing {}", tmp.path().display()))?;
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    // Mode 0600 already (tempfile); never replaces a file that appeared meanwhile.
    tmp.persist_noclobber(&args.output)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let mut text = format!(
        "Backup written to {} ({size} bytes): {summary}.\n\
         To bring the swarm back on a new machine: skep swarm restore {} --advertise-addr IP:PORT\n",
        args.output.display(),
        args.output.display()
    );
    if !generated.is_empty() {
        text.push_str(&format!(
            "\nThis key opens the backup. It is shown only now: keep it apart from the file.\n\n    {}\n",
            generated.as_str()
        ));
    }
    print(&text)
}

pub(super) async fn restore(api: &mut Api, args: SwarmRestoreArgs) -> anyhow::Result<()> {
    let len = std::fs::metadata(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?
        .len();
    let max = backup::MAX_STATE + backup::MAX_HEADER + 1024;
    if len > max {
        bail!(
            "{} is {len} bytes: a skep backup is at most {max}",
            args.file.display()
        );
    }
    let bytes = Zeroizing::new(
        std::fs::read(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?,
    );
    let header = backup::read_header(&bytes)
        .with_context(|| format!("{} is refused", args.file.display()))?;
    let seen = super::audit_seen::SeenCheckpoints::load(&super::audit_seen::path()?)?;
    if let Some(s) = seen.get(Some(&header.cluster_id), &header.public_key)
        && s.seq > header.audit_seq
        && !args.rollback
    {
        bail!(
            "this backup ends at audit record {} (made {}), but this client verified a checkpoint \
             at record {} on {}: restoring it undoes what happened since (nodes removed, operators \
             revoked and tokens rotated after it are valid again). If that is what you want, run \
             the restore again with --rollback (it is audited)",
            header.audit_seq,
            header.created_at,
            s.seq,
            s.seen_at
        );
    }
    let key = match &args.key_file {
        Some(p) => read_key_file(p)?,
        None => read_key_stdin()?,
    };
    let mut chunks: Vec<SwarmRestoreChunk> = bytes
        .chunks(CHUNK)
        .map(|c| SwarmRestoreChunk {
            data: c.to_vec(),
            ..Default::default()
        })
        .collect();
    if chunks.is_empty() {
        chunks.push(SwarmRestoreChunk::default());
    }
    chunks[0].key = key.to_string();
    chunks[0].advertise_addr = args.advertise_addr.unwrap_or_default();
    chunks[0].rollback = args.rollback;
    chunks[0].expected_size = bytes.len() as u64;
    let resp = api
        .swarm_restore(tokio_stream::iter(chunks))
        .await
        .map_err(status)?
        .into_inner();
    print(&format!(
        "Swarm restored from {}: {}.\n\
         Current node ({}) is now the only manager, at {}. The other managers were removed, and \
         the join tokens rotated.\n\
         Anything done after the backup is undone: check `skep node ls` and `skep audit ls`, and \
         remove again any node or operator removed since.\n\n\
         To add a worker to this swarm, run the following command:\n\n    \
         skep swarm join --token {} {}\n\n",
        args.file.display(),
        resp.summary,
        resp.node_id,
        resp.advertise_addr,
        resp.worker_token,
        resp.advertise_addr
    ))
}
