//! Prometheus textfile-collector metrics, written by `run`, `check`, `backup` and `drill`:
//! label escaping and a small builder that emits each family's HELP and TYPE once.

/// A Prometheus label value: backslash, double quote and newline escaped.
pub(super) fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Prometheus text exposition, gauges only.
#[derive(Default)]
pub(super) struct Metrics {
    pub text: String,
}

impl Metrics {
    /// One metric family: HELP, TYPE, then each (labels, value) sample.
    pub fn family(&mut self, name: &str, help: &str, samples: Vec<(String, f64)>) {
        self.text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, value) in samples {
            self.text.push_str(&format!("{name}{labels} {value}\n"));
        }
    }
}
