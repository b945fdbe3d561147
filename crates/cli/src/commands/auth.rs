//! `voltrun login`, `logout` and `whoami`.

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;
use reqwest::Method;
use serde_json::json;

use crate::Context;
use crate::api::{AuthResponse, Page, User};
use crate::client::{Api, Body, Credential};
use crate::config::{StoredCredential, key_prefix};
use crate::error::{CliError, CliResult, Exit};

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Email address [default: asked for; the first line of stdin when it is not a terminal]
    #[arg(long, conflicts_with = "api_key")]
    pub email: Option<String>,
    /// Store an API key for the server instead of logging in with a password
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
}

/// Reads one line from stdin, without its line ending; `None` at end of input.
fn read_line(stdin: &mut impl BufRead) -> CliResult<Option<String>> {
    let mut line = String::new();
    let read = stdin
        .read_line(&mut line)
        .map_err(|e| CliError::Usage(format!("cannot read stdin: {e}")))?;
    if read == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
}

/// Email and password: asked for on a terminal (the password without echo), else read as lines
/// from stdin (email first, unless `--email` gives it).
fn ask_email_and_password(email: Option<String>) -> CliResult<(String, String)> {
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut input = stdin.lock();
    let email = match email {
        Some(email) => email,
        None => {
            if interactive {
                let mut stderr = std::io::stderr().lock();
                let _ = write!(stderr, "Email: ");
                let _ = stderr.flush();
            }
            read_line(&mut input)?.ok_or_else(|| {
                CliError::Usage("no email given: pass --email or type it on stdin".into())
            })?
        }
    };
    let email = email.trim().to_string();
    if email.is_empty() {
        return Err(CliError::Usage("the email is empty".into()));
    }
    let password = if interactive {
        drop(input);
        rpassword::prompt_password("Password: ")
            .map_err(|e| CliError::Usage(format!("cannot read the password: {e}")))?
    } else {
        read_line(&mut input)?.ok_or_else(|| {
            CliError::Usage("no password given: write it on stdin after the email".into())
        })?
    };
    if password.is_empty() {
        return Err(CliError::Usage("the password is empty".into()));
    }
    Ok((email, password))
}

/// Checks that an API key works, with the one request any key may make.
async fn check_key(api: &mut Api) -> CliResult<()> {
    let _: (Page<serde_json::Value>, _) = api
        .get_query("/api/executions", &[("limit", "1".to_string())])
        .await?;
    Ok(())
}

pub async fn login(context: &Context, args: LoginArgs) -> CliResult<Exit> {
    let mut store = context.store()?;
    let server = context.server(Some(&store))?;
    if let Some(key) = args.api_key {
        let key = key.trim().to_string();
        let mut api = Api::new(
            server.clone(),
            Credential::ApiKey {
                key: key.clone(),
                from_env: false,
            },
            None,
            context.global.verbose,
            false,
        )?;
        check_key(&mut api).await?;
        store.set(&server, StoredCredential::ApiKey { key: key.clone() });
        store.save()?;
        if context.out.json_mode() {
            context.out.json(&json!({
                "server": server, "credential": "api_key", "key_prefix": key_prefix(&key),
            }));
        } else {
            context
                .out
                .line(&format!("Stored API key {} for {server}", key_prefix(&key)));
        }
        return Ok(Exit::Success);
    }

    let (email, password) = ask_email_and_password(args.email)?;
    start_session(
        context,
        &mut store,
        &server,
        "/api/auth/login",
        json!({ "email": email, "password": password }),
    )
    .await
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Email address [default: asked for; the first line of stdin when it is not a terminal]
    #[arg(long)]
    pub email: Option<String>,
    /// Display name
    #[arg(long)]
    pub name: Option<String>,
}

/// `voltrun register`: creates an account and logs in to it.
pub async fn register(context: &Context, args: RegisterArgs) -> CliResult<Exit> {
    let mut store = context.store()?;
    let server = context.server(Some(&store))?;
    let (email, password) = ask_email_and_password(args.email)?;
    let body = json!({ "email": email, "password": password, "name": args.name });
    start_session(context, &mut store, &server, "/api/auth/register", body).await
}

/// Logs in (or registers) through `path` and stores the session for `server`.
async fn start_session(
    context: &Context,
    store: &mut crate::config::CredentialStore,
    server: &str,
    path: &str,
    body: serde_json::Value,
) -> CliResult<Exit> {
    let mut api = context.anonymous(server.to_string(), None)?;
    let reply = api
        .send_anonymous(Method::POST, path, Body::json(&body))
        .await?;
    let (auth, _): (AuthResponse, _) = api.decode(&reply)?;
    store.set(
        server,
        StoredCredential::Session {
            email: auth.user.email.clone(),
            access_token: auth.access_token,
            refresh_token: auth.refresh_token,
        },
    );
    store.save()?;
    if context.out.json_mode() {
        context.out.json(&json!({
            "server": server, "credential": "session",
            "user": {"id": auth.user.id, "email": auth.user.email},
        }));
    } else {
        context
            .out
            .line(&format!("Logged in to {server} as {}", auth.user.email));
    }
    if context.env.api_key.is_some() {
        context
            .out
            .warn("VOLTRUN_API_KEY is set: commands use that key, not this login");
    }
    Ok(Exit::Success)
}

pub async fn logout(context: &Context) -> CliResult<Exit> {
    let mut store = context.store()?;
    let server = context.server(Some(&store))?;
    let Some(credential) = store.remove(&server) else {
        context.out.note(&format!("Not logged in to {server}"));
        return Ok(Exit::Success);
    };
    // Forget the credentials whatever the server says: the user asked for them to be gone.
    store.save()?;
    if let StoredCredential::Session { refresh_token, .. } = credential {
        let mut api = context.anonymous(server.clone(), None)?;
        let ended = api
            .send_anonymous(
                Method::POST,
                "/api/auth/logout",
                Body::json(&json!({ "refresh_token": refresh_token })),
            )
            .await;
        if let Err(e) = ended {
            context.out.warn(&format!(
                "the stored credentials are removed, but the session could not be ended on the server: {}",
                e.line()
            ));
        }
    }
    context.out.line(&format!("Logged out of {server}"));
    Ok(Exit::Success)
}

pub async fn whoami(context: &Context) -> CliResult<Exit> {
    let mut api = context.api()?;
    let server = api.server().to_string();
    if let Credential::ApiKey { key, from_env } = api.credential() {
        let (prefix, source) = (
            key_prefix(key),
            if *from_env {
                "VOLTRUN_API_KEY"
            } else {
                "stored credentials"
            },
        );
        check_key(&mut api).await?;
        if context.out.json_mode() {
            context.out.json(&json!({
                "server": server, "credential": "api_key", "key_prefix": prefix, "source": source,
            }));
        } else {
            context
                .out
                .line(&format!("API key {prefix} (from {source}) on {server}"));
        }
        return Ok(Exit::Success);
    }
    let (user, raw): (User, _) = api.get("/api/auth/me").await?;
    if context.out.json_mode() {
        context.out.json(&json!({
            "server": server, "credential": "session", "user": raw,
        }));
    } else {
        let name = user.name.map(|n| format!(" ({n})")).unwrap_or_default();
        context.out.line(&format!(
            "{}{name} on {server} (user id {})",
            user.email, user.id
        ));
    }
    Ok(Exit::Success)
}
