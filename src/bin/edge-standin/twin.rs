//! The module twin the stand-in holds, with IoT Hub's rules: desired and reported documents that
//! each carry a `$version`, JSON merge patches (RFC 7396: objects merge, anything else replaces,
//! `null` deletes), the patch that turns one desired document into another, and edgeHub's
//! validation of reported patches (`ReportedPropertiesValidator`), made stricter in one way: no
//! arrays at all, because older edgeHub versions refuse them.

use serde_json::{json, Map, Value};

/// Largest reported patch edgeHub accepts (bytes of the JSON document).
pub const MAX_PATCH_BYTES: usize = 32 * 1024;
/// Longest property name, in UTF-8 bytes.
pub const MAX_NAME_BYTES: usize = 1024;
/// Longest string value, in UTF-8 bytes.
pub const MAX_STRING_BYTES: usize = 4096;
/// Deepest nesting of objects below the patch's root object.
pub const MAX_DEPTH: usize = 10;
/// Integer range IoT Hub accepts: [-2^52, 2^52 - 1].
pub const MIN_INT: i64 = -(1 << 52);
pub const MAX_INT: i64 = (1 << 52) - 1;
/// At most this many violations are listed for one patch.
const MAX_ERRORS: usize = 20;

/// The desired and reported properties of one module twin.
#[derive(Debug, Clone)]
pub struct Twin {
    desired: Map<String, Value>,
    reported: Map<String, Value>,
    desired_version: u64,
    reported_version: u64,
}

impl Twin {
    /// A twin seeded with `desired` (any `$version`/`$metadata` in it is dropped); both versions
    /// start at 1, as in IoT Hub.
    pub fn new(desired: Map<String, Value>) -> Twin {
        Twin {
            desired: strip_meta(desired),
            reported: Map::new(),
            desired_version: 1,
            reported_version: 1,
        }
    }

    /// `{"desired":{…,"$version":N},"reported":{…,"$version":M}}`, the body of a twin GET.
    pub fn document(&self) -> Value {
        json!({"desired": self.desired_document(), "reported": self.reported_document()})
    }

    pub fn desired_document(&self) -> Value {
        with_version(&self.desired, self.desired_version)
    }

    pub fn reported_document(&self) -> Value {
        with_version(&self.reported, self.reported_version)
    }

    /// Merge `patch` into the desired properties and bump their version. Returns the patch as
    /// edgeHub sends it to the module (the patch plus `"$version":N`).
    pub fn patch_desired(&mut self, patch: Map<String, Value>) -> Value {
        let patch = strip_meta(patch);
        merge_into(&mut self.desired, &patch);
        self.desired_version += 1;
        with_version(&patch, self.desired_version)
    }

    /// Replace the desired properties. When anything changed, bump the version and return the
    /// patch that turns the old document into the new one (changed keys, `null` for removed
    /// ones, plus `"$version"`); `None` when nothing changed.
    pub fn replace_desired(&mut self, desired: Map<String, Value>) -> Option<Value> {
        let desired = strip_meta(desired);
        let patch = diff(&self.desired, &desired);
        if patch.is_empty() {
            return None;
        }
        self.desired = desired;
        self.desired_version += 1;
        Some(with_version(&patch, self.desired_version))
    }

    /// Apply a reported patch that passed [`validate_reported`] and bump the reported version.
    pub fn patch_reported(&mut self, patch: &Map<String, Value>) {
        merge_into(&mut self.reported, patch);
        self.reported_version += 1;
    }
}

fn with_version(map: &Map<String, Value>, version: u64) -> Value {
    let mut doc = map.clone();
    doc.insert("$version".into(), json!(version));
    Value::Object(doc)
}

/// Drop the metadata keys a caller may have copied from a twin document.
fn strip_meta(mut map: Map<String, Value>) -> Map<String, Value> {
    map.remove("$version");
    map.remove("$metadata");
    map
}

/// RFC 7396 JSON merge patch of `patch` into `target`.
pub fn merge_into(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner) => {
                let slot = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(existing) = slot {
                    merge_into(existing, inner);
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

/// The merge patch that turns `old` into `new`: objects present in both are diffed
/// recursively, other changed values are given whole, removed keys are `null`.
pub fn diff(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut patch = Map::new();
    for key in old.keys() {
        if !new.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    for (key, value) in new {
        match (old.get(key), value) {
            (Some(a), b) if a == b => {}
            (Some(Value::Object(a)), Value::Object(b)) => {
                patch.insert(key.clone(), Value::Object(diff(a, b)));
            }
            // A `null` cannot be stored (it would mean "delete"); an object replacing a
            // non-object must be sent whole, which merge-patch does.
            _ => {
                patch.insert(key.clone(), value.clone());
            }
        }
    }
    patch
}

/// Parse and validate a reported patch the way edgeHub does. Returns the patch object, or
/// every rule it breaks (at most [`MAX_ERRORS`]).
pub fn validate_reported(raw: &[u8]) -> Result<Map<String, Value>, Vec<String>> {
    let value: Value = match serde_json::from_slice(raw) {
        Ok(v) => v,
        Err(e) => return Err(vec![format!("reported patch is not JSON: {e}")]),
    };
    let Value::Object(patch) = value else {
        return Err(vec!["reported patch must be a JSON object".into()]);
    };
    let mut errors = Vec::new();
    if raw.len() > MAX_PATCH_BYTES {
        errors.push(format!(
            "reported patch is {} bytes, over the {MAX_PATCH_BYTES}-byte (32 KB) limit",
            raw.len()
        ));
    }
    check_object(&patch, 1, "", &mut errors);
    errors.truncate(MAX_ERRORS);
    if errors.is_empty() {
        Ok(patch)
    } else {
        Err(errors)
    }
}

fn check_object(object: &Map<String, Value>, depth: usize, path: &str, errors: &mut Vec<String>) {
    for (name, value) in object {
        let here = format!("{path}/{name}");
        check_name(name, &here, errors);
        check_value(value, depth, &here, errors);
        if errors.len() >= MAX_ERRORS {
            return;
        }
    }
}

fn check_name(name: &str, path: &str, errors: &mut Vec<String>) {
    if name.len() > MAX_NAME_BYTES {
        errors.push(format!(
            "property name at {:?} is {} bytes, over the {MAX_NAME_BYTES}-byte limit",
            truncate(path),
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '.' | '$' | '#') || c.is_whitespace() || c.is_control())
    {
        errors.push(format!(
            "property name {:?} contains the invalid character {c:?}",
            truncate(path)
        ));
    }
}

fn check_value(value: &Value, depth: usize, path: &str, errors: &mut Vec<String>) {
    match value {
        Value::Null | Value::Bool(_) => {}
        Value::Number(n) => {
            let out_of_range = if let Some(i) = n.as_i64() {
                !(MIN_INT..=MAX_INT).contains(&i)
            } else {
                // A u64 above i64::MAX is an integer far outside the range; floats are fine.
                n.as_u64().is_some()
            };
            if out_of_range {
                errors.push(format!(
                    "integer {n} at {:?} is outside [{MIN_INT}, {MAX_INT}] (±2^52)",
                    truncate(path)
                ));
            }
        }
        Value::String(s) => {
            if s.len() > MAX_STRING_BYTES {
                errors.push(format!(
                    "string at {:?} is {} bytes, over the {MAX_STRING_BYTES}-byte limit",
                    truncate(path),
                    s.len()
                ));
            }
        }
        Value::Array(items) => {
            if items.iter().any(Value::is_null) {
                errors.push(format!("array at {:?} holds a null", truncate(path)));
            }
            errors.push(format!(
                "array at {:?}: reported properties must not use arrays (older edgeHub versions refuse them)",
                truncate(path)
            ));
        }
        Value::Object(inner) => {
            if depth > MAX_DEPTH {
                errors.push(format!(
                    "object at {:?} nests deeper than {MAX_DEPTH} levels",
                    truncate(path)
                ));
            } else {
                check_object(inner, depth + 1, path, errors);
            }
        }
    }
}

/// Keep error messages short when a name is huge.
fn truncate(path: &str) -> String {
    if path.len() <= 120 {
        return path.to_owned();
    }
    let mut end = 120;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn merge_patch_follows_rfc7396() {
        let mut t = obj(json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}));
        merge_into(
            &mut t,
            &obj(json!({"a": null, "b": {"c": null, "x": 1}, "e": 5})),
        );
        assert_eq!(Value::Object(t), json!({"b": {"d": 3, "x": 1}, "e": 5}));
    }

    #[test]
    fn diff_turns_old_into_new() {
        let old = obj(json!({"a": 1, "b": {"c": 2, "d": 3}, "gone": true, "same": "x"}));
        let new = obj(json!({"a": 2, "b": {"c": 2, "d": 4}, "same": "x", "n": {"m": 1}}));
        let patch = diff(&old, &new);
        assert_eq!(
            Value::Object(patch.clone()),
            json!({"a": 2, "b": {"d": 4}, "gone": null, "n": {"m": 1}})
        );
        let mut applied = old.clone();
        merge_into(&mut applied, &patch);
        assert_eq!(applied, new);
    }

    #[test]
    fn versions_bump() {
        let mut t = Twin::new(obj(json!({"a": 1, "$version": 7})));
        assert_eq!(t.desired_document(), json!({"a": 1, "$version": 1}));
        let p = t.patch_desired(obj(json!({"b": 2})));
        assert_eq!(p, json!({"b": 2, "$version": 2}));
        assert!(t.replace_desired(obj(json!({"a": 1, "b": 2}))).is_none());
        let p = t.replace_desired(obj(json!({"b": 3}))).unwrap();
        assert_eq!(p, json!({"a": null, "b": 3, "$version": 3}));
        t.patch_reported(&obj(json!({"r": 1})));
        assert_eq!(
            t.document(),
            json!({"desired": {"b": 3, "$version": 3}, "reported": {"r": 1, "$version": 2}})
        );
    }

    #[test]
    fn reported_validation() {
        assert!(validate_reported(br#"{"ok": {"n": 4503599627370495, "f": 1.5e300}}"#).is_ok());
        for bad in [
            r#"{"a.b": 1}"#,
            r#"{"$version": 1}"#,
            r##"{"a#": 1}"##,
            r#"{"a b": 1}"#,
            "{\"a\\u0001\": 1}",
            r#"{"n": 4503599627370496}"#,
            r#"{"n": -4503599627370497}"#,
            r#"{"n": 18446744073709551615}"#,
            r#"{"a": [1, 2]}"#,
            r#"{"a": [null]}"#,
            r#"[1]"#,
            r#"not json"#,
        ] {
            assert!(validate_reported(bad.as_bytes()).is_err(), "{bad}");
        }
        let long_string = json!({"s": "x".repeat(4097)}).to_string();
        assert!(validate_reported(long_string.as_bytes()).is_err());
        let long_name = json!({"x".repeat(1025): 1}).to_string();
        assert!(validate_reported(long_name.as_bytes()).is_err());
        let big = json!({"a": "x".repeat(4000), "b": "x".repeat(4000), "c": "x".repeat(4000),
            "d": "x".repeat(4000), "e": "x".repeat(4000), "f": "x".repeat(4000),
            "g": "x".repeat(4000), "h": "x".repeat(4000), "i": "x".repeat(1000)})
        .to_string();
        assert!(validate_reported(big.as_bytes()).is_err());
        // Ten levels of objects below the root pass, eleven do not.
        let nest = |n: usize| {
            let mut v = json!(1);
            for _ in 0..n {
                v = json!({ "k": v });
            }
            v.to_string()
        };
        assert!(validate_reported(nest(11).as_bytes()).is_ok());
        assert!(validate_reported(nest(12).as_bytes()).is_err());
    }
}
