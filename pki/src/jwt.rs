//! JWT-SVIDs: the cluster's ES256 signing key, the tokens it signs for a task's SPIFFE ID, the
//! JWKS that publishes its public half, and the check a verifier runs on a token.
//!
//! ```text
//!  managers (JwtKey sealed in the cluster state)          external verifier / other task
//!  JwtKey::sign_svid(spiffe_id, aud, ttl, now) ── token ──► verify(token, jwks, aud, now)
//!  jwks_json(&[key.public_jwk()]) ── OIDC /keys, bundle ──────────┘
//! ```
//!
//! The format follows the SPIFFE JWT-SVID specification: a JWS in compact form, header
//! `{"alg":"ES256","kid":..,"typ":"JWT"}`, claims `sub` (the SPIFFE ID), `aud` (an array),
//! `exp` and `iat` (seconds since the epoch).
//!
//! Signing and verification are ring's ECDSA P-256 with fixed-size `r || s` signatures (the
//! JWS encoding); base64url and JSON are the `base64` and `serde_json` crates. The
//! `jsonwebtoken` crate was not used: 9.x (the last with a ring backend) is affected by
//! GHSA-h395-gr6q-cpjc, and 10.x and later need aws-lc-rs or the RustCrypto stack (a second
//! ECDSA implementation beside ring, and the `rsa` crate with an advisory open) or a
//! process-global custom provider; none of them takes the verifier's clock as an argument.
//!
//! [`verify`] reads untrusted input: it is bounded ([`MAX_TOKEN_LEN`], [`MAX_JWKS_LEN`]), pins
//! the algorithm to ES256 before it looks at a key, checks the signature before it reads the
//! claims, and quotes at most a short prefix of what it refuses. It has a fuzz target.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::PublicKeyData as _;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use serde::Deserialize;
use serde_json::{Map, Value};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::PkiError;
use crate::key::P256Key;

/// The one signature algorithm skep signs and accepts.
pub const JWT_ALG: &str = "ES256";

/// The most audiences one JWT-SVID may name.
pub const MAX_AUDIENCES: usize = 16;

/// The longest audience, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 256;

/// The longest token [`verify`] reads and [`JwtKey::sign_svid`] writes, in bytes.
pub const MAX_TOKEN_LEN: usize = 8192;

/// The largest JWKS document [`verify`] reads, in bytes.
pub const MAX_JWKS_LEN: usize = 64 * 1024;

/// The most keys one JWKS document may hold.
pub const MAX_JWKS_KEYS: usize = 32;

/// The longest SPIFFE ID, in bytes (the SPIFFE ID specification's limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// The longest `iss` claim, in bytes.
pub const MAX_ISSUER_LEN: usize = 256;

/// The longest lifetime [`JwtKey::sign_svid`] gives a token.
pub const MAX_JWT_TTL: Duration = Duration::hours(24);

/// How much of a value an error quotes.
const QUOTE_CHARS: usize = 32;

/// The cluster's JWT-SVID signing key: ECDSA P-256.
///
/// `Debug` prints only the key id; the PKCS#8 copy is wiped on drop (ring's parsed signing
/// key is not zeroized by ring; that copy is out of our reach).
pub struct JwtKey {
    key: P256Key,
    signer: EcdsaKeyPair,
    kid: String,
}

impl JwtKey {
    /// Generates a new signing key.
    pub fn generate() -> Result<Self, PkiError> {
        Self::from_p256(P256Key::generate()?)
    }

    /// Loads a key from PKCS#8 PEM (`PRIVATE KEY`), as written by [`JwtKey::pkcs8_pem`].
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, PkiError> {
        Self::from_p256(P256Key::from_pem(pem)?)
    }

    /// Loads a key from PKCS#8 DER, as written by [`JwtKey::pkcs8_der`].
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, PkiError> {
        Self::from_p256(P256Key::from_pkcs8_der(der)?)
    }

    fn from_p256(key: P256Key) -> Result<Self, PkiError> {
        let der = key.pkcs8_der();
        let signer =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new())
                .map_err(|_| PkiError::KeyMalformed)?;
        let kid = kid_of(&key.subject_public_key_info());
        Ok(Self { key, signer, kid })
    }

    /// The private key as PKCS#8 PEM, for sealed storage.
    pub fn pkcs8_pem(&self) -> Zeroizing<String> {
        self.key.pem()
    }

    /// The private key as PKCS#8 DER, for sealed storage.
    pub fn pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        self.key.pkcs8_der()
    }

    /// The key id: base64url of the first 16 bytes of the SHA-256 of the public key's
    /// SubjectPublicKeyInfo DER. The same key always has the same id.
    pub fn kid(&self) -> String {
        self.kid.clone()
    }

    /// The public key as a JWK, for the JWKS.
    pub fn public_jwk(&self) -> Jwk {
        // An uncompressed P-256 point: 0x04 || x (32 bytes) || y (32 bytes).
        let xy = self.key.public_point().get(1..).unwrap_or_default();
        let (x, y) = xy.split_at(xy.len() / 2);
        Jwk {
            kid: self.kid.clone(),
            x: URL_SAFE_NO_PAD.encode(x),
            y: URL_SAFE_NO_PAD.encode(y),
        }
    }

    /// Signs a JWT-SVID for `spiffe_id`, meant for `audience`, valid from `now` for `ttl`.
    ///
    /// Refuses an ID that is not a SPIFFE ID, an audience list that [`check_audience`]
    /// refuses, a lifetime that is not positive or longer than [`MAX_JWT_TTL`], and a token
    /// that would be longer than [`MAX_TOKEN_LEN`] (verifiers would refuse it).
    pub fn sign_svid(
        &self,
        spiffe_id: &str,
        audience: &[String],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<Zeroizing<String>, PkiError> {
        self.sign(spiffe_id, audience, ttl, now, None)
    }

    /// As [`JwtKey::sign_svid`], with an `iss` claim: verifiers that find the keys through
    /// OIDC discovery (cloud identity federation, Vault) require it to equal the discovery
    /// document's issuer. At most [`MAX_ISSUER_LEN`] bytes, not empty.
    pub fn sign_svid_with_issuer(
        &self,
        spiffe_id: &str,
        audience: &[String],
        ttl: Duration,
        now: OffsetDateTime,
        issuer: &str,
    ) -> Result<Zeroizing<String>, PkiError> {
        self.sign(spiffe_id, audience, ttl, now, Some(issuer))
    }

    fn sign(
        &self,
        spiffe_id: &str,
        audience: &[String],
        ttl: Duration,
        now: OffsetDateTime,
        issuer: Option<&str>,
    ) -> Result<Zeroizing<String>, PkiError> {
        check_spiffe_id(spiffe_id)?;
        if let Some(iss) = issuer {
            check_issuer(iss)?;
        }
        check_audience(audience)?;
        if !ttl.is_positive() || ttl > MAX_JWT_TTL {
            return Err(PkiError::JwtTtl { max: MAX_JWT_TTL });
        }
        let exp = now
            .checked_add(ttl)
            .ok_or(PkiError::JwtTtl { max: MAX_JWT_TTL })?;

        let mut header = Map::new();
        header.insert("alg".into(), JWT_ALG.into());
        header.insert("kid".into(), self.kid.clone().into());
        header.insert("typ".into(), "JWT".into());
        let mut claims = Map::new();
        claims.insert("sub".into(), spiffe_id.into());
        claims.insert("aud".into(), audience.to_vec().into());
        claims.insert("exp".into(), exp.unix_timestamp().into());
        claims.insert("iat".into(), now.unix_timestamp().into());
        if let Some(iss) = issuer {
            claims.insert("iss".into(), iss.into());
        }

        let mut token = Zeroizing::new(String::with_capacity(512));
        URL_SAFE_NO_PAD.encode_string(Value::Object(header).to_string(), &mut token);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(Value::Object(claims).to_string(), &mut token);
        // The signature's base64url adds 86 bytes and the dot one.
        let len = token.len() + 87;
        if len > MAX_TOKEN_LEN {
            return Err(PkiError::JwtTooLarge {
                len,
                max: MAX_TOKEN_LEN,
            });
        }
        let sig = self
            .signer
            .sign(&SystemRandom::new(), token.as_bytes())
            .map_err(|_| PkiError::Random)?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut token);
        Ok(token)
    }
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The key id of a public key given as SubjectPublicKeyInfo DER.
fn kid_of(spki_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
    URL_SAFE_NO_PAD.encode(digest.as_ref().get(..16).unwrap_or_default())
}

/// An ES256 public key as a JWK: `kty` EC, `crv` P-256, `alg` ES256, `use` sig.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jwk {
    /// The key id, as in a token's header.
    pub kid: String,
    /// The point's x coordinate, base64url (32 bytes).
    pub x: String,
    /// The point's y coordinate, base64url (32 bytes).
    pub y: String,
}

impl Jwk {
    /// The JWK as a JSON object.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("kty".into(), "EC".into());
        m.insert("crv".into(), "P-256".into());
        m.insert("x".into(), self.x.clone().into());
        m.insert("y".into(), self.y.clone().into());
        m.insert("kid".into(), self.kid.clone().into());
        m.insert("alg".into(), JWT_ALG.into());
        m.insert("use".into(), "sig".into());
        Value::Object(m)
    }
}

/// A JWKS document, `{"keys":[..]}`, holding `keys` in order (several during a rotation).
pub fn jwks_json(keys: &[Jwk]) -> Vec<u8> {
    let keys: Vec<Value> = keys.iter().map(Jwk::to_json).collect();
    let mut doc = Map::new();
    doc.insert("keys".into(), Value::Array(keys));
    Value::Object(doc).to_string().into_bytes()
}

/// Checks an audience list before a token is signed for it: 1 to [`MAX_AUDIENCES`] entries,
/// each 1 to [`MAX_AUDIENCE_LEN`] bytes. The error names the entry that was wrong.
pub fn check_audience(audience: &[String]) -> Result<(), PkiError> {
    let refuse = |reason: String| Err(PkiError::JwtAudienceList { reason });
    if audience.is_empty() {
        return refuse("it is empty; name at least one audience".into());
    }
    if audience.len() > MAX_AUDIENCES {
        return refuse(format!(
            "it has {} entries, more than the {MAX_AUDIENCES} allowed",
            audience.len()
        ));
    }
    for (i, aud) in audience.iter().enumerate() {
        if aud.is_empty() {
            return refuse(format!("entry {i} is empty"));
        }
        if aud.len() > MAX_AUDIENCE_LEN {
            return refuse(format!(
                "entry {i} ({:?}) is {} bytes, more than the {MAX_AUDIENCE_LEN} allowed",
                quote(aud),
                aud.len()
            ));
        }
    }
    Ok(())
}

/// What a verified JWT-SVID says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtClaims {
    /// The SPIFFE ID of the workload the token was issued to.
    pub sub: String,
    /// The audiences the token is meant for.
    pub aud: Vec<String>,
    /// When the token expires.
    pub exp: OffsetDateTime,
    /// When the token was issued, if it says.
    pub iat: Option<OffsetDateTime>,
    /// Who issued the token, if it says (see [`JwtKey::sign_svid_with_issuer`]).
    pub iss: Option<String>,
}

/// Verifies a JWT-SVID against a JWKS document, for `audience`, at `now`.
///
/// Accepts only a compact JWS of at most [`MAX_TOKEN_LEN`] bytes signed with ES256 by the key
/// its `kid` names in `jwks_json`, without critical header extensions, whose `exp` is after
/// `now` (and `nbf`, if present, not after it), whose `aud` holds `audience` and passes
/// [`check_audience`], and whose `sub` is a SPIFFE ID. Never panics.
pub fn verify(
    token: &str,
    jwks_json: &[u8],
    audience: &str,
    now: OffsetDateTime,
) -> Result<JwtClaims, PkiError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(PkiError::JwtTooLarge {
            len: token.len(),
            max: MAX_TOKEN_LEN,
        });
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "a token is three base64url parts joined by '.'".into(),
        ));
    };

    let header: Header = decode_part(header_b64, "header")?;
    if header.alg != JWT_ALG {
        return Err(PkiError::JwtAlgorithm {
            found: quote(&header.alg),
        });
    }
    if header.crit.is_some() {
        return Err(malformed(
            "the header names critical extensions (crit), which skep does not understand".into(),
        ));
    }
    if let Some(typ) = &header.typ
        && typ != "JWT"
        && typ != "JOSE"
    {
        return Err(malformed(format!(
            "the header's typ is {:?}, not \"JWT\" or \"JOSE\"",
            quote(typ)
        )));
    }
    let kid = header
        .kid
        .ok_or_else(|| malformed("the header has no kid".into()))?;
    let point = find_key(jwks_json, &kid)?;

    let sig = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| malformed("the signature is not base64url".into()))?;
    let signed = token
        .get(..header_b64.len() + 1 + claims_b64.len())
        .unwrap_or_default();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| PkiError::JwtBadSignature)?;

    let claims: Claims = decode_part(claims_b64, "claims set")?;
    let time = |what: &str, secs: i64| {
        OffsetDateTime::from_unix_timestamp(secs)
            .map_err(|_| malformed(format!("the {what} claim is out of range")))
    };
    let exp = time("exp", claims.exp)?;
    if claims.exp <= now.unix_timestamp() {
        return Err(PkiError::JwtExpired { exp });
    }
    if let Some(nbf) = claims.nbf
        && nbf > now.unix_timestamp()
    {
        return Err(PkiError::JwtNotYetValid {
            nbf: time("nbf", nbf)?,
        });
    }
    let iat = claims.iat.map(|iat| time("iat", iat)).transpose()?;
    let aud = match claims.aud {
        Audience::One(aud) => vec![aud],
        Audience::Many(aud) => aud,
    };
    check_audience(&aud)?;
    if !aud.iter().any(|a| a == audience) {
        return Err(PkiError::JwtAudience {
            expected: quote(audience),
        });
    }
    check_spiffe_id(&claims.sub)?;
    if let Some(iss) = &claims.iss {
        check_issuer(iss)?;
    }
    Ok(JwtClaims {
        sub: claims.sub,
        aud,
        exp,
        iat,
        iss: claims.iss,
    })
}

/// A JWS header as [`verify`] reads it; other parameters are ignored.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// JWT claims as [`verify`] reads them. Each field has one JSON type: a string `exp` is an
/// error, not an absent claim.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    aud: Audience,
    exp: i64,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    iss: Option<String>,
}

/// RFC 7519 allows `aud` to be one string or an array.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// A JWKS document as [`verify`] reads it.
#[derive(Deserialize)]
struct JwksDoc {
    keys: Vec<RawJwk>,
}

/// One key of a JWKS, before it is known to be an ES256 key; other members are ignored.
#[derive(Deserialize)]
struct RawJwk {
    #[serde(default)]
    kty: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
}

/// Decodes one base64url JSON part of a token.
fn decode_part<T: serde::de::DeserializeOwned>(b64: &str, what: &str) -> Result<T, PkiError> {
    let json = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| malformed(format!("the {what} is not base64url")))?;
    serde_json::from_slice(&json)
        .map_err(|e| malformed(format!("the {what} is not as expected: {}", quote_long(&e))))
}

/// The uncompressed P-256 point of the one ES256 key named `kid` in a JWKS document.
fn find_key(jwks_json: &[u8], kid: &str) -> Result<Vec<u8>, PkiError> {
    let bad = |reason: String| PkiError::JwksMalformed { reason };
    if jwks_json.len() > MAX_JWKS_LEN {
        return Err(bad(format!(
            "it is {} bytes, more than the {MAX_JWKS_LEN} allowed",
            jwks_json.len()
        )));
    }
    let doc: JwksDoc = serde_json::from_slice(jwks_json).map_err(|e| {
        bad(format!(
            "it is not a JSON object with a keys array: {}",
            quote_long(&e)
        ))
    })?;
    if doc.keys.len() > MAX_JWKS_KEYS {
        return Err(bad(format!(
            "it holds {} keys, more than the {MAX_JWKS_KEYS} allowed",
            doc.keys.len()
        )));
    }
    let mut named = doc.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
    let key = match (named.next(), named.next()) {
        (Some(key), None) => key,
        (None, _) => return Err(PkiError::JwtUnknownKey { kid: quote(kid) }),
        (Some(_), Some(_)) => {
            return Err(bad(format!("two keys have the id {:?}", quote(kid))));
        }
    };
    let unusable = |why: &str| {
        Err(bad(format!(
            "the key {:?} is not an ES256 signing key: {why}",
            quote(kid)
        )))
    };
    if key.kty.as_deref() != Some("EC") || key.crv.as_deref() != Some("P-256") {
        return unusable("kty must be \"EC\" and crv \"P-256\"");
    }
    if key.alg.as_deref().is_some_and(|alg| alg != JWT_ALG) {
        return unusable("its alg is not \"ES256\"");
    }
    if key
        .use_
        .as_deref()
        .is_some_and(|u| u != "sig" && u != "jwt-svid")
    {
        return unusable("its use is not \"sig\" or \"jwt-svid\"");
    }
    let coord = |c: &Option<String>| {
        c.as_deref()
            .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
            .filter(|c| c.len() == 32)
    };
    let (Some(x), Some(y)) = (coord(&key.x), coord(&key.y)) else {
        return unusable("x and y must be 32 bytes each, base64url");
    };
    let mut point = Vec::with_capacity(65);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Ok(point)
}

/// Checks that `id` is a SPIFFE ID: `spiffe://<trust domain>[/<segment>...]`, the trust
/// domain of `[a-z0-9._-]`, each path segment non-empty, not `.` or `..`, of
/// `[A-Za-z0-9._-]`, at most [`MAX_SPIFFE_ID_LEN`] bytes in all.
fn check_spiffe_id(id: &str) -> Result<(), PkiError> {
    let refuse = |reason| {
        Err(PkiError::JwtSubject {
            found: quote(id),
            reason,
        })
    };
    if id.len() > MAX_SPIFFE_ID_LEN {
        return refuse("it is longer than 2048 bytes");
    }
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return refuse("it must start with \"spiffe://\"");
    };
    let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if td.is_empty() {
        return refuse("the trust domain is empty");
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return refuse("the trust domain may hold only a-z, 0-9, '.', '_' and '-'");
    }
    if path.is_empty() {
        return Ok(());
    }
    for seg in path.get(1..).unwrap_or_default().split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return refuse("a path segment is empty, '.' or '..'");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return refuse("a path segment may hold only A-Z, a-z, 0-9, '.', '_' and '-'");
        }
    }
    Ok(())
}

/// Checks an `iss` claim: 1 to [`MAX_ISSUER_LEN`] bytes. (Its form is the OIDC server's
/// business; the token only carries it.)
fn check_issuer(iss: &str) -> Result<(), PkiError> {
    if iss.is_empty() || iss.len() > MAX_ISSUER_LEN {
        return Err(PkiError::JwtIssuer {
            found: quote(iss),
            max: MAX_ISSUER_LEN,
        });
    }
    Ok(())
}

fn malformed(reason: String) -> PkiError {
    PkiError::JwtMalformed { reason }
}

/// At most [`QUOTE_CHARS`] characters of `s`, with "…" when cut.
fn quote(s: &str) -> String {
    let mut q: String = s.chars().take(QUOTE_CHARS).collect();
    if q.len() < s.len() {
        q.push('…');
    }
    q
}

/// A parser's message, cut to 80 characters: serde's messages may quote the input.
fn quote_long(e: &dyn fmt::Display) -> String {
    let s = e.to_string();
    let mut q: String = s.chars().take(80).collect();
    if q.len() < s.len() {
        q.push('…');
    }
    q
}

#[cfg(test)]
mod tests;
