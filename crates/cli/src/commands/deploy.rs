//! `voltrun deploy [DIR]`: reads `voltrun.toml`, zips the directory (see [`crate::archive`] for
//! what goes in), and creates the function or, when one of that name exists, updates it. An
//! unchanged redeploy keeps the version (the archive is byte-for-byte the same).

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Args;
use reqwest::Method;
use serde_json::json;

use crate::Context;
use crate::api::Function;
use crate::archive;
use crate::client::Body;
use crate::error::{CliResult, Exit};
use crate::output::{Cell, human_bytes};
use crate::project::Manifest;

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The function directory, holding voltrun.toml
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// List the files that would be uploaded and their size; contact no server
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(context: &Context, args: DeployArgs) -> CliResult<Exit> {
    let manifest = Manifest::load(&args.dir)?;
    let entries = archive::collect(&args.dir)?;
    let total: u64 = entries.iter().map(|e| e.size).sum();
    if args.dry_run {
        let zipped = archive::pack(&entries)?.len() as u64;
        if context.out.json_mode() {
            let files: Vec<_> = entries
                .iter()
                .map(|e| json!({ "path": e.path, "size": e.size }))
                .collect();
            context.out.json(&json!({
                "name": manifest.name, "files": files, "total_bytes": total, "zipped_bytes": zipped,
            }));
        } else {
            let rows: Vec<Vec<Cell>> = entries
                .iter()
                .map(|e| vec![human_bytes(e.size).into(), e.path.as_str().into()])
                .collect();
            context.out.table(&["SIZE", "FILE"], &rows);
            context.out.line(&format!(
                "{}, {} ({} zipped) would be deployed as {}",
                files(entries.len()),
                human_bytes(total),
                human_bytes(zipped),
                manifest.name
            ));
        }
        return Ok(Exit::Success);
    }
    if entries.is_empty() {
        return Err(crate::error::CliError::Config(format!(
            "{} has no files to deploy",
            args.dir.display()
        )));
    }
    let zip = archive::pack(&entries)?;
    let mut api = context.api()?;
    let existing = super::functions::find_by_name(&mut api, &manifest.name).await?;
    let mut body = manifest.to_request();
    body["code"] = json!({ "zip_base64": STANDARD.encode(&zip) });
    let (method, path) = match &existing {
        Some(f) => (Method::PUT, format!("/api/functions/{}", f.id)),
        None => (Method::POST, "/api/functions".to_string()),
    };
    // With the upload's progress line: for a person watching, not for logs.
    if context.out.stderr_is_terminal && !context.out.json_mode() {
        context.out.note(&format!(
            "Deploying {} ({}, {} zipped) to {}",
            manifest.name,
            files(entries.len()),
            human_bytes(zip.len() as u64),
            api.server()
        ));
    }
    let reply = api.send(method, &path, &[], Body::json(&body)).await?;
    let (function, raw): (Function, _) = api.decode(&reply)?;
    if context.out.json_mode() {
        context.out.json(&raw);
        return Ok(Exit::Success);
    }
    let what = match &existing {
        None => "Created",
        Some(before) if before.version == function.version => "Unchanged",
        Some(_) => "Updated",
    };
    context.out.line(&format!(
        "{what} function {} ({}): version {}",
        function.name, function.id, function.version
    ));
    Ok(Exit::Success)
}

fn files(count: usize) -> String {
    if count == 1 {
        "1 file".to_string()
    } else {
        format!("{count} files")
    }
}
