//! The mesh's pure parts (flow table, listen set, port report, tunnel protocol) and the UDP
//! relay against a real loopback echo socket.

use super::*;

fn peer(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn a_flow_lives_while_datagrams_pass_and_is_forgotten_when_idle() {
    let t0 = Instant::now();
    let mut flows = Flows::new(8, Duration::from_secs(30));
    flows.insert(peer(1), "a", t0);
    // Traffic refreshes it: alive at 29 s, then 29 s after that.
    assert_eq!(
        flows.touch(peer(1), t0 + Duration::from_secs(29)),
        Some(&"a")
    );
    assert_eq!(
        flows.touch(peer(1), t0 + Duration::from_secs(58)),
        Some(&"a")
    );
    // 30 s of silence: gone, so the client's next datagram starts a new flow.
    assert_eq!(flows.touch(peer(1), t0 + Duration::from_secs(88)), None);
    assert_eq!(flows.len(), 0);
    // Another client address is another flow.
    flows.insert(peer(1), "a", t0);
    flows.insert(peer(2), "b", t0);
    assert_eq!(flows.touch(peer(2), t0), Some(&"b"));
    assert_eq!(flows.remove(peer(1)), Some("a"));
    assert_eq!(flows.touch(peer(1), t0), None);
}

#[test]
fn the_flow_count_is_bounded_until_flows_idle_out_or_end() {
    let t0 = Instant::now();
    let mut flows = Flows::new(3, Duration::from_secs(30));
    for p in 1..=3 {
        assert!(flows.has_room());
        flows.insert(peer(p), p, t0 + Duration::from_secs(u64::from(p)));
    }
    assert!(!flows.has_room(), "a fourth flow must wait");
    // A sweep before any is idle frees nothing.
    flows.sweep(t0 + Duration::from_secs(30), |_| true);
    assert!(!flows.has_room());
    // At 31.5 s the first (last seen at 1 s) is idle: room for one.
    flows.sweep(t0 + Duration::from_millis(31_500), |_| true);
    assert_eq!(flows.len(), 2);
    assert!(flows.has_room());
    // A flow whose task ended is forgotten too, idle or not.
    flows.sweep(t0 + Duration::from_secs(2), |p| *p != 3);
    assert_eq!(flows.len(), 1);
    assert_eq!(flows.touch(peer(2), t0 + Duration::from_secs(3)), Some(&2));
}

fn route(proto: &str, published: u32, mode: &str, tasks: &[(&str, &str)]) -> Route {
    Route {
        service_id: "s".into(),
        service_name: "s".into(),
        published,
        target: 53,
        protocol: proto.into(),
        mode: mode.into(),
        tasks: tasks
            .iter()
            .map(|(t, n)| RouteTask {
                task_id: (*t).into(),
                node_id: (*n).into(),
                node_addr: "127.0.0.1:2377".into(),
                allowed_callers: Vec::new(),
            })
            .collect(),
        identity_required: false,
    }
}

#[test]
fn tcp_and_udp_routes_on_one_port_are_two_listeners() {
    let ip: IpAddr = "127.1.2.3".parse().unwrap();
    let routes = [
        route("tcp", 4000, "ingress", &[("t1", "n2")]),
        route("udp", 4000, "ingress", &[("t2", "n2")]),
        route("udp", 4001, "host", &[("t3", "n2")]),
        route("udp", 4002, "host", &[("t4", "n1"), ("t5", "n2")]),
        route("sctp", 4003, "ingress", &[("t6", "n1")]),
    ];
    let w = wanted("n1", ip, &routes, &[], false);
    let mut keys: Vec<(Proto, u16)> = w.keys().map(|(p, a)| (*p, a.port())).collect();
    keys.sort();
    // Host mode without a task here, and an unknown protocol, are not listened on.
    assert_eq!(
        keys,
        [(Proto::Tcp, 4000), (Proto::Udp, 4000), (Proto::Udp, 4002)]
    );
    let udp = &w[&(Proto::Udp, SocketAddr::new(ip, 4000))];
    assert_eq!((udp.target, udp.tasks[0].task_id.as_str()), (53, "t2"));
    // A host-mode port forwards only to this node's own task.
    let host = &w[&(Proto::Udp, SocketAddr::new(ip, 4002))];
    assert_eq!(host.tasks.len(), 1);
    assert_eq!(host.tasks[0].task_id, "t4");
}

#[test]
fn port_problems_say_which_protocol_failed() {
    let ip: IpAddr = "127.1.2.3".parse().unwrap();
    let other: IpAddr = "127.77.0.1".parse().unwrap();
    let failed: HashMap<ListenKey, String> = [
        ((Proto::Udp, SocketAddr::new(ip, 53)), "in use".to_string()),
        ((Proto::Tcp, SocketAddr::new(ip, 53)), "denied".to_string()),
        ((Proto::Udp, SocketAddr::new(ip, 54)), "in use".to_string()),
        ((Proto::Tcp, SocketAddr::new(other, 55)), "x".to_string()),
    ]
    .into_iter()
    .collect();
    let report = port_report(&failed, ip);
    assert_eq!(
        report.into_iter().collect::<Vec<_>>(),
        [
            (53, "denied; udp: in use".to_string()),
            (54, "udp: in use".to_string())
        ]
    );
}

#[test]
fn a_tunnel_names_its_protocol_or_is_refused() {
    assert_eq!(tunnel_protocol("").unwrap(), Proto::Tcp);
    assert_eq!(tunnel_protocol("tcp").unwrap(), Proto::Tcp);
    assert_eq!(tunnel_protocol("udp").unwrap(), Proto::Udp);
    for bad in ["UDP", "sctp", "udp\0"] {
        let e = tunnel_protocol(bad).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains(&format!("{bad:?}")), "{}", e.message());
    }
    let long = "x".repeat(10_000);
    let e = tunnel_protocol(&long).unwrap_err();
    assert!(e.message().len() < 200, "{}", e.message());
}

#[tokio::test]
async fn the_udp_relay_carries_datagrams_both_ways_and_ends_with_its_input() {
    // A task: echoes each datagram with a prefix.
    let task = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let task_addr = task.local_addr().unwrap();
    let echo = tokio::spawn(async move {
        let mut buf = vec![0u8; 70_000];
        loop {
            let (n, from) = task.recv_from(&mut buf).await.unwrap();
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            task.send_to(&reply, from).await.unwrap();
        }
    });
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(8);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(8);
    let sock = connect_udp(task_addr).await.unwrap();
    let relay = tokio::spawn(relay_udp(
        sock,
        tokio_stream::wrappers::ReceiverStream::new(in_rx),
        move |d| out_tx.try_send(d).map_err(|_| ()),
    ));
    let within = Duration::from_secs(5);
    in_tx.send(b"one".to_vec()).await.unwrap();
    let got = tokio::time::timeout(within, out_rx.recv()).await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"echo:one"[..]));
    // Too big to be a datagram: dropped, nothing panics, the flow goes on.
    in_tx.send(vec![7u8; MAX_DATAGRAM + 1]).await.unwrap();
    in_tx.send(Vec::new()).await.unwrap();
    let got = tokio::time::timeout(within, out_rx.recv()).await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"echo:"[..]));
    drop(in_tx);
    tokio::time::timeout(within, relay)
        .await
        .expect("the relay ends when its input does")
        .unwrap();
    echo.abort();
}

#[test]
fn the_udp_budget_refuses_datagrams_beyond_it_until_held_ones_are_sent() {
    let budget = Arc::new(AtomicUsize::new(0));
    let big = MAX_DATAGRAM;
    let mut held: Vec<Charge> = std::iter::from_fn(|| Charge::take(&budget, big)).collect();
    assert_eq!(held.len(), UDP_BUDGET / big);
    assert!(budget.load(Ordering::Acquire) <= UDP_BUDGET);
    // Full: even a small datagram waits for room...
    let room = UDP_BUDGET - budget.load(Ordering::Acquire);
    assert!(Charge::take(&budget, room + 1).is_none());
    // ...which a sent (dropped) datagram gives back.
    held.pop();
    let again = Charge::take(&budget, big);
    assert!(again.is_some());
    assert!(Charge::take(&budget, big).is_none());
    assert!(Charge::take(&budget, usize::MAX).is_none(), "no overflow");
}

#[test]
fn a_tunnel_carries_published_ports_and_services_on_the_callers_networks_only() {
    let nets = ["backend".to_string()];
    let published = [route("tcp", 4000, "ingress", &[("t1", "n1")])];
    let vip = |networks: &[&str], on: &str| crate::api::v1::ServiceVip {
        service_id: "other".into(),
        networks: networks.iter().map(|n| (*n).to_string()).collect(),
        tasks: vec![RouteTask {
            task_id: "t9".into(),
            node_id: on.into(),
            node_addr: String::new(),
            allowed_callers: Vec::new(),
        }],
        ..Default::default()
    };
    // A published port (route target 53): any node.
    assert_eq!(
        tunnel_refusal("n3", "s", &nets, 53, Proto::Tcp, &published, &[]),
        None
    );
    // Not its protocol, not its port, host mode, another service: refused.
    assert!(tunnel_refusal("n3", "s", &nets, 53, Proto::Udp, &published, &[]).is_some());
    assert!(tunnel_refusal("n3", "s", &nets, 6379, Proto::Tcp, &published, &[]).is_some());
    let host = [route("tcp", 4000, "host", &[("t1", "n1")])];
    assert!(tunnel_refusal("n3", "s", &nets, 53, Proto::Tcp, &host, &[]).is_some());
    assert!(tunnel_refusal("n3", "x", &nets, 53, Proto::Tcp, &published, &[]).is_some());
    // An exposed port: a node running a task on the service's network only.
    let on_backend = [vip(&["backend"], "n3")];
    assert_eq!(
        tunnel_refusal("n3", "s", &nets, 6379, Proto::Tcp, &[], &on_backend),
        None
    );
    let why = tunnel_refusal("n4", "s", &nets, 6379, Proto::Tcp, &[], &on_backend).unwrap();
    assert!(
        why.contains("node n4 runs no task on a network of service s"),
        "{why}"
    );
    let elsewhere = [vip(&["frontend"], "n3")];
    assert!(tunnel_refusal("n3", "s", &nets, 6379, Proto::Tcp, &[], &elsewhere).is_some());
    // A service on no network is reached by its published ports only.
    assert!(tunnel_refusal("n3", "s", &[], 6379, Proto::Tcp, &[], &on_backend).is_some());
}

#[test]
fn an_identity_required_target_is_guarded_on_its_port_and_by_name() {
    let ip: IpAddr = "127.1.2.3".parse().unwrap();
    let mut r = route("tcp", 8443, "ingress", &[("t1", "n1")]);
    r.target = 443;
    r.identity_required = true;
    r.tasks[0].allowed_callers = vec!["spiffe://td/ns/default/svc/web".into()];
    let vip = crate::api::v1::ServiceVip {
        service_id: "s".into(),
        vip: "127.77.0.9".into(),
        ports: vec![443, 80],
        networks: vec!["backend".into()],
        tasks: vec![RouteTask {
            task_id: "t1".into(),
            node_id: "n1".into(),
            node_addr: String::new(),
            allowed_callers: Vec::new(),
        }],
        ..Default::default()
    };
    let w = wanted("n1", ip, std::slice::from_ref(&r), &[vip], false);
    let published = &w[&(Proto::Tcp, SocketAddr::new(ip, 8443))];
    assert!(published.identity);
    let by_name = &w[&(Proto::Tcp, "127.77.0.9:443".parse().unwrap())];
    assert!(
        by_name.identity,
        "the service's address must not be a way around it"
    );
    assert_eq!(by_name.tasks[0].allowed_callers, r.tasks[0].allowed_callers);
    assert!(!w[&(Proto::Tcp, "127.77.0.9:80".parse().unwrap())].identity);

    // A tunnel to the guarded target is answered with the task's allowed callers.
    let routes = [r];
    assert_eq!(
        callers_of(&routes, "s", "t1", 443),
        Some(Some(vec!["spiffe://td/ns/default/svc/web".to_string()]))
    );
    assert_eq!(callers_of(&routes, "s", "t9", 443), Some(None));
    assert_eq!(callers_of(&routes, "s", "t1", 80), None);
    assert_eq!(callers_of(&routes, "other", "t1", 443), None);
}
