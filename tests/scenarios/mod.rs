//! The field, end to end (`cargo test --release --test integration scenarios::`): nodes in
//! containers of the module's own image on Docker networks the suite creates for the layers
//! (`cloud`, `it`, `ot`), links it cuts and restores, processes it kills, a disk it fills and
//! twin changes it makes, with real clients (the Docker engine, skopeo) and the IoT Edge stand-in. Each scenario prints
//! what it did and measured; the suite ends with a table (also in `target/scenarios-report.md`).
//! `SCENARIOS=factory,ship` runs only those; `FIELD_BIG_MIB` sizes the big layers (the factory's
//! throughput figure and the crash scenario's image: 64 MiB by default, 500 in `bench/field.sh`).

use crate::common;

mod crashes;
mod credentials;
mod disk;
mod endpoint;
mod factory;
mod field;
mod report;
mod ship;
mod steps;
mod twin;
mod window;

use report::{Report, Scenario};

const SCENARIOS: &[(&str, Scenario)] = &[
    ("factory", factory::connected_factory),
    ("window", window::shop_with_a_sync_window),
    ("ship", ship::ship_at_sea),
    ("crashes", crashes::crashes),
    ("disk", disk::full_disk),
    ("twin", twin::twin_driven_change),
    ("credentials", credentials::credentials),
];

#[test]
fn field_scenarios() {
    common::raise_open_files_limit();
    let selected: Option<Vec<String>> = std::env::var("SCENARIOS")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.split(',').map(|n| n.trim().to_owned()).collect());
    if let Some(names) = &selected {
        for name in names {
            assert!(
                SCENARIOS.iter().any(|(n, _)| n == name),
                "SCENARIOS names {name:?}; the scenarios are {:?}",
                SCENARIOS.iter().map(|(n, _)| *n).collect::<Vec<_>>()
            );
        }
    }
    let mut report = Report::default();
    for (name, scenario) in SCENARIOS {
        if selected
            .as_ref()
            .is_some_and(|names| !names.iter().any(|n| n == name))
        {
            report.skipped(name);
            continue;
        }
        report.run(name, *scenario);
    }
    report.finish();
}
