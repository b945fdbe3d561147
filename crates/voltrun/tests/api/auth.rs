//! Registration, login, token rotation with reuse detection, logout, token validation.

use jsonwebtoken::{EncodingKey, Header};
use reqwest::Method;
use serde_json::json;

use crate::helpers::{Backend, TestApp, unique};

fn forge(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// The claims of a JWT, read without checking it.
fn claims_of(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

both_databases! {
    async fn register_returns_user_and_token_pair(app) {
        let email = format!("Ada-{}@Example.COM", unique());
        let reply = app
            .send(Method::POST, "/api/auth/register", None, Some(json!({"email": email, "password": "correct horse battery", "name": "Ada"})))
            .await
            .expect(201);
        assert_eq!(reply.body["user"]["email"], email.to_lowercase());
        assert_eq!(reply.body["user"]["name"], "Ada");
        assert_eq!(reply.body["token_type"], "Bearer");
        assert_eq!(reply.body["expires_in"], 900);
        assert!(reply.body["access_token"].as_str().unwrap().split('.').count() == 3);
        assert!(reply.body["refresh_token"].as_str().unwrap().len() >= 43);
        assert!(reply.body["user"].get("password_hash").is_none());
        let me = app.get("/api/auth/me", reply.body["access_token"].as_str().unwrap()).await.expect(200);
        assert_eq!(me.body["id"], reply.body["user"]["id"]);
    }

    async fn duplicate_email_is_a_conflict_after_normalisation(app) {
        let user = app.register().await;
        app.send(Method::POST, "/api/auth/register", None, Some(json!({"email": format!("  {}  ", user.email.to_uppercase()), "password": "another good password"})))
            .await
            .expect_error(409, "conflict");
    }

    async fn weak_passwords_and_bad_emails_are_422_with_the_field(app) {
        for (email, password, field) in [
            ("ok@example.com", "short", "password"),
            ("ok@example.com", "        ", "password"),
            ("ok@example.com", "ok@example.com", "password"),
            ("not-an-email", "correct horse battery", "email"),
            ("", "correct horse battery", "email"),
        ] {
            let reply = app
                .send(Method::POST, "/api/auth/register", None, Some(json!({"email": email, "password": password})))
                .await
                .expect_error(422, "validation_failed");
            assert_eq!(reply.body["error"]["field"], field, "{email:?} / {password:?}");
        }
    }

    async fn login_succeeds_and_failures_do_not_say_which_part_was_wrong(app) {
        let user = app.register().await;
        let ok = app
            .send(Method::POST, "/api/auth/login", None, Some(json!({"email": user.email.to_uppercase(), "password": user.password})))
            .await
            .expect(200);
        assert_eq!(ok.body["user"]["id"], user.id);
        let wrong_password = app
            .send(Method::POST, "/api/auth/login", None, Some(json!({"email": user.email, "password": "not the password"})))
            .await
            .expect_error(401, "invalid_credentials");
        let unknown = app
            .send(Method::POST, "/api/auth/login", None, Some(json!({"email": format!("nobody-{}@example.com", unique()), "password": "not the password"})))
            .await
            .expect_error(401, "invalid_credentials");
        assert_eq!(wrong_password.body["error"]["message"], unknown.body["error"]["message"]);
    }

    async fn refresh_rotates_and_reuse_revokes_the_family(app) {
        let user = app.register().await;
        let first = app
            .send(Method::POST, "/api/auth/refresh", None, Some(json!({"refresh_token": user.refresh_token})))
            .await
            .expect(200);
        let second_token = first.body["refresh_token"].as_str().unwrap().to_string();
        assert_ne!(second_token, user.refresh_token);
        app.get("/api/auth/me", first.body["access_token"].as_str().unwrap()).await.expect(200);

        // The spent token comes back: someone has a copy. The whole session dies, the live refresh
        // token and the access tokens too.
        app.send(Method::POST, "/api/auth/refresh", None, Some(json!({"refresh_token": user.refresh_token})))
            .await
            .expect_error(401, "unauthorized");
        app.send(Method::POST, "/api/auth/refresh", None, Some(json!({"refresh_token": second_token})))
            .await
            .expect_error(401, "unauthorized");
        app.get("/api/auth/me", first.body["access_token"].as_str().unwrap()).await.expect_error(401, "unauthorized");

        // Other sessions of the same user are unaffected.
        let other = app
            .send(Method::POST, "/api/auth/login", None, Some(json!({"email": user.email, "password": user.password})))
            .await
            .expect(200);
        app.send(Method::POST, "/api/auth/refresh", None, Some(json!({"refresh_token": other.body["refresh_token"]})))
            .await
            .expect(200);
    }

    async fn concurrent_refreshes_with_one_token_succeed_once_and_revoke_the_session(app) {
        let user = app.register().await;
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let request = app.client.post(format!("{}/api/auth/refresh", app.base)).json(&json!({"refresh_token": user.refresh_token}));
            tasks.push(tokio::spawn(async move { TestApp::read(request.send().await.unwrap()).await }));
        }
        let mut winners = Vec::new();
        let mut statuses = Vec::new();
        for task in tasks {
            let reply = task.await.unwrap();
            statuses.push(reply.status.as_u16());
            if reply.status == 200 {
                winners.push(reply);
            } else {
                // Every other one presented a spent token.
                reply.expect_error(401, "unauthorized");
            }
        }
        assert_eq!(winners.len(), 1, "exactly one refresh succeeds: {statuses:?}");
        // A spent token came back, so someone holds a copy: the whole session is revoked, the
        // winner's new tokens included.
        let winner = &winners[0].body;
        app.send(Method::POST, "/api/auth/refresh", None, Some(json!({"refresh_token": winner["refresh_token"]})))
            .await
            .expect_error(401, "unauthorized");
        app.get("/api/auth/me", winner["access_token"].as_str().unwrap()).await.expect_error(401, "unauthorized");
        app.get("/api/auth/me", &user.access_token).await.expect_error(401, "unauthorized");
    }

    async fn logout_revokes_the_session_and_its_access_tokens(app) {
        let user = app.register().await;
        let other_session = app
            .send(Method::POST, "/api/auth/login", None, Some(json!({"email": user.email, "password": user.password})))
            .await
            .expect(200);
        app.get("/api/auth/me", &user.access_token).await.expect(200);
        let reply = app.send(Method::POST, "/api/auth/logout", None, Some(json!({"refresh_token": user.refresh_token}))).await.expect(204);
        assert!(reply.text.is_empty());
        app.send(Method::POST, "/api/auth/refresh", None, Some(json!({"refresh_token": user.refresh_token})))
            .await
            .expect_error(401, "unauthorized");
        // The access token is still signed and unexpired, but its session is over.
        let reply = app.get("/api/auth/me", &user.access_token).await.expect_error(401, "unauthorized");
        assert!(reply.body["error"]["message"].as_str().unwrap().contains("session has ended"), "{}", reply.text);
        app.get("/api/keys", &user.access_token).await.expect_error(401, "unauthorized");
        // The user's other session is untouched.
        app.get("/api/auth/me", other_session.body["access_token"].as_str().unwrap()).await.expect(200);
        // Logging out twice, or with garbage, is harmless.
        app.send(Method::POST, "/api/auth/logout", None, Some(json!({"refresh_token": user.refresh_token}))).await.expect(204);
        app.send(Method::POST, "/api/auth/logout", None, Some(json!({"refresh_token": "garbage"}))).await.expect(204);
    }

    async fn missing_tampered_and_foreign_tokens_are_401(app) {
        let user = app.register().await;
        app.send(Method::GET, "/api/auth/me", None, None).await.expect_error(401, "unauthorized");
        let reply = app.get("/api/auth/me", "not-a-jwt").await.expect_error(401, "unauthorized");
        assert_eq!(reply.headers["www-authenticate"], "Bearer");

        // Flip one character of the signature.
        let mut tampered = user.access_token.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        app.get("/api/auth/me", &tampered).await.expect_error(401, "unauthorized");

        // Swap in another user's id without re-signing.
        let parts: Vec<&str> = user.access_token.split('.').collect();
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: serde_json::Value = serde_json::from_slice(&engine.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = json!(uuid::Uuid::now_v7());
        let forged_body = engine.encode(serde_json::to_vec(&claims).unwrap());
        app.get("/api/auth/me", &format!("{}.{}.{}", parts[0], forged_body, parts[2])).await.expect_error(401, "unauthorized");

        // alg: none, with a valid-looking body.
        let none_header = engine.encode(br#"{"alg":"none","typ":"JWT"}"#);
        app.get("/api/auth/me", &format!("{none_header}.{}.", parts[1])).await.expect_error(401, "unauthorized");
        // A token signed with another secret.
        let foreign = forge("some-other-secret-some-other-secret", json!({"sub": user.id, "iss": "voltrun", "aud": "voltrun-api", "iat": now(), "exp": now() + 600, "jti": "x"}));
        app.get("/api/auth/me", &foreign).await.expect_error(401, "unauthorized");
        // Scheme other than Bearer.
        let basic = app.client.get(format!("{}/api/auth/me", app.base)).header("authorization", format!("Basic {}", user.access_token));
        TestApp::read(basic.send().await.unwrap()).await.expect_error(401, "unauthorized");
    }

    async fn refresh_tokens_of_bad_shape_are_401_not_500(app) {
        for token in ["", "x", &"a".repeat(43), &"é".repeat(30), "' OR 1=1 --"] {
            app.send(Method::POST, "/api/auth/refresh", None, Some(json!({"refresh_token": token})))
                .await
                .expect_error(401, "unauthorized");
        }
    }
}

mod known_secret {
    use super::*;

    const SECRET: &str = "a-known-test-secret-of-at-least-32-bytes";

    async fn spawn(backend: Backend) -> TestApp {
        TestApp::spawn_with(backend, |raw| {
            raw.auth.jwt_secret = Some(voltrun::config::Secret::new(SECRET.into()))
        })
        .await
    }

    async fn expired_and_misaddressed_tokens_are_refused(app: TestApp) {
        let user = app.register().await;
        let sid = claims_of(&user.access_token)["sid"].clone();
        let base = json!({"sub": user.id, "iss": "voltrun", "aud": "voltrun-api", "iat": now(), "exp": now() + 600, "jti": "x", "sid": sid});
        // Control: a token we forge with the right secret and claims works, so the failures below are
        // about the claim each one breaks.
        app.get("/api/auth/me", &forge(SECRET, base.clone()))
            .await
            .expect(200);
        let mut expired = base.clone();
        expired["exp"] = json!(now() - 60);
        let reply = app
            .get("/api/auth/me", &forge(SECRET, expired))
            .await
            .expect_error(401, "unauthorized");
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("expired")
        );
        for (claim, value) in [
            ("iss", json!("someone-else")),
            ("aud", json!("another-api")),
        ] {
            let mut bad = base.clone();
            bad[claim] = value;
            app.get("/api/auth/me", &forge(SECRET, bad))
                .await
                .expect_error(401, "unauthorized");
        }
        // Claims that are all right but for the session: one that does not exist, or none at all.
        let mut other_session = base.clone();
        other_session["sid"] = json!(uuid::Uuid::now_v7());
        app.get("/api/auth/me", &forge(SECRET, other_session))
            .await
            .expect_error(401, "unauthorized");
        let mut no_session = base.clone();
        no_session.as_object_mut().unwrap().remove("sid");
        app.get("/api/auth/me", &forge(SECRET, no_session))
            .await
            .expect_error(401, "unauthorized");
        let mut no_exp = base.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        app.get("/api/auth/me", &forge(SECRET, no_exp))
            .await
            .expect_error(401, "unauthorized");
        // HS512 with the right secret is still the wrong algorithm.
        let hs512 = jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::HS512),
            &base,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        app.get("/api/auth/me", &hs512)
            .await
            .expect_error(401, "unauthorized");
    }

    #[tokio::test]
    async fn sqlite_expired_and_misaddressed_tokens_are_refused() {
        expired_and_misaddressed_tokens_are_refused(spawn(Backend::Sqlite).await).await;
    }

    #[tokio::test]
    async fn postgres_expired_and_misaddressed_tokens_are_refused() {
        expired_and_misaddressed_tokens_are_refused(spawn(Backend::Postgres).await).await;
    }
}

/// A session ends SESSION_MAX_AGE_S after its login however often it is refreshed: here 2 s.
mod session_max_age {
    use super::*;

    async fn a_session_stops_rotating_at_its_maximum_age(backend: Backend) {
        let app = TestApp::spawn_with(backend, |raw| raw.auth.session_max_age_s = 2).await;
        let user = app.register().await;
        // The access token does not outlive the session either.
        let claims = claims_of(&user.access_token);
        assert!(
            claims["exp"].as_i64().unwrap() <= claims["iat"].as_i64().unwrap() + 2,
            "{claims}"
        );
        let refreshed = app
            .send(
                Method::POST,
                "/api/auth/refresh",
                None,
                Some(json!({"refresh_token": user.refresh_token})),
            )
            .await
            .expect(200);
        assert!(
            refreshed.body["expires_in"].as_i64().unwrap() <= 2,
            "{}",
            refreshed.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        let reply = app
            .send(
                Method::POST,
                "/api/auth/refresh",
                None,
                Some(json!({"refresh_token": refreshed.body["refresh_token"]})),
            )
            .await
            .expect_error(401, "unauthorized");
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("maximum age"),
            "{}",
            reply.text
        );
        app.get(
            "/api/auth/me",
            refreshed.body["access_token"].as_str().unwrap(),
        )
        .await
        .expect_error(401, "unauthorized");
        // Logging in again starts a new session.
        app.send(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"email": user.email, "password": user.password})),
        )
        .await
        .expect(200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_a_session_stops_rotating_at_its_maximum_age() {
        a_session_stops_rotating_at_its_maximum_age(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_session_stops_rotating_at_its_maximum_age() {
        a_session_stops_rotating_at_its_maximum_age(Backend::Postgres).await;
    }
}
