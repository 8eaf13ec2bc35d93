//! The backup file (`swarm backup` / `swarm restore`): the replicated state, encrypted under
//! a key the operator holds (never a node's key-encryption key), signed by the swarm's audit
//! key. A pure format: bytes in, bytes out; the daemon and the CLI do the I/O.
//!
//! ```text
//!  "SKEPBKP1"                 magic; the last byte is the format version
//!  u32 BE header length       at most MAX_HEADER
//!  header (JSON)              BackupHeader: what the backup is, and how its key was made
//!  u64 BE ciphertext length   at most MAX_STATE + 16
//!  nonce (24 bytes)           random
//!  ciphertext                 XChaCha20-Poly1305(key, nonce, state, aad = every byte above
//!                             the nonce) followed by its 16-byte tag
//!  signature (64 bytes)       Ed25519 of the audit key over every byte above it
//! ```
//!
//! Every length is declared before what it measures and bounded before anything is
//! allocated, so a file's exact size is known from its first bytes: a truncated file or one
//! with bytes after its end is named as such. Opening checks, in order: magic and format,
//! lengths, the header's fields, the signature against the header's public key, the key
//! kind, then the AEAD. The header's key is only the key the file names; [`check_state`]
//! then ties it to the decrypted state, whose audit key must be that key: a file re-encrypted
//! and re-signed by someone else names a key its state does not hold.

pub mod key;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

pub use key::{BackupKey, KeySpec};

use super::LogId;
use super::model::State;
use crate::audit::GENESIS_HASH;
use crate::audit::checkpoint::{
    AuditKey, BACKUP_SIGNATURE_LEN, CHECKPOINT_ACTION, CheckpointError,
};
use crate::util::quote;

/// The first bytes of every backup; the last one is the format version.
pub const MAGIC: &[u8; 8] = b"SKEPBKP1";
/// The format this skep writes and reads.
pub const FORMAT: u32 = 1;
/// Largest header, in bytes.
pub const MAX_HEADER: u64 = 64 * 1024;
/// Largest state a backup holds, in bytes (before encryption).
pub const MAX_STATE: u64 = 1 << 30;
/// Longest text field of a header (IDs, version), in bytes.
pub const MAX_FIELD: usize = 256;

const MAGIC_STEM: &[u8] = b"SKEPBKP";
const NONCE_LEN: u64 = 24;
const TAG_LEN: u64 = 16;
const SIG_LEN: u64 = BACKUP_SIGNATURE_LEN as u64;
/// Magic and header length.
const PREFIX_LEN: u64 = MAGIC.len() as u64 + 4;
/// What follows the header: ciphertext length, nonce, tag and signature.
const TRAILER_LEN: u64 = 8 + NONCE_LEN + TAG_LEN + SIG_LEN;

/// Why a backup could not be made, read, opened or trusted. No message holds key material,
/// and untrusted text is quoted only in part.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file does not start with the magic.
    #[error(
        "this is not a skep backup file (it does not start with SKEPBKP1): check the file name"
    )]
    NotABackup,
    /// The file is a backup in a format this skep cannot read.
    #[error(
        "the backup is in format {found}, which this skep ({}) cannot read: restore it with the skep version that made it, or a newer one",
        env!("CARGO_PKG_VERSION")
    )]
    UnsupportedFormat {
        /// The format the file names.
        found: String,
    },
    /// The file ends before its declared lengths can even be read.
    #[error(
        "the backup is truncated: it is {actual} bytes and ends inside its header, which needs at least {at_least}; copy the whole file again"
    )]
    TruncatedHeader {
        /// The size it has been shown to need so far.
        at_least: u64,
        /// Its size.
        actual: u64,
    },
    /// The file is shorter than its header says.
    #[error(
        "the backup is truncated: it should be {expected} bytes, it is {actual}; copy the whole file again"
    )]
    Truncated {
        /// The size its header declares.
        expected: u64,
        /// Its size.
        actual: u64,
    },
    /// The file is longer than its header says.
    #[error(
        "the backup has bytes after its end: it should be {expected} bytes, it is {actual}; the file was altered or something was appended to it: use the original file"
    )]
    TrailingBytes {
        /// The size its header declares.
        expected: u64,
        /// Its size.
        actual: u64,
    },
    /// The declared header length is over [`MAX_HEADER`].
    #[error(
        "the backup declares a {declared}-byte header, more than the {} a backup header may have: the file is damaged or not a skep backup",
        MAX_HEADER
    )]
    HeaderTooLarge {
        /// The declared length.
        declared: u64,
    },
    /// The declared ciphertext length is over [`MAX_STATE`] (or under a tag).
    #[error(
        "the backup declares {declared} bytes of encrypted state, outside the {}..={} a backup may hold: the file is damaged or not a skep backup",
        TAG_LEN,
        MAX_STATE + TAG_LEN
    )]
    BadStateLength {
        /// The declared length.
        declared: u64,
    },
    /// A state to back up is over [`MAX_STATE`].
    #[error(
        "the state is {size} bytes, more than the {} a backup may hold",
        MAX_STATE
    )]
    StateTooLarge {
        /// Its size.
        size: u64,
    },
    /// The header does not parse or a field is invalid.
    #[error("the backup's header is invalid: {0}; the file is damaged or was not written by skep")]
    Header(String),
    /// The header's key derivation is one skep refuses.
    #[error(
        "the backup's key derivation is refused: {0}; the file is damaged or hostile, or was not written by skep"
    )]
    Kdf(String),
    /// The signature does not verify against the header's key.
    #[error(
        "the backup's signature does not verify: the file was altered or damaged; use an intact copy"
    )]
    BadSignature,
    /// The AEAD refused the ciphertext.
    #[error(
        "the backup does not decrypt: the key is wrong or the file was altered; check the key or passphrase"
    )]
    Decrypt,
    /// The key is of the other kind.
    #[error("this backup needs its {needed} key, but a {given} key was given")]
    WrongKeyKind {
        /// The kind the header names.
        needed: &'static str,
        /// The kind given.
        given: &'static str,
    },
    /// A passphrase key derived with another salt or iteration count.
    #[error(
        "the passphrase key was derived for another backup (its salt or iteration count differs): derive it from this backup's header"
    )]
    KeyForAnotherBackup,
    /// A generated key's text does not parse.
    #[error(
        "the backup key is not valid: {0}; copy it again exactly as `skep swarm backup` printed it"
    )]
    KeyText(String),
    /// A generated key's text fails its checksum.
    #[error(
        "the backup key has a typo: its checksum does not match; check every character against what `skep swarm backup` printed"
    )]
    KeyChecksum,
    /// A passphrase is too short or too long.
    #[error(
        "the passphrase is {len} bytes: a backup passphrase must be {}..={} bytes",
        key::MIN_PASSPHRASE,
        key::MAX_PASSPHRASE
    )]
    PassphraseLength {
        /// Its length.
        len: usize,
    },
    /// The decrypted state does not match the header.
    #[error(
        "the backup's state does not match its header: {0}; the file was re-encrypted or re-signed by someone else: do not restore it"
    )]
    StateMismatch(String),
    /// There is no swarm in the state.
    #[error("there is no swarm to back up: the state has no cluster")]
    NoCluster,
    /// The swarm has no audit key to sign with.
    #[error(
        "the swarm has no audit key to sign the backup with yet: the leader makes one on first need; retry in a minute"
    )]
    NoAuditKey,
    /// The system random source failed.
    #[error("the system random source failed: retry, and check the kernel's entropy source")]
    Random,
    /// The audit key could not sign.
    #[error("cannot sign the backup: {0}")]
    Sign(#[source] CheckpointError),
    /// The state could not be encoded.
    #[error("cannot encode the state for the backup: {0}")]
    EncodeState(String),
    /// The decrypted state does not decode.
    #[error("the backup's state does not decode: {0}; it was made by an incompatible skep version")]
    DecodeState(String),
}

/// What a backup is: its header, readable before the key is asked for. Authenticated by the
/// signature, and by the AEAD (it is the associated data).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupHeader {
    /// The file format, [`FORMAT`] (set by [`seal`]).
    pub format: u32,
    /// The cluster ID.
    pub cluster_id: String,
    /// RFC 3339 time the backup was made.
    pub created_at: String,
    /// Raft term of the last entry the state includes.
    pub log_term: u64,
    /// Raft index of the last entry the state includes.
    pub log_index: u64,
    /// Seq of the audit chain's head (0 for an empty chain).
    pub audit_seq: u64,
    /// Hash of the audit chain's head, hex ([`GENESIS_HASH`] for an empty chain).
    pub audit_hash: String,
    /// Seq of the newest signed checkpoint record, if any.
    pub checkpoint_seq: Option<u64>,
    /// Node ID of the manager that made the backup.
    pub node_id: String,
    /// The skep version that made it.
    pub skep_version: String,
    /// How its key was made (set by [`seal`] from the key).
    pub key: KeySpec,
    /// The audit public key that signed it, hex (set by [`seal`] from the signer).
    pub public_key: String,
}

impl BackupHeader {
    /// The header for a backup of `state` as applied up to `last_applied`, made by
    /// `node_id` at `created_at` (RFC 3339). [`seal`] fills in the format, the key kind and
    /// the public key.
    pub fn for_state(
        state: &State,
        last_applied: Option<LogId>,
        node_id: &str,
        created_at: String,
    ) -> Result<BackupHeader, BackupError> {
        let cluster = state.cluster.as_ref().ok_or(BackupError::NoCluster)?;
        let audit_key = cluster.audit_key.as_ref().ok_or(BackupError::NoAuditKey)?;
        let (audit_seq, audit_hash) = audit_head(state);
        Ok(BackupHeader {
            format: FORMAT,
            cluster_id: cluster.id.clone(),
            created_at,
            log_term: last_applied.map_or(0, |l| l.leader_id.get_term()),
            log_index: last_applied.map_or(0, |l| l.index),
            audit_seq,
            audit_hash,
            checkpoint_seq: newest_checkpoint(state),
            node_id: node_id.to_string(),
            skep_version: env!("CARGO_PKG_VERSION").to_string(),
            key: KeySpec::Generated,
            public_key: audit_key.public_key().to_string(),
        })
    }

    /// Checks every field a file may lie about: the format, text fields short and printable
    /// (restore shows them), the time, hex lengths, and the key derivation's bounds.
    fn check(&self) -> Result<(), BackupError> {
        if self.format != FORMAT {
            return Err(BackupError::UnsupportedFormat {
                found: self.format.to_string(),
            });
        }
        for (name, value) in [
            ("cluster_id", &self.cluster_id),
            ("node_id", &self.node_id),
            ("skep_version", &self.skep_version),
            ("created_at", &self.created_at),
        ] {
            if value.is_empty() || value.len() > MAX_FIELD || value.chars().any(char::is_control) {
                return Err(BackupError::Header(format!(
                    "{name} {} is empty, longer than {MAX_FIELD} bytes or has control characters",
                    quote(value)
                )));
            }
        }
        if crate::util::parse_rfc3339(&self.created_at).is_none() {
            return Err(BackupError::Header(format!(
                "created_at {} is not an RFC 3339 time",
                quote(&self.created_at)
            )));
        }
        for (name, value) in [
            ("audit_hash", &self.audit_hash),
            ("public_key", &self.public_key),
        ] {
            if !is_hex_32(value) {
                return Err(BackupError::Header(format!(
                    "{name} {} is not 64 lower-case hex digits",
                    quote(value)
                )));
            }
        }
        if self.checkpoint_seq.is_some_and(|c| c > self.audit_seq) {
            return Err(BackupError::Header(
                "the newest checkpoint is after the audit chain's head".into(),
            ));
        }
        self.key.check().map(|_| ())
    }
}

/// A backup that opened: its header and the decrypted state bytes.
pub struct Opened {
    header: BackupHeader,
    state: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("header", &self.header)
            .field("state", &format_args!("{} bytes", self.state.len()))
            .finish()
    }
}

impl Opened {
    /// The header.
    pub fn header(&self) -> &BackupHeader {
        &self.header
    }

    /// The decrypted state bytes, as they were given to [`seal`].
    pub fn state_bytes(&self) -> &[u8] {
        &self.state
    }

    /// The header and the decrypted state bytes.
    pub fn into_parts(self) -> (BackupHeader, Zeroizing<Vec<u8>>) {
        (self.header, self.state)
    }

    /// The state, decoded with [`decode_state`] and checked with [`check_state`]: what
    /// restore installs.
    pub fn state(&self) -> Result<State, BackupError> {
        let state = decode_state(&self.state)?;
        check_state(&self.header, &state)?;
        Ok(state)
    }
}

/// Makes a backup of `state` (plaintext bytes, at most [`MAX_STATE`]): sets the header's
/// format, key kind (from `key`) and public key (from `signer`), checks it, encrypts the
/// state under `key` with the header as associated data, and signs the whole.
pub fn seal(
    state: &[u8],
    mut header: BackupHeader,
    key: &BackupKey,
    signer: &AuditKey,
) -> Result<Vec<u8>, BackupError> {
    header.format = FORMAT;
    header.key = key.spec().clone();
    header.public_key = signer.public_key().to_string();
    header.check()?;
    let size = state.len() as u64;
    if size > MAX_STATE {
        return Err(BackupError::StateTooLarge { size });
    }
    let header_json =
        serde_json::to_vec(&header).map_err(|e| BackupError::Header(e.to_string()))?;
    let header_len = u32::try_from(header_json.len())
        .ok()
        .filter(|&l| u64::from(l) <= MAX_HEADER)
        .ok_or(BackupError::HeaderTooLarge {
            declared: header_json.len() as u64,
        })?;
    let mut nonce = [0u8; NONCE_LEN as usize];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| BackupError::Random)?;
    let total = PREFIX_LEN + u64::from(header_len) + TRAILER_LEN + size;
    // The whole file in one allocation that never grows: the plaintext copied in below is
    // encrypted in place, and no reallocation leaves a copy of it behind.
    let mut out = Vec::with_capacity(
        usize::try_from(total).map_err(|_| BackupError::StateTooLarge { size })?,
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&header_len.to_be_bytes());
    out.extend_from_slice(&header_json);
    out.extend_from_slice(&(size + TAG_LEN).to_be_bytes());
    let aad_end = out.len();
    out.extend_from_slice(&nonce);
    let body_start = out.len();
    out.extend_from_slice(state);
    let (head, body) = out.split_at_mut(body_start);
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    let tag =
        match cipher.encrypt_inout_detached(&XNonce::from(nonce), &head[..aad_end], body.into()) {
            Ok(tag) => tag,
            Err(_) => {
                // Only for messages of 256 GiB or more, far past MAX_STATE; never leave the
                // plaintext behind even then.
                out.zeroize();
                return Err(BackupError::StateTooLarge { size });
            }
        };
    out.extend_from_slice(&tag);
    let signature = signer.sign_backup(&out).map_err(BackupError::Sign)?;
    out.extend_from_slice(&signature);
    Ok(out)
}

/// Makes a backup of `state` in one call: encodes it ([`encode_state`]), describes it
/// ([`BackupHeader::for_state`]) and seals it signed by the swarm's own audit key, so the
/// file always passes [`check_state`]. What `swarm backup` does with the applied state.
pub fn backup_state(
    state: &State,
    last_applied: Option<LogId>,
    node_id: &str,
    created_at: String,
    key: &BackupKey,
) -> Result<Vec<u8>, BackupError> {
    let header = BackupHeader::for_state(state, last_applied, node_id, created_at)?;
    let signer = state
        .cluster
        .as_ref()
        .and_then(|c| c.audit_key.as_ref())
        .ok_or(BackupError::NoAuditKey)?;
    seal(&encode_state(state)?, header, key, signer)
}

/// Reads a backup's header, after checking the file's magic, format, exact length, header
/// fields and signature (against the key the header names: [`check_state`] ties that key to
/// the swarm once the state is decrypted). What restore shows, and how it learns which key
/// to ask for, before it has one.
pub fn read_header(bytes: &[u8]) -> Result<BackupHeader, BackupError> {
    let (header, _) = verified(bytes)?;
    Ok(header)
}

/// Opens a backup with `key`: everything [`read_header`] checks, then the key's kind (and,
/// for a passphrase, that it was derived with this file's salt), then decryption.
pub fn open(bytes: &[u8], key: &BackupKey) -> Result<Opened, BackupError> {
    let (header, layout) = verified(bytes)?;
    if header.key.kind() != key.spec().kind() {
        return Err(BackupError::WrongKeyKind {
            needed: header.key.kind(),
            given: key.spec().kind(),
        });
    }
    if header.key != *key.spec() {
        return Err(BackupError::KeyForAnotherBackup);
    }
    let (ciphertext, tag) = layout
        .ciphertext
        .split_at(layout.ciphertext.len() - TAG_LEN as usize);
    let nonce = XNonce::try_from(layout.nonce).map_err(|_| BackupError::Decrypt)?;
    let tag = Tag::try_from(tag).map_err(|_| BackupError::Decrypt)?;
    let mut state = Zeroizing::new(ciphertext.to_vec());
    XChaCha20Poly1305::new(key.expose().into())
        .decrypt_inout_detached(&nonce, layout.aad, state.as_mut_slice().into(), &tag)
        .map_err(|_| BackupError::Decrypt)?;
    Ok(Opened { header, state })
}

/// The key for the backup whose header is `header`: `secret` is the generated key's text,
/// or the passphrase, as the header's key kind says. A passphrase is stretched with the
/// header's salt and iteration count (bounded: at most a few seconds).
pub fn key_for(header: &BackupHeader, secret: &str) -> Result<BackupKey, BackupError> {
    BackupKey::for_spec(&header.key, secret)
}

/// Checks that a decrypted state is the one its header describes: the same cluster, an
/// audit key equal to the key that signed the file, and the same audit chain head and newest
/// checkpoint. A file whose state was re-encrypted and re-signed by another key is refused
/// here, since the state names the swarm's own audit key.
pub fn check_state(header: &BackupHeader, state: &State) -> Result<(), BackupError> {
    let mismatch = |what: String| Err(BackupError::StateMismatch(what));
    let Some(cluster) = state.cluster.as_ref() else {
        return mismatch("the state has no cluster".into());
    };
    if cluster.id != header.cluster_id {
        return mismatch(format!(
            "the state is of cluster {}, the header names {}",
            quote(&cluster.id),
            quote(&header.cluster_id)
        ));
    }
    let Some(audit_key) = cluster.audit_key.as_ref() else {
        return mismatch("the state has no audit key to vouch for the signature".into());
    };
    if audit_key.public_key() != header.public_key {
        return mismatch(format!(
            "it was signed by the key {}, but the swarm's audit key is {}",
            quote(&header.public_key),
            quote(audit_key.public_key())
        ));
    }
    let (seq, hash) = audit_head(state);
    if seq != header.audit_seq || hash != header.audit_hash {
        return mismatch(format!(
            "the state's audit chain ends at record {seq}, the header says {}",
            header.audit_seq
        ));
    }
    if newest_checkpoint(state) != header.checkpoint_seq {
        return mismatch("the state's newest audit checkpoint is not the header's".into());
    }
    Ok(())
}

/// Encodes a state as snapshots do (JSON), into memory that is zeroized as it grows and when
/// dropped; refused past [`MAX_STATE`] (as soon as it gets there, not after).
pub fn encode_state(state: &State) -> Result<Zeroizing<Vec<u8>>, BackupError> {
    encode_bounded(state, MAX_STATE)
}

fn encode_bounded(state: &State, limit: u64) -> Result<Zeroizing<Vec<u8>>, BackupError> {
    let mut w = BoundedWriter {
        buf: Zeroizing::new(Vec::new()),
        limit,
        attempted: None,
    };
    match serde_json::to_writer(&mut w, state) {
        Ok(()) => Ok(w.buf),
        Err(e) => match w.attempted {
            Some(size) => Err(BackupError::StateTooLarge { size }),
            None => Err(BackupError::EncodeState(e.to_string())),
        },
    }
}

/// Decodes a state that [`encode_state`] made (at most [`MAX_STATE`] bytes). The error names
/// the position and kind of the problem, never the text there (it may be a secret).
pub fn decode_state(bytes: &[u8]) -> Result<State, BackupError> {
    let size = bytes.len() as u64;
    if size > MAX_STATE {
        return Err(BackupError::StateTooLarge { size });
    }
    serde_json::from_slice(bytes).map_err(|e| {
        BackupError::DecodeState(format!(
            "{:?} error at line {}, column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })
}

/// Fuzzing entry point: reads and opens arbitrary bytes with a fixed key, and parses them as
/// key text. Must never panic.
#[doc(hidden)]
pub fn open_untrusted(bytes: &[u8]) -> bool {
    let header = read_header(bytes).is_ok();
    let opened = open(bytes, &BackupKey::fixed_for_fuzz()).is_ok();
    let text = std::str::from_utf8(bytes).is_ok_and(|t| BackupKey::parse_text(t).is_ok());
    header || opened || text
}

/// The parts of a file whose lengths all check out.
struct Layout<'a> {
    /// The header JSON.
    header: &'a [u8],
    /// Every byte above the nonce: the associated data.
    aad: &'a [u8],
    nonce: &'a [u8],
    /// Ciphertext and tag.
    ciphertext: &'a [u8],
    /// Every byte above the signature.
    signed: &'a [u8],
    signature: &'a [u8],
}

/// Splits a file by its declared lengths: magic, format, bounds, then the exact size.
fn layout(bytes: &[u8]) -> Result<Layout<'_>, BackupError> {
    let actual = bytes.len() as u64;
    let early = |at_least: u64| BackupError::TruncatedHeader { at_least, actual };
    let min_file = PREFIX_LEN + 2 + TRAILER_LEN;
    let Some(magic) = bytes.get(..MAGIC.len()) else {
        return Err(if MAGIC.starts_with(bytes) {
            early(min_file)
        } else {
            BackupError::NotABackup
        });
    };
    if magic != MAGIC {
        return Err(match magic.split_last() {
            Some((v, stem)) if stem == MAGIC_STEM => BackupError::UnsupportedFormat {
                found: quote(&String::from_utf8_lossy(&[*v])),
            },
            _ => BackupError::NotABackup,
        });
    }
    let header_len = u64::from(read_u32(bytes, MAGIC.len()).ok_or_else(|| early(min_file))?);
    if header_len > MAX_HEADER {
        return Err(BackupError::HeaderTooLarge {
            declared: header_len,
        });
    }
    // Both bounded above: no sum below can overflow.
    let aad_end = PREFIX_LEN + header_len + 8;
    let ct_len = read_u64(bytes, (PREFIX_LEN + header_len) as usize)
        .ok_or_else(|| early(aad_end + NONCE_LEN + TAG_LEN + SIG_LEN))?;
    if !(TAG_LEN..=MAX_STATE + TAG_LEN).contains(&ct_len) {
        return Err(BackupError::BadStateLength { declared: ct_len });
    }
    let expected = aad_end + NONCE_LEN + ct_len + SIG_LEN;
    if actual < expected {
        return Err(BackupError::Truncated { expected, actual });
    }
    if actual > expected {
        return Err(BackupError::TrailingBytes { expected, actual });
    }
    // Every offset is now within the file, which is exactly `expected` bytes long.
    let at = |from: u64, to: u64| bytes.get(from as usize..to as usize).unwrap_or_default();
    let ct_start = aad_end + NONCE_LEN;
    let sig_start = ct_start + ct_len;
    Ok(Layout {
        header: at(PREFIX_LEN, PREFIX_LEN + header_len),
        aad: at(0, aad_end),
        nonce: at(aad_end, ct_start),
        ciphertext: at(ct_start, sig_start),
        signed: at(0, sig_start),
        signature: at(sig_start, expected),
    })
}

/// Lays the file out, parses and checks its header, and verifies its signature.
fn verified(bytes: &[u8]) -> Result<(BackupHeader, Layout<'_>), BackupError> {
    let layout = layout(bytes)?;
    // The format first, loosely, so a newer file is named as such rather than as a header
    // with fields this skep does not know.
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let format: Format = serde_json::from_slice(layout.header).map_err(header_error)?;
    if format.format != FORMAT {
        return Err(BackupError::UnsupportedFormat {
            found: format.format.to_string(),
        });
    }
    let header: BackupHeader = serde_json::from_slice(layout.header).map_err(header_error)?;
    header.check()?;
    if !AuditKey::verify_backup(&header.public_key, layout.signed, layout.signature) {
        return Err(BackupError::BadSignature);
    }
    Ok((header, layout))
}

fn header_error(e: serde_json::Error) -> BackupError {
    BackupError::Header(crate::util::prefix(
        &e.to_string(),
        2 * crate::util::QUOTE_BYTES,
    ))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

fn is_hex_32(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The audit chain's head, `(0, GENESIS_HASH)` when it is empty.
fn audit_head(state: &State) -> (u64, String) {
    state
        .audit
        .head()
        .map_or((0, GENESIS_HASH.to_string()), |h| (h.seq, h.hash.clone()))
}

/// The seq of the newest checkpoint record in the chain.
fn newest_checkpoint(state: &State) -> Option<u64> {
    state
        .audit
        .records()
        .iter()
        .rev()
        .find(|r| r.event.action == CHECKPOINT_ACTION)
        .map(|r| r.seq)
}

/// A writer into zeroizing memory that refuses to go past `limit`: when it must grow, it
/// copies into a larger buffer and the old one is zeroized as it drops.
struct BoundedWriter {
    buf: Zeroizing<Vec<u8>>,
    limit: u64,
    /// The size a refused write would have reached.
    attempted: Option<u64>,
}

impl std::io::Write for BoundedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let need = self.buf.len() as u64 + data.len() as u64;
        if need > self.limit {
            self.attempted = Some(need);
            return Err(std::io::Error::other("the state is over the backup limit"));
        }
        if need > self.buf.capacity() as u64 {
            // need <= limit <= MAX_STATE, which fits a usize. Not clamp: it panics when the
            // limit is under its floor.
            let doubled = (self.buf.capacity() * 2).max(4096).min(self.limit as usize);
            let cap = (need as usize).max(doubled);
            let mut bigger = Zeroizing::new(Vec::with_capacity(cap));
            bigger.extend_from_slice(&self.buf);
            self.buf = bigger;
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
