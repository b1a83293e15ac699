//! Helpers for the IoT Edge deployment manifest tests: run `scripts/check-manifests.sh` (the
//! real iotedgedev, SchemaStore's schema and the real binary) and read what a manifest says
//! about a module, with its `createOptions` chunks joined back into one JSON object, the way
//! edgeAgent reads them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run `scripts/check-manifests.sh` with `args` (manifest files; none = the whole check),
/// keeping the generated manifests in `out_dir` and checking twins with the binary under test.
pub fn run_check(args: &[&Path], out_dir: &Path) -> Output {
    let script = root().join("scripts/check-manifests.sh");
    Command::new("bash")
        .arg(&script)
        .args(args)
        .env("MANIFEST_OUT_DIR", out_dir)
        .env("CONNECTED_REGISTRY_BIN", super::BIN)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()))
}

/// The script's stdout and stderr, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// `$edgeAgent`'s desired properties.
pub fn agent(manifest: &Value) -> &Value {
    &manifest["modulesContent"]["$edgeAgent"]["properties.desired"]
}

/// A user module (`modules.NAME`) or a system module (`systemModules.NAME`).
pub fn module<'a>(manifest: &'a Value, name: &str) -> &'a Value {
    let agent = agent(manifest);
    let m = &agent["modules"][name];
    let m = if m.is_null() {
        &agent["systemModules"][name]
    } else {
        m
    };
    assert!(m.is_object(), "no module {name:?} in the manifest");
    m
}

/// A module's createOptions: every chunk a string, at most 512 characters, and together one
/// JSON object.
pub fn create_options(manifest: &Value, name: &str) -> Value {
    let settings = &module(manifest, name)["settings"];
    let mut joined = String::new();
    for i in 0..8 {
        let key = if i == 0 {
            "createOptions".to_owned()
        } else {
            format!("createOptions{i:02}")
        };
        match &settings[&key] {
            Value::Null => break,
            Value::String(chunk) => {
                assert!(
                    chunk.len() <= 512,
                    "{name}: {key} is {} characters",
                    chunk.len()
                );
                joined.push_str(chunk);
            }
            other => panic!("{name}: {key} must be a string in a final manifest, not {other}"),
        }
    }
    let value: Value = serde_json::from_str(&joined)
        .unwrap_or_else(|e| panic!("{name}: createOptions {joined:?} is not JSON: {e}"));
    assert!(value.is_object(), "{name}: createOptions is not an object");
    value
}

/// A module's environment variable.
pub fn env_value<'a>(manifest: &'a Value, module_name: &str, var: &str) -> &'a Value {
    &module(manifest, module_name)["env"][var]["value"]
}

/// The `connected-registry` module twin's desired properties (the node's configuration).
pub fn twin(manifest: &Value) -> &Value {
    &manifest["modulesContent"]["connected-registry"]["properties.desired"]
}

/// `$edgeHub`'s routes as strings (a route object's `route`).
pub fn routes(manifest: &Value) -> Vec<String> {
    manifest["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]
        .as_object()
        .expect("$edgeHub routes")
        .values()
        .map(|r| {
            r.as_str()
                .or_else(|| r["route"].as_str())
                .expect("a route is a string or {route}")
                .to_owned()
        })
        .collect()
}
