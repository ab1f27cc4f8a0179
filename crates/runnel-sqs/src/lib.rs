//! Runnel transport over sqs (work in progress).
