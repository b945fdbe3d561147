//! `voltrun layers publish|list|delete`: layer versions, which functions name as `name:version` in
//! their `voltrun.toml` (`layers = ["deps:1"]`) and find merged at `/opt`.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Subcommand;
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use crate::Context;
use crate::archive;
use crate::client::Body;
use crate::error::{CliError, CliResult, Exit};
use crate::output::{Cell, human_bytes, short_time};

#[derive(Debug, Subcommand)]
pub enum LayersCommand {
    /// Publish a directory as the next version of a layer (laid out as it appears under /opt:
    /// python/, nodejs/node_modules/, bin/, lib/)
    Publish {
        /// The layer's name (lower-case letters, digits and hyphens)
        name: String,
        /// The directory to publish (packed as `voltrun deploy` packs a function)
        #[arg(default_value = ".")]
        dir: PathBuf,
        #[arg(long)]
        description: Option<String>,
    },
    /// List your layer versions
    #[command(visible_alias = "ls")]
    List,
    /// Delete a layer version (refused while a function uses it)
    #[command(visible_alias = "rm")]
    Delete {
        /// `name:version`, e.g. deps:1
        reference: String,
    },
}

/// A layer version as the server shows it.
#[derive(Debug, Deserialize)]
struct Layer {
    reference: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    code_size_bytes: u64,
    #[serde(default)]
    created_at: String,
}

pub async fn run(context: &Context, command: LayersCommand) -> CliResult<Exit> {
    match command {
        LayersCommand::Publish {
            name,
            dir,
            description,
        } => publish(context, &name, &dir, description).await,
        LayersCommand::List => list(context).await,
        LayersCommand::Delete { reference } => delete(context, &reference).await,
    }
}

async fn publish(
    context: &Context,
    name: &str,
    dir: &std::path::Path,
    description: Option<String>,
) -> CliResult<Exit> {
    crate::project::check_function_name(name).map_err(CliError::Usage)?;
    let entries = archive::collect(dir)?;
    if entries.is_empty() {
        return Err(CliError::Config(format!(
            "{} has no files to publish",
            dir.display()
        )));
    }
    let zip = archive::pack(&entries)?;
    let mut body = json!({ "name": name, "code": { "zip_base64": STANDARD.encode(&zip) } });
    if let Some(description) = description {
        body["description"] = json!(description);
    }
    let mut api = context.api()?;
    let reply = api
        .send(Method::POST, "/api/layers", &[], Body::json(&body))
        .await?;
    let (layer, raw): (Layer, _) = api.decode(&reply)?;
    if context.out.json_mode() {
        context.out.json(&raw);
    } else {
        context.out.line(&format!(
            "Published layer version {} ({} zipped): add it to a function's layers in voltrun.toml",
            layer.reference,
            human_bytes(zip.len() as u64)
        ));
    }
    Ok(Exit::Success)
}

async fn list(context: &Context) -> CliResult<Exit> {
    let mut api = context.api()?;
    let layers: Vec<serde_json::Value> = api.list_all("/api/layers").await?;
    if context.out.json_mode() {
        context.out.json(&serde_json::Value::Array(layers));
        return Ok(Exit::Success);
    }
    let layers: Vec<Layer> = layers
        .iter()
        .map(|v| serde_json::from_value(v.clone()))
        .collect::<Result<_, _>>()
        .map_err(|e| api.bad_response(e))?;
    if layers.is_empty() {
        context
            .out
            .note("No layers: publish one with `voltrun layers publish NAME DIR`");
        return Ok(Exit::Success);
    }
    let rows: Vec<Vec<Cell>> = layers
        .into_iter()
        .map(|l| {
            vec![
                l.reference.into(),
                human_bytes(l.code_size_bytes).into(),
                short_time(&l.created_at).into(),
                l.description.into(),
            ]
        })
        .collect();
    context
        .out
        .table(&["LAYER", "SIZE", "CREATED", "DESCRIPTION"], &rows);
    Ok(Exit::Success)
}

async fn delete(context: &Context, reference: &str) -> CliResult<Exit> {
    let Some((name, version)) = reference
        .rsplit_once(':')
        .filter(|(n, v)| !n.is_empty() && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
    else {
        return Err(CliError::Usage(format!(
            "{reference:?} is not a layer version: use name:version, e.g. deps:1"
        )));
    };
    let mut api = context.api()?;
    api.send(
        Method::DELETE,
        &format!("/api/layers/{name}/versions/{version}"),
        &[],
        Body::Empty,
    )
    .await?;
    if context.out.json_mode() {
        context.out.json(&json!({ "deleted": reference }));
    } else {
        context
            .out
            .line(&format!("Deleted layer version {reference}"));
    }
    Ok(Exit::Success)
}
