//! The HTTP client: one server, one credential. It sends requests with the credential (a session's
//! access token, or an API key), renews an expired session transparently (`POST /api/auth/refresh`
//! rotates the refresh token; the new pair is stored at once), turns every failure into a
//! [`CliError`] that reads as one line, traces requests to stderr with `-v` (method, URL, status,
//! request id; never a token), and shows upload progress on a terminal.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api::{AuthResponse, Page};
use crate::config::{CredentialStore, StoredCredential};
use crate::error::{ApiFailure, CliError, CliResult};
use crate::output::human_bytes;

const REQUEST_ID_HEADER: &str = "x-request-id";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest page the API serves.
const PAGE_LIMIT: &str = "100";
/// Bodies larger than this get a progress line on a terminal.
const PROGRESS_MIN_BYTES: usize = 256 * 1024;
const PROGRESS_CHUNK: usize = 64 * 1024;

/// How requests prove who sends them.
pub enum Credential {
    None,
    Session {
        email: String,
        access_token: String,
        refresh_token: String,
    },
    ApiKey {
        key: String,
        /// Taken from `VOLTRUN_API_KEY` rather than the credentials file.
        from_env: bool,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Session { email, .. } => f
                .debug_struct("Session")
                .field("email", email)
                .finish_non_exhaustive(),
            Self::ApiKey { from_env, .. } => f
                .debug_struct("ApiKey")
                .field("from_env", from_env)
                .finish_non_exhaustive(),
        }
    }
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    Empty,
    Json(Bytes),
}

impl Body {
    pub fn json(value: &Value) -> Self {
        Self::Json(Bytes::from(value.to_string()))
    }
}

/// A successful (2xx) response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub request_id: Option<String>,
    pub body: Bytes,
}

#[derive(Debug)]
pub struct Api {
    http: reqwest::Client,
    server: String,
    credential: Credential,
    /// Where a renewed session is written back; `None` when the credential is not stored.
    store: Option<CredentialStore>,
    verbose: bool,
    /// Show upload progress (stderr is a terminal).
    progress: bool,
}

/// Installs the TLS crypto provider once per process (reqwest is built without one; see Cargo.toml).
fn install_crypto_provider() {
    // An error means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Api {
    pub fn new(
        server: String,
        credential: Credential,
        store: Option<CredentialStore>,
        verbose: bool,
        progress: bool,
    ) -> CliResult<Self> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("voltrun-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            // A redirect could carry the X-API-Key header to another host: report it instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CliError::Config(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Self {
            http,
            server,
            credential,
            store,
            verbose,
            progress,
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// Sends a request with the credential; on a 401 with a session, renews it once and retries.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Body,
    ) -> CliResult<Reply> {
        let first = self
            .send_once(method.clone(), path, query, body.clone(), true)
            .await;
        match first {
            Err(CliError::Api(failure))
                if failure.status == 401
                    && matches!(self.credential, Credential::Session { .. }) =>
            {
                self.refresh_session().await?;
                self.send_once(method, path, query, body, true).await
            }
            other => other,
        }
    }

    /// Sends a request without any credential (login, refresh, logout).
    pub async fn send_anonymous(
        &mut self,
        method: Method,
        path: &str,
        body: Body,
    ) -> CliResult<Reply> {
        self.send_once(method, path, &[], body, false).await
    }

    pub async fn get<T: DeserializeOwned>(&mut self, path: &str) -> CliResult<(T, Value)> {
        let reply = self.send(Method::GET, path, &[], Body::Empty).await?;
        self.decode(&reply)
    }

    pub async fn get_query<T: DeserializeOwned>(
        &mut self,
        path: &str,
        query: &[(&str, String)],
    ) -> CliResult<(T, Value)> {
        let reply = self.send(Method::GET, path, query, Body::Empty).await?;
        self.decode(&reply)
    }

    /// Every item of a paginated list, following `next_cursor`.
    pub async fn list_all<T: DeserializeOwned>(&mut self, path: &str) -> CliResult<Vec<T>> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query = vec![("limit", PAGE_LIMIT.to_string())];
            if let Some(c) = cursor.take() {
                query.push(("cursor", c));
            }
            let (page, _): (Page<T>, _) = self.get_query(path, &query).await?;
            items.extend(page.data);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(items),
            }
        }
    }

    /// Reads a reply as JSON: the typed value and the raw one (for `--output json`).
    pub fn decode<T: DeserializeOwned>(&self, reply: &Reply) -> CliResult<(T, Value)> {
        let raw: Value = serde_json::from_slice(&reply.body).map_err(|e| self.bad_response(e))?;
        let typed = serde_json::from_value(raw.clone()).map_err(|e| self.bad_response(e))?;
        Ok((typed, raw))
    }

    pub fn bad_response(&self, cause: impl std::fmt::Display) -> CliError {
        CliError::BadResponse {
            server: self.server.clone(),
            cause: cause.to_string(),
        }
    }

    /// Exchanges the refresh token for a new pair and stores it before anything else happens: the
    /// old refresh token is spent, so losing the new one would end the session.
    async fn refresh_session(&mut self) -> CliResult<()> {
        let Credential::Session {
            email,
            refresh_token,
            ..
        } = &self.credential
        else {
            return Ok(());
        };
        let email = email.clone();
        let refresh_token = refresh_token.clone();
        let _lock = match &mut self.store {
            Some(store) => {
                let lock = store.lock()?;
                store.reload()?;
                if let Some(StoredCredential::Session {
                    access_token: stored_access,
                    refresh_token: stored_refresh,
                    ..
                }) = store.get(&self.server)
                    && *stored_refresh != refresh_token
                {
                    // Another command renewed the session meanwhile: use its pair.
                    self.credential = Credential::Session {
                        email,
                        access_token: stored_access.clone(),
                        refresh_token: stored_refresh.clone(),
                    };
                    return Ok(());
                }
                Some(lock)
            }
            None => None,
        };
        let body = Body::json(&json!({ "refresh_token": refresh_token }));
        let reply = match self
            .send_once(Method::POST, "/api/auth/refresh", &[], body, false)
            .await
        {
            Ok(reply) => reply,
            Err(CliError::Api(failure)) if failure.status == 401 => {
                // The refresh token is spent or revoked: forget it so the next command says so at once.
                if let Some(store) = &mut self.store {
                    store.remove(&self.server);
                    store.save()?;
                }
                return Err(CliError::SessionEnded {
                    server: self.server.clone(),
                    reason: failure.message,
                });
            }
            Err(other) => return Err(other),
        };
        let (tokens, _): (AuthResponse, _) = self.decode(&reply)?;
        self.credential = Credential::Session {
            email: email.clone(),
            access_token: tokens.access_token.clone(),
            refresh_token: tokens.refresh_token.clone(),
        };
        if let Some(store) = &mut self.store {
            store.replace(
                &self.server,
                StoredCredential::Session {
                    email,
                    access_token: tokens.access_token,
                    refresh_token: tokens.refresh_token,
                },
            );
            store.save()?;
        }
        Ok(())
    }

    async fn send_once(
        &mut self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Body,
        authenticate: bool,
    ) -> CliResult<Reply> {
        let url = format!("{}{path}", self.server);
        let mut request = self.http.request(method.clone(), &url);
        if !query.is_empty() {
            request = request.query(query);
        }
        if authenticate {
            request = match &self.credential {
                Credential::None => request,
                Credential::Session { access_token, .. } => request.bearer_auth(access_token),
                Credential::ApiKey { key, .. } => request.header("x-api-key", key),
            };
        }
        if let Body::Json(bytes) = body {
            request = request.header(CONTENT_TYPE, "application/json");
            request = if self.progress && bytes.len() >= PROGRESS_MIN_BYTES {
                // A streamed body has no length of its own; without one it would go chunked.
                request
                    .header(CONTENT_LENGTH, bytes.len())
                    .body(progress_body(bytes))
            } else {
                request.body(bytes)
            };
        }
        let request = request.build().map_err(|e| {
            CliError::Usage(format!(
                "cannot build a request for {url}: {}",
                cause_of(&e)
            ))
        })?;
        if self.verbose {
            trace(&format!("> {} {}", request.method(), request.url()));
        }
        let started = Instant::now();
        let response = match self.http.execute(request).await {
            Ok(response) => response,
            Err(e) => {
                let cause = cause_of(&e);
                if self.verbose {
                    trace(&format!("< {method} {url} failed: {cause}"));
                }
                return Err(CliError::Unreachable {
                    server: self.server.clone(),
                    cause,
                });
            }
        };
        let status = response.status();
        let request_id = response
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.bytes().await.map_err(|e| CliError::Unreachable {
            server: self.server.clone(),
            cause: format!("the response broke off: {}", cause_of(&e)),
        })?;
        if self.verbose {
            trace(&format!(
                "< {} {} ({} ms, request id {})",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                started.elapsed().as_millis(),
                request_id.as_deref().unwrap_or("-")
            ));
        }
        if status.is_success() {
            return Ok(Reply {
                status,
                request_id,
                body,
            });
        }
        if status.is_redirection() {
            return Err(CliError::Usage(format!(
                "the server at {} redirects to {}: use that address with --server",
                self.server,
                location.as_deref().unwrap_or("another address")
            )));
        }
        Err(CliError::Api(failure_from(status, request_id, &body)))
    }
}

/// Reads an error response; one that is not in the API's format (a proxy's page, say) still reads
/// as one line with its status.
fn failure_from(status: StatusCode, request_id: Option<String>, body: &[u8]) -> ApiFailure {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().map(|v| &v["error"]);
    let text = |key: &str| {
        error
            .and_then(|e| e[key].as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let request_id = parsed
        .as_ref()
        .and_then(|v| v["request_id"].as_str())
        .map(str::to_string)
        .or(request_id);
    ApiFailure {
        status: status.as_u16(),
        code: text("code").unwrap_or_else(|| format!("http_{}", status.as_u16())),
        message: text("message").unwrap_or_else(|| {
            format!(
                "the server answered {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )
        }),
        request_id,
        hint: None,
    }
}

/// The most useful description of a transport error: the innermost cause (`connection refused`,
/// `dns error: …`), not reqwest's "error sending request for url".
fn cause_of(error: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    let mut deepest = None;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                kind @ (K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::TimedOut
                | K::HostUnreachable
                | K::NetworkUnreachable
                | K::AddrNotAvailable) => kind.to_string(),
                _ => io.to_string(),
            };
        }
        deepest = Some(s.to_string());
        source = s.source();
    }
    if error.is_timeout() {
        return "timed out".to_string();
    }
    deepest.unwrap_or_else(|| error.to_string())
}

fn trace(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A body sent in chunks, drawing `Uploading … 42%` on stderr as the connection takes them.
fn progress_body(bytes: Bytes) -> reqwest::Body {
    let total = bytes.len();
    let chunks: Vec<Bytes> = (0..total)
        .step_by(PROGRESS_CHUNK)
        .map(|start| bytes.slice(start..(start + PROGRESS_CHUNK).min(total)))
        .collect();
    let mut sent = 0usize;
    let mut shown = usize::MAX;
    let stream = futures::stream::iter(chunks.into_iter().map(move |chunk| {
        sent += chunk.len();
        let percent = sent * 100 / total.max(1);
        if percent != shown {
            shown = percent;
            let mut stderr = std::io::stderr().lock();
            let _ = write!(
                stderr,
                "\r\x1b[2KUploading {} of {} ({percent}%)",
                human_bytes(sent as u64),
                human_bytes(total as u64)
            );
            if sent == total {
                let _ = write!(stderr, "\r\x1b[2K");
            }
            let _ = stderr.flush();
        }
        Ok::<_, std::io::Error>(chunk)
    }));
    reqwest::Body::wrap_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_read_in_the_api_format_and_otherwise() {
        let body =
            br#"{"error":{"code":"not_found","message":"function not found"},"request_id":"r1"}"#;
        let f = failure_from(StatusCode::NOT_FOUND, Some("header".into()), body);
        assert_eq!(f.code, "not_found");
        assert_eq!(f.message, "function not found");
        assert_eq!(f.request_id.as_deref(), Some("r1"));

        let f = failure_from(StatusCode::BAD_GATEWAY, None, b"<html>bad gateway</html>");
        assert_eq!(f.code, "http_502");
        assert_eq!(f.message, "the server answered 502 Bad Gateway");
        assert_eq!(f.request_id, None);
    }
}
