//! The benchmark table, in markdown.

use crate::progress::group_digits;

/// One line of the table.
pub struct Row {
    pub scenario: String,
    pub runnel: String,
    pub baseline: String,
    /// Runnel divided by the baseline (higher is better for Runnel).
    pub ratio: Option<f64>,
    /// The target for the ratio, if the issue sets one, and whether it was met.
    pub target: Option<Target>,
}

/// A target on a row's ratio.
pub struct Target {
    pub text: String,
    /// Whether it was met; `None` for an expectation that is not a pass/fail target.
    pub met: Option<bool>,
}

impl Target {
    /// "≥ min×".
    pub fn at_least(ratio: f64, min: f64) -> Target {
        Target {
            text: format!("≥ {min}×"),
            met: Some(ratio >= min),
        }
    }

    /// An expectation, shown without a verdict.
    pub fn expected(text: &str) -> Target {
        Target {
            text: format!("expected {text}"),
            met: None,
        }
    }
}

/// `12,345 unit`.
pub fn rate(value: f64, unit: &str) -> String {
    format!("{} {unit}", group_digits(value))
}

/// Ratios print with two significant decimals below 10 and none above.
pub fn ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.2}×")
    }
}

/// Renders the rows as a markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | Runnel | baseline | ratio | target |\n|---|---:|---:|---:|---|\n",
    );
    for row in rows {
        let ratio_text = row.ratio.map(ratio).unwrap_or_else(|| "—".into());
        let target = match &row.target {
            Some(Target {
                text,
                met: Some(true),
            }) => format!("{text} ✅ met"),
            Some(Target {
                text,
                met: Some(false),
            }) => format!("{text} ❌ missed"),
            Some(Target { text, met: None }) => text.clone(),
            None => String::new(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            row.scenario, row.runnel, row.baseline, ratio_text, target
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_ratios_and_targets() {
        let rows = vec![Row {
            scenario: "64 writers".into(),
            runnel: rate(30000.0, "events/s"),
            baseline: rate(50000.0, "events/s"),
            ratio: Some(0.6),
            target: Some(Target::at_least(0.6, 0.5)),
        }];
        let table = markdown(&rows);
        assert!(
            table.contains(
                "| 64 writers | 30,000 events/s | 50,000 events/s | 0.60× | ≥ 0.5× ✅ met |"
            ),
            "{table}"
        );
        assert_eq!(Target::at_least(0.4, 0.5).met, Some(false));
        assert_eq!(Target::expected("≈ 1×").met, None);
    }
}
