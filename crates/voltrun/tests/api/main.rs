//! The HTTP API suite: each test starts the real server on port 0 against a database of its own and
//! drives it over HTTP. Every test runs twice, on SQLite and on PostgreSQL (see `both_databases!`).

#[path = "../support/mod.rs"]
#[macro_use]
mod helpers;

mod auth;
mod bad_input;
mod contract;
mod edge;
mod executions;
mod functions;
mod keys;
mod layers;
mod limits;
mod queue;
mod quotas;
mod retention;
mod system;
mod tenancy;
