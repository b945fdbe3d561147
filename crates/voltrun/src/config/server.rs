//! The server's own options: where it listens, where it keeps its files and database, how it logs,
//! who may read its metrics, and how long it takes to stop.

use std::net::IpAddr;
use std::path::PathBuf;

use super::parse::{
    database_url, environment, ip_address, log_format, log_level, metrics_token, number, path,
    unless_blank,
};
use super::{Blankable, Secret};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Port to listen on
    #[arg(long, env = "PORT", default_value_t = 8080, value_parser = number::<u16>(0, u16::MAX))]
    pub port: u16,
    /// Address to bind
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0", value_parser = ip_address)]
    pub bind_address: IpAddr,
    /// development or production (production requires JWT_SECRET and ENCRYPTION_KEY)
    #[arg(long, env = "ENVIRONMENT", default_value = "development", value_parser = environment)]
    pub environment: Environment,
    /// json or pretty [default: pretty in development, json in production]
    #[arg(
        long,
        env = "LOG_FORMAT",
        default_value = "",
        hide_default_value = true,
        value_parser = unless_blank(log_format)
    )]
    pub log_format: Blankable<LogFormat>,
    /// A tracing filter such as info or voltrun=debug,info
    #[arg(long, env = "LOG_LEVEL", default_value = "info", value_parser = log_level)]
    pub log_level: String,
    /// Where the server keeps its files: the SQLite database and development secrets
    #[arg(long, env = "DATA_DIR", default_value = "./data", value_parser = path)]
    pub data_dir: PathBuf,
    /// sqlite://PATH or postgres://USER:PASS@HOST/DB [default: sqlite://DATA_DIR/voltrun.db]
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true,
        value_parser = unless_blank(database_url)
    )]
    pub database_url: Blankable<Secret<String>>,
    /// Database connection pool size
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16, value_parser = number::<u32>(1, 1000))]
    pub db_max_connections: u32,
    /// Bearer token that GET /metrics and the operator view of GET /health require, at least 16
    /// characters [default: none; /metrics is open]
    #[arg(
        long,
        env = "METRICS_TOKEN",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true,
        value_parser = unless_blank(metrics_token)
    )]
    pub metrics_token: Blankable<Secret<String>>,
    /// Seconds to let in-flight requests finish after SIGTERM/SIGINT
    #[arg(long, env = "SHUTDOWN_TIMEOUT_S", default_value_t = 30, value_parser = number::<u64>(0, 3600))]
    pub shutdown_timeout_s: u64,
}
