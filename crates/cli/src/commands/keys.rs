//! `voltrun keys create|list|delete`. Keys are managed with a login (the API refuses API keys here).

use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use crate::Context;
use crate::api::{ApiKey, CreatedKey, is_id};
use crate::client::{Api, Body};
use crate::error::{CliError, CliResult, Exit};
use crate::output::{Cell, Paint, or_dash, short_time};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key; the key is shown once
    Create {
        /// A name to recognise the key by
        name: String,
        /// What the key may do: full (everything) or execute (invoke functions, read executions)
        #[arg(long, value_parser = ["full", "execute"], default_value = "full")]
        scope: Vec<String>,
    },
    /// List your API keys
    #[command(visible_alias = "ls")]
    List,
    /// Delete an API key; it stops working at once
    #[command(visible_alias = "rm")]
    Delete {
        /// Id (or name, when only one key has it)
        key: String,
    },
}

pub async fn run(context: &Context, command: KeysCommand) -> CliResult<Exit> {
    match command {
        KeysCommand::Create { name, scope } => create(context, &name, scope).await,
        KeysCommand::List => list(context).await,
        KeysCommand::Delete { key } => delete(context, &key).await,
    }
}

async fn create(context: &Context, name: &str, scopes: Vec<String>) -> CliResult<Exit> {
    let mut api = context.api()?;
    let reply = api
        .send(
            Method::POST,
            "/api/keys",
            &[],
            Body::json(&json!({ "name": name, "scopes": scopes })),
        )
        .await?;
    let (created, raw): (CreatedKey, _) = api.decode(&reply)?;
    if context.out.json_mode() {
        context.out.json(&raw);
        return Ok(Exit::Success);
    }
    context.out.line(&format!(
        "Created API key {:?} (id {}, scope {})",
        created.info.name,
        created.info.id,
        created.info.scopes.join(", ")
    ));
    context.out.painted_line(&created.key, Paint::Bold);
    context
        .out
        .note("This is the only time the key is shown: store it now.");
    Ok(Exit::Success)
}

async fn list(context: &Context) -> CliResult<Exit> {
    let mut api = context.api()?;
    let keys: Vec<serde_json::Value> = api.list_all("/api/keys").await?;
    if context.out.json_mode() {
        context.out.json(&serde_json::Value::Array(keys));
        return Ok(Exit::Success);
    }
    let keys: Vec<ApiKey> = keys
        .iter()
        .map(|v| serde_json::from_value(v.clone()))
        .collect::<Result<_, _>>()
        .map_err(|e| api.bad_response(e))?;
    if keys.is_empty() {
        context
            .out
            .note("No API keys: create one with `voltrun keys create NAME`");
        return Ok(Exit::Success);
    }
    let rows: Vec<Vec<Cell>> = keys
        .into_iter()
        .map(|k| {
            vec![
                k.name.into(),
                format!("{}…", k.prefix).into(),
                k.scopes.join(",").into(),
                short_time(&k.created_at).into(),
                or_dash(k.last_used_at.as_deref().map(short_time)).into(),
                k.id.into(),
            ]
        })
        .collect();
    context.out.table(
        &["NAME", "PREFIX", "SCOPES", "CREATED", "LAST USED", "ID"],
        &rows,
    );
    Ok(Exit::Success)
}

async fn resolve(api: &mut Api, key: &str) -> CliResult<String> {
    if is_id(key) {
        return Ok(key.to_string());
    }
    let keys: Vec<ApiKey> = api.list_all("/api/keys").await?;
    let mut named = keys.into_iter().filter(|k| k.name == key);
    match (named.next(), named.next()) {
        (Some(k), None) => Ok(k.id),
        (Some(_), Some(_)) => Err(CliError::Usage(format!(
            "several API keys are named {key:?}: give the id (`voltrun keys list`)"
        ))),
        (None, _) => Err(CliError::NotFound(format!(
            "no API key named {key:?} on {}",
            api.server()
        ))),
    }
}

async fn delete(context: &Context, key: &str) -> CliResult<Exit> {
    let mut api = context.api()?;
    let id = resolve(&mut api, key).await?;
    api.send(Method::DELETE, &format!("/api/keys/{id}"), &[], Body::Empty)
        .await?;
    if context.out.json_mode() {
        context.out.json(&json!({ "deleted": id }));
    } else {
        context.out.line(&format!("Deleted API key {id}"));
    }
    Ok(Exit::Success)
}
