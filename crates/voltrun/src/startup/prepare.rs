//! Start-up's side effects on the settings, kept out of parsing so that parsing reads nothing but
//! its input: what the host contributes to the defaults, the development secrets kept in the data
//! directory (read, or made on first start), and the private directories and files the server makes.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::config::{ConfigError, Host, Secret, SecretSource, Settings, bad};

/// This host's CPUs and memory, for the defaults that follow them.
pub fn read_host() -> Host {
    let memory_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                line.strip_prefix("MemTotal:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        });
    Host {
        cpus: std::thread::available_parallelism().map_or(2, usize::from),
        memory_mb: memory_kb.map(|kb| kb / 1024),
    }
}

/// The secrets the server signs and encrypts with, and where each came from (for the log).
#[derive(Debug, Clone)]
pub struct Secrets {
    pub jwt_secret: Secret<Vec<u8>>,
    pub jwt_secret_source: SecretSource,
    pub encryption_key: Secret<[u8; 32]>,
    pub encryption_key_source: SecretSource,
}

/// The configured secrets, or (development only: parsing refuses their absence in production) the
/// ones kept in the data directory, made on first start.
pub fn secrets(settings: &Settings) -> Result<Secrets, ConfigError> {
    let (jwt_secret, jwt_secret_source) = match &settings.jwt_secret {
        Some(secret) => (secret.clone(), SecretSource::Configured),
        None => (
            Secret::new(persisted_secret(&settings.data_dir, "jwt_secret")?.to_vec()),
            SecretSource::DataDir,
        ),
    };
    let (encryption_key, encryption_key_source) = match &settings.encryption_key {
        Some(key) => (key.clone(), SecretSource::Configured),
        None => (
            Secret::new(persisted_secret(&settings.data_dir, "encryption_key")?),
            SecretSource::DataDir,
        ),
    };
    Ok(Secrets {
        jwt_secret,
        jwt_secret_source,
        encryption_key,
        encryption_key_source,
    })
}

/// A 32-byte secret kept in `DATA_DIR/<name>` (mode 0600), generated on first use. Its errors are
/// configuration errors naming DATA_DIR: the operator fixes them there.
fn persisted_secret(data_dir: &Path, name: &'static str) -> Result<[u8; 32], ConfigError> {
    let variable = "DATA_DIR";
    create_private_dir(data_dir).map_err(|e| {
        bad(
            variable,
            format!("cannot create {}: {e}", data_dir.display()),
        )
    })?;
    let path = data_dir.join(name);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let bytes = STANDARD.decode(text.trim()).map_err(|_| {
            bad(
                variable,
                format!(
                    "{} is damaged (not base64); delete it to regenerate",
                    path.display()
                ),
            )
        })?;
        return bytes.try_into().map_err(|_| {
            bad(
                variable,
                format!(
                    "{} is damaged (wrong length); delete it to regenerate",
                    path.display()
                ),
            )
        });
    }
    let secret: [u8; 32] = voltrun_auth::secrets::random_bytes();
    write_private(&path, STANDARD.encode(secret).as_bytes())
        .map_err(|e| bad(variable, format!("cannot write {}: {e}", path.display())))?;
    Ok(secret)
}

/// Creates `dir` (and missing parents) readable by the server's user alone (0700). An existing
/// directory keeps the mode its operator gave it.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates an empty file of mode 0600 at `path` unless one exists (SQLite then opens it as an empty
/// database, and makes its `-wal` and `-shm` files with the same mode).
pub fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SettingsArgs;

    fn development(dir: &Path) -> Settings {
        let mut args = SettingsArgs::default();
        args.server.data_dir = dir.to_path_buf();
        Settings::from_args(args, &read_host()).unwrap()
    }

    #[test]
    fn development_defaults_persist_secrets() {
        let dir = std::env::temp_dir().join(format!(
            "voltrun-config-{}",
            voltrun_auth::secrets::random_token(8)
        ));
        let settings = development(&dir);
        let a = secrets(&settings).unwrap();
        let b = secrets(&development(&dir)).unwrap();
        assert_eq!(settings.port, 8080);
        assert_eq!(a.jwt_secret_source, SecretSource::DataDir);
        assert_eq!(a.jwt_secret.expose(), b.jwt_secret.expose());
        assert_eq!(a.encryption_key.expose(), b.encryption_key.expose());
        assert!(settings.database_url.expose().starts_with("sqlite://"));
        assert!(!format!("{a:?}").contains(&STANDARD.encode(a.encryption_key.expose())));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn parsing_touches_no_files() {
        let dir = std::env::temp_dir().join(format!(
            "voltrun-config-{}",
            voltrun_auth::secrets::random_token(8)
        ));
        let _ = development(&dir);
        assert!(!dir.exists(), "parsing made {}", dir.display());
    }
}
