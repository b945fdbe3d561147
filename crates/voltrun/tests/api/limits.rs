//! Defenses against a hostile client over HTTP: which address a request is from (trusted proxies and
//! `X-Forwarded-For`), per-address rate limits, login lockouts, the timing of failed logins. These
//! limits live in the server's memory, not in the database, so they run on SQLite only.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Backend, TestApp, unique};

fn bad_login() -> serde_json::Value {
    json!({"email": "nobody@example.com", "password": "not the password"})
}

/// The proxy in front of the server appends the real client (203.0.113.5) to whatever the client
/// wrote; the client writes a new address each time to escape the per-address limit. The server
/// reads from the right, so all three attempts count against 203.0.113.5.
#[tokio::test]
async fn a_client_behind_a_trusted_proxy_cannot_choose_its_address() {
    let app = TestApp::spawn_with(Backend::Sqlite, |raw| {
        raw.auth.attempts_per_minute = 2;
        raw.auth.trusted_proxies =
            voltrun_api::TrustedProxies::parse("127.0.0.1, 10.0.0.0/8").unwrap();
    })
    .await;
    for (n, expected) in [(1, 401), (2, 401), (3, 429)] {
        // 10.0.0.2 is a second trusted proxy between the first one and the server.
        let chain = format!("198.51.100.{n}, 203.0.113.5, 10.0.0.2");
        app.post_via_proxy(&chain, "/api/auth/login", bad_login())
            .await
            .expect(expected);
    }
    // Another client behind the same proxies has its own allowance.
    app.post_via_proxy(
        "198.51.100.1, 203.0.113.6, 10.0.0.2",
        "/api/auth/login",
        bad_login(),
    )
    .await
    .expect(401);
}

/// An IPv6 client owns a /64 and may take a new address in it for every request: the limit counts
/// the /64, so rotating addresses gains nothing, while a neighbouring /64 has its own allowance.
#[tokio::test]
async fn an_ipv6_client_rotating_addresses_in_its_64_is_limited_as_one() {
    let app = TestApp::spawn_with(Backend::Sqlite, |raw| {
        raw.auth.attempts_per_minute = 2;
        raw.auth.trusted_proxies = voltrun_api::TrustedProxies::parse("127.0.0.1").unwrap();
    })
    .await;
    for (n, expected) in [(1, 401), (2, 401), (3, 429)] {
        let address = format!("2001:db8:7:9:{n}:{n}:{n}:{n}");
        app.post_via_proxy(&address, "/api/auth/login", bad_login())
            .await
            .expect(expected);
    }
    app.post_via_proxy("2001:db8:7:a::1", "/api/auth/login", bad_login())
        .await
        .expect(401);
}

/// Without a trusted proxy in front, X-Forwarded-For is the client's own text: ignored.
#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = TestApp::spawn_with(Backend::Sqlite, |raw| {
        raw.auth.attempts_per_minute = 2;
        raw.auth.trusted_proxies = voltrun_api::TrustedProxies::parse("10.0.0.0/8").unwrap();
    })
    .await;
    for (n, expected) in [(1, 401), (2, 401), (3, 429)] {
        app.post_via_proxy(&format!("198.51.100.{n}"), "/api/auth/login", bad_login())
            .await
            .expect(expected);
    }
}

#[tokio::test]
async fn login_and_register_are_limited_per_address() {
    let app = TestApp::spawn_with(Backend::Sqlite, |raw| raw.auth.attempts_per_minute = 3).await;
    // One address spraying guesses over many accounts: each account's own lockout never triggers.
    for n in 0..3 {
        app.send(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"email": format!("a{n}@example.com"), "password": "whatever1"})),
        )
        .await
        .expect(401);
    }
    let reply = app
        .send(
            Method::POST,
            "/api/auth/register",
            None,
            Some(json!({"email": "b@example.com", "password": "whatever12"})),
        )
        .await
        .expect_error(429, "too_many_requests");
    let retry_after: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
}

/// An attacker at 203.0.113.66 guesses at an account until it is locked, and is then refused even
/// the right password: it cannot keep guessing. The owner, at 198.51.100.7, still logs in: were the
/// lockout keyed on the account alone, anyone could keep an account's owner out indefinitely.
#[tokio::test]
async fn failed_logins_lock_the_account_for_the_attackers_address_only() {
    let app = TestApp::spawn_with(Backend::Sqlite, |raw| {
        raw.auth.login_failures_per_account = 2;
        raw.auth.trusted_proxies = voltrun_api::TrustedProxies::parse("127.0.0.1").unwrap();
    })
    .await;
    let user = app.register().await;
    let login = |password: &str| json!({"email": user.email, "password": password});
    let (attacker, owner) = ("203.0.113.66", "198.51.100.7");
    for _ in 0..2 {
        app.post_via_proxy(attacker, "/api/auth/login", login("wrong password"))
            .await
            .expect_error(401, "invalid_credentials");
    }
    app.post_via_proxy(attacker, "/api/auth/login", login(&user.password))
        .await
        .expect_error(429, "too_many_requests");
    // The owner, elsewhere, is not locked out, even after a typo of their own.
    app.post_via_proxy(owner, "/api/auth/login", login("a typo"))
        .await
        .expect_error(401, "invalid_credentials");
    app.post_via_proxy(owner, "/api/auth/login", login(&user.password))
        .await
        .expect(200);
    // The attacker's address stays locked out of this account, and only this one.
    app.post_via_proxy(attacker, "/api/auth/login", login(&user.password))
        .await
        .expect_error(429, "too_many_requests");
    let other = app.register().await;
    app.post_via_proxy(
        attacker,
        "/api/auth/login",
        json!({"email": other.email, "password": other.password}),
    )
    .await
    .expect(200);
}

/// Unknown emails cost a full Argon2 verification too, so response time does not reveal whether an
/// account exists. Compared as a ratio of the fastest of several logins of each kind, taking
/// turns: load from the tests running beside this one only ever adds time, so each kind's fastest
/// login is the closest to the work it does (medians failed twice under `scripts/test.sh`). Without
/// the dummy hash an unknown email would answer ~20× faster.
#[tokio::test]
async fn login_timing_does_not_reveal_whether_an_email_exists() {
    let app = TestApp::spawn_with(Backend::Sqlite, |raw| {
        raw.auth.attempts_per_minute = 1000;
        raw.auth.login_failures_per_account = 1000;
    })
    .await;
    let user = app.register().await;
    let nobody = format!("nobody-{}@example.com", unique());
    async fn timed(app: &TestApp, email: &str) -> Duration {
        let started = Instant::now();
        app.send(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"email": email, "password": "wrong password"})),
        )
        .await
        .expect(401);
        started.elapsed()
    }
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..11 {
        known.push(timed(&app, &user.email).await);
        unknown.push(timed(&app, &nobody).await);
    }
    let (known, unknown) = (
        known.into_iter().min().unwrap(),
        unknown.into_iter().min().unwrap(),
    );
    let ratio = known.as_secs_f64() / unknown.as_secs_f64();
    assert!(
        (0.33..3.0).contains(&ratio),
        "known {known:?} vs unknown {unknown:?}"
    );
}

/// The value of `voltrun_auth_limiter_keys{limiter="…"}` in this server's /metrics.
async fn tracked_keys(app: &TestApp, limiter: &str) -> u64 {
    let metrics = app.operator_get("/metrics").await.expect(200);
    let prefix = format!("voltrun_auth_limiter_keys{{limiter=\"{limiter}\"}} ");
    metrics
        .text
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{}", metrics.text))
        .parse()
        .unwrap()
}

/// A client that comes from ever new addresses (or, behind a trusted proxy, claims to) must not grow
/// the limiters' memory without bound: 200 addresses, a cap of 32.
#[tokio::test]
async fn many_client_addresses_keep_the_limiters_at_their_cap() {
    let app = TestApp::spawn_with(Backend::Sqlite, |raw| {
        raw.auth.trusted_proxies = voltrun_api::TrustedProxies::parse("127.0.0.1").unwrap();
        raw.auth.limiter_max_keys = 32;
    })
    .await;
    for n in 0..200 {
        // Refused as invalid before any password work, but counted against the address first.
        app.post_via_proxy(
            &format!("198.51.{}.{}", n / 256, n % 256),
            "/api/auth/register",
            json!({"email": "not-an-email", "password": "whatever12"}),
        )
        .await
        .expect(422);
    }
    assert_eq!(tracked_keys(&app, "address").await, 32);
}

/// Sends `count` logins at once and returns their statuses, sorted.
async fn concurrent_logins(app: &TestApp, count: usize, body: serde_json::Value) -> Vec<u16> {
    let mut tasks = Vec::new();
    for _ in 0..count {
        let request = app
            .client
            .post(format!("{}/api/auth/login", app.base))
            .json(&body);
        tasks.push(tokio::spawn(async move {
            TestApp::read(request.send().await.unwrap()).await
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap();
        let status = reply.status.as_u16();
        if status == 429 {
            reply.expect_error(429, "too_many_requests");
        }
        statuses.push(status);
    }
    statuses.sort_unstable();
    statuses
}

/// Twelve wrong passwords at once against an account that allows three failures: the count must be
/// taken before each password is verified, in one step with the check, or all twelve pass the check
/// while the first is still being verified and the attacker gets four times the guesses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_wrong_passwords_get_no_more_guesses_than_the_limit() {
    let app = TestApp::spawn_with(Backend::Sqlite, |raw| {
        raw.auth.login_failures_per_account = 3;
        raw.auth.attempts_per_minute = 1000;
    })
    .await;
    let user = app.register().await;
    let statuses = concurrent_logins(
        &app,
        12,
        json!({"email": user.email, "password": "a wrong guess"}),
    )
    .await;
    let evaluated = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((evaluated, refused), (3, 9), "{statuses:?}");
}

/// A burst of logins against a server that hashes one password at a time and lets a login wait only
/// 10 ms for its turn: some are refused with 503 `auth_busy` and a Retry-After, the rest are
/// answered, and the server stays healthy and lets the owner in afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_logins_beyond_the_hashing_cap_is_refused_with_503() {
    let app = TestApp::spawn_with(Backend::Sqlite, |raw| {
        raw.auth.hashing_concurrency = Some(1);
        raw.auth.hashing_queue_timeout_ms = 10;
        raw.auth.attempts_per_minute = 1000;
        raw.auth.login_failures_per_account = 1000;
    })
    .await;
    let user = app.register().await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let request = app
            .client
            .post(format!("{}/api/auth/login", app.base))
            .json(&json!({"email": user.email, "password": user.password}));
        tasks.push(tokio::spawn(async move {
            TestApp::read(request.send().await.unwrap()).await
        }));
    }
    let (mut answered, mut busy) = (0, 0);
    for task in tasks {
        let reply = task.await.unwrap();
        match reply.status.as_u16() {
            200 => answered += 1,
            503 => {
                let reply = reply.expect_error(503, "auth_busy");
                assert_eq!(reply.headers["retry-after"], "1");
                busy += 1;
            }
            other => panic!("unexpected {other}: {}", reply.text),
        }
    }
    assert!(
        answered >= 1 && busy >= 1,
        "{answered} answered, {busy} refused"
    );
    app.send(Method::GET, "/health", None, None)
        .await
        .expect(200);
    app.send(
        Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"email": user.email, "password": user.password})),
    )
    .await
    .expect(200);
}
