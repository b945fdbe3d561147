//! The settings' parsing, checks and defaults, through the parser as operators meet it (flags here;
//! the binary's tests set variables), and `.env.example` against the declarations.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::*;

/// A fixed host, so that the host-dependent defaults are known.
const HOST: Host = Host {
    cpus: 3,
    memory_mb: Some(8192),
};

/// The settings from `flags` (no environment), with a refused value as the server reports it.
fn settings(flags: &[&str]) -> Result<Settings, ConfigError> {
    let args = SettingsArgs::from_flags(flags).map_err(|e| {
        ConfigError::from_clap(&e).unwrap_or_else(|| panic!("not a setting's error: {e}"))
    })?;
    Settings::from_args(args, &HOST)
}

#[test]
fn every_default_passes_its_own_parser() {
    let defaults = Settings::from_args(SettingsArgs::default(), &HOST).unwrap();
    assert_eq!(defaults.port, 8080);
    assert_eq!(defaults.environment, Environment::Development);
    assert_eq!(defaults.log_format, LogFormat::Pretty);
    assert!(defaults.jwt_secret.is_none() && defaults.encryption_key.is_none());
    assert_eq!(defaults.data_dir, PathBuf::from("./data"));
    assert_eq!(defaults.database_url.expose(), "sqlite://./data/voltrun.db");
    assert_eq!(
        defaults.engine.vm.images_dir,
        PathBuf::from("./data/vm/images")
    );
    assert_eq!(defaults.engine.backend, EngineBackend::Auto);
    assert!(!defaults.engine.vm.jailer);
}

#[test]
fn host_dependent_defaults_follow_the_host() {
    let defaults = settings(&[]).unwrap();
    assert_eq!(defaults.auth_hashing_concurrency, 3);
    assert_eq!(defaults.engine.memory_budget_mb, 6144);
    assert_eq!(defaults.engine.user_memory_mb, 3072);
    let unknown = Host {
        cpus: 1,
        memory_mb: None,
    };
    let fallback = Settings::from_args(SettingsArgs::default(), &unknown).unwrap();
    assert_eq!(fallback.engine.memory_budget_mb, 4096);
    assert_eq!(fallback.engine.user_memory_mb, 2048);
    let set = settings(&[
        "--engine-memory-budget-mb=200",
        "--auth-hashing-concurrency=7",
    ])
    .unwrap();
    assert_eq!(set.engine.memory_budget_mb, 200);
    assert_eq!(set.engine.user_memory_mb, 128);
    assert_eq!(set.auth_hashing_concurrency, 7);
    let user = settings(&["--engine-user-memory-mb=300"]).unwrap();
    assert_eq!(user.engine.user_memory_mb, 300);
}

#[test]
fn data_dir_moves_the_defaults_that_live_in_it() {
    let moved = settings(&["--data-dir=/srv/voltrun"]).unwrap();
    assert_eq!(
        moved.database_url.expose(),
        "sqlite:///srv/voltrun/voltrun.db"
    );
    assert_eq!(
        moved.engine.vm.images_dir,
        PathBuf::from("/srv/voltrun/vm/images")
    );
}

#[test]
fn blank_values_leave_settings_unset() {
    let blank = settings(&[
        "--log-format=",
        "--database-url= ",
        "--metrics-token=",
        "--firecracker-bin=",
        "--vm-images-dir=",
        "--trusted-proxies=",
        "--vm-jailer=",
        "--engine-backend=",
        "--environment=",
    ])
    .unwrap();
    assert_eq!(blank.log_format, LogFormat::Pretty);
    assert!(blank.database_url.expose().starts_with("sqlite://"));
    assert!(blank.metrics_token.is_none());
    assert!(blank.engine.vm.firecracker_bin.is_none());
    assert!(blank.trusted_proxies.is_empty());
    assert!(!blank.engine.vm.jailer);
    assert_eq!(blank.engine.backend, EngineBackend::Auto);
    assert_eq!(blank.environment, Environment::Development);
    let set = settings(&["--vm-jailer=yes", "--firecracker-bin=/opt/fc"]).unwrap();
    assert!(set.engine.vm.jailer);
    assert_eq!(
        set.engine.vm.firecracker_bin,
        Some(PathBuf::from("/opt/fc"))
    );
}

#[test]
fn production_requires_secrets() {
    let production = ["--environment=production"];
    assert_eq!(settings(&production).unwrap_err().variable, "JWT_SECRET");
    assert_eq!(
        settings(&["--environment=production", "--jwt-secret=short"])
            .unwrap_err()
            .variable,
        "JWT_SECRET"
    );
    let jwt = format!("--jwt-secret={}", "x".repeat(32));
    assert_eq!(
        settings(&["--environment=production", &jwt])
            .unwrap_err()
            .variable,
        "ENCRYPTION_KEY"
    );
    let key = format!("--encryption-key={}", STANDARD.encode([1u8; 32]));
    let settings = settings(&["--environment=production", &jwt, &key]).unwrap();
    assert_eq!(settings.log_format, LogFormat::Json);
    assert!(!format!("{settings:?}").contains(&STANDARD.encode([1u8; 32])));
    assert!(!format!("{settings:?}").contains(&"x".repeat(32)));
}

/// Every option's variable is in `.env.example`, with the declared default where it has a fixed
/// one, and commented out where it has none; and `.env.example` sets nothing that is not an option.
#[test]
fn the_env_example_matches_the_options() {
    let example = include_str!("../../../../.env.example");
    // `NAME=value` lines, and `# NAME=value` for those shown commented out.
    let mut listed: BTreeMap<&str, (bool, &str)> = BTreeMap::new();
    for line in example.lines() {
        let (commented, line) = match line.strip_prefix("# ") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let is_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if is_name {
            assert!(
                listed.insert(name, (commented, value)).is_none(),
                ".env.example lists {name} twice"
            );
        }
    }
    let mut problems = Vec::new();
    let command = SettingsArgs::command();
    // Hidden options are retired ones, kept only to explain their replacement.
    for arg in command.get_arguments().filter(|arg| !arg.is_hide_set()) {
        let Some(env) = arg.get_env().map(|env| env.to_string_lossy().into_owned()) else {
            problems.push(format!("--{} has no variable", arg.get_id()));
            continue;
        };
        let Some((commented, value)) = listed.remove(env.as_str()) else {
            problems.push(format!("{env} is missing"));
            continue;
        };
        match arg.get_default_values() {
            [default] if !default.is_empty() => {
                if commented || value != default {
                    problems.push(format!(
                        "{env}: .env.example has {value:?}, the default is {default:?}"
                    ));
                }
            }
            // Computed, or unset: shown as `# NAME=` (perhaps with an example), or `NAME=`.
            _ => {
                if !commented && !value.is_empty() {
                    problems.push(format!("{env} has no fixed default: show it as `# {env}=`"));
                }
            }
        }
    }
    for name in listed.keys() {
        problems.push(format!("{name} is not an option"));
    }
    assert!(problems.is_empty(), ".env.example: {problems:#?}");
}

#[test]
fn snapshots_default_to_sixteen_and_zero_turns_them_off() {
    assert_eq!(settings(&[]).unwrap().engine.vm.snapshots_max, 16);
    let off = settings(&["--vm-snapshots-max=0"]).unwrap();
    assert_eq!(off.engine.vm.snapshots_max, 0);
    for bad in ["-1", "lots", "100000"] {
        assert_eq!(
            settings(&[&format!("--vm-snapshots-max={bad}")])
                .unwrap_err()
                .variable,
            "VM_SNAPSHOTS_MAX",
            "{bad}"
        );
    }
}

#[test]
fn trusted_proxies_replace_trust_forwarded_for() {
    assert!(settings(&[]).unwrap().trusted_proxies.is_empty());
    let listed = settings(&["--trusted-proxies=10.0.0.0/8, 192.0.2.7 ,fd00::/8"]).unwrap();
    assert!(listed.trusted_proxies.contains("10.9.8.7".parse().unwrap()));
    assert!(
        listed
            .trusted_proxies
            .contains("192.0.2.7".parse().unwrap())
    );
    assert!(
        !listed
            .trusted_proxies
            .contains("192.0.2.8".parse().unwrap())
    );
    // The old switch: off is harmless, on stops the server and names the replacement.
    let off = settings(&["--trust-forwarded-for=false"]).unwrap();
    assert!(off.trusted_proxies.is_empty());
    let err = settings(&["--trust-forwarded-for=true"]).unwrap_err();
    assert_eq!(err.variable, "TRUST_FORWARDED_FOR");
    assert!(err.to_string().contains("TRUSTED_PROXIES"), "{err}");
    let err = settings(&["--trusted-proxies=10.0.0.0/40"]).unwrap_err();
    assert!(err.to_string().contains("10.0.0.0/40"), "{err}");
}

#[test]
fn quotas_default_on_and_zero_lifts_each() {
    assert_eq!(
        settings(&[]).unwrap().quotas,
        Quotas {
            functions: Some(100),
            code_bytes: Some(1024 << 20),
            queued_executions: Some(1000),
        }
    );
    let off = settings(&[
        "--quota-functions-per-user=0",
        "--quota-code-mb-per-user=0",
        "--quota-queued-executions-per-user=0",
    ])
    .unwrap();
    assert_eq!(
        off.quotas,
        Quotas {
            functions: None,
            code_bytes: None,
            queued_executions: None,
        }
    );
    let custom = settings(&["--quota-code-mb-per-user=2"]).unwrap();
    assert_eq!(custom.quotas.code_bytes, Some(2 << 20));
}

#[test]
fn retention_defaults_to_thirty_days_and_zero_keeps_executions_forever() {
    let defaults = settings(&[]).unwrap();
    assert_eq!(defaults.retention.keep_days, Some(30));
    assert_eq!(defaults.retention.interval, Duration::from_secs(3600));
    let off = settings(&["--execution-retention-days=0"]).unwrap();
    assert_eq!(off.retention.keep_days, None);
}

#[test]
fn code_collection_defaults_to_an_hour_and_zero_keeps_code_forever() {
    let defaults = settings(&[]).unwrap();
    assert_eq!(
        defaults.engine.code_gc_after,
        Some(Duration::from_secs(3600))
    );
    let off = settings(&["--engine-code-gc-after-s=0"]).unwrap();
    assert_eq!(off.engine.code_gc_after, None);
}

#[test]
fn bad_values_name_their_variable() {
    let cases = [
        ("PORT", "--port=eighty"),
        ("PORT", "--port=70000"),
        ("DATABASE_URL", "--database-url=mysql://x"),
        ("ENVIRONMENT", "--environment=staging"),
        ("LOG_FORMAT", "--log-format=xml"),
        ("LOG_LEVEL", "--log-level=[[["),
        ("ENCRYPTION_KEY", "--encryption-key=abc"),
        ("TRUST_FORWARDED_FOR", "--trust-forwarded-for=maybe"),
        ("METRICS_TOKEN", "--metrics-token=short"),
        ("QUOTA_FUNCTIONS_PER_USER", "--quota-functions-per-user=-1"),
        ("TRUSTED_PROXIES", "--trusted-proxies=10.0.0.1/8"),
        ("QUOTA_CODE_MB_PER_USER", "--quota-code-mb-per-user=1GB"),
        ("TRUSTED_PROXIES", "--trusted-proxies=proxy.internal"),
        (
            "QUOTA_QUEUED_EXECUTIONS_PER_USER",
            "--quota-queued-executions-per-user=lots",
        ),
        (
            "EXECUTION_RETENTION_DAYS",
            "--execution-retention-days=100000",
        ),
        (
            "EXECUTION_RETENTION_INTERVAL_S",
            "--execution-retention-interval-s=0",
        ),
        ("ENGINE_CODE_GC_AFTER_S", "--engine-code-gc-after-s=soon"),
        ("BIND_ADDRESS", "--bind-address=localhost"),
        ("ENGINE_BACKEND", "--engine-backend=docker"),
        ("VM_JAILER", "--vm-jailer=maybe"),
        ("ENGINE_MEMORY_BUDGET_MB", "--engine-memory-budget-mb=64"),
    ];
    for (variable, flag) in cases {
        let err = settings(&[flag]).unwrap_err();
        assert_eq!(err.variable, variable, "{err}");
        assert!(err.to_string().contains(variable));
        assert_eq!(err.to_string().lines().count(), 1, "{err}");
    }
}

#[test]
fn errors_keep_their_wording() {
    let err = settings(&["--port=eighty"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: PORT: \"eighty\" is not a number"
    );
    let err = settings(&["--http-max-uploads=0"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: HTTP_MAX_UPLOADS: 0 is outside 1..=10000"
    );
}
