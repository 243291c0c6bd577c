//! The conformance suite: every behaviour stated once and run against each
//! backend.

#[path = "../support/mod.rs"]
mod support;

mod consumer_backend;
mod export;
mod inbox;
