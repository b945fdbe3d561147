//! The client's configuration: the environment (read once, here), the server URL, and the stored
//! credentials. Credentials live in one file per user, `$XDG_CONFIG_HOME/voltrun/credentials.json`
//! (else `~/.config/voltrun/`), with one entry per server and the server last logged in to as the
//! default. The file is written with mode 0600 (its directory 0700), replaced atomically.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CliError, CliResult};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";
const CREDENTIALS_FILE: &str = "credentials.json";

/// What the client takes from its environment, captured once at start.
#[derive(Clone, Default)]
pub struct Environment {
    /// `VOLTRUN_API_KEY`: overrides stored credentials (for CI).
    pub api_key: Option<String>,
    /// `NO_COLOR` set to anything non-empty.
    pub no_color: bool,
    /// `$XDG_CONFIG_HOME/voltrun` or `$HOME/.config/voltrun`.
    pub config_dir: Option<PathBuf>,
}

impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Environment")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("no_color", &self.no_color)
            .field("config_dir", &self.config_dir)
            .finish()
    }
}

impl Environment {
    pub fn capture() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        // The XDG spec says a relative XDG_CONFIG_HOME is to be ignored.
        let config_home = var("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".config")));
        Self {
            api_key: var("VOLTRUN_API_KEY")
                .and_then(|v| v.into_string().ok())
                .map(|v| v.trim().to_string()),
            no_color: var("NO_COLOR").is_some(),
            config_dir: config_home.map(|dir| dir.join("voltrun")),
        }
    }
}

/// Checks a server URL and puts it in the form credentials are keyed by (no trailing slash).
pub fn normalize_server(raw: &str) -> CliResult<String> {
    let trimmed = raw.trim().trim_end_matches('/');
    let url = reqwest::Url::parse(trimmed)
        .map_err(|e| CliError::Usage(format!("server URL {raw:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(CliError::Usage(format!(
            "server URL {raw:?} must look like http://HOST:PORT or https://HOST"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(CliError::Usage(format!(
            "server URL {raw:?} must not have a query or fragment"
        )));
    }
    Ok(trimmed.to_string())
}

/// Credentials for one server.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StoredCredential {
    /// A login: a short-lived access token and the single-use refresh token that renews it.
    Session {
        email: String,
        access_token: String,
        refresh_token: String,
    },
    ApiKey {
        key: String,
    },
}

impl fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Session { email, .. } => f
                .debug_struct("Session")
                .field("email", email)
                .finish_non_exhaustive(),
            Self::ApiKey { key } => f
                .debug_struct("ApiKey")
                .field("prefix", &key_prefix(key))
                .finish(),
        }
    }
}

/// The first characters of an API key, enough to recognise it and not enough to use it.
pub fn key_prefix(key: &str) -> String {
    let shown: String = key.chars().take(11).collect();
    format!("{shown}…")
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CredentialsFile {
    /// The server commands talk to when neither `--server` nor `VOLTRUN_SERVER` names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default_server: Option<String>,
    #[serde(default)]
    servers: BTreeMap<String, StoredCredential>,
}

/// The credentials file, loaded; changes are written back by [`CredentialStore::save`].
#[derive(Debug)]
pub struct CredentialStore {
    dir: PathBuf,
    file: CredentialsFile,
    /// Set when the file was readable by others (its mode is now 0600 again).
    pub loose_permissions: bool,
}

impl CredentialStore {
    /// Loads the store; a missing file is an empty store.
    pub fn open(dir: &Path) -> CliResult<Self> {
        let path = dir.join(CREDENTIALS_FILE);
        let (file, loose_permissions) = match std::fs::read(&path) {
            Ok(bytes) => {
                let file = serde_json::from_slice(&bytes).map_err(|e| {
                    CliError::Config(format!(
                        "{} is not a valid credentials file ({e}); delete it and log in again",
                        path.display()
                    ))
                })?;
                let loose = std::fs::metadata(&path)
                    .map(|m| m.permissions().mode() & 0o077 != 0)
                    .unwrap_or(false);
                if loose {
                    // Someone widened it: narrow it back before anything else reads it.
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| {
                            CliError::Config(format!(
                                "{} is readable by other users and cannot be made private: {e}",
                                path.display()
                            ))
                        })?;
                }
                (file, loose)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (CredentialsFile::default(), false)
            }
            Err(e) => {
                return Err(CliError::Config(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            loose_permissions,
        })
    }

    /// Takes the credentials lock (released when the returned file is dropped). Held while a
    /// session is renewed: two commands renewing with the same single-use refresh token would look
    /// like token theft to the server, which then ends the session.
    pub fn lock(&self) -> CliResult<std::fs::File> {
        let path = self.dir.join(".credentials.lock");
        let fail =
            |e: std::io::Error| CliError::Config(format!("cannot lock {}: {e}", path.display()));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(fail)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(fail)?;
        file.lock().map_err(fail)?;
        Ok(file)
    }

    /// Reads the file again (after taking the lock, to see what another command wrote).
    pub fn reload(&mut self) -> CliResult<()> {
        let fresh = Self::open(&self.dir)?;
        self.file = fresh.file;
        Ok(())
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(CREDENTIALS_FILE)
    }

    pub fn default_server(&self) -> Option<&str> {
        self.file.default_server.as_deref()
    }

    pub fn get(&self, server: &str) -> Option<&StoredCredential> {
        self.file.servers.get(server)
    }

    /// Stores credentials for `server` and makes it the default server.
    pub fn set(&mut self, server: &str, credential: StoredCredential) {
        self.file.servers.insert(server.to_string(), credential);
        self.file.default_server = Some(server.to_string());
    }

    /// Replaces credentials for `server` without changing the default (token refresh).
    pub fn replace(&mut self, server: &str, credential: StoredCredential) {
        self.file.servers.insert(server.to_string(), credential);
    }

    pub fn remove(&mut self, server: &str) -> Option<StoredCredential> {
        if self.file.default_server.as_deref() == Some(server) {
            self.file.default_server = None;
        }
        self.file.servers.remove(server)
    }

    /// Writes the file: to a temporary file of mode 0600 beside it, then renamed over it, so a
    /// crash never leaves half a file and the secrets are never readable by others.
    pub fn save(&mut self) -> CliResult<()> {
        let path = self.path();
        let fail =
            |e: std::io::Error| CliError::Config(format!("cannot write {}: {e}", path.display()));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(fail)?;
        let json = serde_json::to_vec_pretty(&self.file)
            .map_err(|e| CliError::Config(format!("cannot encode credentials: {e}")))?;
        let temporary = self
            .dir
            .join(format!(".{CREDENTIALS_FILE}.{}", std::process::id()));
        let written = (|| {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temporary)?;
            // The mode above applies only to a new file; a leftover temporary file keeps its own.
            out.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            out.write_all(&json)?;
            out.sync_all()?;
            std::fs::rename(&temporary, &path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(fail(e));
        }
        self.loose_permissions = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_checked_and_normalised() {
        assert_eq!(
            normalize_server("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            normalize_server(" https://fn.example.com ").unwrap(),
            "https://fn.example.com"
        );
        assert_eq!(
            normalize_server("https://example.com/voltrun").unwrap(),
            "https://example.com/voltrun"
        );
        for bad in ["127.0.0.1:8080", "ftp://x", "http://", "http://x?y=1", ""] {
            assert!(
                matches!(normalize_server(bad), Err(CliError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn credentials_round_trip_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("voltrun-cli-{}", uuid::Uuid::new_v4()));
        let mut store = CredentialStore::open(&dir).unwrap();
        assert!(store.get("http://a").is_none());
        store.set(
            "http://a",
            StoredCredential::ApiKey {
                key: "vr_abcdefgh_the_secret_part".into(),
            },
        );
        store.save().unwrap();
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = CredentialStore::open(&dir).unwrap();
        assert_eq!(again.default_server(), Some("http://a"));
        assert!(matches!(
            again.get("http://a"),
            Some(StoredCredential::ApiKey { .. })
        ));
        assert!(!format!("{again:?}").contains("the_secret_part"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
