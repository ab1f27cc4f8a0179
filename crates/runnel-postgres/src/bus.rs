//! The embedded durable bus on this backend (being built).
