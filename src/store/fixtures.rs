//! Baseline records for tests (unit and integration): one [`Task`] and one [`Node`], which a
//! test changes with struct update syntax (`Task { desired, ..fixtures::task() }`), so a new
//! field is added here once instead of in every test. Nothing in the daemon or the CLI uses
//! them.

use std::collections::BTreeMap;

use super::model::{Availability, Cluster, Node, NodeRole, NodeState};
use super::service::{
    DesiredState, Limit, Resources, RestartPolicy, Runtime, Task, TaskSpec, TaskState, TaskStatus,
};

/// An exec task's spec running `/bin/sleep 1000`, with no limits, secrets, ports or networks.
pub fn task_spec() -> TaskSpec {
    TaskSpec {
        runtime: Runtime::Exec,
        image: String::new(),
        command: vec!["/bin/sleep".into(), "1000".into()],
        env: vec![],
        restart: RestartPolicy::default(),
        constraints: vec![],
        reservations: Resources::default(),
        limits: Limit::default(),
        secrets: vec![],
        ports: Vec::new(),
        networks: Vec::new(),
        healthcheck: None,
        identity: true,
        mounts: Vec::new(),
        configs: Vec::new(),
    }
}

/// A task's status in `state`, with no message, error, exit code or time.
pub fn task_status(state: TaskState) -> TaskStatus {
    TaskStatus {
        state,
        message: String::new(),
        err: String::new(),
        exit_code: None,
        timestamp: String::new(),
        held: Default::default(),
    }
}

/// Task `t1`, slot 1 of service `web` (ID `s`), assigned to node `n1` and to run
/// [`task_spec`] (version 1); no times, no earlier attempts.
pub fn task() -> Task {
    Task {
        id: "t1".into(),
        service_id: "s".into(),
        service_name: "web".into(),
        slot: 1,
        node_id: "n1".into(),
        spec: task_spec(),
        spec_version: 1,
        desired: DesiredState::Running,
        status: task_status(TaskState::Assigned),
        created_at: String::new(),
        not_before: String::new(),
        attempt: 0,
        versions: Default::default(),
    }
}

/// Service `id` named `name`: one replica of [`task_spec`] at version 1, default update
/// policy, no ports or networks.
pub fn service(id: &str, name: &str) -> super::service::Service {
    super::service::Service {
        id: id.into(),
        spec: super::service::ServiceSpec {
            name: name.into(),
            labels: BTreeMap::new(),
            mode: super::service::Mode::Replicated { replicas: 1 },
            task: task_spec(),
            update: Default::default(),
            rollback: Default::default(),
            ports: Vec::new(),
            networks: Vec::new(),
            expose: Vec::new(),
            expose_udp: Vec::new(),
        },
        version: 1,
        previous: None,
        update: None,
        revision: 1,
        vip: None,
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
    }
}

/// Worker `id` (host `host-<id>`), active and ready at `127.0.0.1:2377`, certificate serial
/// `01` valid until 2030, created and updated 2026-01-01; no labels, runtimes or resources.
pub fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        hostname: format!("host-{id}"),
        role: NodeRole::Worker,
        availability: Availability::Active,
        state: NodeState::Ready,
        addr: "127.0.0.1:2377".into(),
        raft_id: None,
        cert_serial: "01".into(),
        cert_not_after: "2030-01-01T00:00:00Z".into(),
        cert_issuer: String::new(),
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
        labels: BTreeMap::new(),
        runtimes: Vec::new(),
        resources: Resources::default(),
        port_errors: BTreeMap::new(),
    }
}

/// A cluster record with placeholder CA and tokens, no audit key, no rotation.
pub fn cluster() -> Cluster {
    Cluster {
        id: "cluster".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        ca_cert_pem: "cert".into(),
        ca_key_pem: crate::secret::SecretString::new("key"),
        worker_token: crate::secret::SecretString::new("w"),
        manager_token: crate::secret::SecretString::new("m"),
        cert_expiry_secs: 60,
        autolock: false,
        unlock_key: None,
        heartbeat_period_ms: 0,
        ca_rotation: None,
        audit_key: None,
        audit_retention: 0,
        secret_history: 0,
        trust_domain: String::new(),
        workload: None,
        svid_ttl_secs: 0,
        oidc_issuer: String::new(),
    }
}
