//! The `voltrun` binary's library half: configuration, telemetry and start-up, so that integration
//! tests can start the real server in-process on port 0.

pub mod config;
pub mod edge;
pub mod retention;
pub mod startup;
pub mod telemetry;
