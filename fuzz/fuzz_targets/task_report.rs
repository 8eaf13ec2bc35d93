//! Task status reports come from agents over the network (`Dispatcher.ReportTasks`): parsing
//! one must never panic, its error must quote at most a short prefix of the input, and
//! whatever parses must be bounded (texts, the versions held).

#![no_main]

use libfuzzer_sys::fuzz_target;
use skep::store::service::{MAX_STATUS_TEXT_BYTES, TaskStatus};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match TaskStatus::from_report(&text) {
        Ok(st) => {
            assert!(st.message.len() <= MAX_STATUS_TEXT_BYTES + 3);
            assert!(st.err.len() <= MAX_STATUS_TEXT_BYTES + 3);
            assert!(st.timestamp.len() <= 64);
            assert!(st.held.len() <= 512);
            assert!(st.held.keys().all(|k| k.len() <= 64));
        }
        Err(e) => assert!(e.len() <= 200, "{} bytes", e.len()),
    }
});
