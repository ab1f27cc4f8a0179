//! The demo's progress bar on stderr (indicatif hides it when stderr is not a terminal,
//! so scripted runs and tests see only the summary), and the summary's number format.

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
