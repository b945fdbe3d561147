//! Layers at run time, as Lambda's managed runtimes have them: a function's layer versions merged
//! read-only at `/opt` (a later layer's file hiding an earlier one's), `/opt/python` and its
//! `lib/python3.x/site-packages` on Python's module path, `/opt/nodejs/node_modules` on Node.js's
//! `NODE_PATH`, `/opt/bin` on `PATH`. AWS's open-source clients are no oracle here (what puts `/opt`
//! on the module paths is the managed runtime's start-up, not the client), so the expectations are
//! Lambda's documented paths.

use serde_json::{Value, json};

use crate::helpers::{self, TestApp};
use crate::{deploy, engine_app, invoke};

/// Publishes a layer of `(path, contents, mode)` files; returns its `name:version`.
async fn publish(app: &TestApp, token: &str, name: &str, files: &[(&str, &str, u32)]) -> String {
    let entries: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|(p, c, m)| (*p, c.as_bytes(), *m))
        .collect();
    let reply = app
        .post(
            "/api/layers",
            token,
            json!({"name": name, "code": {"zip_base64": helpers::b64(&helpers::zip_of(&entries))}}),
        )
        .await
        .expect(201);
    reply.body["reference"].as_str().unwrap().to_string()
}

const PYTHON_USES_LAYERS: &str = r#"import os, shutil, subprocess, sys
import greet, sitepkg, shadow

def handler(event, context):
    try:
        open("/opt/python/written", "w")
        writable = True
    except OSError:
        writable = False
    return {
        "greet": greet.GREETING,
        "sitepkg": sitepkg.WHERE,
        "shadow": shadow.WHO,
        "path": sys.path[:4],
        # A guest's root image has no shell to run the script with; a sandbox has the host's.
        "tool": subprocess.run(["tool"], capture_output=True, text=True).stdout.strip()
                if os.path.exists("/bin/sh") else None,
        "which": shutil.which("tool"),
        "opt_writable": writable,
    }
"#;

const NODE_USES_LAYERS: &str = r#"const dep = require('dep');
exports.handler = async () => ({ dep: dep.WHO, nodePath: process.env.NODE_PATH });
"#;

/// Deploys a Python and a Node.js function on layers and checks what they see at `/opt`. Shared by
/// the namespace sandbox's test and the emulated guest's (where the layers are a drive of their own,
/// and the root image has no `/bin/sh` to run a layer's script with: `shell` is false).
pub(crate) async fn layers_reach_python_and_node(app: &TestApp, token: &str, shell: bool) {
    let major_minor = {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')",
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let site = format!("python/lib/python{major_minor}/site-packages/sitepkg.py");
    let first = publish(
        app,
        token,
        "pydeps",
        &[
            (
                "python/greet.py",
                "GREETING = 'hello from a layer'\n",
                0o100644,
            ),
            (&site, "WHERE = 'site-packages'\n", 0o100644),
            ("python/shadow.py", "WHO = 'the first layer'\n", 0o100644),
            ("bin/tool", "#!/bin/sh\necho tool from a layer\n", 0o100755),
        ],
    )
    .await;
    let second = publish(
        app,
        token,
        "override",
        &[("python/shadow.py", "WHO = 'the second layer'\n", 0o100644)],
    )
    .await;
    let python = app.runtime("python").await.unwrap();
    let id = deploy(
        app,
        token,
        "on-layers",
        &python,
        "main.handler",
        &[("main.py", PYTHON_USES_LAYERS)],
        json!({"layers": [first, second]}),
    )
    .await;
    let run = invoke(app, token, &id, json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let out = &run["output"];
    assert_eq!(out["greet"], "hello from a layer", "{run}");
    assert_eq!(out["sitepkg"], "site-packages", "{run}");
    assert_eq!(
        out["shadow"], "the second layer",
        "the later layer wins: {run}"
    );
    assert_eq!(
        out["path"],
        json!([
            "/var/task",
            format!("/opt/python/lib/python{major_minor}/site-packages"),
            "/opt/python",
            "/var/runtime"
        ]),
        "{run}"
    );
    let tool = if shell {
        json!("tool from a layer")
    } else {
        Value::Null
    };
    assert_eq!(out["tool"], tool, "{run}");
    assert_eq!(out["which"], "/opt/bin/tool", "{run}");
    assert_eq!(out["opt_writable"], false, "/opt is read-only: {run}");

    let node_layer = publish(
        app,
        token,
        "nodedeps",
        &[(
            "nodejs/node_modules/dep/index.js",
            "exports.WHO = 'a package from a layer';\n",
            0o100644,
        )],
    )
    .await;
    let node = app.runtime("nodejs").await.unwrap();
    let id = deploy(
        app,
        token,
        "node-on-layers",
        &node,
        "index.handler",
        &[("index.js", NODE_USES_LAYERS)],
        json!({"layers": [node_layer]}),
    )
    .await;
    let run = invoke(app, token, &id, json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"]["dep"], "a package from a layer", "{run}");
    let major = node.trim_start_matches("nodejs");
    assert_eq!(
        run["output"]["nodePath"],
        format!(
            "/opt/nodejs/node{major}/node_modules:/opt/nodejs/node_modules:/var/runtime/node_modules:/var/runtime:/var/task"
        ),
        "{run}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_are_merged_at_opt_on_lambdas_module_paths() {
    let Some(app) = engine_app("layers_are_merged_at_opt_on_lambdas_module_paths", |_| {}).await
    else {
        return;
    };
    let user = app.register().await;
    let t = &user.access_token;
    layers_reach_python_and_node(&app, t, true).await;

    // Without layers, /opt is the sandbox's own (empty) and the module path still names it.
    let python = app.runtime("python").await.unwrap();
    let id = deploy(
        &app,
        t,
        "no-layers",
        &python,
        "main.handler",
        &[("main.py", "import os, sys\ndef handler(e, c):\n    return {'opt': sorted(os.listdir('/opt')) if os.path.isdir('/opt') else None, 'path': sys.path[2]}\n")],
        json!({}),
    )
    .await;
    let run = invoke(&app, t, &id, json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"]["path"], "/opt/python", "{run}");

    // The function's own libraries come after the system's on LD_LIBRARY_PATH: a `libz.so.1` in
    // its `lib/` does not replace the one the interpreter links.
    let id = deploy(
        &app,
        t,
        "own-libz",
        &python,
        "main.handler",
        &[
            (
                "main.py",
                "import zlib\ndef handler(e, c):\n    return len(zlib.compress(b'x' * 100))\n",
            ),
            ("lib/libz.so.1", "not a library"),
        ],
        json!({}),
    )
    .await;
    let run = invoke(&app, t, &id, json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let opt: &Value = &run["output"]["opt"];
    assert!(
        opt.is_null() || opt == &json!([]),
        "nothing of the host shows at /opt: {run}"
    );
}
