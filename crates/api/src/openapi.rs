//! The OpenAPI 3 document, generated from the handlers' annotations and the request/response types,
//! so it cannot drift from the code without a compile error or a failing test.

use std::sync::OnceLock;

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{auth, executions, functions, keys, layers, system};

#[derive(OpenApi)]
#[openapi(
    info(title = "VoltRun API", description = "Deploy and run functions; read their executions and logs."),
    paths(
        auth::register, auth::login, auth::refresh, auth::logout, auth::me,
        keys::list, keys::create, keys::delete,
        functions::create, functions::list, functions::get, functions::update, functions::delete, functions::code,
        layers::publish, layers::list, layers::get, layers::delete,
        executions::execute, executions::list, executions::get, executions::logs,
        system::health, system::metrics, system::runtimes, system::openapi_json,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
    modifiers(&SecuritySchemes, &ErrorResponses),
    tags(
        (name = "auth", description = "Accounts and sessions"),
        (name = "keys", description = "API keys"),
        (name = "functions", description = "Functions"),
        (name = "layers", description = "Layer versions functions merge at /opt"),
        (name = "executions", description = "Invocations and their records"),
        (name = "system", description = "Health, metrics and this document"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT or API key")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The server's METRICS_TOKEN"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The shared error responses (`error_docs`), which handlers name by reference.
struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, response) in crate::error_docs::all() {
            components.responses.insert(name.to_string(), response);
        }
    }
}

pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document, rendered once.
pub fn openapi_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        openapi_document()
            .to_json()
            .unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    })
}
