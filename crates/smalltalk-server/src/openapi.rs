//! The OpenAPI 3.1 document: the routes' own annotations, plus what every
//! route may answer (problem+json errors) and the optional bearer token.

use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

use crate::problem::{PROBLEM_JSON, Problem};
use crate::routes;

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "SmallTalk-rs", description = "Sessions that survive restarts, agents whose failures are healed, events with replay, groups and versioned state."),
    paths(
        routes::sessions::create,
        routes::sessions::get,
        routes::sessions::list,
        routes::sessions::delete,
        routes::sessions::invalidate,
        routes::sessions::append,
        routes::sessions::messages,
        routes::sessions::agent_states,
        routes::sessions::put_agent_state,
        routes::agents::list,
        routes::agents::get,
        routes::agents::register,
        routes::agents::heartbeat,
        routes::agents::deregister,
        routes::events::publish,
        routes::events::read,
        routes::events::stream,
        routes::state::get,
        routes::state::put,
        routes::state::delete,
        routes::state::history,
        routes::state::diff,
        routes::state::watch,
        routes::state_txn::txn,
        routes::groups::create,
        routes::groups::get,
        routes::groups::messages,
        routes::groups::add_agent,
        routes::groups::remove_agent,
        routes::groups::post_message,
        routes::groups::stream_message,
        routes::groups::resume,
        routes::groups::end,
        routes::ops::health,
        routes::ops::ready,
    ),
    components(schemas(Problem)),
    modifiers(&ProblemResponses),
    tags((name = "sessions", description = "Conversations and their history"), (name = "events", description = "The event log: publish, read, stream"), (name = "agents", description = "Agent health; remote agents' heartbeats"), (name = "state", description = "Versioned shared state"), (name = "groups", description = "Group conversations of LLM agents"), (name = "operations", description = "Health, readiness, metrics")),
)]
pub struct ApiDoc;

/// Adds the errors every `/v1` route may answer, sends every error as
/// `application/problem+json`, and declares the (optional) bearer token.
struct ProblemResponses;

impl utoipa::Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let problem = || {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let guarded = path.starts_with("/v1/");
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let responses = &mut operation.responses.responses;
                // Errors are problem documents, whatever the annotation said.
                for (status, response) in responses.iter_mut() {
                    if status.starts_with('4') || status.starts_with('5') {
                        if let RefOr::T(response) = response {
                            response.content.clear();
                            response.content.insert(PROBLEM_JSON.into(), problem());
                        }
                    }
                }
                if !guarded {
                    continue;
                }
                let takes_body = operation.request_body.is_some();
                let common: &[(&str, &str)] = &[
                    ("400", "Invalid input, id, query or JSON"),
                    (
                        "401",
                        "A bearer token is required (when the server has one)",
                    ),
                    ("500", "A fault of the server"),
                    (
                        "503",
                        "Storage unavailable, at capacity or degraded (with Retry-After)",
                    ),
                    (
                        "504",
                        "The request took too long; what it asked for may still be applied",
                    ),
                ];
                let with_body: &[(&str, &str)] = &[
                    ("413", "The body is too large"),
                    ("415", "The body is not JSON"),
                    ("422", "The body has wrong types or unknown fields"),
                ];
                let extra = if takes_body { with_body } else { &[] };
                for (status, description) in common.iter().chain(extra) {
                    responses.entry((*status).into()).or_insert_with(|| {
                        RefOr::T(
                            ResponseBuilder::new()
                                .description(*description)
                                .content(PROBLEM_JSON, problem())
                                .build(),
                        )
                    });
                }
                // The token is optional: with it, or without when the
                // server has none.
                operation.security = Some(vec![
                    SecurityRequirement::new("bearer", Vec::<String>::new()),
                    SecurityRequirement::default(),
                ]);
            }
        }
    }
}
