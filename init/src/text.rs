//! Quoting untrusted text in error messages (skep's `util` re-exports these).

/// At most `max` bytes of `s` (cut at a character boundary), with `…` when cut.
pub fn prefix(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// How much of a value an error quotes.
pub const QUOTE_BYTES: usize = 64;

/// `s` as an error quotes it: at most [`QUOTE_BYTES`] of it, in quotes, with its length when
/// cut (`"aaaa…" (120000 bytes)`).
pub fn quote(s: &str) -> String {
    if s.len() <= QUOTE_BYTES {
        format!("{s:?}")
    } else {
        format!("{:?} ({} bytes)", prefix(s, QUOTE_BYTES), s.len())
    }
}
