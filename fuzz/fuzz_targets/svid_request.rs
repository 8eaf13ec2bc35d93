//! SVID requests come from nodes over the network (`Dispatcher.IssueSvid`): decoding one and
//! deciding it must never panic, a refusal must quote at most a short prefix of the task ID,
//! and whatever is signed must be for the task asked about, on the node that asked.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use skep::api::v1::SvidRequest;
use skep::manager::workload::svid_for;
use skep::store::model::State;
use skep::store::service::TaskState;

/// A swarm with workload keys and one running task `t1` on node `n1`.
fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        let mut s = State::default();
        let mut c = skep::store::fixtures::cluster();
        c.id = skep_pki::new_id();
        c.workload = Some(
            skep::manager::workload::new_keys(&c.id, time::OffsetDateTime::now_utc())
                .expect("keys"),
        );
        s.cluster = Some(c);
        let mut t = skep::store::fixtures::task();
        t.id = skep_pki::new_id();
        t.status.state = TaskState::Running;
        s.tasks.insert(t.id.clone(), t);
        s.nodes
            .insert("n1".into(), skep::store::fixtures::node("n1"));
        s
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = SvidRequest::decode(data) else {
        return;
    };
    let s = state();
    for node in ["n1", "n2"] {
        match svid_for(s, node, &req.task_id, &req.csr, time::OffsetDateTime::now_utc()) {
            Ok(issued) => {
                let info = skep_pki::SvidInfo::from_der(&issued.cert.der).expect("an SVID");
                assert_eq!(info.task_id, req.task_id);
                assert_eq!(node, "n1");
            }
            Err(e) => assert!(e.to_string().len() <= 300, "{} bytes", e.to_string().len()),
        }
    }
});
