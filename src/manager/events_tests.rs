use super::*;
use crate::audit::{Actor, AuditChain, AuditEvent};

const T: &str = "2026-12-05T10:00:00Z";

fn record(action: &str, target: &str, outcome: Outcome, details: &[(&str, &str)]) -> AuditRecord {
    let mut e = AuditEvent::now(Actor::operator("alice"), action, target, outcome);
    e.time = T.into();
    for (k, v) in details {
        e = e.with(k, *v);
    }
    let mut chain = AuditChain::default();
    chain.append(e).clone()
}

fn ev(action: &str, target: &str, details: &[(&str, &str)]) -> Option<Event> {
    let host = |id: &str| (id == "n1").then(|| "m1".to_string());
    from_record(&record(action, target, Outcome::Ok, details), host)
}

fn attrs(e: &Event) -> Vec<(&str, &str)> {
    e.actor
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[test]
fn operator_changes_map_to_dockers_swarm_events() {
    let e = ev(
        "service.create",
        "web",
        &[("service_id", "s1"), ("mode", "replicated")],
    )
    .unwrap();
    assert_eq!((e.kind.as_str(), e.action.as_str()), ("service", "create"));
    assert_eq!(e.actor.id, "s1");
    assert_eq!(attrs(&e), [("name", "web")]);
    assert_eq!(e.scope, "swarm");
    assert_eq!(e.time, 1_796_464_800);
    assert_eq!(e.time_nano, 1_796_464_800_000_000_000);

    for action in ["service.update", "service.scale", "service.rollback"] {
        let e = ev(action, "web", &[("service_id", "s1"), ("replicas", "3")]).unwrap();
        assert_eq!(e.action, "update", "{action}");
        assert_eq!(attrs(&e), [("name", "web"), ("replicas.new", "3")]);
    }
    let e = ev("service.remove", "web", &[("service_id", "s1")]).unwrap();
    assert_eq!((e.action.as_str(), e.actor.id.as_str()), ("remove", "s1"));

    let cases = [
        ("secret.create", "secret", "create"),
        ("secret.update", "secret", "update"),
        ("secret.rollback", "secret", "update"),
        ("secret.remove", "secret", "remove"),
        ("config.create", "config", "create"),
        ("config.update", "config", "update"),
        ("config.remove", "config", "remove"),
    ];
    for (action, kind, verb) in cases {
        let id = format!("{kind}_id");
        let e = ev(
            action,
            "db",
            &[(id.as_str(), "x1"), ("digest", "sha256:abc")],
        )
        .unwrap();
        assert_eq!(
            (e.kind.as_str(), e.action.as_str()),
            (kind, verb),
            "{action}"
        );
        assert_eq!(e.actor.id, "x1");
        // A digest of a secret value never reaches an event.
        assert_eq!(attrs(&e), [("name", "db")], "{action}");
    }
    let e = ev("network.create", "front", &[("network_id", "w1")]).unwrap();
    assert_eq!((e.kind.as_str(), e.actor.id.as_str()), ("network", "w1"));
}

#[test]
fn node_events_name_the_host() {
    let e = ev(
        "node.join",
        "n2",
        &[("hostname", "w1"), ("peer", "1.2.3.4")],
    )
    .unwrap();
    assert_eq!((e.kind.as_str(), e.action.as_str()), ("node", "create"));
    assert_eq!(attrs(&e), [("name", "w1")]);
    // Without a host name in the record, the state's.
    let e = ev("node.update", "n1", &[("availability", "Drain")]).unwrap();
    assert_eq!(attrs(&e), [("availability.new", "drain"), ("name", "m1")]);
    let e = ev(
        "node.promote",
        "n1",
        &[("hostname", "m1"), ("role", "manager")],
    )
    .unwrap();
    assert_eq!(e.action, "update");
    assert_eq!(attrs(&e), [("name", "m1"), ("role.new", "manager")]);
    let e = ev("node.remove", "n9", &[("cert_serial", "ab")]).unwrap();
    assert_eq!((e.action.as_str(), e.actor.id.as_str()), ("remove", "n9"));
    assert!(attrs(&e).is_empty(), "{e:?}");
}

#[test]
fn refusals_reads_and_other_records_are_not_events() {
    for outcome in [Outcome::Denied, Outcome::Error] {
        let r = record("service.create", "web", outcome, &[("service_id", "s1")]);
        assert_eq!(from_record(&r, |_| None), None);
    }
    for action in [
        "secret.deliver",
        "secret.get",
        "secret.attach",
        "token.read",
        "audit.read",
        "cert.issue",
        "node.leave",
        "service",
        "operator.sign",
    ] {
        assert_eq!(ev(action, "x", &[]), None, "{action}");
    }
    let mut r = record("service.create", "web", Outcome::Ok, &[]);
    r.event.time = "yesterday".into();
    assert_eq!(from_record(&r, |_| None), None);
}

#[test]
fn the_wire_keeps_every_field() {
    let e = ev(
        "service.update",
        "web",
        &[("service_id", "s1"), ("replicas", "2")],
    )
    .unwrap();
    assert_eq!(Event::from_wire(e.to_wire()), e);
    let json = serde_json::to_value(&e).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = ["Type", "Action", "Actor", "scope", "time", "timeNano"];
    want.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, want);
    assert_eq!(json["Actor"]["ID"], "s1");
    assert_eq!(json["Actor"]["Attributes"]["replicas.new"], "2");
}

#[test]
fn state_changes_are_node_and_update_state_events() {
    let mut old = Watched::default();
    old.nodes
        .insert("n1".into(), ("m1".into(), NodeState::Ready));
    old.nodes
        .insert("n2".into(), ("w1".into(), NodeState::Ready));
    old.services.insert("s1".into(), ("web".into(), None));
    old.services
        .insert("s2".into(), ("db".into(), Some(UpdatePhase::Updating)));
    let mut new = old.clone();
    new.nodes
        .insert("n2".into(), ("w1".into(), NodeState::Down));
    new.nodes
        .insert("n3".into(), ("w2".into(), NodeState::Ready));
    new.services
        .insert("s1".into(), ("web".into(), Some(UpdatePhase::Updating)));
    new.services
        .insert("s2".into(), ("db".into(), Some(UpdatePhase::Completed)));
    let at = crate::util::parse_rfc3339(T).unwrap();
    let out = changes(&old, &new, at);
    let seen: Vec<(String, Vec<(&str, &str)>)> = out
        .iter()
        .map(|e| (format!("{} {} {}", e.kind, e.action, e.actor.id), attrs(e)))
        .collect();
    assert_eq!(
        seen,
        [
            (
                "node update n2".to_string(),
                vec![
                    ("name", "w1"),
                    ("state.new", "down"),
                    ("state.old", "ready")
                ]
            ),
            (
                "service update s1".to_string(),
                vec![("name", "web"), ("updatestate.new", "updating")]
            ),
            (
                "service update s2".to_string(),
                vec![
                    ("name", "db"),
                    ("updatestate.new", "completed"),
                    ("updatestate.old", "updating")
                ]
            ),
        ]
    );
    assert!(changes(&new, &new, at).is_empty());
}

fn sel(filters: &[&str]) -> Selection {
    let f: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
    Selection::parse("", "", &f).unwrap()
}

fn some_events() -> Vec<Event> {
    vec![
        ev("service.create", "web", &[("service_id", "s1")]).unwrap(),
        ev(
            "service.update",
            "web",
            &[("service_id", "s1"), ("replicas", "2")],
        )
        .unwrap(),
        ev("secret.create", "db", &[("secret_id", "x1")]).unwrap(),
        ev("node.update", "n1", &[("availability", "pause")]).unwrap(),
        ev("network.remove", "webnet", &[("network_id", "w1")]).unwrap(),
    ]
}

fn passed(filters: &[&str]) -> Vec<String> {
    let s = sel(filters);
    some_events()
        .iter()
        .filter(|e| s.matches(e))
        .map(|e| format!("{}.{}", e.kind, e.action))
        .collect()
}

#[test]
fn filters_follow_dockers_rules() {
    assert_eq!(passed(&[]).len(), 5);
    assert_eq!(passed(&["type=secret"]), ["secret.create"]);
    // One key's values OR; different keys AND.
    assert_eq!(
        passed(&["type=secret", "type=node"]),
        ["secret.create", "node.update"]
    );
    assert_eq!(
        passed(&["type=service", "event=update"]),
        ["service.update"]
    );
    assert_eq!(passed(&["event=create", "event=remove"]).len(), 3);
    // Names and IDs, or their prefixes, whatever the type (Docker's fuzzy name match).
    assert_eq!(passed(&["service=web"]).len(), 3);
    assert_eq!(passed(&["service=s1"]).len(), 2);
    assert_eq!(passed(&["node=m1"]), ["node.update"]);
    assert_eq!(passed(&["node=n"]), ["node.update"]);
    assert_eq!(passed(&["secret=nope"]), Vec::<String>::new());
    assert_eq!(passed(&["scope=swarm"]).len(), 5);
    assert!(passed(&["scope=local"]).is_empty());
    // Labels match attributes, all of them.
    assert_eq!(passed(&["label=replicas.new=2"]), ["service.update"]);
    assert_eq!(passed(&["label=availability.new"]), ["node.update"]);
    assert!(passed(&["label=availability.new", "label=replicas.new"]).is_empty());
    // Keys in any case, as Docker.
    assert_eq!(passed(&["TYPE=secret"]), ["secret.create"]);
}

#[test]
fn bad_requests_are_named_and_bounded() {
    let p = |since: &str, until: &str, f: &[&str]| {
        let f: Vec<String> = f.iter().map(|s| s.to_string()).collect();
        Selection::parse(since, until, &f).unwrap_err().to_string()
    };
    assert_eq!(
        p("", "", &["colour=red"]),
        "invalid filter \"colour\": use config, container, daemon, event, label, network, node, plugin, scope, secret, service, type, volume"
    );
    assert!(p("", "", &["type=task"]).contains("use config, container"));
    assert!(p("", "", &["scope=global"]).contains("use local, swarm"));
    assert!(p("", "", &["service"]).contains("not KEY=VALUE"));
    assert!(p("yesterday", "", &[]).starts_with("since: \"yesterday\""));
    assert!(
        p("2026-12-05T11:00:00Z", "2026-12-05T10:00:00Z", &[])
            .starts_with("since time (2026-12-05T11:00:00Z) cannot be after until time")
    );
    let many = vec!["type=node"; MAX_FILTERS + 1];
    assert_eq!(p("", "", &many), "at most 64 filters (this request has 65)");
    let long = format!("service={}", "x".repeat(100_000));
    let e = p("", "", &[long.as_str()]);
    assert!(e.len() < 200, "{e}");
    let long_value = format!("type={}", "x".repeat(400));
    assert!(p("", "", &[long_value.as_str()]).len() < 200);
}

#[test]
fn the_range_is_inclusive() {
    let s = Selection::parse("2026-12-05T10:00:00Z", "2026-12-05T10:00:05Z", &[]).unwrap();
    let t = |x: &str| crate::util::parse_rfc3339(x).unwrap();
    assert!(s.in_range(t("2026-12-05T10:00:00Z")));
    assert!(s.in_range(t("2026-12-05T10:00:05Z")));
    assert!(!s.in_range(t("2026-12-05T09:59:59Z")));
    assert!(!s.in_range(t("2026-12-05T10:00:06Z")));
    assert!(Selection::default().in_range(t("1970-01-01T00:00:00Z")));
}
