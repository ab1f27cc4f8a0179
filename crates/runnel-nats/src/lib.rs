//! Runnel transport over nats (work in progress).
