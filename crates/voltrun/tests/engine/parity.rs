//! Lambda parity of the built-in runtimes, with AWS's own runtime interface clients as the oracle:
//! each case deploys the same code twice, on the built-in runtime and on `awslambdaric` /
//! `aws-lambda-ric` started from a `provided` bootstrap (what Lambda's managed runtimes run), sends
//! both the same events, and requires the same output, error type and message, and the same log
//! lines once timestamps and request ids are set aside.

use serde_json::{Value, json};

use crate::helpers::{self, TestApp};
use crate::ric::{NODE_STREAMING_HANDLER, deploy_bundle, with_node_ric, with_python_ric};
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

/// Deploys `code` twice: on the built-in Python runtime `python`, and beside awslambdaric as
/// `provided` (`<name>-oracle`). Returns both ids.
async fn deploy_python_pair(
    app: &TestApp,
    token: &str,
    name: &str,
    python: &str,
    handler: &str,
    code: Files,
) -> (String, String) {
    let builtin = deploy_builtin(app, token, name, python, handler, &code).await;
    let bundle = with_python_ric(code);
    let oracle = deploy_bundle(app, token, &format!("{name}-oracle"), handler, &bundle).await;
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
        .map(|(s, l)| {
            let l = mask_timestamps(&l.replace(request_id, "<request-id>"));
            (s, own_frames_in_logged_error(&l))
        })
        .collect();
    lines.sort_by(|a, b| b.0.cmp(&a.0));
    lines
        .into_iter()
        .map(|(s, l)| format!("{s}: {l}"))
        .collect()
}

/// A text log line that ends in an error as JSON (Node.js's `Invoke Error \t{...}`), with the
/// runtime's own frames left out of the error's `stack`.
fn own_frames_in_logged_error(line: &str) -> String {
    let Some((head, json)) = line.rsplit_once('\t') else {
        return line.to_string();
    };
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(mut error)) if error.contains_key("stack") => {
            own_frames(error.get_mut("stack").unwrap());
            format!("{head}\t{}", Value::Object(error))
        }
        _ => line.to_string(),
    }
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
    let user = app.register().await;
    let t = &user.access_token;
    let code: Files = vec![("pkg/mod.py".into(), PY_LOGGING.into(), 0o100644)];
    let python = app.runtime("python").await.unwrap();
    let (builtin, oracle) =
        deploy_python_pair(&app, t, "py", &python, "pkg.mod.handler", code.clone()).await;

    let seen = same_on_both(
        &app,
        t,
        (&builtin, &oracle),
        &[
            json!({"name": "ada"}),
            json!({"name": "grace"}),
            json!({"name": "ctx", "context": true}),
            json!({"name": "x", "fail": "no"}),
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

    // An unhandled error: the same type and message, and the same log line: the traceback of the
    // function's own frames joined with carriage returns (one log event), indented with no-break
    // spaces.
    assert_eq!(seen[3].error["message"], "ValueError: boom: no");
    let line = "stdout: [ERROR] ValueError: boom: no\rTraceback (most recent call last):\r\u{a0}\u{a0}File \"/var/task/pkg/mod.py\", line 13, in handler\r\u{a0}\u{a0}\u{a0}\u{a0}raise ValueError(\"boom: \" + event[\"fail\"])";
    assert!(
        seen[3].lines.iter().any(|l| l == line),
        "{:?}",
        seen[3].lines
    );

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
            let failures = [
                json!({"name": "x", "fail": "early"}),
                json!({"name": "x", "fail": "late"}),
            ];
            for failed in same_on_both(&app, t, (&builtin, &oracle), &failures).await {
                assert_eq!(failed.status, "failed", "{failed:?}");
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
            json!({"name": "x", "fail": "no"}),
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
    // An unhandled error: the same type, message and `Invoke Error` line (the error as JSON, the
    // function's frames of its stack compared).
    assert!(
        seen[2]
            .lines
            .iter()
            .any(|l| l.contains("\tERROR\tInvoke Error \t{")
                && l.contains("\"errorType\":\"RangeError\"")),
        "{:?}",
        seen[2].lines
    );
}

/// Sets both functions' logging controls, as a user would with an update.
async fn set_logging(app: &TestApp, token: &str, ids: [&str; 2], settings: Value) {
    for id in ids {
        app.put(&format!("/api/functions/{id}"), token, settings.clone())
            .await
            .expect(200);
    }
}

/// `None` for a runtime's frame, the location alone for a function's, other lines as they are.
fn own_frame(line: &str) -> Option<String> {
    let Some(frame) = line.trim_start().strip_prefix("at ") else {
        return Some(line.to_string());
    };
    let runtime = ["/node_modules/aws-lambda-ric/", "/vendor/awslambdaric/"];
    if !frame.contains("/var/task/") || runtime.iter().any(|r| frame.contains(r)) {
        return None;
    }
    let location = frame
        .rsplit_once('(')
        .map_or(frame, |(_, rest)| rest.trim_end_matches(')'));
    Some(format!("at {location}"))
}
fn own_frames(value: &mut Value) {
    match value {
        Value::Array(frames) => {
            *frames = frames
                .iter()
                .filter_map(|f| own_frame(f.as_str().unwrap_or("")).map(Value::from))
                .collect();
        }
        Value::String(text) if text.contains("\n    at ") => {
            *text = text
                .lines()
                .filter_map(own_frame)
                .collect::<Vec<_>>()
                .join("\n");
        }
        _ => {}
    }
}

/// A JSON log line with what differs between two runs set aside: its `timestamp`, and in each
/// stack trace (an array, or the lines of a message that formatted an error) the runtime's own
/// frames and the name a frame is called by (AWS's client calls the handler as a method), keeping
/// where in the function's code each of its frames is. Lines that are not JSON objects (a plain
/// `print`) are kept as they are.
fn json_normalised(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|line| {
            let (stream, text) = line.split_once(": ").unwrap();
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(mut fields)) => {
                    if fields.contains_key("timestamp") {
                        fields.insert("timestamp".into(), json!("<time>"));
                    }
                    for field in ["stackTrace", "message"] {
                        if let Some(value) = fields.get_mut(field) {
                            own_frames(value);
                        }
                    }
                    if let Some(stack) = fields
                        .get_mut("message")
                        .and_then(|m| m.get_mut("stackTrace"))
                    {
                        own_frames(stack);
                    }
                    json!({ stream: fields })
                }
                _ => json!({ stream: text }),
            }
        })
        .collect()
}

const PY_JSON_LOGGING: &str = r#"import logging

logging.getLogger().warning("at init")
logger = logging.getLogger()

def handler(event, context):
    logger.debug("debug %s", event["name"])
    logger.info("info %s", event["name"])
    logging.getLogger("child").warning({"a": 1, "name": event["name"]})
    logger.info("with extra", extra={"order": 7})
    print("a plain print")
    try:
        1 / 0
    except ZeroDivisionError:
        logger.exception("caught")
    if "fail" in event:
        raise ValueError("boom: " + event["fail"])
    return {"ok": event["name"]}
"#;

const NODE_JSON_LOGGING: &str = r#"export const handler = async (event, context) => {
  console.log("handling %s", event.name, { n: 1 });
  console.info({ structured: true, name: event.name });
  console.debug("debugging");
  console.warn("two\nlines");
  console.error("with an error", new TypeError("inner"));
  if (event.fail) throw new RangeError(`boom: ${event.fail}`);
  return { hello: event.name };
};
"#;

/// Lambda's JSON log format (`log_format: json`, `AWS_LAMBDA_LOG_FORMAT=JSON`) and application log
/// level (`AWS_LAMBDA_LOG_LEVEL`): the same JSON objects from the built-in runtimes' loggers as from
/// AWS's clients, for messages, structured messages, `extra` fields, logged exceptions and unhandled
/// errors, with the level filtering the same records, before and after a level change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_log_levels_match_awslambdaric_and_aws_lambda_ric() {
    let Some(app) = engine_app(
        "json_logs_and_log_levels_match_awslambdaric_and_aws_lambda_ric",
        |_| {},
    )
    .await
    else {
        return;
    };
    let user = app.register().await;
    let t = &user.access_token;

    // Python.
    let code: Files = vec![("main.py".into(), PY_JSON_LOGGING.into(), 0o100644)];
    let python = app.runtime("python").await.unwrap();
    let (builtin, oracle) =
        deploy_python_pair(&app, t, "py-json", &python, "main.handler", code).await;
    let pair = (builtin.as_str(), oracle.as_str());
    set_logging(
        &app,
        t,
        [pair.0, pair.1],
        json!({"log_format": "json", "log_level": "debug"}),
    )
    .await;
    let events = [json!({"name": "ada"}), json!({"name": "x", "fail": "no"})];
    let debug = json_seen(&app, t, pair, &events).await;
    let first = &debug[0];
    assert!(first.contains(&json!({"stdout": {"timestamp": "<time>", "level": "WARNING", "message": "at init", "logger": "root", "requestId": ""}})), "{first:#?}");
    assert!(first.contains(&json!({"stdout": {"timestamp": "<time>", "level": "DEBUG", "message": "debug ada", "logger": "root", "requestId": "<request-id>"}})), "{first:#?}");
    assert!(first.contains(&json!({"stdout": {"timestamp": "<time>", "level": "WARNING", "message": {"a": 1, "name": "ada"}, "logger": "child", "requestId": "<request-id>"}})), "{first:#?}");
    assert!(first.contains(&json!({"stdout": {"timestamp": "<time>", "level": "INFO", "message": "with extra", "logger": "root", "requestId": "<request-id>", "order": 7}})), "{first:#?}");
    assert!(
        first.contains(&json!({"stdout": "a plain print"})),
        "{first:#?}"
    );
    assert!(
        debug[1]
            .iter()
            .any(|l| l["stdout"]["errorType"] == "ValueError"
                && l["stdout"]["errorMessage"] == "boom: no"),
        "{:#?}",
        debug[1]
    );
    set_logging(&app, t, [pair.0, pair.1], json!({"log_level": "warn"})).await;
    let warn = json_seen(&app, t, pair, &events[..1]).await;
    assert!(
        !warn[0]
            .iter()
            .any(|l| l["stdout"]["level"] == "INFO" || l["stdout"]["level"] == "DEBUG"),
        "{:#?}",
        warn[0]
    );

    // Node.js.
    let node = app.runtime("nodejs").await.unwrap();
    let code: Files = vec![("index.mjs".into(), NODE_JSON_LOGGING.into(), 0o100644)];
    let (builtin, oracle) = deploy_node_pair(&app, t, "node-json", &node, code).await;
    let pair = (builtin.as_str(), oracle.as_str());
    set_logging(&app, t, [pair.0, pair.1], json!({"log_format": "json"})).await;
    let info = json_seen(&app, t, pair, &events).await;
    let first = &info[0];
    assert!(first.contains(&json!({"stdout": {"timestamp": "<time>", "level": "INFO", "requestId": "<request-id>", "message": "handling ada { n: 1 }"}})), "{first:#?}");
    assert!(first.contains(&json!({"stdout": {"timestamp": "<time>", "level": "INFO", "requestId": "<request-id>", "message": {"structured": true, "name": "ada"}}})), "{first:#?}");
    assert!(
        !first.iter().any(|l| l["stdout"]["level"] == "DEBUG"),
        "INFO is the default level: {first:#?}"
    );
    assert!(
        first.iter().any(|l| l["stdout"]["errorType"] == "TypeError"
            && l["stdout"]["errorMessage"] == "inner"
            && l["stdout"]["message"]
                == "with an error TypeError: inner\nat file:///var/task/index.mjs:6:34"),
        "an error among several arguments adds its fields: {first:#?}"
    );
    assert!(
        info[1]
            .iter()
            .any(|l| l["stdout"]["message"]["errorType"] == "RangeError"
                && l["stdout"]["message"]["errorMessage"] == "boom: no"),
        "{:#?}",
        info[1]
    );
}

/// Sends each event to both functions; requires the same status, output, error and normalised JSON
/// log lines; returns the built-in's lines per event.
async fn json_seen(
    app: &TestApp,
    token: &str,
    (builtin, oracle): (&str, &str),
    events: &[Value],
) -> Vec<Vec<Value>> {
    let mut all = Vec::new();
    for event in events {
        let ours = seen(app, token, builtin, event.clone()).await;
        let theirs = seen(app, token, oracle, event.clone()).await;
        assert_eq!(
            (&ours.status, &ours.output, &ours.error),
            (&theirs.status, &theirs.output, &theirs.error),
            "{event}"
        );
        let (ours_lines, theirs_lines) =
            (json_normalised(&ours.lines), json_normalised(&theirs.lines));
        assert_eq!(
            ours_lines, theirs_lines,
            "the built-in runtime and AWS's client log differently on {event}"
        );
        all.push(ours_lines);
    }
    all
}

/// `context.callbackWaitsForEmptyEventLoop` both ways, as Lambda's managed Node.js runtime has it
/// (aws-lambda-ric 4 has neither the property nor callback waiting, so this one has no oracle): a
/// callback's result waits for the function's pending timer by default (the timer has fired when the
/// next invocation looks), and goes at once with the property set to false.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_callbacks_wait_for_the_event_loop_unless_told_not_to() {
    let Some(app) = engine_app(
        "node_callbacks_wait_for_the_event_loop_unless_told_not_to",
        |_| {},
    )
    .await
    else {
        return;
    };
    let user = app.register().await;
    let t = &user.access_token;
    let node = app.runtime("nodejs").await.unwrap();
    let source = r#"let fired = 0;
exports.handler = (event, context, callback) => {
  if (event.wait === false) context.callbackWaitsForEmptyEventLoop = false;
  const seen = fired;
  setTimeout(() => { fired += 1; }, 700);
  callback(null, { firedBefore: seen });
};
"#;
    let code: Files = vec![("index.js".into(), source.into(), 0o100644)];
    let id = deploy_builtin(&app, t, "waits", &node, "index.handler", &code).await;
    let waited = invoke(&app, t, &id, json!({})).await;
    assert_eq!(waited["status"], "succeeded", "{waited}");
    assert!(
        waited["duration_ms"].as_i64().unwrap() >= 650,
        "the result waited for the timer: {waited}"
    );
    let at_once = invoke(&app, t, &id, json!({"wait": false})).await;
    assert_eq!(at_once["output"], json!({"firedBefore": 1}), "{at_once}");
    assert!(
        at_once["duration_ms"].as_i64().unwrap() < 500,
        "the result went before the timer: {at_once}"
    );
}

/// Makes a runtime's own file paths comparable: where Node.js names the module that asked for a
/// missing one (`Require stack: - …`), the built-in runtime's file and AWS's client's differ.
fn mask_runtime_paths(text: &str) -> String {
    let mut out = text.replace("/var/runtime/bootstrap.js", "<runtime>");
    while let Some(start) = out.find("/var/task/node_modules/aws-lambda-ric/") {
        let end = out[start..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\\')
            .map_or(out.len(), |n| start + n);
        out.replace_range(start..end, "<runtime>");
    }
    out
}

/// `lines` without Node.js's report of an exception nobody handled, from its
/// `node:internal/process/…` line to its `Node.js v…` line (or, where the process was stopped
/// before it wrote all of it, to the platform's own `[ERROR]` line, which is kept).
fn without_nodes_crash_dump(lines: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut in_dump = false;
    for line in lines {
        if line.starts_with("stderr: node:internal/process/") {
            in_dump = true;
        } else if in_dump && line.starts_with("stderr: [ERROR] ") {
            in_dump = false;
        }
        if !in_dump {
            kept.push(line.clone());
        }
        if in_dump && line.starts_with("stderr: Node.js v") {
            in_dump = false;
        }
    }
    kept
}

/// Invokes both functions of a pair whose start fails and requires the same failure: the same
/// error type and message and the same log lines. AWS's Python client also logs a warning that a
/// Lambda runtime update may be the cause (`LAMBDA_WARNING: Unhandled exception…`); VoltRun has no
/// runtime versions to roll back, so the built-in runtime leaves that line out and it is not
/// compared. AWS's Node.js client, once it has reported the error, dies of the same exception
/// unhandled; Node.js's dump of it reaches the logs only when the process gets to write it before
/// the failed instance is stopped (under load, it does), so it is not compared either.
async fn same_init_failure(app: &TestApp, token: &str, (builtin, oracle): (&str, &str)) -> Seen {
    let ours = seen(app, token, builtin, json!({})).await;
    let mut theirs = seen(app, token, oracle, json!({})).await;
    theirs.lines.retain(|l| !l.contains("LAMBDA_WARNING: "));
    theirs.lines = without_nodes_crash_dump(&theirs.lines);
    assert!(
        !ours
            .lines
            .iter()
            .any(|l| l.starts_with("stderr: node:internal/process/")),
        "the built-in runtime reports its init error without dying of it: {ours:?}"
    );
    let masked = |s: &Seen| {
        (
            s.status.clone(),
            mask_runtime_paths(&s.error.to_string()),
            s.lines
                .iter()
                .map(|l| mask_runtime_paths(l))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        masked(&ours),
        masked(&theirs),
        "the built-in runtime and AWS's client fail to start differently"
    );
    assert_eq!(ours.status, "failed", "{ours:?}");
    ours
}

/// Failed starts (an exception in the module's own code, a missing module, a syntax error, a missing
/// or clashing handler) give the same error and the same log lines on the built-in runtimes as on
/// AWS's clients; and a Node.js handler's dotted export path reaches into nested objects, as
/// Lambda's runtime resolves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_errors_and_handler_resolution_match_awslambdaric_and_aws_lambda_ric() {
    let Some(app) = engine_app(
        "init_errors_and_handler_resolution_match_awslambdaric_and_aws_lambda_ric",
        |_| {},
    )
    .await
    else {
        return;
    };
    let user = app.register().await;
    let t = &user.access_token;

    let python = app.runtime("python").await.unwrap();
    let python_cases: [(&str, &str, &str, &str, &str); 5] = [
        (
            "py-raises",
            "main.handler",
            "main.py",
            "print('before')\nraise ValueError('at import')\ndef handler(e, c):\n    return 1\n",
            "ValueError: at import",
        ),
        (
            "py-import",
            "main.handler",
            "main.py",
            "import no_such_module_xyz\ndef handler(e, c):\n    return 1\n",
            "Unable to import module 'main': No module named 'no_such_module_xyz'",
        ),
        (
            "py-syntax",
            "main.handler",
            "main.py",
            "def handler(e, c):\n    return 1 +\n",
            "Syntax error in module 'main'",
        ),
        (
            "py-missing",
            "main.handler",
            "main.py",
            "def other(e, c):\n    return 1\n",
            "Handler 'handler' missing on module 'main'",
        ),
        (
            "py-builtin",
            "sys.handler",
            "sys.py",
            "def handler(e, c):\n    return 1\n",
            "Cannot use built-in module sys as a handler module",
        ),
    ];
    for (name, handler, file, source, message) in python_cases {
        let code: Files = vec![(file.into(), source.into(), 0o100644)];
        let (builtin, oracle) = deploy_python_pair(&app, t, name, &python, handler, code).await;
        let failed = same_init_failure(&app, t, (&builtin, &oracle)).await;
        let error = failed.error["message"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{name}: {failed:?}");
        assert!(
            failed
                .lines
                .iter()
                .any(|l| l.starts_with("stdout: [ERROR] ")
                    && l.contains("\rTraceback (most recent call last):")),
            "{name}: {failed:?}"
        );
    }

    let node = app.runtime("nodejs").await.unwrap();
    let node_cases: [(&str, &str, &str, &str); 5] = [
        (
            "n-raises",
            "index.js",
            "console.log('before');\nthrow new TypeError('at import');\n",
            "TypeError: at import",
        ),
        (
            "n-require",
            "index.js",
            "require('no-such-package-xyz');\nexports.handler = async () => 1;\n",
            "Cannot find module 'no-such-package-xyz'",
        ),
        (
            "n-esm-import",
            "index.mjs",
            "import missing from 'no-such-package-xyz';\nexport const handler = async () => missing;\n",
            "Cannot find package 'no-such-package-xyz'",
        ),
        (
            "n-syntax",
            "index.js",
            "exports.handler = async () => { return 1 ",
            "SyntaxError",
        ),
        (
            "n-missing",
            "index.js",
            "exports.other = async () => 1;\n",
            "index.handler is undefined or not exported",
        ),
    ];
    for (name, file, source, message) in node_cases {
        let code: Files = vec![(file.into(), source.into(), 0o100644)];
        let (builtin, oracle) = deploy_node_pair(&app, t, name, &node, code).await;
        let failed = same_init_failure(&app, t, (&builtin, &oracle)).await;
        let error = failed.error["message"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{name}: {failed:?}");
        assert!(
            failed
                .lines
                .iter()
                .any(|l| l.contains("\tERROR\tInit Error \t{") && l.contains("\"errorType\":")),
            "{name}: {failed:?}"
        );
    }

    // A dotted export path reaches into nested objects, in CommonJS and ES modules, on both.
    for (name, file, source) in [
        (
            "n-nested",
            "index.js",
            "exports.api = { v1: { get: async (e) => ({ nested: e.name }) } };\n",
        ),
        (
            "n-nested-esm",
            "index.mjs",
            "export const api = { v1: { get: async (e) => ({ nested: e.name }) } };\n",
        ),
    ] {
        let code: Files = vec![(file.into(), source.into(), 0o100644)];
        let builtin = deploy_builtin(&app, t, name, &node, "index.api.v1.get", &code).await;
        let oracle = deploy_bundle(
            &app,
            t,
            &format!("{name}-oracle"),
            "index.api.v1.get",
            &with_node_ric(code),
        )
        .await;
        let seen = same_on_both(&app, t, (&builtin, &oracle), &[json!({"name": "ada"})]).await;
        assert_eq!(seen[0].output, json!({"nested": "ada"}), "{name}");
    }
}
