//! login, whoami, logout, token refresh, and the errors around them.

use crate::helpers::{Cli, TestServer, dead_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_whoami_logout() {
    let server = TestServer::spawn().await;
    let user = server.register().await;
    // No VOLTRUN_SERVER: the server named at login becomes the default.
    let cli = Cli::without_server();

    let login = cli
        .run_with_stdin(
            &["login", "--server", &server.url, "--email", &user.email],
            Some(&format!("{}\n", user.password)),
        )
        .await
        .ok();
    assert_eq!(
        login.stdout.trim(),
        format!("Logged in to {} as {}", server.url, user.email)
    );
    assert!(!login.stdout.contains(&user.password));
    assert_eq!(cli.credentials_mode(), 0o600, "credentials must be private");
    let stored = cli.credentials();
    assert_eq!(stored["default_server"], server.url.as_str());
    assert_eq!(stored["servers"][&server.url]["type"], "session");
    let refresh_token = stored["servers"][&server.url]["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();

    let whoami = cli.run(&["whoami"]).await.ok();
    assert!(whoami.stdout.contains(&user.email), "{}", whoami.stdout);
    assert!(whoami.stdout.contains(&server.url), "{}", whoami.stdout);
    let json = cli.run(&["whoami", "-o", "json"]).await.ok().json();
    assert_eq!(json["credential"], "session");
    assert_eq!(json["user"]["id"], user.id.as_str());

    let logout = cli.run(&["logout"]).await.ok();
    assert!(logout.stdout.contains("Logged out"), "{}", logout.stdout);
    assert!(cli.credentials()["servers"].get(&server.url).is_none());
    // The session is over on the server too: its refresh token no longer works.
    let refreshed = reqwest::Client::new()
        .post(format!("{}/api/auth/refresh", server.url))
        .json(&serde_json::json!({ "refresh_token": refresh_token }))
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status().as_u16(), 401);

    let after = Cli::new(&server.url);
    let whoami = after.run(&["whoami"]).await.fails(64);
    assert!(whoami.stderr.contains("not logged in"), "{}", whoami.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_one_line_with_code_and_request_id() {
    let server = TestServer::spawn().await;
    let user = server.register().await;
    let cli = Cli::new(&server.url);
    let run = cli
        .run_with_stdin(
            &["login", "--email", &user.email],
            Some("not the password\n"),
        )
        .await
        .fails(3);
    assert!(run.stderr.contains("invalid_credentials"), "{}", run.stderr);
    assert!(run.stderr.contains("request id "), "{}", run.stderr);
    assert!(!cli.credentials_path().exists());

    // Email and password as two lines of stdin work too.
    cli.run_with_stdin(
        &["login"],
        Some(&format!("{}\n{}\n", user.email, user.password)),
    )
    .await
    .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_access_token_is_refreshed_and_the_new_pair_stored() {
    let server = TestServer::spawn().await;
    let user = server.register().await;
    let cli = Cli::new(&server.url);
    cli.login(&user).await.ok();
    let before = cli.credentials()["servers"][&server.url].clone();

    // Make the stored access token unusable, as an expired one is.
    let mut broken = cli.credentials();
    broken["servers"][&server.url]["access_token"] = "not-a-token".into();
    std::fs::write(cli.credentials_path(), broken.to_string()).unwrap();

    cli.run(&["functions", "list"]).await.ok();
    let after = cli.credentials()["servers"][&server.url].clone();
    assert_ne!(after["access_token"], "not-a-token");
    assert_ne!(
        after["refresh_token"], before["refresh_token"],
        "the rotated refresh token must be stored"
    );
    assert_eq!(cli.credentials_mode(), 0o600);
    // And the stored pair keeps working.
    cli.run(&["whoami"]).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_session_says_to_log_in_again() {
    let server = TestServer::spawn().await;
    let user = server.register().await;
    let cli = Cli::new(&server.url);
    cli.login(&user).await.ok();
    let mut broken = cli.credentials();
    broken["servers"][&server.url]["access_token"] = "not-a-token".into();
    broken["servers"][&server.url]["refresh_token"] = "x".repeat(43).into();
    std::fs::write(cli.credentials_path(), broken.to_string()).unwrap();

    let run = cli.run(&["functions", "list"]).await.fails(3);
    assert!(run.stderr.contains("voltrun login"), "{}", run.stderr);
    let run = cli.run(&["functions", "list"]).await.fails(64);
    assert!(run.stderr.contains("not logged in"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_an_api_key_stores_it() {
    let server = TestServer::spawn().await;
    let user = server.register().await;
    let admin = Cli::new(&server.url);
    admin.login(&user).await.ok();
    let key = admin
        .run(&["keys", "create", "laptop", "-o", "json"])
        .await
        .ok()
        .json()["key"]
        .as_str()
        .unwrap()
        .to_string();

    let cli = Cli::new(&server.url);
    let login = cli.run(&["login", "--api-key", &key]).await.ok();
    assert!(
        login.stdout.contains("Stored API key vr_"),
        "{}",
        login.stdout
    );
    assert!(
        !login.stdout.contains(&key),
        "the whole key must not be printed"
    );
    assert_eq!(cli.credentials_mode(), 0o600);
    let whoami = cli.run(&["whoami"]).await.ok();
    assert!(whoami.stdout.contains("API key vr_"), "{}", whoami.stdout);
    assert!(whoami.stdout.contains(&server.url), "{}", whoami.stdout);
    cli.run(&["functions", "list"]).await.ok();

    let bad = Cli::new(&server.url);
    let run = bad
        .run(&["login", "--api-key", "vr_notarealkeyatall"])
        .await
        .fails(3);
    assert!(run.stderr.contains("unauthorized"), "{}", run.stderr);
    assert!(!bad.credentials_path().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_named() {
    let down = dead_server();
    let cli = Cli::new(&down).with_env("VOLTRUN_API_KEY", "vr_whatever");
    let run = cli.run(&["functions", "list"]).await.fails(3);
    assert!(
        run.stderr
            .contains(&format!("cannot reach the VoltRun server at {down}")),
        "{}",
        run.stderr
    );
    let run = Cli::new(&down)
        .run_with_stdin(&["login", "--email", "a@example.com"], Some("pw\n"))
        .await
        .fails(3);
    assert!(run.stderr.contains(&down), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_renewing_the_session_at_once_keep_it_alive() {
    let server = TestServer::spawn().await;
    let user = server.register().await;
    let cli = Cli::new(&server.url);
    cli.login(&user).await.ok();
    let mut broken = cli.credentials();
    broken["servers"][&server.url]["access_token"] = "not-a-token".into();
    std::fs::write(cli.credentials_path(), broken.to_string()).unwrap();

    // Both find the access token refused; one renews, the other must use the renewed pair rather
    // than spend the same refresh token again (which the server treats as theft).
    let (a, b, c) = tokio::join!(
        cli.run(&["functions", "list"]),
        cli.run(&["keys", "list"]),
        cli.run(&["executions", "list"]),
    );
    a.ok();
    b.ok();
    c.ok();
    cli.run(&["whoami"]).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_creates_an_account_and_logs_in() {
    let server = TestServer::spawn().await;
    let cli = Cli::new(&server.url);
    let email = format!("new-{}@example.com", crate::helpers::unique());
    let run = cli
        .run_with_stdin(
            &["register", "--email", &email, "--name", "New User"],
            Some("correct horse battery\n"),
        )
        .await
        .ok();
    assert_eq!(
        run.stdout.trim(),
        format!("Logged in to {} as {email}", server.url)
    );
    assert_eq!(cli.credentials_mode(), 0o600);
    let who = cli.run(&["whoami"]).await.ok();
    assert!(who.stdout.contains(&email), "{}", who.stdout);
    // The same email again is refused with the server's code and request id, on one line.
    let again = cli
        .run_with_stdin(
            &["register", "--email", &email],
            Some("correct horse battery\n"),
        )
        .await
        .fails(3);
    assert_eq!(again.stderr.trim().lines().count(), 1, "{}", again.stderr);
    assert!(again.stderr.contains("conflict"), "{}", again.stderr);
}
