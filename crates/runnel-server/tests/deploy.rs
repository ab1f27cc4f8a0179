//! The example alert rules and dashboard under `deploy/` stay valid: both files parse,
//! every rule is complete, and every metric they query is one Runnel records
//! ([`METRIC_NAMES`], built from the constants next to the code that records them).

use std::collections::BTreeSet;
use std::path::PathBuf;

use runnel_server::metrics::{METRIC_HTTP_REQUEST_DURATION, METRIC_NAMES};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: String,
    labels: Labels,
    annotations: Annotations,
}

#[derive(Debug, Deserialize)]
struct Labels {
    severity: String,
}

#[derive(Debug, Deserialize)]
struct Annotations {
    summary: String,
}

fn deploy_file(path: &str) -> String {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The metric names a PromQL expression selects: identifiers outside label matchers,
/// ranges and strings that are neither functions, aggregation clauses nor keywords.
fn metric_names(expr: &str) -> Vec<String> {
    // Aggregations may put their `by (..)` clause before the parenthesis.
    const KEYWORDS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "group_left",
        "group_right",
    ];
    const CLAUSES: &[&str] = &["by", "without", "on", "ignoring"];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    // Skips a balanced group opened at `i` (`{`, `[` or `(`), strings inside included.
    let skip_group = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        let mut quoted = false;
        while i < chars.len() {
            let c = chars[i];
            if quoted {
                if c == '\\' {
                    i += 1;
                } else if c == '"' {
                    quoted = false;
                }
            } else if c == '"' {
                quoted = true;
            } else if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            i += 1;
        }
        panic!("unbalanced {open}{close} in {expr:?}");
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => i = skip_group(i, '{', '}'),
            '[' => i = skip_group(i, '[', ']'),
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let called = chars.get(next) == Some(&'(');
                if CLAUSES.contains(&word.as_str()) && called {
                    i = skip_group(next, '(', ')');
                } else if !called && !KEYWORDS.contains(&word.as_str()) {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// `name` is a metric Runnel records, or a histogram's `_bucket`, `_sum` or `_count`.
fn is_defined(name: &str) -> bool {
    METRIC_NAMES.contains(&name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| base.ends_with("_seconds") && METRIC_NAMES.contains(&base))
        })
}

#[test]
fn promql_metric_names_are_found_outside_matchers_and_clauses() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le, topic) (rate(a_seconds_bucket{x="b c", y=~"5.."}[$__rate_interval]))) > 0.5 and on (job) b_total offset 5m"#
        ),
        ["a_seconds_bucket", "b_total"]
    );
    assert!(is_defined(&format!("{METRIC_HTTP_REQUEST_DURATION}_count")));
    assert!(!is_defined("runnel_no_such_metric_total"));
}

#[test]
fn metric_names_are_unique() {
    let unique: BTreeSet<_> = METRIC_NAMES.iter().collect();
    assert_eq!(unique.len(), METRIC_NAMES.len(), "a name is listed twice");
}

#[test]
fn alert_rules_parse_are_complete_and_query_only_defined_metrics() {
    let file: RuleFile = serde_norway::from_str(&deploy_file("prometheus/alerts.yml"))
        .expect("deploy/prometheus/alerts.yml is a Prometheus rule file");
    let mut alerts = BTreeSet::new();
    for group in &file.groups {
        assert!(!group.name.is_empty());
        assert!(!group.rules.is_empty(), "group {} has no rules", group.name);
        for rule in &group.rules {
            let what = &rule.alert;
            assert!(
                alerts.insert(what.clone()),
                "alert {what} is declared twice"
            );
            assert!(
                ["info", "warning", "critical"].contains(&rule.labels.severity.as_str()),
                "{what}: severity {:?}",
                rule.labels.severity
            );
            assert!(!rule.annotations.summary.is_empty(), "{what}: no summary");
            assert!(
                is_prometheus_duration(&rule.for_),
                "{what}: `for: {}` is not a duration",
                rule.for_
            );
            let names = metric_names(&rule.expr);
            assert!(
                !names.is_empty(),
                "{what}: the expression queries no metric"
            );
            for name in names {
                assert!(is_defined(&name), "{what}: {name} is not a Runnel metric");
            }
        }
    }
    for expected in [
        "RunnelDeadLettersGrowing",
        "RunnelConsumerLagHigh",
        "RunnelOutboxBacklogOld",
        "RunnelProjectionFaulted",
        "RunnelSagaInstancesNeedAttention",
    ] {
        assert!(alerts.contains(expected), "no {expected} alert");
    }
}

/// A Prometheus duration as the rules use it: a number and one unit (`0m`, `15m`, `1h`).
fn is_prometheus_duration(s: &str) -> bool {
    let unit_at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    unit_at > 0 && ["ms", "s", "m", "h", "d", "w"].contains(&&s[unit_at..])
}

#[test]
fn dashboard_parses_and_queries_only_defined_metrics() {
    let dashboard: Value = serde_json::from_str(&deploy_file("grafana/runnel.json"))
        .expect("deploy/grafana/runnel.json is JSON");
    assert!(dashboard["title"].is_string());
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut queried = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        let targets = panel["targets"]
            .as_array()
            .expect("every panel has targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        for target in targets {
            let expr = target["expr"].as_str().expect("every target has an expr");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{title}: {expr} queries no metric");
            for name in names {
                assert!(is_defined(&name), "{title}: {name} is not a Runnel metric");
                queried.insert(name);
            }
        }
    }
    for expected in [
        "runnel_consumer_lag_messages",
        "runnel_dead_letters_pending",
        "runnel_outbox_pending",
        "runnel_projection_lag_seconds",
        "http_server_request_duration_seconds_bucket",
        "http_server_request_duration_seconds_count",
    ] {
        assert!(
            queried.contains(expected),
            "the dashboard shows no {expected}"
        );
    }
}
