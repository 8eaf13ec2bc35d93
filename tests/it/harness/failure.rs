//! What a failing test said, repeated after the daemon logs a failure prints: CI shows the end
//! of a failing test's output, and the logs would otherwise push the message out of it.

use std::cell::RefCell;
use std::sync::Once;

thread_local! {
    static MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that keeps the panic's message and location for this thread,
/// then runs the hook that was there.
pub fn remember_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            // A long message (a whole listing) is cut: this is a reminder, the full one is above.
            let short: String = text.chars().take(2000).collect();
            MESSAGE.with(|m| *m.borrow_mut() = Some(format!("{at}: {short}")));
            previous(info);
        }));
    });
}

/// The message of the panic this thread is unwinding from, if the hook saw it.
pub fn last_panic() -> Option<String> {
    MESSAGE.with(|m| m.borrow().clone())
}
