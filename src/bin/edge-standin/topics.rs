//! The MQTT topics a module publishes to edgeHub, taken apart (iot-edge-protocol.md §4): twin
//! GET and reported patches with their `$rid`, direct-method responses with their status, and
//! telemetry with its property bag (split on `&`, percent-decoded, a key without `=` has no
//! value; `+` is not a space, which is why `parse_qs`-style decoders are wrong here).

use serde_json::{Map, Value};

use crate::http::percent_decode;

/// What a published topic asks of edgeHub.
#[derive(Debug, PartialEq)]
pub enum Topic<'a> {
    TwinGet {
        rid: String,
    },
    ReportedPatch {
        rid: String,
    },
    MethodResponse {
        status: u16,
        rid: String,
    },
    Telemetry {
        device: &'a str,
        module: &'a str,
        bag: &'a str,
    },
    Other,
}

/// The raw `$rid` of a `?$rid=…&…` suffix (echoed back byte for byte).
fn rid(rest: &str) -> Option<String> {
    rest.strip_prefix('?')?
        .split('&')
        .find_map(|kv| kv.strip_prefix("$rid="))
        .map(str::to_owned)
}

pub fn classify(topic: &str) -> Topic<'_> {
    if let Some(rest) = topic.strip_prefix("$iothub/twin/GET/") {
        if let Some(rid) = rid(rest) {
            return Topic::TwinGet { rid };
        }
    } else if let Some(rest) = topic.strip_prefix("$iothub/twin/PATCH/properties/reported/") {
        if let Some(rid) = rid(rest) {
            return Topic::ReportedPatch { rid };
        }
    } else if let Some(rest) = topic.strip_prefix("$iothub/methods/res/") {
        if let Some((status, rest)) = rest.split_once('/') {
            if let (Ok(status), Some(rid)) = (status.parse(), rid(rest)) {
                return Topic::MethodResponse { status, rid };
            }
        }
    } else if topic.starts_with("devices/") {
        let parts: Vec<&str> = topic.splitn(6, '/').collect();
        if let ["devices", device, "modules", module, "messages", rest] = parts.as_slice() {
            let bag = if *rest == "events" {
                Some("")
            } else {
                rest.strip_prefix("events/")
            };
            if let Some(bag) = bag {
                return Topic::Telemetry {
                    device,
                    module,
                    bag: bag.trim_end_matches('/'),
                };
            }
        }
    }
    Topic::Other
}

/// The property bag as a JSON object: decoded key → decoded value, or `null` for a key with no
/// `=`. Empty pieces are skipped.
pub fn property_bag(bag: &str) -> Map<String, Value> {
    let mut props = Map::new();
    for piece in bag.split('&').filter(|p| !p.is_empty()) {
        match piece.split_once('=') {
            Some((k, v)) => props.insert(percent_decode(k), Value::String(percent_decode(v))),
            None => props.insert(percent_decode(piece), Value::Null),
        };
    }
    props
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies() {
        assert_eq!(
            classify("$iothub/twin/GET/?$rid=abc"),
            Topic::TwinGet { rid: "abc".into() }
        );
        assert_eq!(
            classify("$iothub/twin/PATCH/properties/reported/?$rid=7&x=1"),
            Topic::ReportedPatch { rid: "7".into() }
        );
        assert_eq!(
            classify("$iothub/methods/res/200/?$rid=9"),
            Topic::MethodResponse {
                status: 200,
                rid: "9".into()
            }
        );
        assert_eq!(
            classify("devices/d/modules/m/messages/events/%24.on=out&a=b"),
            Topic::Telemetry {
                device: "d",
                module: "m",
                bag: "%24.on=out&a=b"
            }
        );
        assert_eq!(
            classify("devices/d/modules/m/messages/events"),
            Topic::Telemetry {
                device: "d",
                module: "m",
                bag: ""
            }
        );
        assert_eq!(
            classify("devices/d/modules/m/messages/events/a=b/"),
            Topic::Telemetry {
                device: "d",
                module: "m",
                bag: "a=b"
            }
        );
        assert_eq!(
            classify("devices/d/modules/m/messages/eventsx"),
            Topic::Other
        );
        assert_eq!(classify("$iothub/twin/GET/"), Topic::Other);
        assert_eq!(classify("$iothub/methods/res/abc/?$rid=1"), Topic::Other);
    }

    #[test]
    fn parses_property_bags() {
        let props =
            property_bag("%24.on=telemetry&%24.ct=application%2Fjson&%24.ce=utf-8&flag&sp=a+b%20c");
        assert_eq!(
            Value::Object(props),
            json!({"$.on": "telemetry", "$.ct": "application/json", "$.ce": "utf-8",
                   "flag": null, "sp": "a+b c"})
        );
        assert!(property_bag("").is_empty());
    }
}
