//! The architecture's rules that the compiler does not enforce, checked on the workspace itself:
//! the crates depend one way (cargo refuses a cycle of normal dependencies, but not one closed by
//! a dev-dependency), and the scheduler reaches no isolation backend or database except through
//! its traits.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Each workspace crate and the workspace crates it depends on, of every kind (normal, build, dev).
fn workspace_graph() -> BTreeMap<String, BTreeSet<String>> {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let members: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["name"].as_str().unwrap().to_string())
                .filter(|name| members.contains(name))
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

/// A cycle through `graph`, as the crates along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        graph: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(graph, next, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut Vec::new(), &mut done))
}

#[test]
fn the_crates_depend_one_way_dev_dependencies_included() {
    let graph = workspace_graph();
    assert!(graph.len() > 10, "the workspace's crates: {graph:?}");
    assert_eq!(find_cycle(&graph), None);
    assert!(
        !graph["voltrun-engine"].contains("voltrun-storage"),
        "the engine reads code through CodeSource, not the database"
    );
}

#[test]
fn a_cycle_closed_by_a_dev_dependency_is_found() {
    let mut graph = BTreeMap::new();
    graph.insert("agent".to_string(), BTreeSet::from(["engine".to_string()]));
    graph.insert("engine".to_string(), BTreeSet::from(["agent".to_string()]));
    graph.insert("cli".to_string(), BTreeSet::new());
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["agent".into(), "engine".into(), "agent".into()])
    );
}

#[test]
fn the_scheduler_names_no_backend_and_no_database() {
    let dir = workspace_root().join("crates/engine/src/scheduler");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        // Without whitespace, so that `isolation::{\n guest::…}` reads as `isolation::{guest::…}`.
        let text: String = std::fs::read_to_string(&path)
            .unwrap()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        files += 1;
        for backend in [
            "namespace::",
            "guest::",
            "NamespaceIsolation",
            "GuestIsolation",
            "GuestLauncher",
            "FirecrackerLauncher",
            "EmulatedLauncher",
            "UidPool",
            "voltrun_sandbox",
            "voltrun_vm",
            "voltrun_agent",
            "voltrun_storage",
        ] {
            assert!(
                !text.contains(backend),
                "{} names {backend}: the scheduler reaches backends only through Isolation, and \
                 code only through CodeSource",
                path.display()
            );
        }
    }
    assert!(files >= 5, "the scheduler's files in {}", dir.display());
}
