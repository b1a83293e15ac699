//! Direct methods a module answers: `sync` (a full pass now, trigger `ManualResync`), `status`
//! (the status document), `gc` (garbage collection, not in this version yet: a 501 that says
//! so). Anything else is a 404 naming the methods there are. Answers are `(status, JSON)`.

use serde_json::{json, Value};

use crate::node::Node;

pub const METHODS: [&str; 3] = ["sync", "status", "gc"];

pub async fn call(node: &Node, name: &str, _payload: &Value) -> (u16, Value) {
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
        "gc" => (
            501,
            json!({"message": "garbage collection is not available in this version yet"}),
        ),
        other => (
            404,
            json!({"message": format!("unknown method {other:?}; this module answers {}", METHODS.join(", "))}),
        ),
    }
}
