//! The YAML plumbing of configs and grid files: parsing, dotted keys and `--set`
//! overrides, and the errors that name the key, the file and the line ([`KeyError`]).
//! Kept apart from `config.rs` (whose code keys the pre-trained backbone,
//! `src/pretrain/cache.rs`): what is here does shape the values a run reads (parsing,
//! `--set`, the default sampler kind), but the backbone's key hashes those values
//! themselves, so a change here that moved one would change the key anyway; the rest is
//! how a key is found and how an error is worded.

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

/// Parses YAML text into a generic value; errors name `origin` (a file), with line and column.
pub fn parse_yaml(text: &str, origin: &str) -> Result<Value> {
    let v: Value = serde_saphyr::from_str(text).map_err(|e| anyhow!("{origin}: {}", yaml_message(&e.to_string(), origin)))?;
    Ok(if v.is_null() { Value::Object(Default::default()) } else { v })
}

/// A YAML parser's message without its own "error: " and with the file's name for `<input>`.
fn yaml_message(msg: &str, origin: &str) -> String {
    msg.strip_prefix("error: ").unwrap_or(msg).replace("<input>", origin)
}

/// Sets a dotted key (`sampler.fg_fraction`) in a value, creating maps on the way.
pub fn set_dotted(root: &mut Value, key: &str, value: Value) -> Result<()> {
    let mut cur = root;
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("bad key {key:?}");
    }
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            if cur.is_null() {
                *cur = Value::Object(Default::default());
            } else {
                bail!("key {key:?}: {} is not a map", parts[..i].join("."));
            }
        }
        let map = cur.as_object_mut().expect("checked");
        if i + 1 == parts.len() {
            map.insert(p.to_string(), value);
            return Ok(());
        }
        cur = map.entry(p.to_string()).or_insert(Value::Null);
    }
    unreachable!("loop returns on the last part")
}

/// Parses `key=value` (the value as YAML: `0.5`, `null`, `[1, 2]`, `fast`).
pub fn parse_override(s: &str) -> Result<(String, Value)> {
    let (k, v) = s.split_once('=').ok_or_else(|| anyhow!("--set {s:?}: expected key=value"))?;
    // a value, not a document: `key=`, `key=null` and `key=~` are null (parse_yaml would make them {})
    let value: Value = if v.trim().is_empty() { Value::Null } else { serde_saphyr::from_str(v).map_err(|e| anyhow!("--set {k}: {}", yaml_message(&e.to_string(), "the value")))? };
    Ok((k.trim().to_string(), value))
}

/// `sampler.kind` defaults to `fixed_ratio` when a `sampler` section names no kind.
pub fn default_sampler_kind(v: &mut Value) {
    if let Some(s) = v.get_mut("sampler").and_then(Value::as_object_mut) {
        s.entry("kind").or_insert_with(|| Value::String("fixed_ratio".into()));
    }
}

/// A config key that does not convert: an unknown key, a missing one, or a value of the wrong
/// type, named in full (`sampler.nms_thresh`) and, once [`with_line`] found it in the file, with
/// its line.
#[derive(Debug)]
pub struct KeyError {
    pub origin: String,
    pub key: String,
    pub msg: String,
    pub line: Option<usize>,
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{} (line {l}): {}", self.origin, self.msg),
            None => write!(f, "{}: {}", self.origin, self.msg),
        }
    }
}

impl std::error::Error for KeyError {}

/// A serde type as a reader says it: `usize` is a whole number ≥ 0, a sequence a list.
fn plain_type(t: &str) -> String {
    let t = t.trim();
    let plain = match t {
        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number ≥ 0",
        "i64" | "i32" | "isize" => "a whole number",
        "f64" | "f32" => "a number",
        "a boolean" => "true or false",
        "a sequence" => "a list",
        "a map" => "a section of key: value lines",
        "a string" => "text",
        _ if t.starts_with("struct ") || t.starts_with("a map") => "a section of key: value lines",
        _ if t.starts_with("internally tagged enum") => "a section with its kind",
        _ => return t.replace('`', ""),
    };
    plain.to_string()
}

/// serde's words for a value (`string "two"`, `integer `3``) as the YAML wrote it.
fn plain_value(v: &str) -> String {
    let v = v.trim();
    match v {
        "sequence" => return "a list".into(),
        "map" => return "a section".into(),
        "unit" => return "nothing".into(),
        _ => {}
    }
    for p in ["string ", "integer ", "floating point ", "boolean ", "unsigned integer "] {
        if let Some(rest) = v.strip_prefix(p) {
            return rest.trim_matches('`').to_string();
        }
    }
    v.replace('`', "")
}

/// The message of a key that does not convert, in the reader's words, the key dotted in full.
fn key_error(origin: &str, path: &str, msg: &str) -> KeyError {
    let path = if path == "." { "" } else { path };
    // serde_path_to_error's path ends at the unknown key, but for one inside an internally
    // tagged enum (`sampler`), whose path stops at the enum
    let join = |k: &str| if path.is_empty() || path == k || path.ends_with(&format!(".{k}")) { if path.is_empty() { k.to_string() } else { path.to_string() } } else { format!("{path}.{k}") };
    let tick = |s: &str| s.split('`').nth(1).unwrap_or("").to_string();
    let (key, text) = if let Some(rest) = msg.strip_prefix("unknown field ") {
        let k = join(&tick(rest));
        let expected = rest.split_once(", expected ").map(|(_, e)| e.replace('`', "")).unwrap_or_default();
        let hint = if expected.is_empty() { String::new() } else { format!(" (expected {expected})") };
        (k.clone(), format!("unknown key {k}{hint}"))
    } else if let Some(rest) = msg.strip_prefix("missing field ") {
        let k = join(&tick(rest));
        (k.clone(), format!("missing key {k}"))
    } else if let Some(rest) = msg.strip_prefix("unknown variant ") {
        let expected = rest.split_once(", expected ").map(|(_, e)| e.replace('`', "")).unwrap_or_default();
        (path.to_string(), format!("key {path} = {}: expected {expected}", tick(rest)))
    } else if let Some((got, want)) = msg.strip_prefix("invalid type: ").or_else(|| msg.strip_prefix("invalid value: ")).and_then(|r| r.split_once(", expected ")) {
        // inside the sampler's section (a tagged enum) the path stops at the section
        let named = if path == "sampler" && !want.contains("tagged") { "of section sampler".to_string() } else { path.to_string() };
        (path.to_string(), format!("key {named} = {}: expected {}", plain_value(got), plain_type(want)))
    } else {
        (path.to_string(), format!("key {path}: {msg}"))
    };
    KeyError { origin: origin.to_string(), key, msg: text, line: None }
}

/// Converts a value into a typed config; unknown keys and bad types name the dotted key
/// ([`KeyError`]).
pub fn from_value<T: serde::de::DeserializeOwned>(v: Value, origin: &str) -> Result<T> {
    // serde's path stops at an internally tagged enum (`sampler`): its section is read again
    // as its kind's own struct, whose path goes on to the key
    let sampler = v.get("sampler").cloned();
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = (path == "sampler").then(|| sampler.as_ref().and_then(crate::sampler::section_error)).flatten();
        match inner {
            Some((p, msg)) => key_error(origin, &if p.is_empty() || p == "." { "sampler".to_string() } else { format!("sampler.{p}") }, &msg).into(),
            None => key_error(origin, &path, &e.into_inner().to_string()).into(),
        }
    })
}

impl KeyError {
    /// Whether it is a failed check ([`check_error`]), not a key that did not convert.
    pub fn is_check(&self) -> bool {
        self.msg.starts_with(CHECK)
    }

    /// The keys it is about: a check's message can name several (`sampler.batch_size = 2 is
    /// below train.images_per_batch = 4`), each written `key = value`; else its one key.
    pub fn keys(&self) -> Vec<String> {
        if !self.is_check() {
            return vec![self.key.clone()];
        }
        let is_key = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '[' | ']');
        let mut keys: Vec<String> = Vec::new();
        for (i, _) in self.msg.match_indices(" = ") {
            let before = &self.msg[..i];
            let start = before.rfind(|c: char| !is_key(c)).map_or(0, |j| j + 1);
            let k = &before[start..];
            if k.starts_with(|c: char| c.is_ascii_lowercase()) && !keys.iter().any(|x| x == k) {
                keys.push(k.to_string());
            }
        }
        if keys.is_empty() {
            keys.push(self.key.clone());
        }
        keys
    }
}

/// What a failed check's message opens with.
const CHECK: &str = "invalid config: ";

/// A failed check ([`crate::config::TrainConfig::check`]) whose message opens with the key it
/// is about (`sampler.fg_fraction = 2 is outside [0, 1]`) as a [`KeyError`] of that key, so
/// that it is blamed where one of its keys was written (a `--set`, an axis, the file's line;
/// [`KeyError::keys`]); other errors as they are.
pub fn check_error(e: anyhow::Error, origin: &str) -> anyhow::Error {
    let msg = format!("{e:#}");
    let key: String = msg.chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '[' | ']')).collect();
    if key.is_empty() || !msg[key.len()..].starts_with(" = ") {
        return e.context(format!("{origin}: invalid config"));
    }
    KeyError { origin: origin.to_string(), key, msg: format!("{CHECK}{msg}"), line: None }.into()
}

/// The 1-based line of dotted `key` in YAML `text`, looked for under each of `scopes` in turn
/// (e.g. `[["arms", "ohem"], ["base"]]`; `[[]]` for the top level): the scope's first part at
/// column 0, and each next part inside the block of the one before (the lines indented deeper,
/// or the rest of its line in flow style `a: {b: 1}`), as `part:`; comments left out. The first
/// scope that holds the whole key gives its line; else (a missing key) the deepest part found
/// under a scope that is there.
pub fn locate_key(text: &str, scopes: &[&[&str]], key: &str) -> Option<usize> {
    let (whole, fallback) = locate(text, scopes, key);
    whole.or(fallback)
}

/// [`locate_key`]'s two answers: the line of the first scope that holds the whole key, and the
/// line of the deepest part found under a scope that is there.
fn locate(text: &str, scopes: &[&[&str]], key: &str) -> (Option<usize>, Option<usize>) {
    // each line without its comment (`#` at the start or after white space)
    let lines: Vec<&str> = text
        .lines()
        .map(|l| {
            let cut = l.char_indices().find(|&(i, c)| c == '#' && (i == 0 || l[..i].ends_with([' ', '\t']))).map_or(l.len(), |(i, _)| i);
            &l[..cut]
        })
        .collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let names = |l: &str, part: &str| l.match_indices(&format!("{part}:")).any(|(i, _)| i == 0 || matches!(l.as_bytes()[i - 1], b' ' | b'{' | b',' | b'\t' | b'-'));
    // how many parts were found in their blocks, and the line of the last
    let find = |parts: &[&str]| -> (usize, Option<usize>) {
        let (mut lo, mut hi, mut top) = (0, lines.len(), true);
        let (mut depth, mut line) = (0, None);
        for part in parts {
            let Some(n) = (lo..hi).find(|&n| names(lines[n], part) && (!top || indent(lines[n]) == 0)) else { break };
            (depth, line, top) = (depth + 1, Some(n + 1), false);
            if lines[n].contains('{') {
                (lo, hi) = (n, n + 1);
            } else {
                let d = indent(lines[n]);
                lo = n + 1;
                hi = (n + 1..hi).find(|&m| !lines[m].trim().is_empty() && indent(lines[m]) <= d).unwrap_or(hi);
            }
        }
        (depth, line)
    };
    let mut fallback = None;
    for scope in scopes {
        let parts: Vec<&str> = scope.iter().copied().chain(key.split('.').filter(|p| !p.is_empty())).collect();
        let (depth, line) = find(&parts);
        if depth == parts.len() {
            return (line, fallback);
        }
        if depth >= scope.len().max(1) && fallback.is_none() {
            fallback = line;
        }
    }
    (None, fallback)
}

/// Whether `scope` of YAML `text` holds the whole dotted `key` (not only a section above it).
pub fn holds_key(text: &str, scope: &[&str], key: &str) -> bool {
    locate(text, &[scope], key).0.is_some()
}

/// `e` with its key's line in `text` ([`locate_key`] under `scopes`) when it is a [`KeyError`].
pub fn with_line(e: anyhow::Error, text: &str, scopes: &[&[&str]]) -> anyhow::Error {
    match e.downcast::<KeyError>() {
        Ok(mut k) => {
            k.line = locate_key(text, scopes, &k.key);
            k.into()
        }
        Err(e) => e,
    }
}

/// Reading a config file lives here, with the rest of the YAML plumbing, outside the sources that
/// key the pre-trained backbone ([`crate::pretrain`]): how an error is worded or blamed does not
/// change the weights.
impl super::TrainConfig {
    /// Reads a config file, applies `key=value` overrides, converts and checks it.
    pub fn load(path: &std::path::Path, overrides: &[String]) -> Result<Self> {
        let text = crate::read_text(path, "a config file, YAML")?;
        let origin = path.display().to_string();
        let mut v = parse_yaml(&text, &origin)?;
        for o in overrides {
            let (k, val) = parse_override(o)?;
            set_dotted(&mut v, &k, val)?;
        }
        let set: Vec<String> = overrides.iter().filter_map(|o| o.split_once('=').map(|(k, _)| k.trim().to_string())).collect();
        // a key an override set is the override's fault, else the file's, at its line
        let blame = |e: anyhow::Error| match e.downcast::<KeyError>() {
            Ok(mut k) => {
                // a check about several keys is the override's when it set any of them
                let keys = k.keys();
                if let Some((key, o)) = keys.iter().find_map(|key| set.iter().find(|o| key == *o || key.starts_with(&format!("{o}."))).map(|o| (key.clone(), o))) {
                    k.key = key;
                    k.origin = format!("--set {o}");
                } else {
                    k.line = locate_key(&text, &[&[]], &k.key);
                }
                k.into()
            }
            Err(e) => e,
        };
        let cfg = Self::from_value(v, &origin).map_err(blame)?;
        cfg.check().map_err(|e| blame(check_error(e, &origin)))?;
        Ok(cfg)
    }

}
