//! Direct methods a module answers: `sync` (a full pass now, trigger `ManualResync`), `status`
//! (the status document), `gc` (garbage collection now; `{"dryRun": true}` only reports what
//! it would free). Anything else is a 404 naming the methods there are. Answers are
//! `(status, JSON)`.

use serde_json::{json, Value};

use crate::node::Node;

pub const METHODS: [&str; 3] = ["sync", "status", "gc"];

pub async fn call(node: &Node, name: &str, payload: &Value) -> (u16, Value) {
    match name {
        "sync" => {
            if node.request_resync().await {
                (200, json!({"result": "started", "trigger": "ManualResync"}))
            } else {
                (
                    400,
                    json!({"message": "this node has no parent to sync from"}),
                )
            }
        }
        "status" => (
            200,
            serde_json::to_value(node.status().snapshot()).unwrap_or_default(),
        ),
        "gc" => {
            let dry_run = payload
                .get("dryRun")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            match node.collector().run(dry_run).await {
                Ok(report) => (
                    200,
                    json!({
                        "dryRun": dry_run,
                        "freedBytes": report.freed_bytes(),
                        "blobs": report.blobs.len(),
                        "manifests": report.manifests.len(),
                        "blobLinks": report.blob_links,
                        "durationMs": report.elapsed.as_millis() as u64,
                    }),
                ),
                Err(e) => (
                    500,
                    json!({"message": format!("garbage collection failed: {e}")}),
                ),
            }
        }
        other => (
            404,
            json!({"message": format!("unknown method {other:?}; this module answers {}", METHODS.join(", "))}),
        ),
    }
}
