//! Spinners and progress bars on stderr while a scenario runs. indicatif hides them when
//! stderr is not a terminal, so scripted runs and tests see only the final output.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// How often a spinner redraws.
const TICK: Duration = Duration::from_millis(100);

/// A spinner with a live count: `⠋ 64 writers: 12,345 events [00:00:02]`.
pub struct CountSpinner {
    bar: ProgressBar,
    updater: tokio::task::JoinHandle<()>,
}

impl CountSpinner {
    /// Starts a spinner labelled `label` that shows `count` (in `unit`s) as it grows.
    pub fn start(label: impl Into<String>, unit: &'static str, count: Arc<AtomicU64>) -> Self {
        let bar = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(TICK);
        let label = label.into();
        bar.set_message(label.clone());
        let updater = {
            let bar = bar.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TICK);
                loop {
                    tick.tick().await;
                    let n = count.load(Ordering::Relaxed);
                    bar.set_message(format!("{label}: {} {unit}", group_digits(n as f64)));
                }
            })
        };
        CountSpinner { bar, updater }
    }

    /// Removes the spinner.
    pub fn finish(self) {
        self.updater.abort();
        self.bar.finish_and_clear();
    }
}

/// A progress bar with a known total: `seeding  [=====>    ] 412,000/1,000,000 events
/// 81,234/s ETA 7s`.
pub struct CountBar {
    bar: ProgressBar,
    updater: tokio::task::JoinHandle<()>,
}

impl CountBar {
    /// Starts a bar labelled `label` that shows `count` of `total` (in `unit`s).
    pub fn start(
        label: impl Into<String>,
        unit: &'static str,
        total: u64,
        count: Arc<AtomicU64>,
    ) -> Self {
        let template = format!(
            "{{msg}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} {{per_sec}} ETA {{eta}}"
        );
        let bar = ProgressBar::new(total).with_style(
            ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(label.into());
        let updater = {
            let bar = bar.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TICK);
                loop {
                    tick.tick().await;
                    bar.set_position(count.load(Ordering::Relaxed));
                }
            })
        };
        CountBar { bar, updater }
    }

    /// Removes the bar.
    pub fn finish(self) {
        self.updater.abort();
        self.bar.finish_and_clear();
    }
}

/// `1234567.8` → `1,234,568`.
pub fn group_digits(value: f64) -> String {
    let rounded = value.round();
    let negative = rounded < 0.0;
    let digits = format!("{}", rounded.abs() as u64);
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if negative {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_grouped_in_thousands() {
        assert_eq!(group_digits(0.0), "0");
        assert_eq!(group_digits(999.4), "999");
        assert_eq!(group_digits(1000.0), "1,000");
        assert_eq!(group_digits(1234567.8), "1,234,568");
        assert_eq!(group_digits(-4321.0), "-4,321");
    }
}
