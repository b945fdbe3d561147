//! The error responses as the OpenAPI document names them: one reusable response per shared error,
//! each with the `ErrorBody` schema and a description of the error codes it stands for. Handlers
//! list in their `#[utoipa::path]` the ones they can answer, as `(status = 401, response =
//! Unauthenticated)`; the API suite checks each route's list against what the route does.
//!
//! A status names one response per route, so the 503s come in the combinations routes answer: every
//! route that reads the database can find it unavailable, every route that reads a body can meet the
//! upload cap, and register, login and invocations have a 503 of their own besides.

use utoipa::ToResponse;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{Content, Ref, RefOr, Response};

/// An error response in the API's error format, with a `Retry-After` header when `retry_after`.
fn error_response(description: &str, retry_after: bool) -> RefOr<Response> {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
    );
    if retry_after {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer))
                .description(Some("Seconds to wait before retrying"))
                .build(),
        );
    }
    response.build().into()
}

/// Declares unit types that name a documented error response (they are only ever named in
/// `#[utoipa::path]` annotations and the document's components, never built).
macro_rules! error_responses {
    ($($(#[doc = $doc:literal])+ $name:ident $(with $retry:ident)?;)*) => {
        $(
            $(#[doc = $doc])+
            #[derive(Debug)]
            pub struct $name;

            impl<'r> ToResponse<'r> for $name {
                fn response() -> (&'r str, RefOr<Response>) {
                    let description = [$($doc.trim()),+].join(" ");
                    (stringify!($name), error_response(&description, error_responses!(@retry $($retry)?)))
                }
            }
        )*

        /// Every documented error response, for the document's components.
        pub fn all() -> Vec<(&'static str, RefOr<Response>)> {
            vec![$(<$name as ToResponse<'static>>::response()),*]
        }
    };
    (@retry retry_after) => { true };
    (@retry) => { false };
}

error_responses! {
    /// The body is not valid JSON (`malformed_json`), or could not be read (`bad_request`).
    BadRequest;
    /// No credentials, or ones that are not valid: malformed, unknown, expired, or of a session that
    /// has ended (`unauthorized`).
    Unauthenticated;
    /// An API key was presented where only an access token may be used (`api_key_not_allowed`).
    ApiKeyNotAllowed;
    /// The API key's scope does not cover this route: an `execute` key may only invoke functions and
    /// read executions (`insufficient_scope`).
    InsufficientScope;
    /// The API key's scope does not cover this route (`insufficient_scope`), or the write would take
    /// the user past a quota: functions or bytes of code (`quota_exceeded`, naming the limit and the
    /// use).
    ForbiddenForCode;
    /// Nothing of the caller's has this id, or the id is not a UUID (`not_found`). Another user's
    /// resource is not found either.
    NotFound;
    /// The request body did not arrive within the server's `HTTP_BODY_TIMEOUT_S` (`request_timeout`).
    RequestTimeout;
    /// The request conflicts with what is stored: a name or email already taken, or a concurrent
    /// change (`conflict`).
    Conflict;
    /// The body is larger than this route accepts (`payload_too_large`).
    PayloadTooLarge;
    /// The body is not sent as `Content-Type: application/json` (`unsupported_media_type`).
    UnsupportedMediaType;
    /// The request is well-formed but not valid: a body of the wrong shape, or a field or query
    /// parameter out of its range (`validation_failed`; `field` names which).
    ValidationFailed;
    /// Too many attempts from this client address, or failed logins on this account from it
    /// (`too_many_requests`); retry after `Retry-After` seconds.
    RateLimited with retry_after;
    /// The function is at its concurrency limit or the server at its memory budget, and no capacity
    /// freed while the invocation waited (`too_many_requests`), or the user's queue of asynchronous
    /// executions is full (`queue_full`, retry after `Retry-After` seconds).
    Overloaded with retry_after;
    /// The database is unavailable (`database_unavailable`), or out of space for a write
    /// (`storage_full`); retry shortly.
    Unavailable;
    /// The database is unavailable (`database_unavailable`) or out of space (`storage_full`), or, on
    /// the routes that accept code, too many uploads (bodies over 1 MiB or of unknown length, two per
    /// user) are being read at once (`too_many_uploads`, retry after `Retry-After` seconds).
    UnavailableForBodies with retry_after;
    /// The database is unavailable (`database_unavailable`), or too many large code downloads (over
    /// 1 MiB, two per user) are being sent at once (`too_many_downloads`, retry after `Retry-After`
    /// seconds).
    UnavailableForDownloads with retry_after;
    /// The database is unavailable (`database_unavailable`) or out of space (`storage_full`), or too
    /// many passwords are being checked at once (`auth_busy`); retry after `Retry-After` seconds.
    AuthUnavailable with retry_after;
    /// Functions cannot run on this server (`engine_unavailable`; `GET /health` says why to the
    /// operator), the database is unavailable (`database_unavailable`) or out of space, or the code
    /// could not be unpacked for want of space (`storage_full`); retry after `Retry-After` seconds
    /// where it is given.
    InvokeUnavailable with retry_after;
}
