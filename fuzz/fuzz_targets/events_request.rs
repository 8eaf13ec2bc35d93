//! An events request comes from operators over the network: its times and filters must parse
//! or be refused, never panic, and whatever parses must be usable on any event.

#![no_main]

use libfuzzer_sys::fuzz_target;
use skep::manager::events::{Event, EventActor, Selection};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let since = parts.next().unwrap_or_default();
    let until = parts.next().unwrap_or_default();
    let filters: Vec<String> = parts.map(String::from).collect();
    match Selection::parse(since, until, &filters) {
        Ok(sel) => {
            let event = Event {
                kind: "service".into(),
                action: "create".into(),
                actor: EventActor {
                    id: "s1".into(),
                    attributes: [("name".to_string(), "web".to_string())].into(),
                },
                scope: "swarm".into(),
                time: 0,
                time_nano: 0,
            };
            let _ = sel.admits(&event);
        }
        // Errors quote at most a short prefix of what was sent.
        Err(e) => assert!(e.to_string().len() < 2048),
    }
});
