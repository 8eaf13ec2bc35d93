//! The key a backup is encrypted under: 32 random bytes shown to the operator once as text,
//! or a key stretched from the operator's passphrase. Never the node's key-encryption key: a
//! backup must open on a new machine that has none of this node's files.
//!
//! ```text
//!  generated:  32 random bytes ──► "SKEPBKP-" base32(key || 4-byte checksum)   (shown once)
//!  passphrase: PBKDF2-HMAC-SHA256(passphrase, "skep-backup-v1" || 16-byte salt, iterations)
//!              salt and iterations in the backup header; iterations bounded on read
//! ```

use std::num::NonZeroU32;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::BackupError;
use crate::secret::SecretString;

/// Length of a backup key.
pub const KEY_LEN: usize = 32;
/// What a generated key's text starts with.
pub const KEY_TEXT_PREFIX: &str = "SKEPBKP-";
/// The KDF a passphrase header names.
pub const KDF_PBKDF2_SHA256: &str = "pbkdf2-hmac-sha256";
/// PBKDF2 iterations for a new passphrase backup (OWASP's 2023 advice for HMAC-SHA256).
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// The fewest iterations a backup may name: fewer would make guessing the passphrase cheap.
pub const MIN_ITERATIONS: u32 = 100_000;
/// The most iterations a backup may name: more would make restore spin for minutes.
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Shortest passphrase, in bytes.
pub const MIN_PASSPHRASE: usize = 16;
/// Longest passphrase, in bytes.
pub const MAX_PASSPHRASE: usize = 1024;
/// Length of a passphrase salt.
pub const SALT_LEN: usize = 16;

const CHECKSUM_LEN: usize = 4;
const CHECKSUM_DOMAIN: &[u8] = b"skep-backup-key-checksum-v1";
const SALT_DOMAIN: &[u8] = b"skep-backup-v1";
/// Crockford's base32: no I, L, O or U, so the text reads aloud and copies by hand.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Base32 characters of a key and its checksum (36 bytes, 288 bits, 58 characters).
const TEXT_CHARS: usize = ((KEY_LEN + CHECKSUM_LEN) * 8).div_ceil(5);

/// How a backup's key was made, as its header records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum KeySpec {
    /// Random, shown to the operator once as `SKEPBKP-...` text.
    Generated,
    /// Stretched from the operator's passphrase.
    Passphrase {
        /// The KDF, [`KDF_PBKDF2_SHA256`].
        kdf: String,
        /// PBKDF2 iterations, within [`MIN_ITERATIONS`]..=[`MAX_ITERATIONS`].
        iterations: u32,
        /// The random salt, hex ([`SALT_LEN`] bytes).
        salt: String,
    },
}

impl KeySpec {
    /// `generated` or `passphrase`: what restore asks the operator for.
    pub fn kind(&self) -> &'static str {
        match self {
            KeySpec::Generated => "generated",
            KeySpec::Passphrase { .. } => "passphrase",
        }
    }

    /// Checks what a file may say: the KDF is the one skep knows, the iteration count is
    /// within bounds (so a hostile file can neither weaken the KDF nor make restore spin),
    /// and the salt is [`SALT_LEN`] bytes. Returns the iterations and salt of a passphrase.
    pub(super) fn check(&self) -> Result<Option<(NonZeroU32, [u8; SALT_LEN])>, BackupError> {
        let KeySpec::Passphrase {
            kdf,
            iterations,
            salt,
        } = self
        else {
            return Ok(None);
        };
        if kdf != KDF_PBKDF2_SHA256 {
            return Err(BackupError::Kdf(format!(
                "the key derivation {} is not one this skep knows ({KDF_PBKDF2_SHA256})",
                crate::util::quote(kdf)
            )));
        }
        let bounded = NonZeroU32::new(*iterations)
            .filter(|n| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(&n.get()))
            .ok_or_else(|| {
                BackupError::Kdf(format!(
                    "{iterations} PBKDF2 iterations is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}"
                ))
            })?;
        let mut out = [0u8; SALT_LEN];
        hex::decode_to_slice(salt, &mut out).map_err(|_| {
            BackupError::Kdf(format!(
                "the salt is not {SALT_LEN} bytes of hex: {}",
                crate::util::quote(salt)
            ))
        })?;
        Ok(Some((bounded, out)))
    }
}

/// A backup's encryption key. Zeroized on drop; `Debug` shows only how it was made.
pub struct BackupKey {
    key: Zeroizing<[u8; KEY_LEN]>,
    spec: KeySpec,
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackupKey({}, ..)", self.spec.kind())
    }
}

impl BackupKey {
    /// A fresh random key, and its text to show the operator once (`SKEPBKP-` and 58
    /// base32 characters, the last few a checksum that catches typos).
    pub fn generate() -> Result<(BackupKey, SecretString), BackupError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(key.as_mut())
            .map_err(|_| BackupError::Random)?;
        let text = key_text(&key);
        Ok((
            BackupKey {
                key,
                spec: KeySpec::Generated,
            },
            text,
        ))
    }

    /// Parses a generated key's text, as [`BackupKey::generate`] showed it. Surrounding
    /// white space is ignored and letters may be in either case; a typo fails the checksum.
    pub fn parse_text(text: &str) -> Result<BackupKey, BackupError> {
        let text = text.trim();
        let body = match text.get(..KEY_TEXT_PREFIX.len()) {
            Some(p) if p.eq_ignore_ascii_case(KEY_TEXT_PREFIX) => &text[KEY_TEXT_PREFIX.len()..],
            _ => {
                return Err(BackupError::KeyText(format!(
                    "it does not start with {KEY_TEXT_PREFIX}"
                )));
            }
        };
        if body.len() != TEXT_CHARS {
            return Err(BackupError::KeyText(format!(
                "it has {} characters after {KEY_TEXT_PREFIX}, a backup key has {TEXT_CHARS}",
                body.chars().count()
            )));
        }
        let raw = base32_decode(body.as_bytes())
            .ok_or_else(|| BackupError::KeyText("it has a character that is not base32".into()))?;
        let (key, sum) = raw.split_at(KEY_LEN);
        if checksum(key).as_slice() != sum {
            return Err(BackupError::KeyChecksum);
        }
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        out.copy_from_slice(key);
        Ok(BackupKey {
            key: out,
            spec: KeySpec::Generated,
        })
    }

    /// A key stretched from `passphrase` with a fresh salt and [`DEFAULT_ITERATIONS`].
    pub fn from_passphrase(passphrase: &str) -> Result<BackupKey, BackupError> {
        BackupKey::from_passphrase_with_iterations(passphrase, DEFAULT_ITERATIONS)
    }

    /// [`BackupKey::from_passphrase`] with another iteration count, within the same bounds
    /// a file is held to (tests use [`MIN_ITERATIONS`] to stay fast; there is no way under).
    pub fn from_passphrase_with_iterations(
        passphrase: &str,
        iterations: u32,
    ) -> Result<BackupKey, BackupError> {
        let mut salt = [0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| BackupError::Random)?;
        let spec = KeySpec::Passphrase {
            kdf: KDF_PBKDF2_SHA256.into(),
            iterations,
            salt: hex::encode(salt),
        };
        BackupKey::derive(&spec, passphrase)
    }

    /// The key for a backup whose header says `spec`: for a generated key, `secret` is its
    /// text; for a passphrase, the passphrase (as typed: it is not trimmed).
    pub fn for_spec(spec: &KeySpec, secret: &str) -> Result<BackupKey, BackupError> {
        match spec {
            KeySpec::Generated => BackupKey::parse_text(secret).map_err(|e| match e {
                BackupError::KeyText(why) => BackupError::KeyText(format!(
                    "{why}; this backup was made with a generated key, give that key (SKEPBKP-...), not a passphrase"
                )),
                other => other,
            }),
            KeySpec::Passphrase { .. } => BackupKey::derive(spec, secret),
        }
    }

    /// How this key was made.
    pub fn spec(&self) -> &KeySpec {
        &self.spec
    }

    /// The key bytes, for the cipher.
    pub(super) fn expose(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    fn derive(spec: &KeySpec, passphrase: &str) -> Result<BackupKey, BackupError> {
        let len = passphrase.len();
        if !(MIN_PASSPHRASE..=MAX_PASSPHRASE).contains(&len) {
            return Err(BackupError::PassphraseLength { len });
        }
        let Some((iterations, salt)) = spec.check()? else {
            return Err(BackupError::Kdf("a generated key has no passphrase".into()));
        };
        let mut full_salt = [0u8; SALT_DOMAIN.len() + SALT_LEN];
        full_salt[..SALT_DOMAIN.len()].copy_from_slice(SALT_DOMAIN);
        full_salt[SALT_DOMAIN.len()..].copy_from_slice(&salt);
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &full_salt,
            passphrase.as_bytes(),
            key.as_mut(),
        );
        Ok(BackupKey {
            key,
            spec: spec.clone(),
        })
    }

    /// A fixed generated key, for the fuzz entry point and tests only.
    #[doc(hidden)]
    pub fn fixed_for_fuzz() -> BackupKey {
        BackupKey {
            key: Zeroizing::new([0x5a; KEY_LEN]),
            spec: KeySpec::Generated,
        }
    }
}

/// The text of a generated key: the prefix, then base32 of the key and its checksum.
fn key_text(key: &[u8; KEY_LEN]) -> SecretString {
    let mut raw = Zeroizing::new([0u8; KEY_LEN + CHECKSUM_LEN]);
    raw[..KEY_LEN].copy_from_slice(key);
    raw[KEY_LEN..].copy_from_slice(&checksum(key));
    let mut text = Zeroizing::new(String::with_capacity(KEY_TEXT_PREFIX.len() + TEXT_CHARS));
    text.push_str(KEY_TEXT_PREFIX);
    base32_encode(raw.as_ref(), &mut text);
    SecretString::from(text)
}

/// The first bytes of a domain-separated SHA-256 of the key: catches typos, reveals nothing
/// useful (a hash of a 256-bit random key).
fn checksum(key: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(CHECKSUM_DOMAIN);
    ctx.update(key);
    let d = ctx.finish();
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&d.as_ref()[..CHECKSUM_LEN]);
    out
}

fn base32_encode(bytes: &[u8], out: &mut String) {
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
}

/// Decodes base32 (either case; `O` read as 0 and `I`, `L` as 1, as Crockford's reads them).
/// `None` for a character outside the alphabet or padding bits that are not zero, so one key
/// has exactly one text.
fn base32_decode(text: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() * 5 / 8));
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in text {
        let v = match c.to_ascii_uppercase() {
            b'O' => 0,
            b'I' | b'L' => 1,
            c => ALPHABET.iter().position(|&a| a == c)? as u32,
        };
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    (acc == 0).then_some(out)
}
