//! Dead-letter store on this backend (being built).
