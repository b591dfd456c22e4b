//! Human output helpers and the indicatif progress bar.

use cairn::progress::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Mutex;

pub struct Bar(Mutex<Option<ProgressBar>>);

impl Bar {
    /// A bar when `enabled` (stderr is a terminal and output is for humans), else silence.
    pub fn boxed(enabled: bool) -> Box<dyn Progress> {
        if enabled {
            Box::new(Bar(Mutex::new(None)))
        } else {
            Box::new(cairn::progress::Silent)
        }
    }
}

impl Progress for Bar {
    fn begin(&self, label: &str, total: Option<u64>) {
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template("{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                    .unwrap(),
            ),
            None => ProgressBar::new_spinner()
                .with_style(ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}").unwrap()),
        };
        bar.set_message(label.to_string());
        *self.0.lock().unwrap() = Some(bar);
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &*self.0.lock().unwrap() {
            bar.inc(bytes);
        }
    }

    fn end(&self) {
        if let Some(bar) = self.0.lock().unwrap().take() {
            bar.finish_and_clear();
        }
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn print_json<T: serde::Serialize>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).expect("output serializes"));
}
