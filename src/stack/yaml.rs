//! The YAML layer: text to a tree of nodes that remember their line, within limits.
//!
//! serde-saphyr parses; aliases are replayed under a budget, so a "billion laughs" file is
//! refused after a bounded amount of work instead of expanding. Everything after this layer
//! (interpolation, merging, the Compose schema) works on [`Node`]s, so every message can say
//! which line a key is on.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// At most this many alias expansions in one file; a Compose file uses a handful.
pub const MAX_ALIASES: usize = 1_000;
/// At most this many events replayed from aliases in one file.
pub const MAX_REPLAYED_EVENTS: usize = 100_000;
/// At most this many nodes in one file.
pub const MAX_NODES: usize = 200_000;
/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 48;

/// A value and the line it starts on (1-based; 0 when unknown, e.g. from a merge).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Line in the file.
    pub line: u64,
    /// Which of the stack's files it came from (index into the file list).
    pub file: usize,
    /// The value.
    pub value: Value,
}

/// A YAML value. Mappings keep their order (services are deployed in file order).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `~`, `null` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string (quoted or plain).
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping.
    Map(Vec<(Key, Node)>),
}

/// A mapping key and its line.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    /// Line in the file.
    pub line: u64,
    /// Which of the stack's files it came from.
    pub file: usize,
    /// The key as text (`80:` becomes `"80"`).
    pub name: String,
}

impl Node {
    /// A node without a known line.
    pub fn new(value: Value) -> Self {
        Node {
            line: 0,
            file: 0,
            value,
        }
    }

    /// Marks every node and key as coming from file number `file`.
    pub fn tag(&mut self, file: usize) {
        self.file = file;
        match &mut self.value {
            Value::Seq(items) => items.iter_mut().for_each(|n| n.tag(file)),
            Value::Map(m) => {
                for (k, v) in m {
                    k.file = file;
                    v.tag(file);
                }
            }
            _ => {}
        }
    }

    /// The entry of a mapping with this key.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(m) => m.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The key and entry of a mapping with this key.
    pub fn entry(&self, key: &str) -> Option<(&Key, &Node)> {
        match &self.value {
            Value::Map(m) => m.iter().find(|(k, _)| k.name == key).map(|(k, v)| (k, v)),
            _ => None,
        }
    }

    /// The entries of a mapping (empty for anything else).
    pub fn entries(&self) -> &[(Key, Node)] {
        match &self.value {
            Value::Map(m) => m,
            _ => &[],
        }
    }

    /// Removes and returns the entry with this key of a mapping.
    pub fn take(&mut self, key: &str) -> Option<(Key, Node)> {
        match &mut self.value {
            Value::Map(m) => {
                let i = m.iter().position(|(k, _)| k.name == key)?;
                Some(m.remove(i))
            }
            _ => None,
        }
    }

    /// A scalar as text (`5`, `true`, `0.5`, `text`); `None` for null and collections.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Str(s) => Some(s.clone()),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }

    /// What kind of value this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The value as JSON, for the typed Compose structs.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(m) => J::Object(
                m.iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Why a file is not YAML, or is too big a YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// Line, when the parser knows it.
    pub line: Option<u64>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Parses one YAML document into a tree, within the limits above.
pub fn parse(text: &str) -> Result<Node, YamlError> {
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = MAX_REPLAYED_EVENTS;
    alias_limits.max_replay_stack_depth = 16;
    alias_limits.max_alias_expansions_per_anchor = MAX_ALIASES;
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_aliases: MAX_ALIASES,
            max_anchors: MAX_ALIASES,
            max_nodes: MAX_NODES,
            max_depth: MAX_DEPTH,
            max_documents: 1,
        },
        alias_limits: alias_limits,
        with_snippet: false,
        leading_zero_numbers_as_strings: true,
    };
    let node: Option<Node> = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let line = e.location().map(|l| l.line()).filter(|l| *l > 0);
        let message = e.to_string();
        // The parser's message may carry its own location suffix; keep the first line.
        let message = message.lines().next().unwrap_or_default().to_string();
        YamlError { line, message }
    })?;
    Ok(node.unwrap_or_else(|| Node::new(Value::Map(Vec::new()))))
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<Value>::deserialize(d)?;
        Ok(Node {
            line: s.referenced.line(),
            file: 0,
            value: s.value,
        })
    }
}

struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText("null".into()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a YAML value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
                Ok(i64::try_from(v).map_or(Value::Str(v.to_string()), Value::Int))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
                Ok(i64::try_from(v).map_or(Value::Str(v.to_string()), Value::Int))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
                Ok(i64::try_from(v).map_or(Value::Str(v.to_string()), Value::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
                Ok(Value::Str(v))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
                Ok(Value::Str(String::from_utf8_lossy(v).into_owned()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Value, D2::Error> {
                Value::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(n) = seq.next_element::<Node>()? {
                    items.push(n);
                }
                Ok(Value::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut entries: Vec<(Key, Node)> = Vec::new();
                while let Some(k) = map.next_key::<Spanned<KeyText>>()? {
                    let v = map.next_value::<Node>()?;
                    let key = Key {
                        line: k.referenced.line(),
                        file: 0,
                        name: k.value.0,
                    };
                    if entries.iter().any(|(e, _)| e.name == key.name) {
                        return Err(de::Error::custom(format!(
                            "line {}: key {:?} is given twice",
                            key.line, key.name
                        )));
                    }
                    entries.push((key, v));
                }
                Ok(Value::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}
