//! The OpenAPI document's promises about errors. Each route documents exactly the statuses it can
//! answer: the shared ones that follow from what it reads (credentials, a JSON body, an id, query
//! parameters) and its own, each error with the API's error body. Then hostile requests to every
//! route show that what the route answers is documented, and that it does answer each shared status
//! this file says it can.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Backend, TestApp};

/// Which credentials a route takes (`caller.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Public,
    /// An access token only: 401 without one, 403 for an API key.
    Session,
    /// An access token or a `full` API key: 401 without, 403 for an `execute` key.
    Full,
    /// An access token or any API key: 401 without.
    Execute,
    /// The operator's METRICS_TOKEN, where a wrong one is a 401.
    Operator,
}

/// What a route reads from its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    /// `ApiJson`: malformed 400, too slow 408, too large 413, not JSON 415, wrong shape 422.
    Json,
    /// An invocation's event: any JSON, so no shape to get wrong.
    Event,
}

#[derive(Debug)]
struct Route {
    method: &'static str,
    path: &'static str,
    access: Access,
    body: Body,
    /// Takes an `{id}` path segment: 404 when it names nothing of the caller's.
    id: bool,
    /// Parses query parameters: 422 when they are wrong.
    query: bool,
    /// Whether it reads the database, which may be unavailable (503).
    store: bool,
    success: &'static [u16],
    /// Statuses of its own, beyond the shared ones.
    own: &'static [u16],
    /// The route's body limit, when hostile probes can exceed it cheaply (64 KiB and 6 MiB routes).
    limit: Option<usize>,
}

const SMALL: Option<usize> = Some(64 * 1024);

#[rustfmt::skip]
const ROUTES: &[Route] = &[
    Route { method: "POST", path: "/api/auth/register", access: Access::Public, body: Body::Json, id: false, query: false, store: true, success: &[201], own: &[409, 429], limit: SMALL },
    Route { method: "POST", path: "/api/auth/login", access: Access::Public, body: Body::Json, id: false, query: false, store: true, success: &[200], own: &[401, 429], limit: SMALL },
    Route { method: "POST", path: "/api/auth/refresh", access: Access::Public, body: Body::Json, id: false, query: false, store: true, success: &[200], own: &[401], limit: SMALL },
    Route { method: "POST", path: "/api/auth/logout", access: Access::Public, body: Body::Json, id: false, query: false, store: true, success: &[204], own: &[], limit: SMALL },
    Route { method: "GET", path: "/api/auth/me", access: Access::Session, body: Body::None, id: false, query: false, store: true, success: &[200], own: &[], limit: None },
    Route { method: "GET", path: "/api/keys", access: Access::Session, body: Body::None, id: false, query: true, store: true, success: &[200], own: &[], limit: None },
    Route { method: "POST", path: "/api/keys", access: Access::Session, body: Body::Json, id: false, query: false, store: true, success: &[201], own: &[], limit: SMALL },
    Route { method: "DELETE", path: "/api/keys/{id}", access: Access::Session, body: Body::None, id: true, query: false, store: true, success: &[204], own: &[], limit: None },
    Route { method: "GET", path: "/api/functions", access: Access::Full, body: Body::None, id: false, query: true, store: true, success: &[200], own: &[], limit: None },
    Route { method: "POST", path: "/api/functions", access: Access::Full, body: Body::Json, id: false, query: false, store: true, success: &[201], own: &[409], limit: None },
    Route { method: "GET", path: "/api/functions/{id}", access: Access::Full, body: Body::None, id: true, query: false, store: true, success: &[200], own: &[], limit: None },
    Route { method: "PUT", path: "/api/functions/{id}", access: Access::Full, body: Body::Json, id: true, query: false, store: true, success: &[200], own: &[409], limit: None },
    Route { method: "DELETE", path: "/api/functions/{id}", access: Access::Full, body: Body::None, id: true, query: false, store: true, success: &[204], own: &[], limit: None },
    Route { method: "GET", path: "/api/functions/{id}/code", access: Access::Full, body: Body::None, id: true, query: false, store: true, success: &[200], own: &[], limit: None },
    // 429: the engine at capacity.
    Route { method: "POST", path: "/api/functions/{id}/execute", access: Access::Execute, body: Body::Event, id: true, query: true, store: true, success: &[200, 202], own: &[429], limit: Some(6 * 1024 * 1024) },
    Route { method: "GET", path: "/api/layers", access: Access::Full, body: Body::None, id: false, query: true, store: true, success: &[200], own: &[], limit: None },
    Route { method: "POST", path: "/api/layers", access: Access::Full, body: Body::Json, id: false, query: false, store: true, success: &[201], own: &[], limit: None },
    Route { method: "GET", path: "/api/layers/{name}/versions/{version}", access: Access::Full, body: Body::None, id: true, query: false, store: true, success: &[200], own: &[], limit: None },
    Route { method: "DELETE", path: "/api/layers/{name}/versions/{version}", access: Access::Full, body: Body::None, id: true, query: false, store: true, success: &[204], own: &[409], limit: None },
    Route { method: "GET", path: "/api/executions", access: Access::Execute, body: Body::None, id: false, query: true, store: true, success: &[200], own: &[], limit: None },
    Route { method: "GET", path: "/api/executions/{id}", access: Access::Execute, body: Body::None, id: true, query: false, store: true, success: &[200], own: &[], limit: None },
    Route { method: "GET", path: "/api/executions/{id}/logs", access: Access::Execute, body: Body::None, id: true, query: true, store: true, success: &[200], own: &[], limit: None },
    Route { method: "GET", path: "/api/runtimes", access: Access::Public, body: Body::None, id: false, query: false, store: false, success: &[200], own: &[], limit: None },
    Route { method: "GET", path: "/api/openapi.json", access: Access::Public, body: Body::None, id: false, query: false, store: false, success: &[200], own: &[], limit: None },
    // 503: the database is unreachable, said in the health body rather than the error format.
    Route { method: "GET", path: "/health", access: Access::Operator, body: Body::None, id: false, query: false, store: false, success: &[200], own: &[503], limit: None },
    // Its queue-depth gauge skips a database that does not answer.
    Route { method: "GET", path: "/metrics", access: Access::Operator, body: Body::None, id: false, query: false, store: false, success: &[200], own: &[], limit: None },
];

impl Route {
    /// Every status the route can answer that is not a success.
    fn errors(&self) -> BTreeSet<u16> {
        let mut statuses: BTreeSet<u16> = self.own.iter().copied().collect();
        match self.access {
            Access::Public => {}
            Access::Session | Access::Full => statuses.extend([401, 403]),
            Access::Execute | Access::Operator => {
                statuses.insert(401);
            }
        }
        match self.body {
            Body::None => {}
            // 503: bodies over 1 MiB or of unknown length wait for the upload cap, on every route.
            Body::Json => statuses.extend([400, 408, 413, 415, 422, 503]),
            Body::Event => statuses.extend([400, 408, 413, 415, 503]),
        }
        if self.id {
            statuses.insert(404);
        }
        if self.query {
            statuses.insert(422);
        }
        if self.store {
            statuses.insert(503);
        }
        statuses
    }

    /// The route's URL with `id` in its `{id}` segment, or a layer version that is not there (a
    /// name that cannot be one when `id` is not a UUID, as a path that names nothing).
    fn url(&self, id: &str) -> String {
        let name = if uuid::Uuid::parse_str(id).is_ok() {
            "none"
        } else {
            id
        };
        self.path
            .replace("{id}", id)
            .replace("{name}", name)
            .replace("{version}", "1")
    }
}

/// The operation's responses, `$ref`s to shared responses resolved.
fn responses(doc: &Value, route: &Route) -> BTreeMap<u16, Value> {
    let operation = &doc["paths"][route.path][route.method.to_lowercase()];
    let responses = operation["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("{} {} is not documented", route.method, route.path));
    responses
        .iter()
        .map(|(status, response)| {
            let response = match response["$ref"].as_str() {
                Some(reference) => {
                    let name = reference
                        .strip_prefix("#/components/responses/")
                        .unwrap_or_else(|| panic!("{reference}"));
                    doc["components"]["responses"][name].clone()
                }
                None => response.clone(),
            };
            (status.parse().unwrap(), response)
        })
        .collect()
}

async fn document(app: &TestApp) -> Value {
    app.send(Method::GET, "/api/openapi.json", None, None)
        .await
        .expect(200)
        .body
}

async fn every_route_documents_exactly_the_statuses_it_can_answer_with_the_error_body(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let doc = document(&app).await;
    let mut documented_routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented_routes.insert((method.to_uppercase(), path.clone()));
        }
    }
    let listed: BTreeSet<_> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(
        documented_routes, listed,
        "this file's routes and the document's disagree"
    );

    let mut wrong = Vec::new();
    for route in ROUTES {
        let responses = responses(&doc, route);
        let documented: BTreeSet<u16> = responses.keys().copied().collect();
        let mut expected = route.errors();
        expected.extend(route.success);
        if documented != expected {
            wrong.push(format!(
                "{} {}: documents {documented:?}; misses {:?}; cannot answer {:?}",
                route.method,
                route.path,
                expected.difference(&documented).collect::<Vec<_>>(),
                documented.difference(&expected).collect::<Vec<_>>(),
            ));
        }
        for (status, response) in &responses {
            assert!(
                response["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty())
                    || *status < 400,
                "{} {} {status}: an error needs a description saying which codes it stands for",
                route.method,
                route.path
            );
            if *status < 400 {
                continue;
            }
            let schema = &response["content"]["application/json"]["schema"]["$ref"];
            let body = if route.path == "/health" && *status == 503 {
                "HealthResponse"
            } else {
                "ErrorBody"
            };
            assert_eq!(
                schema,
                &json!(format!("#/components/schemas/{body}")),
                "{} {} {status}: {response}",
                route.method,
                route.path
            );
        }
    }
    assert!(
        wrong.is_empty(),
        "documented statuses differ from what the routes answer:\n{}",
        wrong.join("\n")
    );
}

/// Whether the `type` a schema names, if any, admits the value (the one keyword these checks need).
fn type_admits(schema: &Value, value: &Value) -> bool {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    match &schema["type"] {
        Value::Null => true,
        Value::String(t) => t == kind || (t == "number" && kind == "integer"),
        Value::Array(types) => types
            .iter()
            .any(|t| t == kind || (t == "number" && kind == "integer")),
        other => panic!("a type of {other}"),
    }
}

/// Regressions in the document's schemas: an event and a function's result are any JSON, not only
/// objects; an invocation needs no body; the logs route answers JSON unless asked for text (its
/// text response once replaced the JSON one in the document).
async fn documented_bodies_admit_what_the_routes_take_and_send(backend: Backend) {
    use voltrun_domain::execution::{ExecutionRecord, ExecutionStatus, InvocationType};
    let app = TestApp::spawn(backend).await;
    let doc = document(&app).await;
    let user = app.register().await;
    let function = app.create_function(&user.access_token, "any-json").await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let store = app.store().await;
    let record = ExecutionRecord::new_queued(
        user.id.parse().unwrap(),
        function.parse().unwrap(),
        1,
        InvocationType::Sync,
        json!([1, "two"]),
        voltrun_storage::now(),
    );
    store.insert_execution(&record).await.unwrap();
    let mut outcome = crate::helpers::sample_outcome(ExecutionStatus::Succeeded);
    outcome.output = Some(json!("a string"));
    store.finish_execution(record.id, &outcome).await.unwrap();
    store.close().await;
    let execution = app
        .get(
            &format!("/api/executions/{}", record.id),
            &user.access_token,
        )
        .await
        .expect(200)
        .body;
    let properties = &doc["components"]["schemas"]["ExecutionResponse"]["properties"];
    for field in ["input", "output"] {
        assert!(
            type_admits(&properties[field], &execution[field]),
            "{field}: {} does not admit {}",
            properties[field],
            execution[field]
        );
    }

    let execute = &doc["paths"]["/api/functions/{id}/execute"]["post"]["requestBody"];
    assert_ne!(
        execute["required"],
        json!(true),
        "an invocation without a body is an empty event: {execute}"
    );
    assert_eq!(
        execute["content"]["application/json"]["schema"],
        json!({}),
        "any JSON is an event"
    );
    for body in [
        None,
        Some(json!([1, 2])),
        Some(json!("text")),
        Some(json!(7)),
    ] {
        // No engine here: 503 engine_unavailable means the event was taken.
        app.send(
            Method::POST,
            &format!("/api/functions/{function}/execute"),
            Some(&user.access_token),
            body,
        )
        .await
        .expect_error(503, "engine_unavailable");
    }

    let logs = &doc["paths"]["/api/executions/{id}/logs"]["get"]["responses"]["200"]["content"];
    assert_eq!(
        logs["application/json"]["schema"]["$ref"], "#/components/schemas/LogsResponse",
        "{logs}"
    );
    assert_eq!(logs["text/plain"]["schema"]["type"], "string", "{logs}");
    let json_logs = app
        .get(
            &format!("/api/executions/{}/logs", record.id),
            &user.access_token,
        )
        .await
        .expect(200);
    assert!(
        json_logs.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
}

/// What the probes saw: route → statuses.
type Seen = BTreeMap<(&'static str, &'static str), BTreeSet<u16>>;

struct Prober<'a> {
    app: &'a TestApp,
    seen: Seen,
}

impl Prober<'_> {
    async fn send(
        &mut self,
        route: &Route,
        id: &str,
        query: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) {
        let url = format!("{}{}{query}", self.app.base, route.url(id));
        // A client of its own: a refused oversized body may close the connection under it.
        let client = reqwest::Client::new();
        let mut request = client.request(route.method.parse().unwrap(), url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some((content_type, bytes)) = body {
            request = request.header("content-type", content_type).body(bytes);
        }
        let status = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let reply = TestApp::read(response).await;
                if status >= 400 && route.path != "/health" {
                    assert!(
                        reply.body["error"]["code"].is_string(),
                        "{} {}: {status} {}",
                        route.method,
                        route.path,
                        reply.text
                    );
                }
                status
            }
            // Refused before the whole body was written; the status is not known.
            Err(e) if e.is_request() => return,
            Err(e) => panic!("{} {}: {e}", route.method, route.path),
        };
        self.record(route, status);
    }

    fn record(&mut self, route: &Route, status: u16) {
        self.seen
            .entry((route.method, route.path))
            .or_default()
            .insert(status);
    }
}

/// The routes that take upload slots: creating and updating functions (they accept code).
fn accepts_code(route: &Route) -> bool {
    matches!(
        (route.method, route.path),
        ("POST", "/api/functions") | ("PUT", "/api/functions/{id}")
    )
}

/// Over raw TCP, sends a request that declares a body of `length` bytes but sends only its first
/// few, and returns the status of the answer: the server must answer without the rest (the body
/// deadline, or the upload cap, which answers as soon as it sees the length).
async fn unfinished_body_status(
    app: &TestApp,
    route: &Route,
    id: &str,
    token: &str,
    length: usize,
) -> u16 {
    let address = app.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{\"name\":",
        route.method,
        route.url(id),
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    while !received.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buf[..n]),
            other => panic!(
                "{} {}: no answer to an unfinished body: {other:?}",
                route.method, route.path
            ),
        }
    }
    let line = String::from_utf8_lossy(&received);
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

async fn hostile_requests_get_only_documented_statuses(backend: Backend) {
    // Bodies get a second to arrive, so that the 408s come quickly.
    let app = TestApp::spawn_with(backend, |raw| raw.http.body_timeout_s = 1).await;
    let user = app.register().await;
    let token = user.access_token.as_str();
    let function = app.create_function(token, "probed").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let full_key = app
        .post("/api/keys", token, json!({"name": "full"}))
        .await
        .expect(201)
        .body["key"]
        .as_str()
        .unwrap()
        .to_string();
    let execute_key = app
        .post(
            "/api/keys",
            token,
            json!({"name": "exec", "scopes": ["execute"]}),
        )
        .await
        .expect(201)
        .body["key"]
        .as_str()
        .unwrap()
        .to_string();
    let unknown = uuid::Uuid::now_v7().to_string();
    let bearer = format!("Bearer {token}");

    let mut prober = Prober {
        app: &app,
        seen: Seen::new(),
    };
    for route in ROUTES {
        // Credentials: none, malformed, unknown, and keys of each scope.
        let full = format!("Bearer {full_key}");
        let execute = format!("Bearer {execute_key}");
        let credentials: [&[(&str, &str)]; 6] = [
            &[],
            &[("authorization", "Basic YTpi")],
            &[("authorization", "Bearer not-a-token")],
            &[(
                "x-api-key",
                "vr_0000000000000000000000000000000000000000000",
            )],
            &[("authorization", full.as_str())],
            &[("authorization", execute.as_str())],
        ];
        for headers in credentials {
            prober.send(route, &function, "", headers, None).await;
        }
        let auth = [("authorization", bearer.as_str())];
        // Ids: not a UUID, and a UUID that names nothing.
        for id in ["not-a-uuid", unknown.as_str()] {
            prober.send(route, id, "", &auth, None).await;
        }
        // Query parameters out of range or of the wrong type.
        for query in [
            "?limit=0",
            "?limit=many",
            "?cursor=zz",
            "?async=maybe",
            "?format=xml",
            "?status=lost",
            "?function_id=f",
        ] {
            prober.send(route, &function, query, &auth, None).await;
        }
        if route.body == Body::None {
            continue;
        }
        let bodies: Vec<(&str, Vec<u8>)> = vec![
            ("application/json", b"{".to_vec()),
            ("application/json", b"[1, 2]".to_vec()),
            (
                "application/json",
                br#"{"email": 5, "refresh_token": 1, "name": []}"#.to_vec(),
            ),
            // Well-formed for login and for refresh and logout, with credentials that name nothing
            // (an address register refuses, so that its probe does not make the account).
            (
                "application/json",
                br#"{"email": "nobody@localhost", "password": "not the password"}"#.to_vec(),
            ),
            (
                "application/json",
                br#"{"refresh_token": "not-a-refresh-token"}"#.to_vec(),
            ),
            ("text/plain", b"{}".to_vec()),
            ("application/json", Vec::new()),
        ];
        for body in bodies {
            prober.send(route, &function, "", &auth, Some(body)).await;
        }
        if let Some(limit) = route.limit {
            let big = format!(r#"{{"x": "{}"}}"#, "a".repeat(limit));
            prober
                .send(
                    route,
                    &function,
                    "",
                    &auth,
                    Some(("application/json", big.into_bytes())),
                )
                .await;
        }
        // The server gives bodies a second here.
        let status = unfinished_body_status(&app, route, &function, token, 1000).await;
        prober.record(route, status);
    }

    // A second server whose one upload slot is taken: the routes that accept code meet the cap (the
    // others take no upload slot).
    let capped = TestApp::spawn_with(backend, |raw| raw.http.max_uploads = 1).await;
    let capped_user = capped.register().await;
    let address = capped.base.trim_start_matches("http://");
    let mut holder = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /api/functions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        capped_user.access_token,
        2 << 20
    );
    holder.write_all(head.as_bytes()).await.unwrap();
    holder.write_all(&vec![b' '; 1 << 20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for route in ROUTES.iter().filter(|r| accepts_code(r)) {
        let status =
            unfinished_body_status(&capped, route, &unknown, &capped_user.access_token, 2 << 20)
                .await;
        prober.record(route, status);
    }
    drop(holder);

    let doc = document(&app).await;
    let mut problems = Vec::new();
    for route in ROUTES {
        let seen = prober
            .seen
            .get(&(route.method, route.path))
            .cloned()
            .unwrap_or_default();
        let documented: BTreeSet<u16> = responses(&doc, route).keys().copied().collect();
        let undocumented: Vec<_> = seen.difference(&documented).collect();
        if !undocumented.is_empty() {
            problems.push(format!(
                "{} {} answered {undocumented:?}, which it does not document",
                route.method, route.path
            ));
        }
        // The shared statuses these probes can provoke, which this file says the route answers.
        let mut provokable = route.errors();
        provokable.retain(|s| match s {
            401 | 403 | 404 | 400 | 408 | 415 => true,
            413 => route.limit.is_some(),
            422 => route.body == Body::Json || route.query,
            503 => accepts_code(route),
            _ => false,
        });
        let missing: Vec<_> = provokable.difference(&seen).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{} {} never answered {missing:?} (saw {seen:?})",
                route.method, route.path
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The tests on each database, as `both_databases!` would (which cannot customise the server).
macro_rules! on_each_database {
    ($($backend:ident: $module:ident),*) => {$(
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_route_documents_exactly_the_statuses_it_can_answer_with_the_error_body() {
                super::every_route_documents_exactly_the_statuses_it_can_answer_with_the_error_body(Backend::$backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn documented_bodies_admit_what_the_routes_take_and_send() {
                super::documented_bodies_admit_what_the_routes_take_and_send(Backend::$backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn hostile_requests_get_only_documented_statuses() {
                super::hostile_requests_get_only_documented_statuses(Backend::$backend).await;
            }
        }
    )*};
}

on_each_database!(Sqlite: sqlite, Postgres: postgres);
