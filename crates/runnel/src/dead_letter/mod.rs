//! Dead-letter tooling: list, inspect, replay, purge, alert (being built).
