//! Progress bars on stderr. indicatif hides them when stderr is not a terminal, so
//! scripted runs and tests see only the final output.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// How often a bar redraws.
const TICK: Duration = Duration::from_millis(100);

/// A bar for a known amount of work: `[#####-----] 1200/2000 commands`.
pub fn bar(len: u64, unit: &str) -> ProgressBar {
    let template = format!("{{bar:40}} {{pos}}/{{len}} {unit} [{{elapsed}}] {{msg}}");
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(TICK);
    bar
}

/// A counter for work of unknown size: `⠙ 1200 instances purged [00:03]`.
pub fn counter(unit: &str) -> ProgressBar {
    let template = format!("{{spinner}} {{pos}} {unit} [{{elapsed}}]");
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(TICK);
    bar
}

/// A bar with a rate and an ETA, for work whose size may grow while it runs:
/// `[=====>    ] 1200/2000 positions 850/s ETA 1s`.
pub fn rate_bar(len: u64, unit: &str) -> ProgressBar {
    let template =
        format!("{{bar:40}} {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}} [{{elapsed}}] {{msg}}");
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(TICK);
    bar
}
