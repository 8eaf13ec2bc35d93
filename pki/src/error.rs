//! The one error type of the crate.

use time::OffsetDateTime;

/// Everything that can go wrong in skep's PKI.
///
/// Messages are lower case, say what went wrong and what to do, and never carry key bytes
/// or the secret part of a join token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The operating system's random number generator failed.
    #[error(
        "the system random number generator failed; check the operating system's entropy source"
    )]
    Random,

    /// An ID (node or cluster) is not 25 lowercase base36 characters.
    #[error("invalid {what} id: expected 25 lowercase letters or digits")]
    InvalidId {
        /// Which kind of ID was wrong ("node", "cluster").
        what: &'static str,
    },

    /// A role string is neither `worker` nor `manager`.
    #[error("unknown role {found:?}: expected \"worker\" or \"manager\"")]
    UnknownRole {
        /// The offending text, shortened to 32 characters.
        found: String,
    },

    /// A validity period is zero, negative, or out of the representable range.
    #[error("invalid certificate validity: it must be positive and end before the year 9999")]
    InvalidValidity,

    /// rcgen refused to build or sign something.
    #[error("could not {action}: {source}")]
    Build {
        /// What we were doing.
        action: &'static str,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },

    /// A private key could not be parsed; the bytes are never shown.
    #[error(
        "the private key could not be parsed; it must be a PKCS#8 ECDSA P-256 key as written by skep"
    )]
    KeyMalformed,

    /// A private key uses another algorithm than ECDSA P-256.
    #[error("the private key is not an ECDSA P-256 key; skep only uses P-256 keys")]
    KeyUnsupported,

    /// The root CA key does not belong to the root CA certificate.
    #[error(
        "the root CA key does not belong to the root CA certificate (their public keys differ); use the private key that was made together with this certificate"
    )]
    KeyMismatch,

    /// A root CA certificate given to skep is not valid at the current time.
    #[error(
        "the root CA certificate is valid from {not_before} to {not_after}, which does not include now; check this machine's clock or give a root CA that is valid now"
    )]
    RootNotValidNow {
        /// Start of the root's validity.
        not_before: OffsetDateTime,
        /// End of the root's validity.
        not_after: OffsetDateTime,
    },

    /// A PEM document did not hold the expected block.
    #[error("expected one PEM block labelled {expected:?}; check that the right file was given")]
    Pem {
        /// The label that was expected, e.g. `CERTIFICATE`.
        expected: &'static str,
    },

    /// A certificate signing request is larger than the parser accepts.
    #[error(
        "certificate signing request is {len} bytes, more than the {max} allowed; send a CSR built by skep"
    )]
    CsrTooLarge {
        /// The size received.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// A certificate signing request is not well-formed DER.
    #[error("certificate signing request is not valid DER; send a CSR built by skep")]
    CsrMalformed,

    /// A certificate signing request uses a key or signature algorithm other than ECDSA P-256
    /// with SHA-256.
    #[error(
        "certificate signing request must carry an ECDSA P-256 key signed with SHA-256; regenerate the node key"
    )]
    CsrUnsupportedKey,

    /// A certificate signing request's self-signature does not verify.
    #[error(
        "certificate signing request signature does not verify; the request was altered or signed with another key"
    )]
    CsrBadSignature,

    /// An operator name that skep does not accept.
    #[error(
        "invalid operator name: use 1 to 64 lower-case letters, digits, '.', '_' or '-', starting with a letter"
    )]
    InvalidOperatorName,

    /// A certificate is not well-formed DER.
    #[error("certificate is not valid DER")]
    CertMalformed,

    /// A certificate revocation list is not well-formed DER.
    #[error("the revocation list is not a DER CRL; the managers send one the workload CA signed")]
    CrlMalformed,

    /// A trust domain skep does not accept.
    #[error(
        "invalid trust domain: use 1 to 255 lower-case letters, digits, '.', '-' or '_' (for example the cluster ID or prod.example.com)"
    )]
    InvalidTrustDomain,

    /// A SPIFFE ID path segment (a stack or service name) that a SPIFFE ID cannot carry.
    #[error(
        "the stack or service name cannot be part of a SPIFFE ID: use letters, digits, '.', '-' or '_'"
    )]
    InvalidSpiffePath,

    /// A certificate parsed, but does not follow skep's profile.
    #[error("certificate does not follow skep's {kind} profile: {reason}")]
    Profile {
        /// `node certificate` or `root CA`.
        kind: &'static str,
        /// What was missing or wrong.
        reason: &'static str,
    },

    /// A certificate was not signed by the expected root CA.
    #[error(
        "certificate is not signed by this cluster's root CA; the peer belongs to another cluster or the certificate was forged"
    )]
    NotSignedByRoot,

    /// A certificate is not valid yet.
    #[error("certificate is not valid before {not_before}; check the clocks of both machines")]
    NotYetValid {
        /// Start of validity.
        not_before: OffsetDateTime,
    },

    /// A certificate has expired.
    #[error("certificate expired at {not_after}; the node must rejoin or renew its certificate")]
    Expired {
        /// End of validity.
        not_after: OffsetDateTime,
    },

    /// A leaf names another cluster than its root.
    #[error("certificate belongs to cluster {found:?}, not to {expected:?}")]
    WrongCluster {
        /// The root's cluster.
        expected: String,
        /// The leaf's cluster.
        found: String,
    },

    /// A CA digest is not 52 lowercase base32 characters.
    #[error("invalid CA digest: expected 52 lowercase base32 characters (a-z, 2-7)")]
    InvalidDigest,

    /// A join token does not start with `SKEP-`.
    #[error(
        "join token must start with \"SKEP-\"; copy the whole token printed by `skep join-token`"
    )]
    TokenPrefix,

    /// A join token has another version than 1.
    #[error(
        "unsupported join token version; this node understands version 1 (\"SKEP-1-...\"), upgrade skep or use a token from this version"
    )]
    TokenVersion,

    /// A join token does not have the four dash-separated parts.
    #[error(
        "join token must look like SKEP-1-<ca digest>-<secret>; copy the whole token printed by `skep join-token`"
    )]
    TokenFormat,

    /// The CA digest part of a join token is malformed.
    #[error(
        "the CA digest in the join token must be 52 lowercase base32 characters; copy the whole token again"
    )]
    TokenDigest,

    /// The secret part of a join token is malformed. The secret is never shown.
    #[error(
        "the secret in the join token must be 26 lowercase base32 characters; copy the whole token again"
    )]
    TokenSecret,

    /// A JWT is larger than skep reads or writes.
    #[error(
        "the JWT is {len} bytes, more than the {max} allowed; ask for fewer or shorter audiences"
    )]
    JwtTooLarge {
        /// The size received or produced.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// A JWT or its header is not in the compact form skep reads.
    #[error("the JWT is malformed: {reason}; send a JWT-SVID as issued by the Workload API")]
    JwtMalformed {
        /// What was wrong; quotes at most a short prefix of the input.
        reason: String,
    },

    /// A JWT names another signature algorithm than ES256 (`none` and HMAC included).
    #[error("the JWT is signed with {found:?}; skep accepts only ES256 JWT-SVIDs")]
    JwtAlgorithm {
        /// The header's `alg`, shortened to 32 characters.
        found: String,
    },

    /// A JWT's `kid` names no key of the trust bundle.
    #[error(
        "the JWT's key id {kid:?} is not in the trust bundle; the token was signed by another cluster or with a key that was retired"
    )]
    JwtUnknownKey {
        /// The header's `kid`, shortened to 32 characters.
        kid: String,
    },

    /// A JWT's signature does not verify with the key its `kid` names.
    #[error("the JWT's signature does not verify; the token was altered or forged")]
    JwtBadSignature,

    /// A JWT's `exp` is not after the time of the check.
    #[error("the JWT expired at {exp}; fetch a new JWT-SVID")]
    JwtExpired {
        /// The token's expiry.
        exp: OffsetDateTime,
    },

    /// A JWT's `nbf` is after the time of the check.
    #[error("the JWT is not valid before {nbf}; check the clocks of both machines")]
    JwtNotYetValid {
        /// The token's `nbf`.
        nbf: OffsetDateTime,
    },

    /// A JWT's `aud` does not name the audience of the check.
    #[error("the JWT is not meant for audience {expected:?}; fetch a JWT-SVID for that audience")]
    JwtAudience {
        /// The audience the verifier expected, shortened to 32 characters.
        expected: String,
    },

    /// A JWT's subject (or the SPIFFE ID to sign) is not a SPIFFE ID.
    #[error("{found:?} is not a SPIFFE ID: {reason}")]
    JwtSubject {
        /// The subject, shortened to 32 characters.
        found: String,
        /// What was wrong.
        reason: &'static str,
    },

    /// An audience list is empty, too long, or holds an empty or too long entry.
    #[error("invalid JWT audience list: {reason}")]
    JwtAudienceList {
        /// What was wrong, naming the entry; quotes at most a short prefix of it.
        reason: String,
    },

    /// A JWT's `iss` claim (or the issuer to sign with) is empty or too long.
    #[error("the JWT issuer {found:?} must be 1 to {max} bytes")]
    JwtIssuer {
        /// The issuer, shortened to 32 characters.
        found: String,
        /// The limit.
        max: usize,
    },

    /// A JWT lifetime that skep does not issue.
    #[error("invalid JWT-SVID lifetime: it must be positive and at most {max}")]
    JwtTtl {
        /// The longest lifetime allowed.
        max: time::Duration,
    },

    /// A JWKS document (the JWT trust bundle) is not one skep can read.
    #[error("the JWT trust bundle (JWKS) is malformed: {reason}")]
    JwksMalformed {
        /// What was wrong; quotes at most a short prefix of the input.
        reason: String,
    },
}

impl PkiError {
    pub(crate) fn build(action: &'static str) -> impl FnOnce(rcgen::Error) -> Self {
        move |source| Self::Build { action, source }
    }

    pub(crate) fn profile(kind: &'static str, reason: &'static str) -> Self {
        Self::Profile { kind, reason }
    }
}
