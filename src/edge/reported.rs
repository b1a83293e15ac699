//! The module twin's reported properties carry the node's status (the one status model), shaped
//! for edgeHub's `ReportedPropertiesValidator`: no arrays (`statusDetails` becomes an object
//! keyed by a short id), no `null`s, keys without `.`/`$`/`#`/whitespace, strings of at most
//! 4096 bytes, integers within ±2^52, nesting of at most 10 levels, and the whole under 32 KB.
//! Only what changed since the hub last confirmed is sent ([`diff`]).

use serde_json::{Map, Value};

use super::twin::MAX_TWIN_BYTES;
use crate::status::Status;

const MAX_KEY_BYTES: usize = 1024;
const MAX_STRING_BYTES: usize = 4096;
const MAX_DEPTH: usize = 10;
const MAX_SAFE_INTEGER: i64 = 1 << 52;
/// Longest description a status detail carries in the twin (the status endpoint has it whole).
const DETAIL_DESCRIPTION_CHARS: usize = 512;

/// The reported-properties document for `status`.
pub fn document(status: &Status) -> Value {
    let mut value = serde_json::to_value(status).unwrap_or_else(|_| Value::Object(Map::new()));
    if let Some(map) = value.as_object_mut() {
        let details = map.remove("statusDetails");
        let mut keyed = Map::new();
        for detail in status.status_details.iter() {
            let id: String = detail
                .correlation_id
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(12)
                .collect();
            let mut entry = serde_json::to_value(detail).unwrap_or_default();
            if let Some(description) = entry.get_mut("description") {
                let text: String = detail
                    .description
                    .chars()
                    .take(DETAIL_DESCRIPTION_CHARS)
                    .collect();
                *description = Value::String(text);
            }
            keyed.insert(format!("d{id}"), entry);
        }
        drop(details);
        map.insert("statusDetails".into(), Value::Object(keyed));
    }
    clean(value)
}

/// Drop `null`s, turn any remaining array into an object keyed by position, and clip strings.
fn clean(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, clean(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Object(
            items
                .into_iter()
                .enumerate()
                .filter(|(_, v)| !v.is_null())
                .map(|(i, v)| (format!("i{i}"), clean(v)))
                .collect(),
        ),
        Value::String(s) if s.len() > MAX_STRING_BYTES => {
            let mut end = MAX_STRING_BYTES;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            Value::String(s[..end].to_owned())
        }
        other => other,
    }
}

/// The patch that turns `confirmed` (what the hub holds) into `wanted`: changed leaves, and
/// `null` for keys that are gone. `None` when nothing changed.
pub fn diff(confirmed: &Value, wanted: &Value) -> Option<Value> {
    match (confirmed, wanted) {
        (Value::Object(old), Value::Object(new)) => {
            let mut patch = Map::new();
            for (key, value) in new {
                match old.get(key) {
                    Some(previous) if previous == value => {}
                    Some(previous @ Value::Object(_)) if value.is_object() => {
                        if let Some(inner) = diff(previous, value) {
                            patch.insert(key.clone(), inner);
                        }
                    }
                    _ => {
                        patch.insert(key.clone(), value.clone());
                    }
                }
            }
            for key in old.keys() {
                if !new.contains_key(key) && !key.starts_with('$') {
                    patch.insert(key.clone(), Value::Null);
                }
            }
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        (old, new) if old == new => None,
        (_, new) => Some(new.clone()),
    }
}

/// edgeHub's rules for a reported patch; the first violation, named.
pub fn validate(patch: &Value) -> Result<(), String> {
    let size = patch.to_string().len();
    if size > MAX_TWIN_BYTES {
        return Err(format!("the patch is {size} bytes, over {MAX_TWIN_BYTES}"));
    }
    validate_value(patch, "", 0)
}

fn validate_value(value: &Value, path: &str, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("{path}: nested deeper than {MAX_DEPTH}"));
    }
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key.is_empty()
                    || key.len() > MAX_KEY_BYTES
                    || key.chars().any(|c| {
                        matches!(c, '.' | '$' | '#') || c.is_whitespace() || c.is_control()
                    })
                {
                    return Err(format!("{path}: key {key:?} is not allowed"));
                }
                validate_value(v, &format!("{path}/{key}"), depth + 1)?;
            }
            Ok(())
        }
        Value::Array(_) => Err(format!(
            "{path}: arrays are refused by older edgeHub versions"
        )),
        Value::String(s) if s.len() > MAX_STRING_BYTES => {
            Err(format!("{path}: a string of {} bytes", s.len()))
        }
        Value::Number(n) => match n.as_i64() {
            Some(i) if !(-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&i) => {
                Err(format!("{path}: {i} is outside ±2^52"))
            }
            None if n.as_u64().is_some() => Err(format!("{path}: {n} is outside ±2^52")),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_busy_status_is_a_valid_patch_without_arrays() {
        let status = crate::status::StatusHandle::new(Status::default());
        for i in 0..40 {
            status.add_detail(
                "Sync",
                "ManifestInvalid",
                format!("{i} {}", "x".repeat(10_000)),
            );
        }
        let doc = document(&status.snapshot());
        validate(&doc).unwrap();
        assert_eq!(doc["statusDetails"].as_object().unwrap().len(), 20);
        assert!(doc.to_string().len() < MAX_TWIN_BYTES);
    }

    #[test]
    fn diff_sends_only_what_changed_and_nulls_what_went() {
        let old = json!({"a": 1, "b": {"c": 2, "d": 3}, "gone": {"x": 1}, "$version": 3});
        let new = json!({"a": 1, "b": {"c": 2, "d": 4}, "new": "y"});
        assert_eq!(
            diff(&old, &new).unwrap(),
            json!({"b": {"d": 4}, "new": "y", "gone": null})
        );
        assert!(diff(&new, &new).is_none());
    }

    #[test]
    fn edgehub_rules_are_enforced() {
        assert!(validate(&json!({"a.b": 1})).is_err());
        assert!(validate(&json!({"a": [1]})).is_err());
        assert!(validate(&json!({"a": 1u64 << 53})).is_err());
        assert!(validate(&json!({"a": "x".repeat(4097)})).is_err());
        let mut deep = json!(1);
        for _ in 0..12 {
            deep = json!({ "k": deep });
        }
        assert!(validate(&deep).is_err());
        validate(&json!({"a": {"b": "c", "n": -5, "t": true}})).unwrap();
    }
}
