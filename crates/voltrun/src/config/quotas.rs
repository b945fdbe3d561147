//! What one user may keep (functions, code, queued executions) and how long finished executions are
//! kept. A limit of 0 lifts it.

use std::time::Duration;

use super::parse::number;

#[derive(Debug, Clone, clap::Args)]
pub struct QuotaArgs {
    /// Functions one user may have; 0 for no limit
    #[arg(
        long = "quota-functions-per-user",
        env = "QUOTA_FUNCTIONS_PER_USER",
        default_value_t = 100,
        value_parser = number::<u64>(0, 1_000_000)
    )]
    pub functions_per_user: u64,
    /// MiB of code one user's functions may hold together, each function's code counted whole; 0
    /// for no limit
    #[arg(
        long = "quota-code-mb-per-user",
        env = "QUOTA_CODE_MB_PER_USER",
        default_value_t = 1024,
        value_parser = number::<u64>(0, 1 << 20)
    )]
    pub code_mb_per_user: u64,
    /// Asynchronous executions one user may have queued; past it, 429 queue_full; 0 for no limit
    #[arg(
        long = "quota-queued-executions-per-user",
        env = "QUOTA_QUEUED_EXECUTIONS_PER_USER",
        default_value_t = 1000,
        value_parser = number::<u64>(0, 100_000_000)
    )]
    pub queued_executions_per_user: u64,
}

/// Per-user limits (`None`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub functions: Option<u64>,
    pub code_bytes: Option<u64>,
    pub queued_executions: Option<u64>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RetentionArgs {
    /// Days finished executions and their logs are kept; 0 keeps them forever
    #[arg(
        long = "execution-retention-days",
        env = "EXECUTION_RETENTION_DAYS",
        default_value_t = 30,
        value_parser = number::<u32>(0, 36_500)
    )]
    pub days: u32,
    /// Seconds between looks for executions past retention
    #[arg(
        long = "execution-retention-interval-s",
        env = "EXECUTION_RETENTION_INTERVAL_S",
        default_value_t = 3600,
        value_parser = number::<u64>(1, 7 * 86_400)
    )]
    pub interval_s: u64,
}

/// How long execution records are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSettings {
    /// `None` keeps them forever.
    pub keep_days: Option<u32>,
    pub interval: Duration,
}

/// A limit where 0 means none.
pub(super) fn limit<T: Default + PartialEq>(value: T) -> Option<T> {
    (value != T::default()).then_some(value)
}

impl QuotaArgs {
    pub(super) fn quotas(&self) -> Quotas {
        Quotas {
            functions: limit(self.functions_per_user),
            code_bytes: limit(self.code_mb_per_user).map(|mib| mib << 20),
            queued_executions: limit(self.queued_executions_per_user),
        }
    }
}

impl RetentionArgs {
    pub(super) fn settings(&self) -> RetentionSettings {
        RetentionSettings {
            keep_days: limit(self.days),
            interval: Duration::from_secs(self.interval_s),
        }
    }
}
