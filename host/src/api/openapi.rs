//! The OpenAPI 3.1 document, generated from [`ROUTES`](super::ROUTES): the
//! same table that builds the router and its role checks, so the document
//! lists exactly the routes that exist and the token each needs.

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
        let success = if media.is_empty() {
            json!({"description": description})
        } else {
            json!({"description": description, "content": {media: {}}})
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
                .map(|media| ((*media).to_owned(), json!({})))
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
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": {"type": "string", "description": "urn:weir:problem:<kind>"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string", "description": "what was wrong with which input, and what would be accepted"},
                        "errors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["field", "reason"],
                                "properties": {"field": {"type": "string"}, "reason": {"type": "string"}}
                            }
                        }
                    }
                }
            }
        }
    })
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
}
