//! Runnel transport over kafka (work in progress).
