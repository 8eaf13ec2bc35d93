//! Sealing: the AEAD that keeps the Raft log, the vote, the snapshots and the node's private
//! key unreadable and unforgeable at rest.
//!
//! ```text
//!  operator unlock key ──HKDF-SHA256──► Kek ─┐ (or a random Kek in a 0600 file, no autolock)
//!                                            ├─ wrap ──► dek.sealed      (WrappedDek record)
//!                                            └─ seal_blob ──► node.key.sealed (NodeKey record)
//!  Dek (random 256-bit) ──► Sealer ──► every log entry, vote, committed id, snapshot
//! ```
//!
//! A sealed record is `version (1 byte) || nonce (24 bytes) || ciphertext || tag (16 bytes)`,
//! XChaCha20-Poly1305 with a random nonce. The associated data is a fixed context string, the
//! format version, the record's [`RecordKind`] and its position (the log index for a log
//! entry), so a record copied to another index, another kind of slot or another file fails
//! authentication instead of being believed.

use std::fmt;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

/// Format version of a sealed record.
const VERSION: u8 = 1;
/// Version byte of a record written by the benchmark-only plaintext sealer. A real sealer
/// refuses it, so plaintext can never be slipped into a sealed store.
const PLAINTEXT_VERSION: u8 = 0;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + NONCE_LEN;
/// Domain separation for every record's associated data.
const CONTEXT: &[u8] = b"skep sealed record";
/// HKDF salt and info for deriving a KEK from an operator unlock key.
const UNLOCK_SALT: &[u8] = b"skep unlock key v1";
const UNLOCK_INFO: &[u8] = b"skep key-encryption key";

/// What a sealed record is: part of the associated data, so a record only opens in its kind of
/// slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A Raft log entry; the position is its log index.
    LogEntry,
    /// The Raft vote.
    Vote,
    /// The last committed log id.
    Committed,
    /// The last purged log id.
    LastPurged,
    /// A state machine snapshot; the position is its last log index.
    Snapshot,
    /// Snapshot metadata kept apart from the data.
    SnapshotMeta,
    /// The data key, wrapped by the key-encryption key.
    WrappedDek,
    /// The node's TLS private key.
    NodeKey,
    /// Node-local state the daemon keeps.
    NodeState,
    /// Any other small file.
    Blob,
    /// A node's key-encryption key, sealed under the key derived from the unlock key
    /// (`kek.sealed`, after an unlock-key rotation).
    WrappedKek,
    /// The store's rollback anchor (`raft.anchor`) and the log's (empty) mark that it is
    /// anchored; see [`super::anchor`].
    Anchor,
}

impl RecordKind {
    /// Stable one-byte code. Never renumber: it is part of every record's associated data.
    fn code(self) -> u8 {
        match self {
            RecordKind::LogEntry => 1,
            RecordKind::Vote => 2,
            RecordKind::Committed => 3,
            RecordKind::LastPurged => 4,
            RecordKind::Snapshot => 5,
            RecordKind::SnapshotMeta => 6,
            RecordKind::WrappedDek => 7,
            RecordKind::NodeKey => 8,
            RecordKind::NodeState => 9,
            RecordKind::Blob => 10,
            RecordKind::WrappedKek => 11,
            RecordKind::Anchor => 12,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => RecordKind::LogEntry,
            2 => RecordKind::Vote,
            3 => RecordKind::Committed,
            4 => RecordKind::LastPurged,
            5 => RecordKind::Snapshot,
            6 => RecordKind::SnapshotMeta,
            7 => RecordKind::WrappedDek,
            8 => RecordKind::NodeKey,
            9 => RecordKind::NodeState,
            10 => RecordKind::Blob,
            11 => RecordKind::WrappedKek,
            12 => RecordKind::Anchor,
            _ => return None,
        })
    }
}

/// A record's kind and position, named the way an operator reads it in an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// The kind of record.
    pub kind: RecordKind,
    /// Its position (log index, snapshot index, or 0).
    pub position: u64,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.position;
        match self.kind {
            RecordKind::LogEntry => write!(f, "record at log index {p}"),
            RecordKind::Vote => f.write_str("vote record"),
            RecordKind::Committed => f.write_str("committed log id record"),
            RecordKind::LastPurged => f.write_str("last purged log id record"),
            RecordKind::Snapshot => write!(f, "snapshot at log index {p}"),
            RecordKind::SnapshotMeta => write!(f, "snapshot metadata at log index {p}"),
            RecordKind::WrappedDek => f.write_str("wrapped data key"),
            RecordKind::NodeKey => f.write_str("node private key"),
            RecordKind::NodeState => f.write_str("node state record"),
            RecordKind::Blob => write!(f, "blob {p}"),
            RecordKind::WrappedKek => f.write_str("key-encryption key sealed under the unlock key"),
            RecordKind::Anchor => write!(f, "store anchor record {p}"),
        }
    }
}

/// What went wrong sealing or opening a record. Never carries key or plaintext bytes.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The record is shorter than a header and a tag.
    #[error(
        "sealed {place} is truncated ({len} bytes): the file is damaged; restore it from a backup or remove this manager and re-join it"
    )]
    Truncated {
        /// Which record.
        place: Place,
        /// How many bytes there were.
        len: usize,
    },
    /// The record's format version is unknown (or it is a plaintext record).
    #[error(
        "sealed {place} has format version {version}, which this skep cannot open: it was written by another skep version or the file was altered"
    )]
    UnknownVersion {
        /// Which record.
        place: Place,
        /// The version byte found.
        version: u8,
    },
    /// The AEAD tag did not verify.
    #[error("sealed {place} failed authentication: the data key is wrong or the file was altered")]
    Authentication {
        /// Which record.
        place: Place,
    },
    /// A key had the wrong length.
    #[error("{what} must be 32 bytes, got {len}: the key file is damaged")]
    KeyLength {
        /// Which key.
        what: &'static str,
        /// The length found.
        len: usize,
    },
    /// An unlock key too short to be one skep generated.
    #[error(
        "the unlock key is too short ({len} bytes, at least 16 needed): use the key `skep swarm init --autolock` printed"
    )]
    UnlockKeyTooShort {
        /// The length found.
        len: usize,
    },
    /// Text that is not an unlock key as [`new_unlock_key`] writes it.
    #[error("invalid unlock key: expected {UNLOCK_KEY_PREFIX} followed by 64 hex digits")]
    UnlockKeyFormat,
}

/// A 256-bit data encryption key: seals the Raft store. Zeroized on drop.
#[derive(Clone)]
pub struct Dek(Zeroizing<[u8; 32]>);

impl Dek {
    /// A fresh random data key.
    pub fn generate() -> Self {
        Dek(random_key())
    }

    /// A data key from its raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        key_from_slice("a data key", bytes).map(Dek)
    }

    /// The raw key bytes, for tests that scan files for the key itself. Nothing in skep
    /// writes them anywhere: the key leaves memory only wrapped ([`Kek::wrap`]).
    #[doc(hidden)]
    pub fn expose_bytes_for_tests(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dek(..)")
    }
}

/// A 256-bit key-encryption key: wraps the [`Dek`] and seals small node files. Zeroized on
/// drop.
#[derive(Clone)]
pub struct Kek(Zeroizing<[u8; 32]>);

impl Kek {
    /// A fresh random key-encryption key (no autolock: kept in a 0600 file).
    pub fn generate() -> Self {
        Kek(random_key())
    }

    /// A key-encryption key from its raw bytes, as stored in the KEK file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        key_from_slice("a key-encryption key", bytes).map(Kek)
    }

    /// The raw key bytes, to write to the 0600 KEK file. Call sites are the places the key
    /// leaves memory on purpose.
    pub fn expose_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Derives the key-encryption key from an operator unlock key (autolock), with
    /// HKDF-SHA256 under a skep-specific salt and info. The unlock key is random (skep
    /// generates it), so no password hashing is needed. An empty or short key still derives
    /// a key, which then fails to unwrap the data key; use [`Kek::try_from_unlock_key`] to
    /// refuse it up front.
    pub fn from_unlock_key(unlock_key: &[u8]) -> Self {
        Kek(hkdf_sha256_32(UNLOCK_SALT, unlock_key, UNLOCK_INFO))
    }

    /// Like [`Kek::from_unlock_key`], refusing keys shorter than 16 bytes.
    pub fn try_from_unlock_key(unlock_key: &[u8]) -> Result<Self, SealError> {
        if unlock_key.len() < 16 {
            return Err(SealError::UnlockKeyTooShort {
                len: unlock_key.len(),
            });
        }
        Ok(Self::from_unlock_key(unlock_key))
    }

    /// Wraps (seals) a data key under this key.
    pub fn wrap(&self, dek: &Dek) -> Vec<u8> {
        self.sealer().seal(RecordKind::WrappedDek, 0, &dek.0[..])
    }

    /// Unwraps a data key sealed by [`Kek::wrap`].
    pub fn unwrap(&self, wrapped: &[u8]) -> Result<Dek, SealError> {
        let bytes = self.sealer().open(RecordKind::WrappedDek, 0, wrapped)?;
        key_from_slice("the wrapped data key", &bytes).map(Dek)
    }

    /// Seals a small file the daemon keeps (the node private key, ...).
    pub fn seal_blob(&self, kind: RecordKind, bytes: &[u8]) -> Vec<u8> {
        self.sealer().seal(kind, 0, bytes)
    }

    /// Opens a file sealed by [`Kek::seal_blob`] with the same kind.
    pub fn open_blob(
        &self,
        kind: RecordKind,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.sealer().open(kind, 0, sealed)
    }

    fn sealer(&self) -> Sealer {
        Sealer::with_key(&self.0)
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(..)")
    }
}

/// Seals and opens records under one key. The cipher zeroizes its key on drop.
#[derive(Clone)]
pub struct Sealer {
    cipher: Option<XChaCha20Poly1305>,
}

impl Sealer {
    /// A sealer for the store's data key.
    pub fn new(dek: &Dek) -> Self {
        Self::with_key(&dek.0)
    }

    fn with_key(key: &[u8; 32]) -> Self {
        Sealer {
            cipher: Some(XChaCha20Poly1305::new(key.into())),
        }
    }

    /// A sealer that does not encrypt: records are `0 || plaintext`. Only for the benchmark
    /// that measures what sealing costs; a real sealer refuses its records.
    #[doc(hidden)]
    pub fn plaintext_for_bench() -> Self {
        Sealer { cipher: None }
    }

    /// Seals `plaintext` as the record of `kind` at `position`.
    ///
    /// The cipher refuses only messages of 256 GiB or more, which cannot reach here (no
    /// log entry, snapshot or file is near that); if one did, the result is an empty record
    /// that never opens: fail closed rather than panic or write plaintext.
    pub fn seal(&self, kind: RecordKind, position: u64, plaintext: &[u8]) -> Vec<u8> {
        let Some(cipher) = &self.cipher else {
            let mut out = Vec::with_capacity(1 + plaintext.len());
            out.push(PLAINTEXT_VERSION);
            out.extend_from_slice(plaintext);
            return out;
        };
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let aad = associated_data(VERSION, kind, position);
        let body = &mut out[HEADER_LEN..];
        match cipher.encrypt_inout_detached(&XNonce::from(nonce), &aad, body.into()) {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                out
            }
            Err(_) => {
                tracing::error!(place = %Place { kind, position }, "record too large to seal");
                Vec::new()
            }
        }
    }

    /// Opens the record of `kind` at `position`. Any byte string is safe to pass: a damaged,
    /// moved or forged record is an error, never a panic.
    pub fn open(
        &self,
        kind: RecordKind,
        position: u64,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let place = Place { kind, position };
        let Some((&version, rest)) = sealed.split_first() else {
            return Err(SealError::Truncated { place, len: 0 });
        };
        let Some(cipher) = &self.cipher else {
            return match version {
                PLAINTEXT_VERSION => Ok(Zeroizing::new(rest.to_vec())),
                _ => Err(SealError::UnknownVersion { place, version }),
            };
        };
        if version != VERSION {
            return Err(SealError::UnknownVersion { place, version });
        }
        if sealed.len() < HEADER_LEN + TAG_LEN {
            return Err(SealError::Truncated {
                place,
                len: sealed.len(),
            });
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let (ciphertext, tag) = body.split_at(body.len() - TAG_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| SealError::Truncated {
            place,
            len: sealed.len(),
        })?;
        let tag = Tag::try_from(tag).map_err(|_| SealError::Truncated {
            place,
            len: sealed.len(),
        })?;
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let aad = associated_data(VERSION, kind, position);
        cipher
            .decrypt_inout_detached(&nonce, &aad, buf.as_mut_slice().into(), &tag)
            .map_err(|_| SealError::Authentication { place })?;
        Ok(buf)
    }

    /// Whether this sealer encrypts (false only for the benchmark's plaintext sealer).
    pub fn is_sealing(&self) -> bool {
        self.cipher.is_some()
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.cipher.is_some() {
            "xchacha20poly1305"
        } else {
            "plaintext"
        };
        f.debug_struct("Sealer")
            .field("mode", &mode)
            .field("key", &"..")
            .finish()
    }
}

/// Fuzzing entry point: opens arbitrary bytes with a fixed test key, as every kind of record,
/// and as a wrapped key. Must never panic. The first byte picks the kind, the next eight the
/// position, the rest is the record.
#[doc(hidden)]
pub fn open_untrusted(bytes: &[u8]) -> bool {
    let key = Zeroizing::new([0x5a; 32]);
    let sealer = Sealer::with_key(&key);
    let kind = bytes
        .first()
        .and_then(|&c| RecordKind::from_code(c))
        .unwrap_or(RecordKind::Blob);
    let position = bytes
        .get(1..9)
        .and_then(|p| <[u8; 8]>::try_from(p).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    let record = bytes.get(9..).unwrap_or_default();
    let opened = sealer.open(kind, position, record).is_ok();
    let unwrapped = Kek(key).unwrap(bytes).is_ok();
    let plain = Sealer::plaintext_for_bench()
        .open(kind, position, record)
        .is_ok();
    opened || unwrapped || plain
}

fn associated_data(version: u8, kind: RecordKind, position: u64) -> [u8; CONTEXT.len() + 10] {
    let mut aad = [0u8; CONTEXT.len() + 10];
    aad[..CONTEXT.len()].copy_from_slice(CONTEXT);
    aad[CONTEXT.len()] = version;
    aad[CONTEXT.len() + 1] = kind.code();
    aad[CONTEXT.len() + 2..].copy_from_slice(&position.to_be_bytes());
    aad
}

fn random_key() -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(&mut key[..]);
    key
}

fn key_from_slice(what: &'static str, bytes: &[u8]) -> Result<Zeroizing<[u8; 32]>, SealError> {
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() != key.len() {
        return Err(SealError::KeyLength {
            what,
            len: bytes.len(),
        });
    }
    key.copy_from_slice(bytes);
    Ok(key)
}

/// HKDF-SHA256 (RFC 5869) with a 32-byte output: one HMAC block, so
/// `OKM = HMAC(HMAC(salt, ikm), info || 0x01)`. Written out because ring's `hkdf` API is
/// fallible for lengths that cannot occur here.
fn hkdf_sha256_32(salt: &[u8], ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    use ring::hmac;
    let prk = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, salt), ikm);
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref()));
    ctx.update(info);
    ctx.update(&[1]);
    let okm = ctx.sign();
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(okm.as_ref());
    out
}

/// How an unlock key is written for the operator: this prefix and 64 hex digits.
const UNLOCK_KEY_PREFIX: &str = "SKEP-KEY-1-";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// A fresh unlock key: its raw bytes and its text (`SKEP-KEY-1-` and 64 hex digits).
pub fn new_unlock_key() -> (Zeroizing<[u8; 32]>, crate::secret::SecretString) {
    let mut raw = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(&mut *raw);
    let mut text = Zeroizing::new(String::with_capacity(UNLOCK_KEY_PREFIX.len() + 64));
    text.push_str(UNLOCK_KEY_PREFIX);
    for b in raw.iter() {
        text.push(char::from(HEX[usize::from(b >> 4)]));
        text.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    (raw, crate::secret::SecretString::from(text))
}

/// The raw bytes of an unlock key's text (surrounding white space ignored).
pub fn parse_unlock_key(text: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let hex_part = text
        .trim()
        .strip_prefix(UNLOCK_KEY_PREFIX)
        .ok_or(SealError::UnlockKeyFormat)?;
    let raw = Zeroizing::new(hex::decode(hex_part).map_err(|_| SealError::UnlockKeyFormat)?);
    if raw.len() != 32 {
        return Err(SealError::UnlockKeyFormat);
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unlock_key_reads_back_as_its_bytes_and_other_text_is_refused() {
        let (raw, text) = new_unlock_key();
        assert!(text.expose().starts_with("SKEP-KEY-1-"));
        assert_eq!(text.expose().len(), "SKEP-KEY-1-".len() + 64);
        let back = parse_unlock_key(&format!("  {}\n", text.expose())).unwrap();
        assert_eq!(&back[..], &raw[..]);
        for bad in [
            "",
            "SKEP-KEY-1-",
            "SKEP-KEY-1-abcd",
            "SWMKEY-1-00",
            &text.expose()[1..],
        ] {
            let e = parse_unlock_key(bad).unwrap_err();
            assert_eq!(
                e.to_string(),
                "invalid unlock key: expected SKEP-KEY-1- followed by 64 hex digits"
            );
        }
    }

    fn sealer() -> Sealer {
        Sealer::new(&Dek::generate())
    }

    #[test]
    fn round_trip() {
        let s = sealer();
        let sealed = s.seal(RecordKind::LogEntry, 7, b"hello");
        assert_eq!(sealed.len(), 1 + NONCE_LEN + 5 + TAG_LEN);
        assert_eq!(
            &s.open(RecordKind::LogEntry, 7, &sealed).unwrap()[..],
            b"hello"
        );
        let empty = s.seal(RecordKind::Vote, 0, b"");
        assert!(s.open(RecordKind::Vote, 0, &empty).unwrap().is_empty());
    }

    #[test]
    fn nonces_differ() {
        let s = sealer();
        assert_ne!(
            s.seal(RecordKind::Vote, 0, b"x"),
            s.seal(RecordKind::Vote, 0, b"x")
        );
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let s = sealer();
        let sealed = s.seal(RecordKind::LogEntry, 7, b"some log entry");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                s.open(RecordKind::LogEntry, 7, &bad).is_err(),
                "flip at byte {i} accepted"
            );
        }
        let err = {
            let mut bad = sealed.clone();
            bad[HEADER_LEN] ^= 0x80;
            s.open(RecordKind::LogEntry, 7, &bad).unwrap_err()
        };
        assert_eq!(
            err.to_string(),
            "sealed record at log index 7 failed authentication: the data key is wrong or the file was altered"
        );
    }

    #[test]
    fn wrong_position_kind_or_key_is_refused() {
        let s = sealer();
        let sealed = s.seal(RecordKind::LogEntry, 7, b"entry 7");
        assert!(matches!(
            s.open(RecordKind::LogEntry, 8, &sealed),
            Err(SealError::Authentication { .. })
        ));
        assert!(matches!(
            s.open(RecordKind::Snapshot, 7, &sealed),
            Err(SealError::Authentication { .. })
        ));
        assert!(matches!(
            sealer().open(RecordKind::LogEntry, 7, &sealed),
            Err(SealError::Authentication { .. })
        ));
    }

    #[test]
    fn truncated_and_plaintext_records_are_refused() {
        let s = sealer();
        let sealed = s.seal(RecordKind::Vote, 0, b"v");
        for n in 0..sealed.len() {
            assert!(s.open(RecordKind::Vote, 0, &sealed[..n]).is_err());
        }
        let plain = Sealer::plaintext_for_bench().seal(RecordKind::Vote, 0, b"v");
        assert!(matches!(
            s.open(RecordKind::Vote, 0, &plain),
            Err(SealError::UnknownVersion { version: 0, .. })
        ));
        assert_eq!(
            &Sealer::plaintext_for_bench()
                .open(RecordKind::Vote, 0, &plain)
                .unwrap()[..],
            b"v"
        );
    }

    #[test]
    fn wrapped_dek_round_trip() {
        let kek = Kek::generate();
        let dek = Dek::generate();
        let wrapped = kek.wrap(&dek);
        let back = kek.unwrap(&wrapped).unwrap();
        assert_eq!(*back.0, *dek.0);
        assert!(matches!(
            Kek::generate().unwrap(&wrapped),
            Err(SealError::Authentication { .. })
        ));
        // A wrapped key is not a node key blob, and vice versa.
        assert!(kek.open_blob(RecordKind::NodeKey, &wrapped).is_err());
        let blob = kek.seal_blob(RecordKind::NodeKey, b"pkcs8");
        assert_eq!(
            &kek.open_blob(RecordKind::NodeKey, &blob).unwrap()[..],
            b"pkcs8"
        );
        assert!(kek.unwrap(&blob).is_err());
        // The KEK file round trip.
        let again = Kek::from_bytes(kek.expose_bytes()).unwrap();
        assert!(again.unwrap(&wrapped).is_ok());
        assert!(Kek::from_bytes(&[0; 31]).is_err());
    }

    #[test]
    fn unlock_key_derivation_is_hkdf_sha256() {
        let ikm = [7u8; 32];
        let k1 = Kek::from_unlock_key(&ikm);
        let k2 = Kek::from_unlock_key(&ikm);
        assert_eq!(k1.expose_bytes(), k2.expose_bytes());
        assert_ne!(
            Kek::from_unlock_key(&[8u8; 32]).expose_bytes(),
            k1.expose_bytes()
        );
        // Same as ring's HKDF.
        struct Len32;
        impl ring::hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let mut want = [0u8; 32];
        ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, UNLOCK_SALT)
            .extract(&ikm)
            .expand(&[UNLOCK_INFO], Len32)
            .unwrap()
            .fill(&mut want)
            .unwrap();
        assert_eq!(k1.expose_bytes(), &want);
        assert!(Kek::try_from_unlock_key(b"short").is_err());
        let dek = Dek::generate();
        assert!(k2.unwrap(&k1.wrap(&dek)).is_ok());
    }

    #[test]
    fn debug_hides_keys() {
        let dek = Dek::generate();
        let kek = Kek::generate();
        assert_eq!(format!("{dek:?}"), "Dek(..)");
        assert_eq!(format!("{kek:?}"), "Kek(..)");
        let s = format!("{:?}", Sealer::new(&dek));
        assert!(s.contains("..") && !s.contains(&format!("{:?}", &dek.0[..4])));
    }

    #[test]
    fn open_untrusted_never_panics_on_junk() {
        for len in 0..200usize {
            let junk: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            let _ = open_untrusted(&junk);
        }
        let key = Zeroizing::new([0x5a; 32]);
        let sealed = Sealer::with_key(&key).seal(RecordKind::LogEntry, 3, b"x");
        let mut input = vec![RecordKind::LogEntry.code()];
        input.extend_from_slice(&3u64.to_be_bytes());
        input.extend_from_slice(&sealed);
        assert!(open_untrusted(&input));
    }
}
