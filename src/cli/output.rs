//! What the CLI prints: tables laid out like Docker's (Go's `tabwriter` with a padding of
//! two spaces), and JSON.

use std::fmt::Write as _;

/// A table of left-aligned columns.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are kept.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in a newline. Every column but the
    /// last is padded to its widest cell plus two spaces; trailing blanks are trimmed, as
    /// Docker's tables have none.
    pub fn render(&self) -> String {
        let lines: Vec<&Vec<String>> = std::iter::once(&self.header).chain(&self.rows).collect();
        let columns = lines.iter().map(|l| l.len()).max().unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for line in &lines {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in &lines {
            let mut text = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = line.get(i).map(String::as_str).unwrap_or("");
                if i + 1 == columns {
                    text.push_str(cell);
                } else {
                    let _ = write!(text, "{cell:<w$}", w = width + 2);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Pretty JSON with a trailing newline, as `docker inspect` prints.
pub fn json_pretty(value: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
    s.push('\n');
    s
}

/// A compact JSON line, as `--format json` prints one per object.
pub fn json_line(value: &serde_json::Value) -> String {
    let mut s = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
    s.push('\n');
    s
}

/// Ends a command that worked through several names: fails with every error, one a line,
/// after the successes were printed (as `docker rm a b c` does).
pub fn fail_with(errors: Vec<String>) -> anyhow::Result<()> {
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", errors.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_columns_by_two_spaces() {
        let mut t = Table::new(&["ID", "HOSTNAME", "STATUS"]);
        t.row(vec!["abc *".into(), "n1".into(), "Ready".into()]);
        t.row(vec!["defgh".into(), "node-two".into(), "Down".into()]);
        assert_eq!(
            t.render(),
            "ID     HOSTNAME  STATUS\n\
             abc *  n1        Ready\n\
             defgh  node-two  Down\n"
        );
    }

    #[test]
    fn trims_empty_trailing_cells() {
        let mut t = Table::new(&["A", "MANAGER STATUS"]);
        t.row(vec!["x".into(), "".into()]);
        assert_eq!(t.render(), "A  MANAGER STATUS\nx\n");
    }

    #[test]
    fn empty_table_is_its_header() {
        assert_eq!(Table::new(&["SEQ", "TIME"]).render(), "SEQ  TIME\n");
    }

    #[test]
    fn counts_characters_not_bytes() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["né".into(), "x".into()]);
        assert_eq!(t.render(), "A   B\nné  x\n");
    }

    #[test]
    fn json_helpers_end_lines() {
        let v = serde_json::json!({"a": 1});
        assert_eq!(json_line(&v), "{\"a\":1}\n");
        assert_eq!(json_pretty(&serde_json::json!([])), "[]\n");
    }
}
