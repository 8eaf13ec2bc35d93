//! Reading a secret line (an unlock key, a backup key or passphrase) from stdin, with a
//! prompt when stdin is a terminal.

use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};

use anyhow::{Context as _, bail};
use zeroize::Zeroizing;

/// The longest line read (a passphrase is at most 1 KiB).
const MAX_LINE: u64 = 4096;

/// One line from stdin without its line ending (inner and leading spaces kept: they may be
/// part of a passphrase). `prompt` is shown on a terminal; `missing` is the error for an
/// empty line.
pub(super) fn secret_line(
    prompt: &str,
    what: &str,
    missing: &str,
) -> anyhow::Result<Zeroizing<String>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let mut out = std::io::stdout().lock();
        out.write_all(prompt.as_bytes())
            .and_then(|()| out.flush())
            .context("writing the prompt")?;
    }
    let mut line = Zeroizing::new(String::new());
    stdin
        .lock()
        .take(MAX_LINE)
        .read_line(&mut line)
        .with_context(|| format!("reading {what} from stdin"))?;
    let text = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_string());
    if text.is_empty() {
        bail!("{missing}");
    }
    Ok(text)
}
