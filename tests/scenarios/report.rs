//! The suite's table: each scenario's result and the figures it measured, printed as the suite
//! ends and written to `target/scenarios-report.md`, which `scripts/test.sh` prints into the CI
//! log.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What one scenario measured, in the order it measured it.
#[derive(Default)]
pub struct Figures {
    items: Vec<(String, String)>,
}

impl Figures {
    /// Record (and print at once) one figure.
    pub fn note(&mut self, what: &str, value: impl std::fmt::Display) {
        let value = value.to_string();
        println!("    {what}: {value}");
        self.items.push((what.to_owned(), value));
    }

    /// Record a duration in seconds with millisecond precision.
    pub fn seconds(&mut self, what: &str, took: Duration) {
        self.note(what, format!("{:.3} s", took.as_secs_f64()));
    }
}

struct Row {
    name: &'static str,
    result: String,
    took: Duration,
    figures: Figures,
}

/// The rows so far.
#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
}

pub type Scenario = fn(&mut Figures);

impl Report {
    /// Run one scenario, catching its failure so the others still run.
    pub fn run(&mut self, name: &'static str, scenario: Scenario) {
        println!("=== scenario: {name}");
        let started = Instant::now();
        let mut figures = Figures::default();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| scenario(&mut figures)));
        let took = started.elapsed();
        let result = match outcome {
            Ok(()) => "passed".to_owned(),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into());
                format!("FAILED: {}", why.lines().next().unwrap_or_default())
            }
        };
        println!("=== {name}: {result} ({:.1} s)", took.as_secs_f64());
        self.rows.push(Row {
            name,
            result,
            took,
            figures,
        });
    }

    pub fn skipped(&mut self, name: &'static str) {
        self.rows.push(Row {
            name,
            result: "not selected (SCENARIOS)".into(),
            took: Duration::ZERO,
            figures: Figures::default(),
        });
    }

    /// The table as Markdown.
    pub fn table(&self) -> String {
        let mut out = String::from("| scenario | result | time | figures |\n|---|---|---|---|\n");
        for row in &self.rows {
            let figures: Vec<String> = row
                .figures
                .items
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            out.push_str(&format!(
                "| {} | {} | {:.1} s | {} |\n",
                row.name,
                row.result.replace('|', "/"),
                row.took.as_secs_f64(),
                figures.join("; ").replace('|', "/")
            ));
        }
        out
    }

    /// Print the table, write it to `target/scenarios-report.md`, and fail if a scenario did.
    pub fn finish(self) {
        let table = self.table();
        println!("\nField scenarios\n\n{table}");
        let path = report_path();
        std::fs::write(&path, format!("# Field scenarios\n\n{table}"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        println!("(written to {})", path.display());
        let failed: Vec<&str> = self
            .rows
            .iter()
            .filter(|r| r.result.starts_with("FAILED"))
            .map(|r| r.name)
            .collect();
        assert!(failed.is_empty(), "scenarios failed: {failed:?}\n{table}");
    }
}

fn report_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/scenarios-report.md")
}
