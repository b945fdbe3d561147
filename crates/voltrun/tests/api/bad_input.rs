//! Hostile and malformed input on every route: it gets a clear 4xx in the error format, never a 500,
//! and changes nothing.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, b64, function_body, zip_of};

/// (method, path) of every route that takes a JSON body; `{id}` is filled in per test.
const JSON_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/auth/register"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/refresh"),
    ("POST", "/api/auth/logout"),
    ("POST", "/api/keys"),
    ("POST", "/api/functions"),
    ("PUT", "/api/functions/{id}"),
];

const SQL_AND_UNICODE: &[&str] = &[
    "'; DROP TABLE users; --",
    "\" OR \"1\"=\"1",
    "Robert'); DELETE FROM functions WHERE ('1'='1",
    "%_\\",
    "ünïcödé ✓ 🚀 中文 עברית",
    "\u{202E}reversed",
];

async fn assert_nothing_changed(app: &TestApp, token: &str, function_id: &str) {
    let f = app
        .get(&format!("/api/functions/{function_id}"), token)
        .await
        .expect(200)
        .body;
    assert_eq!(f["version"], 1);
    assert_eq!(
        app.get("/api/functions", token).await.expect(200).body["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        app.get("/api/keys", token).await.expect(200).body["data"],
        json!([])
    );
}

both_databases! {
    async fn malformed_json_wrong_types_and_content_types(app) {
        let user = app.register().await;
        let f = app.create_function(&user.access_token, "target").await["id"].as_str().unwrap().to_string();
        for (method, path) in JSON_ROUTES {
            let path = path.replace("{id}", &f);
            let method: Method = method.parse().unwrap();
            for body in [&b"{"[..], b"{\"email\": }", b"[1,2", b"\xff\xfe", b"{\"name\": \"x\"} trailing"] {
                app.raw(method.clone(), &path, Some(&user.access_token), "application/json", body.to_vec())
                    .await
                    .expect_error(400, "malformed_json");
            }
            app.raw(method.clone(), &path, Some(&user.access_token), "text/plain", b"{}".to_vec())
                .await
                .expect_error(415, "unsupported_media_type");
            // Wrong types and unknown fields are shape errors: 422.
            for body in [json!([]), json!("string"), json!({"email": 5, "password": true, "name": [], "refresh_token": 1, "runtime": {}, "code": 7, "memory_mb": "big"})] {
                let reply = app.send(method.clone(), &path, Some(&user.access_token), Some(body)).await;
                assert_eq!(reply.status.as_u16(), 422, "{method} {path}: {}", reply.text);
            }
        }
        // Deep nesting: well-formed but the wrong shape for a function; past the parser's depth limit
        // for an event (which may be any JSON). Either way a clear 4xx, no stack overflow.
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        app.raw(Method::POST, "/api/functions", Some(&user.access_token), "application/json", deep.clone().into_bytes())
            .await
            .expect_error(422, "validation_failed");
        app.raw(Method::POST, &format!("/api/functions/{f}/execute"), Some(&user.access_token), "application/json", deep.into_bytes())
            .await
            .expect_error(400, "malformed_json");
        assert_nothing_changed(&app, &user.access_token, &f).await;
    }

    async fn oversized_bodies_are_413(app) {
        let user = app.register().await;
        let f = app.create_function(&user.access_token, "target").await["id"].as_str().unwrap().to_string();
        let big = json!({"email": "a@example.com", "password": "x".repeat(100 * 1024)}).to_string();
        app.raw(Method::POST, "/api/auth/register", None, "application/json", big.into_bytes()).await.expect_error(413, "payload_too_large");
        let big_key = json!({"name": "x".repeat(100 * 1024)}).to_string();
        app.raw(Method::POST, "/api/keys", Some(&user.access_token), "application/json", big_key.into_bytes()).await.expect_error(413, "payload_too_large");
        let huge_function = json!({"name": "huge", "runtime": "provided", "handler": "a.b", "code": {"zip_base64": "A".repeat(70 * 1024 * 1024)}}).to_string();
        // The server answers 413 without reading the whole body and closes the connection, so this one
        // goes on a client of its own rather than poisoning the shared connection pool.
        let request = reqwest::Client::new()
            .post(format!("{}/api/functions", app.base))
            .bearer_auth(&user.access_token)
            .header("content-type", "application/json")
            .body(huge_function);
        match request.send().await {
            Ok(response) => {
                TestApp::read(response).await.expect_error(413, "payload_too_large");
            }
            // The server may answer and close before the client has finished writing 70 MB; the
            // client then sees the broken connection instead of the 413. Either way it was refused.
            Err(e) => assert!(e.is_request(), "{e}"),
        }
        assert_nothing_changed(&app, &user.access_token, &f).await;
    }

    async fn sql_metacharacters_and_unicode_are_data(app) {
        for (i, text) in SQL_AND_UNICODE.iter().enumerate() {
            // Display names, descriptions and key names keep the text verbatim (bidi overrides and
            // controls are refused instead: they disguise text).
            let disguising = text.contains('\u{202E}');
            let email = format!("user{i}-{}@example.com", crate::helpers::unique());
            let reply = app.send(Method::POST, "/api/auth/register", None, Some(json!({"email": email, "password": format!("{text} long enough"), "name": text}))).await;
            if disguising {
                reply.expect_error(422, "validation_failed");
                continue;
            }
            let body = reply.expect(201).body;
            assert_eq!(body["user"]["name"], *text);
            let token = body["access_token"].as_str().unwrap();
            let login = app.send(Method::POST, "/api/auth/login", None, Some(json!({"email": email, "password": format!("{text} long enough")}))).await.expect(200);
            assert_eq!(login.body["user"]["name"], *text);

            let mut fbody = function_body(&format!("fn-{i}"));
            fbody["description"] = json!(text);
            fbody["env"] = json!({"VALUE": text});
            let f = app.post("/api/functions", token, fbody).await.expect(201).body;
            let read = app.get(&format!("/api/functions/{}", f["id"].as_str().unwrap()), token).await.expect(200).body;
            assert_eq!(read["description"], *text);
            assert_eq!(read["env"]["VALUE"], *text);
            let key = app.post("/api/keys", token, json!({"name": text})).await.expect(201).body;
            assert_eq!(key["name"], *text);

            // As a function name, an email, a path segment or a filter, it is simply invalid or absent.
            let mut bad_name = function_body(text);
            bad_name["name"] = json!(text);
            app.post("/api/functions", token, bad_name).await.expect_error(422, "validation_failed");
            app.send(Method::POST, "/api/auth/login", None, Some(json!({"email": text, "password": text}))).await.expect_error(401, "invalid_credentials");
            let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
            app.get(&format!("/api/functions/{encoded}"), token).await.expect_error(404, "not_found");
            app.get(&format!("/api/executions?status={encoded}"), token).await.expect_error(422, "validation_failed");
            app.get(&format!("/api/executions?function_id={encoded}"), token).await.expect_error(422, "validation_failed");
        }
        // The tables the payloads name are still there and intact.
        let user = app.register().await;
        assert_eq!(app.get("/api/functions", &user.access_token).await.expect(200).body["data"], json!([]));
    }

    async fn nul_and_control_characters_are_refused_not_stored(app) {
        let user = app.register().await;
        let mut body = function_body("nul");
        body["description"] = json!("bad\u{0000}byte");
        app.post("/api/functions", &user.access_token, body).await.expect_error(422, "validation_failed");
        let mut env = function_body("nul-env");
        env["env"] = json!({"A": "x\u{0000}y"});
        app.post("/api/functions", &user.access_token, env).await.expect_error(422, "validation_failed");
        // Names that steer the loader or libc, and Lambda's reserved names, are refused by name.
        for name in ["LD_AUDIT", "LD_PRELOAD", "GCONV_PATH", "GLIBC_TUNABLES", "LOCPATH", "MALLOC_PERTURB_", "AWS_LAMBDA_RUNTIME_API", "_HANDLER"] {
            let mut body = function_body("loader-env");
            body["env"] = json!({ name: "x" });
            let reply = app.post("/api/functions", &user.access_token, body).await.expect_error(422, "validation_failed");
            assert!(reply.body["error"]["message"].as_str().unwrap().contains(name), "{}", reply.text);
            assert_eq!(reply.body["error"]["field"], "env");
        }
        app.send(Method::POST, "/api/auth/register", None, Some(json!({"email": "a@example.com", "password": "nul\u{0000}password"})))
            .await
            .expect_error(422, "validation_failed");
        app.post("/api/keys", &user.access_token, json!({"name": "k\u{0000}"})).await.expect_error(422, "validation_failed");
        assert_eq!(app.get("/api/functions", &user.access_token).await.expect(200).body["data"], json!([]));
    }

    async fn hostile_archives_are_refused(app) {
        let user = app.register().await;
        let boot: &[u8] = b"#!/bin/sh\n";
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("absolute path", zip_of(&[("bootstrap", boot, 0o100755), ("/etc/cron.d/evil", b"x", 0o100644)])),
            ("parent traversal", zip_of(&[("bootstrap", boot, 0o100755), ("../../evil", b"x", 0o100644)])),
            ("nested traversal", zip_of(&[("bootstrap", boot, 0o100755), ("lib/../../evil", b"x", 0o100644)])),
            ("absolute symlink", zip_of(&[("bootstrap", boot, 0o100755), ("passwd", b"/etc/passwd", 0o120777)])),
            ("escaping symlink", zip_of(&[("bootstrap", boot, 0o100755), ("lib/up", b"../../secret", 0o120777)])),
            // Each link's target is inside as text; on disk the chain climbs one level per link, and
            // the file entry through it would land above the code directory.
            ("link chain", zip_of(&[("bootstrap", boot, 0o100755), ("a/l1", b"..", 0o120777), ("a/l1/l2", b"..", 0o120777), ("a/l1/l2/l3", b"..", 0o120777), ("a/l1/l2/l3/evil", b"x", 0o100644)])),
            ("link out through a link", zip_of(&[("bootstrap", boot, 0o100755), ("a/up", b"..", 0o120777), ("x", b"a/up/..", 0o120777)])),
            ("file below a file", zip_of(&[("bootstrap", boot, 0o100755), ("bootstrap/evil", b"x", 0o100644)])),
        ];
        for (what, archive) in cases {
            let body = json!({"name": "hostile", "runtime": "provided", "handler": "a.b", "code": {"zip_base64": b64(&archive)}});
            let reply = app.post("/api/functions", &user.access_token, body).await;
            assert_eq!(reply.status.as_u16(), 422, "{what}: {}", reply.text);
        }
        // A link that stays inside the archive is fine.
        let inside = zip_of(&[("bootstrap", boot, 0o100755), ("lib/real.sh", b"x", 0o100644), ("lib/alias.sh", b"real.sh", 0o120777)]);
        app.post("/api/functions", &user.access_token, json!({"name": "links", "runtime": "provided", "handler": "a.b", "code": {"zip_base64": b64(&inside)}}))
            .await
            .expect(201);
        assert_eq!(app.get("/api/functions", &user.access_token).await.body["data"].as_array().unwrap().len(), 1);
    }

    async fn zip_bombs_are_caught_by_what_they_inflate_to(app) {
        let user = app.register().await;
        // 251 MiB of zeros deflates to ~250 KiB: under the zipped limit, over the unzipped one.
        let bomb = {
            use std::io::Write;
            let mut buf = std::io::Cursor::new(Vec::new());
            let mut zip = zip::ZipWriter::new(&mut buf);
            let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).large_file(true);
            zip.start_file("bootstrap", options).unwrap();
            let chunk = vec![0u8; 1024 * 1024];
            for _ in 0..251 {
                zip.write_all(&chunk).unwrap();
            }
            zip.finish().unwrap();
            buf.into_inner()
        };
        assert!(bomb.len() < 2 * 1024 * 1024);
        let body = json!({"name": "bomb", "runtime": "provided", "handler": "a.b", "code": {"zip_base64": b64(&bomb)}});
        app.post("/api/functions", &user.access_token, body).await.expect_error(413, "payload_too_large");
        app.send(Method::GET, "/health", None, None).await.expect(200);
    }
}
