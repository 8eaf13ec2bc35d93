//! Go templates for `--format`, as Docker's CLI has them: `{{.Name}}`, `{{json .}}`, Docker's
//! own functions (`json`, `join`, `split`, `lower`, `upper`, `title`, `pad`, `truncate`) beside
//! Go's (`len`, `index`, `printf`, `eq`, ...), and `\t`/`\n` written as two characters. A
//! template runs over the same JSON object `--format json` prints, so its field names are
//! Docker's (`.ID`, `.Name`, `.Replicas`, `.Spec.Name` in `inspect`).

use gtmpl::{Context, FuncError, Template, Value as Tv};
use serde_json::{Map, Value};

/// Longest template accepted (a format string is typed by a person or a script).
pub const MAX_TEMPLATE: usize = 4096;

/// Why a template could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// Longer than [`MAX_TEMPLATE`].
    #[error("the --format template is {0} bytes long; at most {MAX_TEMPLATE} are accepted")]
    TooLong(usize),
    /// Not Go template syntax.
    #[error("the --format template does not parse: {0}")]
    Parse(String),
    /// Parsed, but failed on a value (a function given the wrong arguments, ...).
    #[error("the --format template failed: {0}")]
    Render(String),
}

/// `\t` and `\n` typed as two characters become a tab and a newline, and surrounding spaces
/// go, as Docker's formatter does before parsing.
fn prepare(text: &str) -> String {
    text.trim_matches(' ')
        .replace("\\t", "\t")
        .replace("\\n", "\n")
}

fn compile(text: &str) -> Result<Template, TemplateError> {
    if text.len() > MAX_TEMPLATE {
        return Err(TemplateError::TooLong(text.len()));
    }
    let mut t = Template::default();
    t.add_funcs(&[
        ("json", json as gtmpl::Func),
        ("join", join as gtmpl::Func),
        ("split", split as gtmpl::Func),
        ("lower", lower as gtmpl::Func),
        ("upper", upper as gtmpl::Func),
        ("title", title as gtmpl::Func),
        ("pad", pad as gtmpl::Func),
        ("truncate", truncate as gtmpl::Func),
    ]);
    t.parse(prepare(text))
        .map_err(|e| TemplateError::Parse(e.to_string()))?;
    Ok(t)
}

/// Checks that `text` parses (for clap, before any daemon is asked).
pub fn check(text: &str) -> Result<(), TemplateError> {
    compile(text).map(|_| ())
}

/// A parsed template, run once per object.
pub struct Compiled(Template);

impl Compiled {
    /// Parses `text`.
    pub fn new(text: &str) -> Result<Self, TemplateError> {
        compile(text).map(Compiled)
    }

    /// The template's output for `value`, without a trailing newline.
    pub fn render(&self, value: &Value) -> Result<String, TemplateError> {
        self.0
            .render(&Context::from(to_template(value)))
            .map_err(|e| TemplateError::Render(e.to_string()))
    }
}

/// The header row of `table TEMPLATE`: the template run over an object whose every field
/// the template names holds that field's name in capitals, words apart (`.CurrentState` →
/// `CURRENT STATE`), as Docker's header row reads.
pub fn header(text: &str) -> Result<String, TemplateError> {
    let mut root = Map::new();
    for path in field_paths(text) {
        insert_header(&mut root, &path);
    }
    Compiled::new(text)?.render(&Value::Object(root))
}

/// Puts `path`'s header name at `path` in `node`, making the objects on the way.
fn insert_header(node: &mut Map<String, Value>, path: &[String]) {
    match path {
        [] => {}
        [last] => {
            node.entry(last.clone())
                .or_insert_with(|| Value::String(header_name(last)));
        }
        [first, rest @ ..] => {
            let next = node
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if !next.is_object() {
                *next = Value::Object(Map::new());
            }
            if let Value::Object(inner) = next {
                insert_header(inner, rest);
            }
        }
    }
}

/// The `.A.B` field paths a template names.
fn field_paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i] == '.'
            && chars.get(i + 1).is_some_and(|c| c.is_ascii_alphabetic())
            && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_'));
        if !starts {
            i += 1;
            continue;
        }
        let mut path = Vec::new();
        while i < chars.len() && chars[i] == '.' {
            let start = i + 1;
            let mut end = start;
            while end < chars.len() && (chars[end].is_alphanumeric() || chars[end] == '_') {
                end += 1;
            }
            if end == start {
                break;
            }
            path.push(chars[start..end].iter().collect());
            i = end;
        }
        out.push(path);
    }
    out
}

/// `CurrentState` → `CURRENT STATE`, `TLSStatus` → `TLS STATUS`, `ID` → `ID`.
pub fn header_name(field: &str) -> String {
    let chars: Vec<char> = field.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1);
        let boundary = c.is_uppercase()
            && prev.is_some_and(|p| {
                p.is_lowercase() || (p.is_uppercase() && next.is_some_and(|n| n.is_lowercase()))
            });
        if boundary {
            out.push(' ');
        }
        out.extend(c.to_uppercase());
    }
    out
}

/// JSON to the template engine's values: objects become maps, so a missing field prints
/// `<no value>` as Go's maps do.
fn to_template(v: &Value) -> Tv {
    match v {
        Value::Null => Tv::Nil,
        Value::Bool(b) => Tv::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Tv::from(i)
            } else if let Some(u) = n.as_u64() {
                Tv::from(u)
            } else {
                Tv::from(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => Tv::String(s.clone()),
        Value::Array(a) => Tv::Array(a.iter().map(to_template).collect()),
        Value::Object(o) => Tv::Map(o.iter().map(|(k, v)| (k.clone(), to_template(v))).collect()),
    }
}

/// The template engine's values back to JSON, for `{{json .}}`.
fn to_json(v: &Tv) -> Value {
    match v {
        Tv::NoValue | Tv::Nil | Tv::Function(_) => Value::Null,
        Tv::Bool(b) => Value::Bool(*b),
        Tv::String(s) => Value::String(s.clone()),
        Tv::Number(n) => n
            .as_i64()
            .map(Value::from)
            .or_else(|| n.as_u64().map(Value::from))
            .or_else(|| n.as_f64().map(Value::from))
            .unwrap_or(Value::Null),
        Tv::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        // Sorted keys, as Go's encoder writes maps.
        Tv::Object(o) | Tv::Map(o) => {
            let sorted: std::collections::BTreeMap<&String, Value> =
                o.iter().map(|(k, v)| (k, to_json(v))).collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
    }
}

fn arg<'a>(args: &'a [Tv], name: &str, n: usize) -> Result<&'a [Tv], FuncError> {
    if args.len() == n {
        Ok(args)
    } else {
        Err(FuncError::ExactlyXArgs(name.to_string(), n))
    }
}

fn text(v: &Tv) -> String {
    match v {
        Tv::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn int(v: &Tv) -> Result<i64, FuncError> {
    match v {
        Tv::Number(n) => n.as_i64().ok_or(FuncError::UnableToConvertFromValue),
        _ => Err(FuncError::UnableToConvertFromValue),
    }
}

fn json(args: &[Tv]) -> Result<Tv, FuncError> {
    let a = arg(args, "json", 1)?;
    Ok(Tv::String(
        serde_json::to_string(&to_json(&a[0])).unwrap_or_default(),
    ))
}

fn join(args: &[Tv]) -> Result<Tv, FuncError> {
    let a = arg(args, "join", 2)?;
    let Tv::Array(items) = &a[0] else {
        return Err(FuncError::Generic("join needs a list".into()));
    };
    Ok(Tv::String(
        items
            .iter()
            .map(text)
            .collect::<Vec<_>>()
            .join(&text(&a[1])),
    ))
}

fn split(args: &[Tv]) -> Result<Tv, FuncError> {
    let a = arg(args, "split", 2)?;
    let (s, sep) = (text(&a[0]), text(&a[1]));
    Ok(Tv::Array(
        s.split(sep.as_str())
            .map(|p| Tv::String(p.to_string()))
            .collect(),
    ))
}

fn lower(args: &[Tv]) -> Result<Tv, FuncError> {
    Ok(Tv::String(text(&arg(args, "lower", 1)?[0]).to_lowercase()))
}

fn upper(args: &[Tv]) -> Result<Tv, FuncError> {
    Ok(Tv::String(text(&arg(args, "upper", 1)?[0]).to_uppercase()))
}

/// Each word's first letter in capitals (Go's `strings.Title`).
fn title(args: &[Tv]) -> Result<Tv, FuncError> {
    let s = text(&arg(args, "title", 1)?[0]);
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = c.is_whitespace();
    }
    Ok(Tv::String(out))
}

/// Longest padding `pad` adds on a side.
const MAX_PAD: i64 = 1024;

/// `pad S LEFT RIGHT`: S with that many spaces on each side.
fn pad(args: &[Tv]) -> Result<Tv, FuncError> {
    let a = arg(args, "pad", 3)?;
    let (l, r) = (int(&a[1])?, int(&a[2])?);
    if !(0..=MAX_PAD).contains(&l) || !(0..=MAX_PAD).contains(&r) {
        return Err(FuncError::Generic(format!(
            "pad takes 0 to {MAX_PAD} spaces a side"
        )));
    }
    Ok(Tv::String(format!(
        "{}{}{}",
        " ".repeat(l as usize),
        text(&a[0]),
        " ".repeat(r as usize)
    )))
}

/// `truncate S N`: the first N characters of S.
fn truncate(args: &[Tv]) -> Result<Tv, FuncError> {
    let a = arg(args, "truncate", 2)?;
    let n = usize::try_from(int(&a[1])?).map_err(|_| FuncError::UnableToConvertFromValue)?;
    Ok(Tv::String(text(&a[0]).chars().take(n).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(t: &str, v: Value) -> String {
        Compiled::new(t).unwrap().render(&v).unwrap()
    }

    #[test]
    fn fields_and_docker_functions() {
        let v = json!({"ID": "abc", "Name": "web", "Replicas": "2/2", "N": 3,
                       "Labels": ["a", "b"], "Spec": {"Name": "web"}});
        assert_eq!(run("{{.Name}}: {{.Replicas}}", v.clone()), "web: 2/2");
        assert_eq!(run("{{.Spec.Name}}", v.clone()), "web");
        assert_eq!(run("{{.Name}}\\t{{.ID}}", v.clone()), "web\tabc");
        assert_eq!(run("{{join .Labels \",\"}}", v.clone()), "a,b");
        assert_eq!(
            run("{{upper .Name}} {{title \"a b\"}}", v.clone()),
            "WEB A B"
        );
        assert_eq!(
            run("{{truncate .ID 2}}|{{pad .ID 1 2}}|", v.clone()),
            "ab| abc  |"
        );
        assert_eq!(run("{{json .Spec}}", v.clone()), "{\"Name\":\"web\"}");
        assert_eq!(run("{{.N}} {{len .Labels}}", v.clone()), "3 2");
        assert_eq!(run("{{if eq .Name \"web\"}}yes{{end}}", v.clone()), "yes");
        assert_eq!(run("{{index (split \"a:b\" \":\") 1}}", v), "b");
    }

    #[test]
    fn bad_templates_are_errors_not_panics() {
        assert!(matches!(check("{{.Name"), Err(TemplateError::Parse(_))));
        assert!(matches!(
            check("{{nosuchfunc .}}"),
            Err(TemplateError::Parse(_))
        ));
        assert!(matches!(
            check(&"x".repeat(MAX_TEMPLATE + 1)),
            Err(TemplateError::TooLong(_))
        ));
        let t = Compiled::new("{{pad .A 1 99999}}").unwrap();
        assert!(t.render(&json!({"A": "x"})).is_err());
        let t = Compiled::new("{{join .A \",\"}}").unwrap();
        assert!(t.render(&json!({"A": "x"})).is_err());
    }

    #[test]
    fn headers_read_as_dockers() {
        assert_eq!(header_name("CurrentState"), "CURRENT STATE");
        assert_eq!(header_name("TLSStatus"), "TLS STATUS");
        assert_eq!(header_name("ID"), "ID");
        assert_eq!(
            header("{{.ID}}\\t{{.Name}}\\t{{.DesiredState}}").unwrap(),
            "ID\tNAME\tDESIRED STATE"
        );
        assert_eq!(header("{{.Spec.Name}}").unwrap(), "NAME");
        // A field named both as a value and as an object: the object wins, nothing panics.
        assert!(header("{{.Spec}} {{.Spec.Name}} {{.Spec}}").is_ok());
    }
}
