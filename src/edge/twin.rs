//! The module twin's desired properties are the node's configuration (the schema of the
//! configuration file, as JSON). This keeps the twin's copy of them: the full document from a
//! twin `GET`, then JSON merge patches (objects merge, arrays are replaced, `null` deletes) in
//! `$version` order — a patch that is not newer is ignored, one that skips a version asks for
//! the whole document again. `$version` and `$metadata` are the twin's bookkeeping and never
//! reach the configuration.

use serde_json::{Map, Value};

use crate::config::Config;

/// IoT Hub's limit on the desired properties (and on the reported ones).
pub const MAX_TWIN_BYTES: usize = 32 * 1024;

/// What [`Desired::patch`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum PatchOutcome {
    Applied,
    /// Not newer than what is held: ignored.
    Stale,
    /// A version was skipped: the whole document must be fetched.
    Gap,
}

#[derive(Debug, Clone, Default)]
pub struct Desired {
    document: Map<String, Value>,
    version: Option<i64>,
}

impl Desired {
    /// The desired properties of a full twin document.
    pub fn from_full(desired: &Value) -> Desired {
        let version = desired.get("$version").and_then(Value::as_i64);
        let document = match strip_bookkeeping(desired) {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Desired { document, version }
    }

    pub fn version(&self) -> Option<i64> {
        self.version
    }

    /// Apply a desired-properties patch that arrived with `version`.
    pub fn patch(&mut self, patch: &Value, version: Option<i64>) -> PatchOutcome {
        if let (Some(have), Some(new)) = (self.version, version) {
            if new <= have {
                return PatchOutcome::Stale;
            }
            if new > have + 1 {
                return PatchOutcome::Gap;
            }
        }
        let mut document = Value::Object(std::mem::take(&mut self.document));
        merge_patch(&mut document, &strip_bookkeeping(patch));
        self.document = match document {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        self.version = version.or(self.version);
        PatchOutcome::Applied
    }

    /// The configuration these properties hold: `None` when they hold none at all (a twin
    /// nobody has configured yet), an explanation when they are not a valid configuration.
    pub fn config(&self) -> Result<Option<(Config, Value)>, String> {
        if self.document.is_empty() {
            return Ok(None);
        }
        let value = Value::Object(self.document.clone());
        let size = value.to_string().len();
        if size > MAX_TWIN_BYTES {
            return Err(format!(
                "the desired properties are {size} bytes, over the module twin's {MAX_TWIN_BYTES}-byte \
                 limit, so IoT Hub cannot hold them whole; move clientTokens to a configuration file \
                 mounted into the module, or use fewer, broader repository patterns"
            ));
        }
        let config = crate::config::deserialize_naming_the_field(value.clone())
            .map_err(|e| format!("the desired properties are not a valid configuration: {e}"))?;
        Ok(Some((config, value)))
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let map = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The document without the twin's own keys (`$version`, `$metadata`, anything starting with
/// `$`), at every level.
pub fn strip_bookkeeping(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_bookkeeping(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patches_merge_in_version_order_and_bookkeeping_is_dropped() {
        let mut d = Desired::from_full(&json!({
            "name": "factorya",
            "parent": {"endpoint": "http://p:1", "sync": {"repositories": ["a", "b"]}},
            "$version": 4,
            "$metadata": {"$lastUpdated": "x"}
        }));
        assert_eq!(d.version(), Some(4));
        assert_eq!(
            d.patch(&json!({"name": "old"}), Some(4)),
            PatchOutcome::Stale
        );
        assert_eq!(d.patch(&json!({"name": "x"}), Some(7)), PatchOutcome::Gap);
        let patch = json!({"parent": {"sync": {"repositories": ["c"]}}, "logging": {"level": "Debug"}, "$version": 5});
        assert_eq!(d.patch(&patch, Some(5)), PatchOutcome::Applied);
        let (config, _) = d.config().unwrap().unwrap();
        let parent = config.parent.unwrap();
        assert_eq!(parent.sync.repositories, vec!["c"]);
        assert_eq!(parent.endpoint, "http://p:1");
        assert_eq!(config.logging.unwrap().level, "Debug");
        assert_eq!(
            d.patch(&json!({"logging": null}), Some(6)),
            PatchOutcome::Applied
        );
        assert!(d.config().unwrap().unwrap().0.logging.is_none());
    }

    #[test]
    fn an_empty_twin_holds_no_configuration_and_a_bad_one_is_explained() {
        assert!(Desired::from_full(&json!({"$version": 1}))
            .config()
            .unwrap()
            .is_none());
        let e = Desired::from_full(&json!({"lisen": "x"}))
            .config()
            .unwrap_err();
        assert!(e.contains("lisen"), "{e}");
        let big: Vec<String> = (0..4000).map(|i| format!("repository-{i}")).collect();
        let e = Desired::from_full(
            &json!({"parent": {"endpoint": "http://p", "sync": {"repositories": big}}}),
        )
        .config()
        .unwrap_err();
        assert!(e.contains("32768-byte"), "{e}");
    }
}
