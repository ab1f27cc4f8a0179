//! Runnel transport over rabbitmq (work in progress).
