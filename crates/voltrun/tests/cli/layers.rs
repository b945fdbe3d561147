//! Layers from the CLI: publish a directory, name the version in voltrun.toml, list, and delete once
//! no function uses it.

use crate::helpers::{Cli, TestServer, write};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_layer_is_named_in_voltrun_toml_and_deleted_once_unused() {
    let server = TestServer::spawn().await;
    let user = server.register().await;
    let cli = Cli::new(&server.url);
    cli.login(&user).await.ok();
    let layer = cli.work.join("deps");
    std::fs::create_dir_all(layer.join("python")).unwrap();
    write(&layer.join("python/dep.py"), "WHO = 'a layer'\n");

    let published = cli
        .run(&[
            "layers",
            "publish",
            "deps",
            "deps",
            "--description",
            "shared",
        ])
        .await
        .ok();
    assert!(published.stdout.contains("deps:1"), "{}", published.stdout);
    let again = cli
        .run(&["layers", "publish", "deps", "deps", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(again["reference"], "deps:2");
    let list = cli.run(&["layers", "list"]).await.ok();
    assert!(
        list.stdout.contains("deps:2") && list.stdout.contains("shared"),
        "{}",
        list.stdout
    );

    let dir = cli.init("uses-deps", "provided").await;
    let manifest = std::fs::read_to_string(dir.join("voltrun.toml")).unwrap();
    write(
        &dir.join("voltrun.toml"),
        &format!("layers = [\"deps:1\"]\n{manifest}"),
    );
    cli.run(&["deploy", "uses-deps"]).await.ok();
    let function = cli
        .run(&["functions", "get", "uses-deps", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(function["layers"], serde_json::json!(["deps:1"]));

    let refused = cli.run(&["layers", "delete", "deps:1"]).await;
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(refused.stderr.contains("uses-deps"), "{}", refused.stderr);
    cli.run(&["layers", "delete", "deps:2"]).await.ok();
    let bad = cli.run(&["layers", "delete", "deps"]).await;
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("name:version"), "{}", bad.stderr);
}
