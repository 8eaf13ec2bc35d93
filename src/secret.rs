//! Types for secret material: zeroized on drop, never shown by `Debug`, serialisable only so
//! they can travel inside the sealed store and sealed frames.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// A secret string (a token, a PEM private key). `Debug` prints `SecretString(..)`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Wraps a string.
    pub fn new(s: impl Into<String>) -> Self {
        SecretString(Zeroizing::new(s.into()))
    }
    /// The secret text. Call sites are the places a secret is used on purpose.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<Zeroizing<String>> for SecretString {
    fn from(s: Zeroizing<String>) -> Self {
        SecretString(s)
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretString(..)")
    }
}

impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretString::new)
    }
}

/// Secret bytes (a private key in DER, a secret's value). `Debug` prints `SecretBytes(..)`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Wraps bytes.
    pub fn new(b: impl Into<Vec<u8>>) -> Self {
        SecretBytes(Zeroizing::new(b.into()))
    }
    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl From<Zeroizing<Vec<u8>>> for SecretBytes {
    fn from(b: Zeroizing<Vec<u8>>) -> Self {
        SecretBytes(b)
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBytes(..)")
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_bytes_vec(d).map(SecretBytes::new)
    }
}

fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(a.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(b) = a.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    d.deserialize_byte_buf(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_and_serde_round_trips() {
        let s = SecretString::new("hunter2");
        assert_eq!(format!("{s:?}"), "SecretString(..)");
        let b = SecretBytes::new(b"k3y".to_vec());
        assert!(!format!("{b:?}").contains("k3y"));
        let enc = postcard::to_allocvec(&(s.clone(), b.clone())).unwrap_or_default();
        let (s2, b2): (SecretString, SecretBytes) = postcard::from_bytes(&enc).unwrap_or_default();
        assert_eq!((s2, b2), (s, b));
    }
}
