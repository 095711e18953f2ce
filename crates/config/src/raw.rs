//! Stage one: either format parsed into one tree whose every key and value knows its line.
//!
//! Nothing here knows what a valid configuration is; syntax errors are the only errors.

use marked_yaml::types::{MarkedScalarNode, Node as YamlNode};
use marked_yaml::{LoadError, LoaderOptions, Span};
use serde_json::{Number, Value as Json};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::ConfigError;

/// A value and the line it starts on.
#[derive(Debug)]
pub(crate) struct Node {
    pub line: usize,
    pub value: Value,
}

/// The shapes a document is made of.
#[derive(Debug)]
pub(crate) enum Value {
    /// A string, number, boolean, null (YAML) or datetime (TOML, as a string).
    Scalar(Json),
    List(Vec<Node>),
    /// Entries in file order.
    Map(Vec<Entry>),
}

/// A key of a map, its line, and its value.
#[derive(Debug)]
pub(crate) struct Entry {
    pub key: String,
    pub line: usize,
    pub node: Node,
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(Json::String(s)) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Scalar(Json::Null))
    }

    /// The entry under `key`, when this is a map.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    pub fn to_json(&self) -> Json {
        match &self.value {
            Value::Scalar(v) => v.clone(),
            Value::List(items) => items.iter().map(Node::to_json).collect(),
            Value::Map(entries) => entries
                .iter()
                .map(|e| (e.key.clone(), e.node.to_json()))
                .collect(),
        }
    }

    /// How a value reads in a message: `"maybe"`, `5`, `a list`, `a table`.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Scalar(v) => v.to_string(),
            Value::List(_) => "a list".to_owned(),
            Value::Map(_) => "a table".to_owned(),
        }
    }
}

/// Parses TOML, reporting every syntax error the parser recovers from.
pub(crate) fn from_toml(text: &str, origin: &str) -> Result<Node, Vec<ConfigError>> {
    let lines = LineIndex::new(text);
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        return Err(errors
            .iter()
            .map(|e| {
                let line = e.span().map(|s| lines.line(s.start));
                ConfigError::new(origin, line, e.message())
            })
            .collect());
    }
    Ok(Node {
        line: 1,
        value: Value::Map(toml_entries(&lines, doc.get_ref())),
    })
}

fn toml_entries(lines: &LineIndex, table: &DeTable<'_>) -> Vec<Entry> {
    let mut entries: Vec<_> = table.iter().collect();
    // The parser's map is sorted by key; the operator's order is the file's.
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
        .into_iter()
        .map(|(key, value)| Entry {
            key: key.get_ref().to_string(),
            line: lines.line(key.span().start),
            node: toml_node(lines, value),
        })
        .collect()
}

fn toml_node(lines: &LineIndex, value: &Spanned<DeValue<'_>>) -> Node {
    let scalar = |v: Json| Value::Scalar(v);
    let value_ = match value.get_ref() {
        DeValue::String(s) => scalar(Json::String(s.to_string())),
        DeValue::Integer(i) => scalar(
            i64::from_str_radix(i.as_str(), i.radix())
                .map_or_else(|_| Json::String(i.to_string()), Json::from),
        ),
        DeValue::Float(f) => scalar(
            f.as_str()
                .parse()
                .ok()
                .and_then(Number::from_f64)
                .map_or_else(|| Json::String(f.to_string()), Json::Number),
        ),
        DeValue::Boolean(b) => scalar(Json::Bool(*b)),
        DeValue::Datetime(d) => scalar(Json::String(d.to_string())),
        DeValue::Array(items) => Value::List(items.iter().map(|v| toml_node(lines, v)).collect()),
        DeValue::Table(table) => Value::Map(toml_entries(lines, table)),
    };
    Node {
        line: lines.line(value.span().start),
        value: value_,
    }
}

/// Byte offset → 1-based line.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let newlines = text.match_indices('\n').map(|(i, _)| i + 1);
        LineIndex {
            starts: std::iter::once(0).chain(newlines).collect(),
        }
    }

    fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }
}

/// Parses YAML (top level a mapping). Plain scalars are typed as YAML would
/// (`1` a number, `true` a boolean, `~` null); quoted ones stay strings.
pub(crate) fn from_yaml(text: &str, origin: &str) -> Result<Node, Vec<ConfigError>> {
    let options = LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true);
    match marked_yaml::parse_yaml_with_options(0, text, options) {
        Ok(node) => Ok(yaml_node(&node, 1)),
        Err(e) => {
            let (line, message) = yaml_error(&e);
            // The parser places "end of file" on the line after the last one.
            let last = text.lines().count().max(1);
            Err(vec![ConfigError::new(
                origin,
                Some(line.min(last)),
                message,
            )])
        }
    }
}

fn yaml_node(node: &YamlNode, parent_line: usize) -> Node {
    let line = span_line(node.span(), parent_line);
    let value = match node {
        YamlNode::Scalar(s) => Value::Scalar(yaml_scalar(s)),
        YamlNode::Sequence(items) => {
            Value::List(items.iter().map(|n| yaml_node(n, line)).collect())
        }
        YamlNode::Mapping(map) => Value::Map(
            map.iter()
                .map(|(key, value)| {
                    let key_line = span_line(key.span(), line);
                    Entry {
                        key: key.as_str().to_owned(),
                        line: key_line,
                        node: yaml_node(value, key_line),
                    }
                })
                .collect(),
        ),
    };
    Node { line, value }
}

fn span_line(span: &Span, fallback: usize) -> usize {
    span.start().map_or(fallback, |m| m.line())
}

fn yaml_scalar(s: &MarkedScalarNode) -> Json {
    if !s.may_coerce() {
        return Json::String(s.as_str().to_owned());
    }
    if matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL") {
        Json::Null
    } else if let Some(b) = s.as_bool() {
        Json::Bool(b)
    } else if let Some(i) = s.as_i64() {
        Json::from(i)
    } else if let Some(f) = s.as_f64().and_then(Number::from_f64) {
        Json::Number(f)
    } else {
        Json::String(s.as_str().to_owned())
    }
}

fn yaml_error(e: &LoadError) -> (usize, String) {
    match e {
        LoadError::ScanError(m, scan) => (m.line(), scan.info().to_owned()),
        LoadError::TopLevelMustBeMapping(m) | LoadError::TopLevelMustBeSequence(m) => (
            m.line(),
            "the top level must be a mapping (version, endpoints, adapters)".to_owned(),
        ),
        LoadError::UnexpectedAnchor(m) => (
            m.line(),
            "YAML anchors and aliases are not supported".to_owned(),
        ),
        LoadError::MappingKeyMustBeScalar(m) => {
            (m.line(), "mapping keys must be plain strings".to_owned())
        }
        LoadError::UnexpectedTag(m) => (m.line(), "YAML tags are not supported".to_owned()),
        LoadError::DuplicateKey(dup) => (
            span_line(dup.key.span(), 0),
            format!(
                "duplicate key {:?} (first on line {})",
                dup.key.as_str(),
                span_line(dup.prev_key.span(), 0)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_index() {
        let lines = LineIndex::new("a\nbc\n\nd");
        assert_eq!(
            [0, 1, 2, 4, 5, 6, 7].map(|o| lines.line(o)),
            [1, 1, 2, 2, 3, 4, 4]
        );
    }

    #[test]
    fn toml_keeps_file_order_and_lines() {
        let doc = from_toml("b = 1\na = 'x'\n[c]\nz = true\ny = 1.5\n", "t").unwrap();
        let Value::Map(entries) = &doc.value else {
            panic!("{doc:?}")
        };
        let keys: Vec<_> = entries.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert_eq!(keys, [("b", 1), ("a", 2), ("c", 3)]);
        assert_eq!(
            doc.to_json(),
            serde_json::json!({"b": 1, "a": "x", "c": {"z": true, "y": 1.5}})
        );
    }

    #[test]
    fn yaml_types_plain_scalars_only() {
        let doc = from_yaml("a: 1\nb: '1'\nc: true\nd: ~\ne:\nf: x y\ng: 0.5\n", "y").unwrap();
        assert_eq!(
            doc.to_json(),
            serde_json::json!({"a": 1, "b": "1", "c": true, "d": null, "e": null, "f": "x y", "g": 0.5})
        );
        assert_eq!(doc.get("c").map(|e| e.line), Some(3));
    }

    #[test]
    fn yaml_errors_carry_a_line() {
        let err = |text| from_yaml(text, "a.yml").unwrap_err()[0].to_string();
        assert_eq!(
            err("a: 1\na: 2\n"),
            r#"a.yml:2: duplicate key "a" (first on line 1)"#
        );
        assert_eq!(
            err("- a\n"),
            "a.yml:1: the top level must be a mapping (version, endpoints, adapters)"
        );
        assert_eq!(
            err("a: &x 1\nb: *x\n"),
            "a.yml:1: YAML anchors and aliases are not supported"
        );
        assert_eq!(err("a: !!str 1\n"), "a.yml:1: YAML tags are not supported");
    }
}
