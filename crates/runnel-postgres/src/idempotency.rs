//! Inbox and dedup window on this backend (being built).
