use super::*;

#[test]
fn method_labels_are_bounded_to_routed_plain_names() {
    let m = metrics();
    assert_eq!(
        m.method_label("/skep.v1.Dispatcher/Heartbeat", true),
        "skep.v1.Dispatcher/Heartbeat"
    );
    assert_eq!(m.method_label("/skep.v1.Nope/Forged", false), "unknown");
    assert_eq!(m.method_label("/a b\"c", true), "unknown");
    assert_eq!(
        m.method_label(&format!("/{}", "x".repeat(200)), true),
        "unknown"
    );
    assert_eq!(m.method_label("", true), "unknown");
}

#[test]
fn past_the_cap_new_methods_count_as_other() {
    // A registry of its own: the process's one is shared with other tests.
    let m = Metrics::new();
    for i in 0..MAX_METHODS {
        assert_eq!(m.method_label(&format!("/s/M{i}"), true), format!("s/M{i}"));
    }
    assert_eq!(m.method_label("/s/Another", true), "other");
    assert_eq!(
        m.method_label("/s/M7", true),
        "s/M7",
        "a known one keeps its label"
    );
}

#[test]
fn the_exposition_names_every_family_with_units_and_ends_with_eof() {
    let m = Metrics::new();
    m.rpc("/skep.v1.Ca/GetRootCa", true, Duration::from_millis(3));
    m.refused(Refusal::RbacDenied);
    m.raft_committed(Duration::from_millis(5));
    m.secrets_delivered(2);
    {
        let _c = m.mesh_connection();
        m.mesh_bytes(Direction::In, 10);
        m.mesh_spliced(10);
    }
    m.mesh_peer_connection();
    let text = m.encode();
    for needle in [
        "# TYPE skep_rpc_duration_seconds histogram",
        "skep_rpc_duration_seconds_count{method=\"skep.v1.Ca/GetRootCa\"} 1",
        "skep_refusals_total{reason=\"rbac_denied\"} 1",
        "skep_refusals_total{reason=\"revoked\"} 0",
        "skep_raft_commit_duration_seconds_count 1",
        "skep_raft_snapshots_total{origin=\"built\"} 0",
        "skep_secret_deliveries_total 2",
        "skep_mesh_connections_total 1",
        "skep_mesh_active_connections 0",
        "skep_mesh_bytes_total{direction=\"in\"} 10",
        "skep_mesh_spliced_bytes_total 10",
        "skep_mesh_peer_connections_total 1",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        !text.contains("skep_raft_term"),
        "no manager source, no manager gauges"
    );
}

#[tokio::test]
async fn a_scrape_asks_the_sources_and_encodes_what_they_said() {
    let m = Metrics::new();
    m.set_node_source(Some(Arc::new(|| -> BoxFuture<_> {
        Box::pin(std::future::ready(Some(NodeFacts {
            cert_expiry_seconds: 3600.5,
        })))
    })));
    m.set_manager_source(Some(Arc::new(|| -> BoxFuture<_> {
        Box::pin(std::future::ready(Some(ManagerFacts {
            raft_term: 4,
            is_leader: true,
            has_leader: true,
            voters: 3,
            reachable_voters: 2,
            tasks_by_state: vec![("running", 5), ("failed", 0)],
            audit_records: 9,
            audit_chain_verified: true,
            ..ManagerFacts::default()
        })))
    })));
    let text = m.scrape().await;
    for needle in [
        "# UNIT skep_node_certificate_expiry_seconds seconds",
        "skep_node_certificate_expiry_seconds 3600.5",
        "skep_raft_term 4",
        "skep_raft_is_leader 1",
        "skep_raft_voters 3",
        "skep_raft_reachable_voters 2",
        "skep_tasks{state=\"running\"} 5",
        "skep_tasks{state=\"failed\"} 0",
        "skep_audit_records 9",
        "skep_audit_chain_verified 1",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    m.set_manager_source(None);
    let text = m.scrape().await;
    assert!(!text.contains("skep_raft_term"), "{text}");
    assert!(
        text.contains("skep_node_certificate_expiry_seconds"),
        "{text}"
    );
}
