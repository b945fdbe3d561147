//! Tenancy: a user sees and touches only their own functions, executions and keys. Another user's
//! resource answers 404, exactly like one that does not exist.

use reqwest::Method;
use serde_json::json;
use voltrun_domain::execution::ExecutionStatus;

use crate::executions::seed_execution;

both_databases! {
    async fn every_route_hides_other_users_resources(app) {
        let alice = app.register().await;
        let bob = app.register().await;
        let f = app.create_function(&alice.access_token, "private").await["id"].as_str().unwrap().to_string();
        let e = seed_execution(&app, &alice.id, &f, ExecutionStatus::Succeeded).await;
        let key = app.post("/api/keys", &alice.access_token, json!({"name": "alice-key"})).await.expect(201).body["id"].as_str().unwrap().to_string();
        let bob_key = app.post("/api/keys", &bob.access_token, json!({"name": "bob-key"})).await.expect(201).body["key"].as_str().unwrap().to_string();

        for token in [bob.access_token.as_str(), bob_key.as_str()] {
            app.get(&format!("/api/functions/{f}"), token).await.expect_error(404, "not_found");
            app.get(&format!("/api/functions/{f}/code"), token).await.expect_error(404, "not_found");
            app.put(&format!("/api/functions/{f}"), token, json!({"description": "pwned"})).await.expect_error(404, "not_found");
            app.post(&format!("/api/functions/{f}/execute"), token, json!({})).await.expect_error(404, "not_found");
            app.delete(&format!("/api/functions/{f}"), token).await.expect_error(404, "not_found");
            app.get(&format!("/api/executions/{e}"), token).await.expect_error(404, "not_found");
            app.get(&format!("/api/executions/{e}/logs"), token).await.expect_error(404, "not_found");
            assert_eq!(app.get("/api/functions", token).await.expect(200).body["data"], json!([]));
            assert_eq!(app.get("/api/executions", token).await.expect(200).body["data"], json!([]));
            assert_eq!(app.get(&format!("/api/executions?function_id={f}"), token).await.expect(200).body["data"], json!([]));
        }
        app.delete(&format!("/api/keys/{key}"), &bob.access_token).await.expect_error(404, "not_found");
        let bob_keys = app.get("/api/keys", &bob.access_token).await.expect(200).body;
        assert_eq!(bob_keys["data"].as_array().unwrap().len(), 1);

        // Alice's things are untouched.
        let still = app.get(&format!("/api/functions/{f}"), &alice.access_token).await.expect(200).body;
        assert_eq!(still["description"], "");
        assert_eq!(still["version"], 1);
        assert_eq!(app.get("/api/keys", &alice.access_token).await.expect(200).body["data"].as_array().unwrap().len(), 1);
        app.send(Method::GET, &format!("/api/executions/{e}"), Some(&alice.access_token), None).await.expect(200);
    }
}
