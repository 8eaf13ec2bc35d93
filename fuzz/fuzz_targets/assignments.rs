//! A task session's message comes from the leader over the network (`Dispatcher.Session`):
//! reading its tasks and shared specs must never panic, a task must name a spec the message
//! holds, and each refusal must quote at most a short prefix of the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use skep::api::assignments::decode;

fuzz_target!(|data: &[u8]| {
    // The first byte says how many of the lines are specs; the rest are tasks.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let n = usize::from(n % 4).min(lines.len());
    let (specs, tasks) = lines.split_at(n);
    let out = decode(specs, tasks);
    assert_eq!(out.len(), tasks.len());
    for r in out {
        if let Err(e) = r {
            let text = e.to_string();
            assert!(text.len() <= 300, "{} bytes", text.len());
        }
    }
});
