//! Words of Compose values: a command string split as a shell splits it, an `env_file`
//! value without its quotes, and durations in milliseconds.

/// A Compose duration (`90s`, `1m30s`) in milliseconds.
pub(super) fn millis(text: &str) -> Result<u64, String> {
    let d = crate::spec::duration::parse(text).map_err(|e| e.to_string())?;
    u64::try_from(d.as_millis()).map_err(|_| format!("duration {text:?} is too large"))
}

/// An `env_file` value: surrounding quotes removed.
pub(super) fn unquote(v: &str) -> &str {
    let v = v.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

/// Splits a command string as a POSIX shell would split words (quotes and backslashes; no
/// expansion), as Docker does for `command: sleep 1000`.
pub fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => return Err(format!("{text:?}: unterminated single quote")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x @ ('"' | '\\' | '$' | '`')) => cur.push(x),
                            Some(x) => {
                                cur.push('\\');
                                cur.push(x);
                            }
                            None => return Err(format!("{text:?}: unterminated double quote")),
                        },
                        Some(x) => cur.push(x),
                        None => return Err(format!("{text:?}: unterminated double quote")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(x) = chars.next() {
                    cur.push(x);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}
