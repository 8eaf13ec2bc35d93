//! Certificate bundles and chains arrive from files (`root.crt`, `node.chain`), from the
//! leader (trusted roots in heartbeat answers), from a manager at issuance (the chain after
//! a new certificate) and from operators (`swarm ca --ca-cert/--ca-key`, their certificate
//! directories): splitting, chain verification, reading node and operator certificates and
//! loading an external root must never panic, whatever the bytes. So must reading a workload
//! CRL's serials (the leader's bundle, in heartbeat answers).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    if let Ok(serials) = skep_pki::crl_serials(data) {
        assert!(serials.iter().all(|s| !s.is_empty()));
    }
    if let Ok(certs) = skep_pki::split_der_certs(data) {
        assert!(certs.iter().all(|c| !c.is_empty()));
        if let [root, rest @ ..] = certs.as_slice()
            && let Some((leaf, chain)) = rest.split_last()
        {
            let _ = skep_pki::verify_issued_chain(root, chain, leaf, now);
        }
        for c in &certs {
            let _ = skep_pki::NodeCertInfo::from_der(c);
            let _ = skep_pki::OperatorCertInfo::from_der(c);
        }
    }
    // The same bytes as text: an operator's PEM certificate and key, split at a NUL.
    let text = String::from_utf8_lossy(data);
    let (cert, key) = text.split_once('\0').unwrap_or((&text, ""));
    let _ = skep_pki::RootCa::from_pem_for_cluster(cert, key, "fuzzcluster0000000000000", now);
});
