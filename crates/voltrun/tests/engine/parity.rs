//! Lambda parity of the built-in runtimes, with AWS's own runtime interface clients as the oracle:
//! each case deploys the same code twice, on the built-in runtime and on `awslambdaric` /
//! `aws-lambda-ric` started from a `provided` bootstrap (what Lambda's managed runtimes run), sends
//! both the same events, and requires the same output, error type and message, and the same log
//! lines once timestamps and request ids are set aside.

use serde_json::{Value, json};

use crate::helpers::{self, TestApp};
use crate::ric::{
    NODE_STREAMING_HANDLER, PY_BOOTSTRAP, PY_RIC_VERSION, deploy_bundle, not_installed, ric_dir,
    tree, with_node_ric,
};
use crate::{engine_app, invoke, logs};

type Files = Vec<(String, Vec<u8>, u32)>;

/// Deploys `files` as a zip on a built-in runtime.
async fn deploy_builtin(
    app: &TestApp,
    token: &str,
    name: &str,
    runtime: &str,
    handler: &str,
    files: &Files,
) -> String {
    let entries: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|(p, c, m)| (p.as_str(), c.as_slice(), *m))
        .collect();
    let reply = app
        .post(
            "/api/functions",
            token,
            json!({"name": name, "runtime": runtime, "handler": handler, "memory_mb": 256,
                   "code": {"zip_base64": helpers::b64(&helpers::zip_of(&entries))}}),
        )
        .await
        .expect(201);
    reply.body["id"].as_str().unwrap().to_string()
}

/// Deploys `code` (`index.handler`) twice: on the built-in Node.js runtime `node`, and beside
/// aws-lambda-ric as `provided` (`<name>-oracle`). Returns both ids.
async fn deploy_node_pair(
    app: &TestApp,
    token: &str,
    name: &str,
    node: &str,
    code: Files,
) -> (String, String) {
    let builtin = deploy_builtin(app, token, name, node, "index.handler", &code).await;
    let bundle = with_node_ric(code);
    let oracle = deploy_bundle(
        app,
        token,
        &format!("{name}-oracle"),
        "index.handler",
        &bundle,
    )
    .await;
    (builtin, oracle)
}

/// A log's lines (`<time> <stream> <line>` each) without the platform's own (`START`, `END`,
/// `REPORT`), stdout's in order and then stderr's (the two are separate pipes: how they interleave is
/// not the runtime's doing), with the request id and every ISO-8601 UTC timestamp
/// (`2026-01-02T03:04:05.678Z`) replaced by a placeholder.
fn normalised_lines(text: &str, request_id: &str) -> Vec<String> {
    let mut lines: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ' ');
            let (_, stream, line) = (parts.next()?, parts.next()?, parts.next().unwrap_or(""));
            Some((stream.to_string(), line.to_string()))
        })
        .filter(|(_, l)| {
            !["START ", "END ", "REPORT "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(|(s, l)| (s, mask_timestamps(&l.replace(request_id, "<request-id>"))))
        .collect();
    lines.sort_by(|a, b| b.0.cmp(&a.0));
    lines
        .into_iter()
        .map(|(s, l)| format!("{s}: {l}"))
        .collect()
}

fn mask_timestamps(line: &str) -> String {
    let shape = b"dddd-dd-ddTdd:dd:dd.dddZ";
    let bytes = line.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let fits = bytes.len() - i >= shape.len()
            && shape.iter().zip(&bytes[i..]).all(|(s, b)| match s {
                b'd' => b.is_ascii_digit(),
                other => other == b,
            });
        if fits {
            out.push_str("<time>");
            i += shape.len();
        } else {
            let c = line[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// What one invocation gave, as compared across the two runtimes.
#[derive(Debug, PartialEq)]
struct Seen {
    status: Value,
    output: Value,
    error: Value,
    lines: Vec<String>,
}

async fn seen(app: &TestApp, token: &str, id: &str, event: Value) -> Seen {
    let run = invoke(app, token, id, event).await;
    let execution = run["id"].as_str().unwrap();
    Seen {
        status: run["status"].clone(),
        output: run["output"].clone(),
        error: run["error"].clone(),
        lines: normalised_lines(&logs(app, token, execution).await, execution),
    }
}

/// Sends a failing event to both functions: the same status, error and output.
async fn same_failure(app: &TestApp, token: &str, (builtin, oracle): (&str, &str), event: Value) {
    let ours = invoke(app, token, builtin, event.clone()).await;
    let theirs = invoke(app, token, oracle, event.clone()).await;
    assert_eq!(ours["status"], "failed", "{event}: {ours}");
    assert_eq!(ours["error"], theirs["error"], "{event}: {ours} {theirs}");
    assert_eq!(ours["output"], theirs["output"], "{event}");
}

/// Sends each event to both functions and requires the same outcome; returns the built-in's.
async fn same_on_both(
    app: &TestApp,
    token: &str,
    (builtin, oracle): (&str, &str),
    events: &[Value],
) -> Vec<Seen> {
    let mut all = Vec::new();
    for event in events {
        let ours = seen(app, token, builtin, event.clone()).await;
        let theirs = seen(app, token, oracle, event.clone()).await;
        assert_eq!(
            ours, theirs,
            "the built-in runtime and AWS's client differ on {event}"
        );
        all.push(ours);
    }
    all
}

const PY_LOGGING: &str = r#"import logging
import sys

logger = logging.getLogger()
logger.setLevel(logging.INFO)

def handler(event, context):
    logger.info("handling %s", event["name"])
    logging.getLogger("child").warning("careful with %s", event["name"])
    print("a plain print")
    print("to stderr", file=sys.stderr)
    if "fail" in event:
        raise ValueError("boom: " + event["fail"])
    if event.get("context"):
        public = sorted(n for n in dir(context) if not n.startswith("_"))
        return {
            "attributes": public,
            "values": {n: str(getattr(context, n)).replace(context.function_name, "<fn>") for n in public
                       if isinstance(getattr(context, n), (str, int, type(None)))
                       and n != "aws_request_id" and n != "log_stream_name"},
            "identity": {n: getattr(context.identity, n) for n in
                         ("cognito_identity_id", "cognito_identity_pool_id")},
            "remaining": 0 < context.get_remaining_time_in_millis() <= 30000,
        }
    return {"hello": event["name"], "module": __name__}
"#;

/// A handler in a package module named with dots (`pkg.mod.handler`, the module in a namespace
/// package without `__init__.py`), and Python's `logging` on the root logger in Lambda's format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_dotted_handlers_and_logging_match_awslambdaric() {
    let Some(app) = engine_app(
        "python_dotted_handlers_and_logging_match_awslambdaric",
        |_| {},
    )
    .await
    else {
        return;
    };
    let installed = ric_dir().join("python");
    if !installed
        .join(format!("awslambdaric-{PY_RIC_VERSION}.dist-info"))
        .is_dir()
    {
        not_installed(&format!("awslambdaric {PY_RIC_VERSION}"), &installed);
    }
    let user = app.register().await;
    let t = &user.access_token;
    let code: Files = vec![("pkg/mod.py".into(), PY_LOGGING.into(), 0o100644)];
    let python = app.runtime("python").await.unwrap();
    let builtin = deploy_builtin(&app, t, "py-builtin", &python, "pkg.mod.handler", &code).await;
    let mut bundle = code.clone();
    tree(&installed, "vendor/", &mut bundle);
    bundle.push(("bootstrap".into(), PY_BOOTSTRAP.into(), 0o100755));
    let oracle = deploy_bundle(&app, t, "py-oracle", "pkg.mod.handler", &bundle).await;

    let seen = same_on_both(
        &app,
        t,
        (&builtin, &oracle),
        &[
            json!({"name": "ada"}),
            json!({"name": "grace"}),
            json!({"name": "ctx", "context": true}),
        ],
    )
    .await;
    assert_eq!(seen[0].output, json!({"hello": "ada", "module": "pkg.mod"}));
    assert_eq!(seen[2].output["remaining"], true, "{:?}", seen[2]);
    assert!(
        seen[1]
            .lines
            .contains(&"stdout: [INFO]\t<time>\t<request-id>\thandling grace".to_string()),
        "{:?}",
        seen[1].lines
    );
    assert!(
        seen[1]
            .lines
            .contains(&"stdout: [WARNING]\t<time>\t<request-id>\tcareful with grace".to_string())
    );

    // Errors: the same type and message (their logs differ: the client writes the traceback as
    // one line, the built-in runtime as the interpreter prints it).
    same_failure(
        &app,
        t,
        (&builtin, &oracle),
        json!({"name": "x", "fail": "no"}),
    )
    .await;

    // A function's own module named `logging` is imported as it is, not mistaken for the standard
    // library's (whose handler the runtime installs when it is imported).
    let own = vec![
        (
            "main.py".into(),
            b"import logging\ndef handler(e, c):\n    return logging.WHO\n".to_vec(),
            0o100644,
        ),
        (
            "logging.py".into(),
            b"WHO = 'the function'\n".to_vec(),
            0o100644,
        ),
    ];
    let id = deploy_builtin(&app, t, "own-logging", &python, "main.handler", &own).await;
    let run = invoke(&app, t, &id, json!({})).await;
    assert_eq!(run["output"], "the function", "{run}");

    // The slashed form of the same handler, as Lambda accepts it too.
    let slashed = deploy_builtin(&app, t, "py-slashed", &python, "pkg/mod.handler", &code).await;
    let run = invoke(&app, t, &slashed, json!({"name": "linus"})).await;
    assert_eq!(
        run["output"],
        json!({"hello": "linus", "module": "pkg.mod"})
    );
}

const NODE_HTTP_STREAMING_HANDLER: &str = r#"export const handler = awslambda.streamifyResponse(async (event, responseStream) => {
  const http = awslambda.HttpResponseStream.from(responseStream, {
    statusCode: 201,
    headers: { "x-custom": event.name },
  });
  http.write(`hello ${event.name}`);
  http.end();
});
"#;

/// `awslambda.streamifyResponse` and `awslambda.HttpResponseStream`, the global Lambda's Node.js
/// runtime defines: streamed bodies, errors before and after the first byte, and an HTTP prelude.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_response_streaming_matches_aws_lambda_ric() {
    let Some(app) = engine_app("node_response_streaming_matches_aws_lambda_ric", |_| {}).await
    else {
        return;
    };
    let user = app.register().await;
    let t = &user.access_token;
    let node = app.runtime("nodejs").await.unwrap();
    for (name, source) in [
        ("stream", NODE_STREAMING_HANDLER),
        ("http-stream", NODE_HTTP_STREAMING_HANDLER),
    ] {
        let code: Files = vec![("index.mjs".into(), source.into(), 0o100644)];
        let (builtin, oracle) = deploy_node_pair(&app, t, name, &node, code).await;
        let events = [json!({"name": "ada"}), json!({"name": "grace"})];
        let seen = same_on_both(&app, t, (&builtin, &oracle), &events).await;
        assert_eq!(seen[0].status, "succeeded", "{name}: {:?}", seen[0]);
        if name == "stream" {
            assert_eq!(seen[0].output, json!({"streamed": "ada"}));
            for fail in ["early", "late"] {
                let event = json!({"name": "x", "fail": fail});
                same_failure(&app, t, (&builtin, &oracle), event).await;
            }
        }
    }
}

const NODE_CONSOLE_HANDLER: &str = r#"export const handler = async (event, context) => {
  console.log("handling %s", event.name, { n: 1 });
  console.info("two\nlines");
  console.warn("careful");
  console.error("to error");
  console.debug("debugging");
  if (event.fail) throw new RangeError(`boom: ${event.fail}`);
  if (event.context) {
    const keys = Object.keys(context).sort();
    return {
      keys,
      types: Object.fromEntries(keys.map((k) => [k, typeof context[k]])),
      remaining: context.getRemainingTimeInMillis() > 0,
    };
  }
  return { hello: event.name };
};
"#;

/// Lambda's console (every method a line on stdout in Lambda's format, newlines kept in one event)
/// and the context object's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_console_and_context_match_aws_lambda_ric() {
    let Some(app) = engine_app("node_console_and_context_match_aws_lambda_ric", |_| {}).await
    else {
        return;
    };
    let user = app.register().await;
    let t = &user.access_token;
    let node = app.runtime("nodejs").await.unwrap();
    let code: Files = vec![("index.mjs".into(), NODE_CONSOLE_HANDLER.into(), 0o100644)];
    let (builtin, oracle) = deploy_node_pair(&app, t, "console", &node, code).await;
    let seen = same_on_both(
        &app,
        t,
        (&builtin, &oracle),
        &[
            json!({"name": "ada"}),
            json!({"name": "ctx", "context": true}),
        ],
    )
    .await;
    assert!(
        seen[0]
            .lines
            .contains(&"stdout: <time>\t<request-id>\tINFO\thandling ada { n: 1 }".to_string()),
        "{:?}",
        seen[0].lines
    );
    assert!(
        seen[0]
            .lines
            .contains(&"stdout: <time>\t<request-id>\tINFO\ttwo\rlines".to_string())
    );
    assert_eq!(seen[1].output["remaining"], true);
    // Where Lambda's managed runtime differs from aws-lambda-ric 4, the managed runtime is followed:
    // `callbackWaitsForEmptyEventLoop` exists (true, not enumerable), which the client lacks.
    let waits = "export const handler = async (e, c) => ({ waits: c.callbackWaitsForEmptyEventLoop, listed: Object.keys(c).includes('callbackWaitsForEmptyEventLoop') });";
    let code: Files = vec![("index.mjs".into(), waits.into(), 0o100644)];
    let id = deploy_builtin(&app, t, "waits", &node, "index.handler", &code).await;
    let run = invoke(&app, t, &id, json!({})).await;
    assert_eq!(
        run["output"],
        json!({"waits": true, "listed": false}),
        "{run}"
    );
    // Errors: the same type and message.
    same_failure(
        &app,
        t,
        (&builtin, &oracle),
        json!({"name": "x", "fail": "no"}),
    )
    .await;
}
