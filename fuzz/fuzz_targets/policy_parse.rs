//! Policy text comes from operators (`skep policy set [--rbac]`) and from the replicated state:
//! parsing and validating it must never panic, whatever the bytes, and a policy that is
//! accepted must evaluate without panicking, whatever it says.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use skep::policy::{Decision, NodeFacts, PolicyEngine, SecretFacts, ServiceFacts};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The same text as an operator RBAC policy set (`policy set --rbac`).
    if let Ok(rbac) = skep::policy::rbac::RbacEngine::parse(text) {
        let who = skep::policy::rbac::Principal {
            name: "alice",
            role: "deployer",
        };
        let _ = rbac.authorize(&who, skep::policy::rbac::Action::Deploy, "service");
    }
    let Ok(engine) = PolicyEngine::parse(text) else {
        return;
    };
    assert_eq!(engine.text(), text);
    assert_eq!(engine.digest(), skep::policy::digest(text));

    let mut labels = BTreeMap::new();
    labels.insert("tier".to_string(), "prod".to_string());
    labels.insert("secure".to_string(), "true".to_string());
    labels.insert("odd \"key\"\n".to_string(), "\u{1f600}".to_string());
    let empty = BTreeMap::new();
    let service = ServiceFacts {
        id: "svc1",
        name: "web",
        labels: &labels,
        secret_ids: &["s1", "s2"],
    };
    let node = NodeFacts {
        id: "n1",
        hostname: "node-1",
        role: "worker",
        labels: &labels,
    };
    for secret in [
        SecretFacts {
            id: "s1",
            name: "db-password",
            labels: &labels,
        },
        SecretFacts {
            id: "s3",
            name: "unreferenced",
            labels: &empty,
        },
    ] {
        match engine.use_secret(&service, &secret, &node) {
            Decision::Allow => {}
            Decision::Deny { reason } => assert!(!reason.is_empty()),
        }
    }
});
