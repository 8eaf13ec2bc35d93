//! Node and cluster IDs: 25 characters of lowercase base36 carrying 128 random bits,
//! the shape of Docker's node IDs.

use ring::rand::{SecureRandom, SystemRandom};

use crate::PkiError;

/// Length of every ID made by [`new_id`].
pub const ID_LEN: usize = 25;

const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Fills `N` bytes from the operating system's random number generator.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], PkiError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| PkiError::Random)?;
    Ok(out)
}

/// Makes a new random ID, or says why the random number generator failed.
pub fn try_new_id() -> Result<String, PkiError> {
    Ok(encode(u128::from_be_bytes(random::<16>()?)))
}

/// IDs drawn from the system's random number generator this many at a time by [`Ids`].
const IDS_PER_DRAW: usize = 64;

/// A maker of many IDs, as [`new_id`] makes one, for a caller that makes thousands at once (the
/// orchestrator creating a large service's tasks): it asks the system's random number generator
/// for the bits of [`IDS_PER_DRAW`] IDs at a time, not one `getrandom` call per ID. Each ID
/// still carries 128 random bits of its own; none is handed out twice.
pub struct Ids {
    pool: [u8; 16 * IDS_PER_DRAW],
    next: usize,
}

impl Default for Ids {
    fn default() -> Self {
        Ids {
            pool: [0; 16 * IDS_PER_DRAW],
            next: 16 * IDS_PER_DRAW,
        }
    }
}

impl Ids {
    /// A maker with nothing drawn yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next ID, or why the system's random number generator failed.
    pub fn try_id(&mut self) -> Result<String, PkiError> {
        if self.next + 16 > self.pool.len() {
            SystemRandom::new()
                .fill(&mut self.pool)
                .map_err(|_| PkiError::Random)?;
            self.next = 0;
        }
        let mut bits = [0u8; 16];
        bits.copy_from_slice(&self.pool[self.next..self.next + 16]);
        self.next += 16;
        Ok(encode(u128::from_be_bytes(bits)))
    }

    /// The next ID.
    ///
    /// # Panics
    ///
    /// As [`new_id`], if the operating system's random number generator fails.
    #[allow(clippy::expect_used)]
    pub fn id(&mut self) -> String {
        // A failing OS RNG (getrandom) is not a condition any caller can recover from.
        self.try_id()
            .expect("the system random number generator failed")
    }
}

/// 128 bits as an ID: 25 base36 digits.
fn encode(mut n: u128) -> String {
    // 36^25 > 2^128, so 25 digits hold any 128-bit value; leading zeros keep the length fixed.
    let mut digits = [b'0'; ID_LEN];
    for d in digits.iter_mut().rev() {
        *d = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    digits.iter().copied().map(char::from).collect()
}

/// Makes a new random ID for a node or a cluster (25 lowercase base36 characters, 128 bits).
///
/// # Panics
///
/// If the operating system's random number generator fails, as nothing secure can be done
/// without it. Use [`try_new_id`] to handle that case.
#[allow(clippy::expect_used)]
pub fn new_id() -> String {
    // A failing OS RNG (getrandom) is not a condition any caller can recover from.
    try_new_id().expect("the system random number generator failed")
}

/// Whether `s` has the shape of an ID made by [`new_id`].
pub fn is_valid_id(s: &str) -> bool {
    s.len() == ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_valid_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert!(is_valid_id(&a), "{a}");
        assert!(is_valid_id(&b), "{b}");
        assert_ne!(a, b);
    }

    #[test]
    fn ids_made_in_draws_are_valid_and_distinct_across_draws() {
        let mut ids = Ids::new();
        let made: Vec<String> = (0..IDS_PER_DRAW * 5 + 3).map(|_| ids.id()).collect();
        assert!(made.iter().all(|id| is_valid_id(id)), "{made:?}");
        let distinct: std::collections::HashSet<&String> = made.iter().collect();
        assert_eq!(distinct.len(), made.len(), "an ID was handed out twice");
    }

    #[test]
    fn invalid_ids() {
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("abc"));
        assert!(!is_valid_id("ABCDEFGHIJKLMNOPQRSTUVWXY"));
        assert!(!is_valid_id("abcdefghijklmnopqrstuvwx-"));
        assert!(!is_valid_id("abcdefghijklmnopqrstuvwxyz"));
        assert!(is_valid_id("abcdefghijklmnopqrstuvwx0"));
    }
}
