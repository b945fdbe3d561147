//! The command-line client suite: each test starts the real server in-process on port 0 with a
//! SQLite database of its own, and runs the real `voltrun` binary against it with a config
//! directory of its own.

#[path = "../support/mod.rs"]
#[macro_use]
#[allow(dead_code, unused_macros)]
mod api_helpers;
mod helpers;

mod auth;
mod executions;
mod functions;
mod keys;
mod layers;
mod usage;
