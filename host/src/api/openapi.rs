//! The OpenAPI 3.1 document. Its paths come from [`ROUTES`](super::ROUTES),
//! the same table that builds the router and its role checks, so the document
//! lists exactly the routes that exist and the token each needs. Its schemas
//! are derived (`utoipa`) from the types the handlers serialize and take
//! (`bodies.rs`, the registry's types), so a field cannot be added to an answer
//! without being in the document.

use std::sync::OnceLock;

use axum::Json;
use serde_json::{Map, Value, json};

use super::{Access, ROUTES, problem::PROBLEM_JSON};

/// `GET /api/openapi.json`.
pub(super) async fn serve() -> Json<Value> {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    Json(DOCUMENT.get_or_init(document).clone())
}

fn reason(status: u16) -> &'static str {
    axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// Builds the document.
pub(super) fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let mut parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                let ty = if name == "version" {
                    "integer"
                } else {
                    "string"
                };
                json!({"name": name, "in": "path", "required": true, "schema": {"type": ty}})
            })
            .collect();
        parameters.extend(route.query.iter().map(|(name, ty, description)| {
            json!({
                "name": name, "in": "query", "required": false,
                "description": description, "schema": {"type": ty}
            })
        }));

        let (code, description, media) = route.success;
        let mut responses = Map::new();
        let success = match (media, route.response_schema) {
            ("", _) => json!({"description": description}),
            (media, Some(schema)) => json!({
                "description": description,
                "content": {media: {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
            }),
            (media, None) => json!({"description": description, "content": {media: {}}}),
        };
        responses.insert(code.to_string(), success);
        let mut errors: Vec<u16> = route.errors.to_vec();
        match route.access {
            Access::Public => {}
            Access::Read => errors.push(401),
            Access::Write => errors.extend([401, 403]),
        }
        errors.push(500);
        errors.sort_unstable();
        errors.dedup();
        for status in errors {
            responses.insert(
                status.to_string(),
                json!({
                    "description": reason(status),
                    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
                }),
            );
        }

        let mut operation = json!({
            "operationId": route.operation,
            "summary": route.summary,
            "tags": [route.path.split('/').nth(2).unwrap_or("service")],
            "parameters": parameters,
            "responses": responses,
        });
        if !route.request.is_empty() {
            let content: Map<String, Value> = route
                .request
                .iter()
                .map(|media| {
                    let schema = match route.body_schema {
                        Some(name) if *media == "application/json" => {
                            json!({"schema": {"$ref": format!("#/components/schemas/{name}")}})
                        }
                        _ => json!({}),
                    };
                    ((*media).to_owned(), schema)
                })
                .collect();
            operation["requestBody"] = json!({"required": true, "content": content});
        }
        operation["security"] = match route.access {
            Access::Public => json!([]),
            Access::Read => json!([{"bearer": ["viewer"]}]),
            Access::Write => json!([{"bearer": ["admin"]}]),
        };
        let item = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        item[route.method.as_str().to_ascii_lowercase()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "weir control plane",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Plugins (WebAssembly components), scenarios and members of a weir \
                registry. Reads need the viewer or admin bearer token, writes the admin token. \
                Every error is application/problem+json."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        }
    })
}

/// The bodies of the API, derived from the types the handlers serialize
/// (`bodies.rs`, the registry's types): every type a route names, and every
/// type those refer to.
fn schemas() -> Value {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::Schema;

    use super::bodies::*;
    use crate::registry::{Member, PluginDetail, PluginVersion, Scenario, Upload};

    fn add<T: utoipa::ToSchema>(all: &mut Vec<(String, RefOr<Schema>)>) {
        T::schemas(all);
        all.push((T::name().into_owned(), T::schema()));
    }
    let mut all = Vec::new();
    add::<Health>(&mut all);
    add::<Generation>(&mut all);
    add::<Whoami>(&mut all);
    add::<PipelineStatus>(&mut all);
    add::<ScenarioStats>(&mut all);
    add::<DailyHistory>(&mut all);
    add::<PluginVersion>(&mut all);
    add::<Upload>(&mut all);
    add::<PluginList>(&mut all);
    add::<PluginDetail>(&mut all);
    add::<Deleted>(&mut all);
    add::<Rollback>(&mut all);
    add::<ScenarioDocument>(&mut all);
    add::<Scenario>(&mut all);
    add::<ScenarioList>(&mut all);
    add::<Imported>(&mut all);
    add::<Member>(&mut all);
    add::<super::problem::Body<'static>>(&mut all);
    let map: Map<String, Value> = all
        .into_iter()
        .map(|(name, schema)| (name, serde_json::to_value(schema).unwrap_or_default()))
        .collect();
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_document_with_its_security() {
        let doc = document();
        for route in ROUTES {
            let op = &doc["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
            assert_eq!(op["operationId"], route.operation, "{}", route.path);
            let secured = !op["security"].as_array().unwrap().is_empty();
            assert_eq!(secured, route.access != Access::Public, "{}", route.path);
        }
        let upload = &doc["paths"]["/api/plugins"]["post"];
        assert!(upload["requestBody"]["content"]["application/wasm"].is_object());
        assert!(upload["responses"]["413"].is_object());
        assert!(upload["responses"]["403"].is_object());
    }

    #[test]
    fn every_schema_a_route_names_exists_and_compiles() {
        let doc = document();
        for route in ROUTES {
            for name in [route.body_schema, route.response_schema]
                .into_iter()
                .flatten()
            {
                assert!(
                    doc["components"]["schemas"][name].is_object(),
                    "{} {}: schema {name}",
                    route.method,
                    route.path
                );
                let mut schema = json!({"$ref": format!("#/components/schemas/{name}")});
                schema["components"] = doc["components"].clone();
                jsonschema::validator_for(&schema)
                    .unwrap_or_else(|e| panic!("schema {name} does not compile: {e}"));
            }
        }
    }
}
