//! A parent's list of its children (`GET /acr/connected-registry/v1/registries`) and its table
//! for `connected-registry status --children`, in the columns of
//! `az acr connected-registry list -o table`.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Activation;

/// One child as the parent lists it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChildSummary {
    pub name: String,
    pub mode: String,
    pub activation: Activation,
    /// `Offline` when the child has not reported for a while; else what it reported.
    pub connection_state: String,
    pub version: String,
    pub login_server: Option<String>,
    pub last_sync_time: Option<DateTime<Utc>>,
    pub last_status_time: Option<DateTime<Utc>>,
}

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct ChildList {
    pub registries: Vec<ChildSummary>,
}

/// The table: NAME, MODE, CONNECTION STATE, PARENT, LOGIN SERVER, LAST SYNC (UTC), ACTIVATION.
pub fn render(children: &ChildList, parent: &str) -> String {
    let header = [
        "NAME",
        "MODE",
        "CONNECTION STATE",
        "PARENT",
        "LOGIN SERVER",
        "LAST SYNC (UTC)",
        "ACTIVATION",
    ];
    let rows: Vec<[String; 7]> = children
        .registries
        .iter()
        .map(|c| {
            [
                c.name.clone(),
                c.mode.clone(),
                c.connection_state.clone(),
                parent.to_owned(),
                c.login_server.clone().unwrap_or_else(|| "-".into()),
                c.last_sync_time.map_or_else(
                    || "-".into(),
                    |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                ),
                c.activation.status.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_az_columns() {
        let list = ChildList {
            registries: vec![ChildSummary {
                name: "factorya".into(),
                mode: "ReadOnly".into(),
                activation: Activation {
                    status: "Active".into(),
                    since: None,
                },
                connection_state: "Online".into(),
                version: "0.1.0".into(),
                login_server: Some("10.0.0.5:8080".into()),
                last_sync_time: None,
                last_status_time: None,
            }],
        };
        let table = render(&list, "root");
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("NAME      MODE      CONNECTION STATE  PARENT"),
            "{table}"
        );
        assert!(
            lines[1].starts_with("factorya  ReadOnly  Online            root"),
            "{table}"
        );
        assert!(lines[1].ends_with("Active"), "{table}");
    }
}
