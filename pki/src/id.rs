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
    let mut n = u128::from_be_bytes(random::<16>()?);
    // 36^25 > 2^128, so 25 digits hold any 128-bit value; leading zeros keep the length fixed.
    let mut digits = [b'0'; ID_LEN];
    for d in digits.iter_mut().rev() {
        *d = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    Ok(digits.iter().copied().map(char::from).collect())
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
    fn invalid_ids() {
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("abc"));
        assert!(!is_valid_id("ABCDEFGHIJKLMNOPQRSTUVWXY"));
        assert!(!is_valid_id("abcdefghijklmnopqrstuvwx-"));
        assert!(!is_valid_id("abcdefghijklmnopqrstuvwxyz"));
        assert!(is_valid_id("abcdefghijklmnopqrstuvwx0"));
    }
}
