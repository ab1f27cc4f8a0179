//! The consumer router: handlers as services, cross-cutting concerns as layers (being built).
