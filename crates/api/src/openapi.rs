//! The parts of the OpenAPI document that belong to no one route: its header (info, the
//! bearer scheme, the default security), the path parameters, and the responses every route
//! shares, which [`complete`] adds. The node makes the document from its router
//! (`utoipa-axum`): each handler carries its own operation, so the document lists exactly the
//! routes the node serves, and the schemas come from this crate's types (`ToSchema`).

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi, Ref, RefOr};
use utoipa::{IntoParams, Modify, OpenApi as _, PartialSchema, ToSchema};

/// `{env}` of the env routes.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EnvPath {
    /// The env's name (as the user knows it).
    #[param(min_length = 1, max_length = 128)]
    pub env: String,
}

/// `{user}` of the user routes.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserPath {
    /// The user's name.
    #[param(min_length = 1, max_length = 128)]
    pub user: String,
}

/// `{user}` and `{key}` of [`routes::KEY`](crate::routes::KEY).
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct KeyPath {
    /// The user's name.
    #[param(min_length = 1, max_length = 128)]
    pub user: String,
    /// A key's fingerprint (`SHA256:...`) or comment.
    #[param(min_length = 1, max_length = 1024)]
    pub key: String,
}

/// `{name}` of the pending-invite routes.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct InvitePath {
    /// The new name the invite offers.
    #[param(min_length = 1, max_length = 128)]
    pub name: String,
}

/// `{id}` of a preview.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PreviewPath {
    /// The exposure's id.
    pub id: String,
}

/// The body of the files routes: a tar archive (binary, not JSON).
pub struct Tar;

impl PartialSchema for Tar {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl ToSchema for Tar {}

/// The document's header; the routes are added by the node.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Spawngrid node API",
        description = "One node of a Spawngrid grid: users log in for a bearer token, list the \
            names they may spawn, spawn environments (envs), run commands in them, save them as \
            new immutable names and boom them. Every error is a JSON object \
            {\"error\": \"one line\"}. A user sees and acts on only their own envs and names: \
            another user's env answers 404, as a missing one does. Byte streams are standard \
            padded base64. Every route needs `Authorization: Bearer TOKEN` (a token from \
            POST /api/login) unless it says otherwise."
    ),
    security(("bearer" = [])),
    components(schemas(crate::CpuMessage, crate::ErrorBody)),
    modifiers(&Bearer)
)]
struct Header;

/// Adds the `bearer` security scheme.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("a token from POST /api/login"))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The document without routes: info, the bearer scheme (required by default), and the
/// schemas no route names in a body: [`CpuMessage`](crate::CpuMessage) (sent over the cpu
/// WebSocket) and [`ErrorBody`](crate::ErrorBody) (named by [`complete`]).
pub fn header() -> OpenApi {
    Header::openapi()
}

/// Adds to every operation under `/api/` the error responses it shares with the others,
/// unless it describes them itself: 401 when it needs a token, 400 when it takes a JSON body
/// or parameters, 413 when it takes a JSON body, 500 always. Every error response under
/// `/api/` without content gets the [`ErrorBody`](crate::ErrorBody) schema.
pub fn complete(doc: &mut OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/api/") {
            continue;
        }
        for op in operations(item) {
            let json_body = op.request_body.as_ref().is_some_and(|b| match b {
                RefOr::T(b) => b.content.contains_key("application/json"),
                RefOr::Ref(_) => true,
            });
            let params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
            let shared = [
                (
                    op.security.is_none(),
                    "401",
                    "missing, bad, expired or revoked token",
                ),
                (json_body, "400", "malformed JSON or invalid input"),
                (params, "400", "a bad path or query parameter"),
                (
                    json_body,
                    "413",
                    "request body over the node's max_body (1 MiB by default)",
                ),
                (true, "500", "the node failed"),
            ];
            for (applies, status, description) in shared {
                if applies {
                    add_response(op, status, description);
                }
            }
            for (status, response) in op.responses.responses.iter_mut() {
                if let RefOr::T(r) = response {
                    let error = status.parse::<u16>().is_ok_and(|s| s >= 400);
                    if error && r.content.is_empty() {
                        let body = Ref::from_schema_name(crate::ErrorBody::name());
                        let content = ContentBuilder::new().schema(Some(body)).build();
                        r.content
                            .insert("application/json".into(), RefOr::T(content));
                    }
                }
            }
        }
    }
}

/// Adds the error `status` to every operation of `doc` that does not describe it itself
/// (for errors a layer answers for a group of routes; [`complete`] gives it the error body).
pub fn add_error(doc: &mut OpenApi, status: &str, description: &str) {
    for item in doc.paths.paths.values_mut() {
        for op in operations(item) {
            add_response(op, status, description);
        }
    }
}

/// Adds response `status` to `op` unless it has one.
fn add_response(op: &mut Operation, status: &str, description: &str) {
    let responses = &mut op.responses.responses;
    if !responses.contains_key(status) {
        let r = ResponseBuilder::new().description(description).build();
        responses.insert(status.to_string(), RefOr::T(r));
    }
}

/// Every operation of a path item.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn schema<T: PartialSchema>() -> Value {
        serde_json::to_value(T::schema()).unwrap()
    }

    /// The schemas' bounds are literals (utoipa takes no constants): they must say what the
    /// constants say.
    #[test]
    fn schema_bounds_match_the_constants() {
        let spawn = schema::<crate::SpawnRequest>();
        assert_eq!(spawn["properties"]["mem"]["minimum"], json!(crate::MIN_MEM));
        let fork = schema::<crate::ForkRequest>();
        assert_eq!(
            fork["properties"]["count"]["maximum"],
            json!(crate::MAX_FORK)
        );
        let egress = schema::<crate::Egress>();
        for list in ["allow", "deny"] {
            let max = &egress["properties"][list]["maxItems"];
            assert_eq!(max, &json!(crate::MAX_EGRESS_ENTRIES), "{list}");
        }
        // `deny_unknown_fields` is in the document, and `as` keeps its JSON name.
        assert_eq!(spawn["additionalProperties"], json!(false));
        assert!(spawn["properties"].get("as").is_some());
    }

    /// A route that says nothing of its errors gets the shared ones, each with the error
    /// body; one that describes an error keeps its own words.
    #[test]
    fn complete_adds_the_shared_errors() {
        let doc = json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {
                "/api/x/{env}": {"post": {
                    "parameters": [{"name": "env", "in": "path", "required": true}],
                    "requestBody": {"content": {"application/json": {}}},
                    "responses": {"200": {"description": "ok"},
                                  "404": {"description": "no such env"}}
                }},
                "/api/login": {"post": {"security": [], "responses": {}}},
                "/metrics": {"get": {"responses": {}}}
            }
        });
        let mut doc: OpenApi = serde_json::from_value(doc).unwrap();
        complete(&mut doc);
        let doc = serde_json::to_value(&doc).unwrap();
        let x = &doc["paths"]["/api/x/{env}"]["post"]["responses"];
        let codes: Vec<&String> = x.as_object().unwrap().keys().collect();
        assert_eq!(codes, ["200", "400", "401", "404", "413", "500"]);
        assert_eq!(x["404"]["description"], "no such env");
        assert_eq!(x["400"]["description"], "malformed JSON or invalid input");
        let error = json!({"$ref": "#/components/schemas/ErrorBody"});
        for code in ["400", "401", "404", "413", "500"] {
            assert_eq!(x[code]["content"]["application/json"]["schema"], error);
        }
        assert!(x["200"].get("content").is_none());
        let login = &doc["paths"]["/api/login"]["post"]["responses"];
        let codes: Vec<&String> = login.as_object().unwrap().keys().collect();
        assert_eq!(codes, ["500"]);
        assert_eq!(doc["paths"]["/metrics"]["get"]["responses"], json!({}));
    }
}
