//! Reading configuration files: a file or a directory (`*.yaml`/`*.yml`, sorted by name), each
//! split into YAML documents that remember where they start, so that every error (syntax,
//! schema, or found later by validation) points at a file, a line, a column and a field.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use super::error::{ConfigError, Location};

/// One YAML document of one file.
#[derive(Debug, Clone)]
pub struct Document {
    /// The file as the user named it (joined to the directory when a directory was given).
    pub file: Arc<PathBuf>,
    /// Lines before this document in the file (its first line is `line_offset + 1`).
    pub line_offset: usize,
    pub text: String,
}

/// The files a path stands for: the file itself, or the `*.yaml`/`*.yml` files of a
/// directory (not recursive), sorted by name.
pub fn files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        let p = entry.path();
        let yaml = matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml") | Some("yml")
        );
        // Follow symlinks: a Kubernetes ConfigMap volume shows each key as a symlink into
        // its `..data/` directory.
        if yaml && std::fs::metadata(&p).map_err(io)?.is_file() {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(ConfigError::NoFiles {
            path: path.to_path_buf(),
        });
    }
    files.sort();
    Ok(files)
}

/// Splits a file's text into documents at `---` lines, keeping each document's line offset.
pub fn split_documents(file: Arc<PathBuf>, text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let separator = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        if separator && i > 0 {
            docs.push(Document {
                file: file.clone(),
                line_offset: start,
                text: std::mem::take(&mut current),
            });
            start = i;
        }
        current.push_str(line);
    }
    docs.push(Document {
        file,
        line_offset: start,
        text: current,
    });
    docs
}

impl Document {
    /// An error located at `field` (best effort: the line where that key is written).
    pub fn error(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            location: self.locate(field),
            message: message.into(),
        }
    }

    /// The location of `field` (`spec.ports[1].port`) in this document.
    pub fn locate(&self, field: &str) -> Location {
        let (line, column) = locate_in(&self.text, field);
        Location {
            file: (*self.file).clone(),
            line: self.line_offset + line,
            column,
            field: field.to_string(),
        }
    }

    /// The document as an untyped value (`Null` when it holds only comments).
    pub fn value(&self) -> Result<Value, ConfigError> {
        serde_yaml_ng::from_str(&self.text).map_err(|e| self.yaml_error(String::new(), e))
    }

    /// The document as a typed resource, with the field path of any error.
    pub fn typed<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(&self.text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            self.yaml_error(path, e.into_inner())
        })
    }

    fn yaml_error(&self, mut field: String, err: serde_yaml_ng::Error) -> ConfigError {
        let mut message = err.to_string();
        // serde_yaml_ng appends " at line L column C" and may prefix the path; we print both
        // ourselves, in the `file:line:column: field: message` shape.
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        // serde_yaml_ng's own path may be the field's or a parent's.
        let mut parent = field.as_str();
        while !parent.is_empty() {
            if let Some(rest) = message.strip_prefix(&format!("{parent}: ")) {
                message = rest.to_string();
                break;
            }
            parent = parent.rfind(['.', '[']).map_or("", |i| &parent[..i]);
        }
        let mut message = tidy_serde_message(&message);
        // A syntax error has no field; when a key is indented under one that already holds
        // a value (`action: ALLOW` followed by an indented `selector:`), name that key.
        if field.is_empty() {
            if let Some(l) = err.location() {
                if let Some((parent, hint)) = misindented(&self.text, l.line()) {
                    field = parent;
                    message = format!("{message} ({hint})");
                }
            }
        }
        if let Some(missing) = message
            .strip_prefix("missing field \"")
            .and_then(|m| m.strip_suffix('"'))
        {
            field = if field.is_empty() {
                missing.to_string()
            } else {
                format!("{field}.{missing}")
            };
        }
        let (line, column) = match err.location() {
            Some(l) => (self.line_offset + l.line(), l.column()),
            None => {
                let l = self.locate(&field);
                (l.line, l.column)
            }
        };
        ConfigError::Invalid {
            location: Location {
                file: (*self.file).clone(),
                line,
                column,
                field,
            },
            message,
        }
    }
}

/// One line of block YAML as the indentation walk sees it.
struct YamlLine<'t> {
    /// Column of the first character (a `- ` included).
    indent: usize,
    /// Starts with `- ` (a list item).
    item: bool,
    /// Column of the key (after `- ` on an item line).
    key_col: usize,
    /// `key` of `key:` / `key: value`, if the line is one.
    key: Option<&'t str>,
    /// The inline value after `key:`, if any (comments excluded).
    value: &'t str,
}

fn yaml_line(line: &str) -> Option<YamlLine<'_>> {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
        return None;
    }
    let indent = line.len() - trimmed.len();
    let (item, body) = match trimmed.strip_prefix("- ") {
        Some(rest) => (true, rest.trim_start()),
        None => (false, trimmed),
    };
    let key_col = if item {
        line.len() - body.len()
    } else {
        indent
    };
    let (key, value) = match body.split_once(':') {
        Some((k, v))
            if !k.is_empty()
                && !k.contains([' ', '{', '[', '"', '\'', ','])
                && (v.is_empty() || v.starts_with(' ')) =>
        {
            let v = v.split(" #").next().unwrap_or("").trim();
            (Some(k), v)
        }
        _ => (None, ""),
    };
    Some(YamlLine {
        indent,
        item,
        key_col,
        key,
        value,
    })
}

/// For a YAML syntax error on (1-based) `line` of `text` whose key sits under a key that
/// already has an inline value: that key's field path and a hint.
fn misindented(text: &str, line: usize) -> Option<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let at = line.checked_sub(1)?;
    let here = yaml_line(lines.get(at)?)?;
    let child = here.key?;
    let parent = (0..at)
        .rev()
        .find(|&j| yaml_line(lines[j]).is_some_and(|l| l.key_col < here.indent))?;
    let p = yaml_line(lines[parent])?;
    let parent_key = p.key?;
    if p.value.is_empty() || p.value.starts_with(['|', '>', '&', '!']) {
        return None;
    }
    let path = yaml_path(&lines, parent)?;
    let hint = format!(
        "`{child}` is indented under `{parent_key}: {}`, which already has a value; if `{child}` is a field beside `{parent_key}`, indent it like `{parent_key}`",
        p.value
    );
    Some((path, hint))
}

/// The field path (`spec.rules[1].to`) of the key on line `at` of block YAML.
fn yaml_path(lines: &[&str], at: usize) -> Option<String> {
    let here = yaml_line(lines[at])?;
    let key = here.key?;
    if here.item {
        return Some(
            format!("{}.{key}", item_path(lines, at, &here)?)
                .trim_start_matches('.')
                .to_string(),
        );
    }
    // A sibling key inside a list item (`- from: ...` then `  to: ...`), or a nested one.
    for j in (0..at).rev() {
        let Some(l) = yaml_line(lines[j]) else {
            continue;
        };
        if l.item && l.key_col == here.key_col {
            return Some(
                format!("{}.{key}", item_path(lines, j, &l)?)
                    .trim_start_matches('.')
                    .to_string(),
            );
        }
        if l.key_col < here.key_col {
            return Some(format!("{}.{key}", yaml_path(lines, j)?));
        }
    }
    Some(key.to_string())
}

/// The path of the list item on line `at` (`spec.rules[1]`).
fn item_path(lines: &[&str], at: usize, item: &YamlLine<'_>) -> Option<String> {
    let mut index = 0;
    for j in (0..at).rev() {
        let Some(l) = yaml_line(lines[j]) else {
            continue;
        };
        if l.item && l.indent == item.indent {
            index += 1;
        } else if l.key_col <= item.indent {
            return Some(format!("{}[{index}]", yaml_path(lines, j)?));
        }
    }
    None
}

/// serde writes `unknown variant `STRIKT`, expected one of `UNSET`, `DISABLE``; we print the
/// offending value in double quotes and the choices bare.
fn tidy_serde_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut ticks = 0;
    for c in message.chars() {
        if c == '`' {
            if ticks < 2 {
                out.push('"');
            }
            ticks += 1;
        } else {
            out.push(c);
        }
    }
    out
}

/// Best-effort position (1-based line, column) of a dotted field path in YAML text: each key
/// is searched after the previous one; `[i]` picks the i-th `- ` item of a block list. Falls
/// back to the deepest part found, then to the first line of the document.
fn locate_in(text: &str, field: &str) -> (usize, usize) {
    let mut pos = first_content(text);
    for segment in field.split('.').filter(|s| !s.is_empty()) {
        let (key, indices) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if !key.is_empty() {
            match find_key(text, pos, key) {
                Some(p) => pos = p,
                None => break,
            }
        }
        for index in indices
            .split(['[', ']'])
            .filter_map(|s| s.parse::<usize>().ok())
        {
            match find_item(text, pos, index) {
                Some(p) => pos = p,
                None => return line_col(text, pos),
            }
        }
    }
    line_col(text, pos)
}

fn first_content(text: &str) -> usize {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if !t.is_empty() && !t.starts_with('#') && t != "---" {
            return offset + (line.len() - line.trim_start().len());
        }
        offset += line.len();
    }
    0
}

fn find_key(text: &str, from: usize, key: &str) -> Option<usize> {
    let pattern = format!("{key}:");
    let mut search = from;
    while let Some(i) = text[search..].find(&pattern) {
        let at = search + i;
        let line_start = text[..at].rfind('\n').map_or(0, |n| n + 1);
        let before = &text[line_start..at];
        let prev = before.chars().last();
        let in_comment = before.contains('#');
        let quoted = prev == Some('"') || prev == Some('\'');
        if !in_comment && !quoted && matches!(prev, None | Some(' ' | '\t' | '{' | ',' | '-')) {
            return Some(at);
        }
        search = at + pattern.len();
    }
    None
}

fn find_item(text: &str, from: usize, index: usize) -> Option<usize> {
    let line_end = text[from..].find('\n').map_or(text.len(), |n| from + n + 1);
    // `key: [a, b]` (flow style) on one line: the key's own position is the best we have.
    let inline = text[from..line_end]
        .split_once(':')
        .map(|(_, rest)| rest.trim())
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('#'));
    if inline {
        return None;
    }
    let mut offset = line_end;
    let mut item_indent = None;
    let mut count = 0;
    for line in text[line_end..].split_inclusive('\n') {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim_start();
        if t.starts_with("- ") || t.trim_end() == "-" {
            let expected = *item_indent.get_or_insert(indent);
            if indent == expected {
                if count == index {
                    return Some(offset + indent);
                }
                count += 1;
            } else if indent < expected {
                return None;
            }
        } else if !t.trim().is_empty() && !t.starts_with('#') {
            if let Some(expected) = item_indent {
                if indent < expected {
                    return None;
                }
            }
        }
        offset += line.len();
    }
    None
}

fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let before = &text[..pos.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |n| n + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_with_offsets() {
        let text = "a: 1\n---\nb: 2\n--- \nc: 3\n";
        let docs = split_documents(Arc::new("f.yaml".into()), text);
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[1].line_offset, 1);
        assert_eq!(docs[2].line_offset, 3);
        assert!(docs[2].text.contains("c: 3"));
    }

    #[test]
    fn locates_nested_fields_and_items() {
        let text = "kind: W\nspec:\n  ports:\n    - name: a\n      port: 1\n    - name: b\n      port: 70000\n";
        assert_eq!(locate_in(text, "spec.ports[1].port"), (7, 7));
        assert_eq!(locate_in(text, "spec.ports[0]"), (4, 5));
        assert_eq!(locate_in(text, "spec.nothing"), (2, 1));
        let flow_list = "spec:\n  subsets: [{ name: v1 }]\n  x:\n    - a\n";
        assert_eq!(locate_in(flow_list, "spec.subsets[0]"), (2, 3));
        let flow = "metadata: { name: age, namespace: default }\n";
        assert_eq!(locate_in(flow, "metadata.namespace"), (1, 24));
    }

    #[test]
    fn names_the_key_a_misindented_one_sits_under() {
        let text = "---\nkind: X\nspec:\n  action: ALLOW\n    selector:\n      a: b\n";
        let (field, hint) = misindented(text, 5).unwrap();
        assert_eq!(field, "spec.action");
        assert!(
            hint.starts_with("`selector` is indented under `action: ALLOW`"),
            "{hint}"
        );
        let lists = "spec:\n  rules:\n  - from: []\n  - to:\n    - operation:\n        paths: x\n          y: z\n";
        assert_eq!(
            misindented(lists, 7).unwrap().0,
            "spec.rules[1].to[0].operation.paths"
        );
        // a key without a value above: not this mistake
        assert_eq!(misindented("a:\n  b:\n   c: d: e\n", 3), None);
        assert_eq!(
            yaml_path(&["spec:", "  rules:", "    - from: x", "      to: y"], 3).unwrap(),
            "spec.rules[0].to"
        );
    }

    #[test]
    fn tidies_serde_messages() {
        assert_eq!(
            tidy_serde_message("unknown variant `STRIKT`, expected one of `UNSET`, `STRICT`"),
            "unknown variant \"STRIKT\", expected one of UNSET, STRICT"
        );
    }
}
