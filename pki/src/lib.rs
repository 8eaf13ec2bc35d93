//! skep's public key infrastructure: the cluster root CA, the node certificate profile,
//! certificate signing requests, join tokens and the digests that pin the root.
//!
//! The crate is synchronous and free of I/O, so every piece can be unit-tested, benchmarked
//! and fuzzed on its own. The join flow it supports:
//!
//! ```text
//!  manager                                      joining node
//!  RootCa::generate ──► JoinToken::generate     NodeKey::generate ──► csr_der
//!        │        (token printed to the operator)          │
//!        │                    └──────────► JoinToken::parse │  (digest pins the root)
//!        ▼                                                  ▼
//!  Csr::from_der ◄──────────── CSR + token secret over TLS ─┘
//!  RootCa::issue(csr, node_id, role) ──── certificate ────► verify_issued
//!                                                           │
//!  peers: NodeCertInfo::from_der on certificates that the TLS stack already verified
//! ```
//!
//! Root rotation: the old root cross-signs its successor ([`RootCa::cross_sign`]), so that
//! nodes that trust only the old root accept the new root's certificates presented with the
//! chain `[leaf, cross-signed new root]` ([`verify_issued_chain`]). An operator's own root
//! enters through [`RootCa::from_pem_for_cluster`].
//!
//! Workloads prove who they are to verifiers outside the cluster with JWT-SVIDs signed by a
//! [`JwtKey`] and checked by [`jwt::verify`] against the JWKS of [`jwt::jwks_json`].
//!
//! Untrusted input enters through [`JoinToken::parse`], [`Csr::from_der`] and
//! [`jwt::verify`]; each has a fuzz target under `fuzz/`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod base32;
mod ca;
mod csr;
mod digest;
mod error;
mod id;
pub mod jwt;
mod key;
mod operator;
mod profile;
mod svid;
mod token;

pub use ca::{IssuedCert, ROOT_CN, RootCa};
pub use csr::{Csr, MAX_CSR_LEN, NodeKey};
pub use digest::{CaDigest, ca_digest_of};
pub use error::PkiError;
pub use id::{ID_LEN, Ids, is_valid_id, new_id, try_new_id};
pub use jwt::{Jwk, JwtClaims, JwtKey};
pub use operator::{
    OPERATOR_OU, OperatorCertInfo, is_valid_operator_name, operator_revocation_key,
};
pub use profile::{
    MANAGER_SERVER_NAME, NodeCertInfo, Role, split_der_certs, verify_issued, verify_issued_chain,
};
pub use svid::{
    DEFAULT_NAMESPACE, SvidInfo, SvidSubject, WORKLOAD_CA_CN, WORKLOAD_OU, WorkloadCa, crl_serials,
    is_valid_trust_domain, spiffe_id,
};
pub use token::JoinToken;
