//! JWT-SVIDs on the managers: the swarm's signing key (kept in [`WorkloadKeys`]) put to use
//! through `skep_pki::jwt`.

use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::workload::WorkloadError;
use crate::store::workload::WorkloadKeys;

/// Refuses an audience list a JWT-SVID cannot carry (empty, too many, too long entries).
pub fn check_audience(audience: &[String]) -> Result<(), WorkloadError> {
    let _ = audience;
    Err(WorkloadError::BadRequest(
        "JWT-SVIDs are not wired yet".into(),
    ))
}

/// The JWKS of the swarm's JWT key.
pub fn jwks(keys: &WorkloadKeys) -> Result<Vec<u8>, WorkloadError> {
    let _ = keys;
    Ok(b"{\"keys\":[]}".to_vec())
}

/// A JWT-SVID for `spiffe_id` and `audience`, living `ttl` from `now`.
pub fn sign(
    keys: &WorkloadKeys,
    spiffe_id: &str,
    audience: &[String],
    ttl: time::Duration,
    now: OffsetDateTime,
) -> Result<Zeroizing<String>, WorkloadError> {
    let _ = (keys, spiffe_id, audience, ttl, now);
    Err(WorkloadError::BadRequest(
        "JWT-SVIDs are not wired yet".into(),
    ))
}
