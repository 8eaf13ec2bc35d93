//! What the CLI prints: tables laid out like Docker's (Go's `tabwriter` with a padding of
//! two spaces), JSON, and Go templates (`--format`).

use std::fmt::Write as _;

use serde_json::Value;

use super::template::{self, Compiled};

/// How a listing or an `inspect` is printed (`--format`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// The command's own table (`table`, the default).
    Table,
    /// One JSON object per line (`json`).
    Json,
    /// A Go template run once per object, each output on its own line.
    Template(String),
    /// `table TEMPLATE`: the template's tab-separated cells as a table, with a header row.
    TableTemplate(String),
}

impl std::str::FromStr for Format {
    type Err = template::TemplateError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        Ok(match trimmed {
            "" | "table" => Format::Table,
            "json" => Format::Json,
            _ => match trimmed.strip_prefix("table ") {
                Some(rest) => {
                    template::check(rest)?;
                    Format::TableTemplate(rest.to_string())
                }
                None => {
                    template::check(text)?;
                    Format::Template(text.to_string())
                }
            },
        })
    }
}

/// A listing as `format` says: `table` is the command's own table (`table()`), `json` one
/// line per object, a template one line per object, `table TEMPLATE` a table whose header
/// names the fields (laid out as Docker's: cells at least 10 wide, 3 spaces apart).
pub fn list(
    format: &Format,
    items: &[Value],
    table: impl FnOnce() -> String,
) -> Result<String, template::TemplateError> {
    match format {
        Format::Table => Ok(table()),
        Format::Json => Ok(items.iter().map(json_line).collect()),
        Format::Template(text) => {
            let t = Compiled::new(text)?;
            let mut out = String::new();
            for item in items {
                out.push_str(&t.render(item)?);
                out.push('\n');
            }
            Ok(out)
        }
        Format::TableTemplate(text) => {
            let t = Compiled::new(text)?;
            let mut rows = vec![split_cells(&template::header(text)?)];
            for item in items {
                rows.push(split_cells(&t.render(item)?));
            }
            Ok(align(&rows, 10, 3))
        }
    }
}

/// `inspect`: a JSON array (the default), or a template once per object.
pub fn inspect(
    format: Option<&Format>,
    items: &[Value],
) -> Result<String, template::TemplateError> {
    match format {
        None | Some(Format::Table) => Ok(json_pretty(&Value::Array(items.to_vec()))),
        Some(f) => list(f, items, String::new),
    }
}

fn split_cells(line: &str) -> Vec<String> {
    line.split('\t').map(str::to_string).collect()
}

/// Rows of cells as aligned text: every column but the last padded to its widest cell plus
/// `padding`, and to at least `min_width`; trailing blanks trimmed.
fn align(lines: &[Vec<String>], min_width: usize, padding: usize) -> String {
    let columns = lines.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for line in lines {
        for (i, cell) in line.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in lines {
        let mut text = String::new();
        for (i, width) in widths.iter().enumerate() {
            let cell = line.get(i).map(String::as_str).unwrap_or("");
            if i + 1 == columns {
                text.push_str(cell);
            } else {
                let w = (width + padding).max(min_width);
                let _ = write!(text, "{cell:<w$}");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

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
        let lines: Vec<Vec<String>> = std::iter::once(self.header.clone())
            .chain(self.rows.iter().cloned())
            .collect();
        align(&lines, 0, 2)
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

    #[test]
    fn formats_parse_as_dockers() {
        assert_eq!("table".parse::<Format>().unwrap(), Format::Table);
        assert_eq!("json".parse::<Format>().unwrap(), Format::Json);
        assert_eq!(
            "{{.Name}}".parse::<Format>().unwrap(),
            Format::Template("{{.Name}}".into())
        );
        assert_eq!(
            "table {{.Name}}".parse::<Format>().unwrap(),
            Format::TableTemplate("{{.Name}}".into())
        );
        assert!("{{.Name".parse::<Format>().is_err());
    }

    #[test]
    fn listings_follow_the_format() {
        let items = vec![
            serde_json::json!({"ID": "a1", "Name": "web"}),
            serde_json::json!({"ID": "b2", "Name": "db"}),
        ];
        let f = |s: &str| s.parse::<Format>().unwrap();
        assert_eq!(list(&f("table"), &items, || "T\n".into()).unwrap(), "T\n");
        assert_eq!(
            list(&f("json"), &items, String::new).unwrap(),
            "{\"ID\":\"a1\",\"Name\":\"web\"}\n{\"ID\":\"b2\",\"Name\":\"db\"}\n"
        );
        assert_eq!(
            list(&f("{{.Name}}"), &items, String::new).unwrap(),
            "web\ndb\n"
        );
        assert_eq!(
            list(&f("table {{.ID}}\\t{{.Name}}"), &items, String::new).unwrap(),
            "ID        NAME\na1        web\nb2        db\n"
        );
        assert_eq!(inspect(Some(&f("{{.ID}}")), &items).unwrap(), "a1\nb2\n");
    }
}
