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

/// A closed object schema: these properties, all required unless listed in `optional`.
fn object(properties: Value, optional: &[&str]) -> Value {
    let required: Vec<&String> = properties
        .as_object()
        .map(|p| {
            p.keys()
                .filter(|k| !optional.contains(&k.as_str()))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": false,
    })
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// The bodies of the API, as the registry and handlers serialize them.
fn schemas() -> Value {
    let string = json!({"type": "string"});
    let integer = json!({"type": "integer"});
    let time = json!({"type": "string", "format": "date-time"});
    let version_properties = json!({
        "name": string,
        "version": {"type": "integer", "minimum": 1, "description": "registry version, monotonic per name"},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "size_bytes": integer,
        "kind": {"enum": ["filter", "map", "filter-map", "flat-map", "scenario"]},
        "declared_name": {"type": "string", "description": "the name `describe` reports"},
        "declared_version": {"type": "string", "description": "the version `describe` reports"},
        "description": string,
        "config_schema": {"description": "JSON Schema of the plugin's configuration"},
        "uploaded_at": time,
        "uploaded_by": string,
        "current": {"type": "boolean"},
    });
    let mut upload_properties = version_properties.clone();
    upload_properties["created"] =
        json!({"type": "boolean", "description": "false when the bytes were already stored"});
    json!({
        "Health": object(json!({"status": {"const": "ok"}, "generation": integer}), &[]),
        "Generation": object(json!({"generation": integer}), &[]),
        "Whoami": object(json!({"role": {"enum": ["viewer", "admin"]}}), &[]),
        "PipelineStatus": object(json!({
            "events_total": integer, "outputs_total": integer, "dead_letters_total": integer,
            "cycles_total": integer, "failed_cycles_total": integer,
            "events_per_second": {"type": "number", "description": "events committed per second over about 15 s"},
            "generation": integer,
            "lag": {"type": "array", "items": object(json!({"topic": string, "partition": integer, "lag": integer}), &[])},
            "failing_sinks": {"type": "array", "items": object(json!({"sink": string, "since": time, "seconds": integer, "error": string}), &[])},
            "quarantined": {"type": "array", "items": object(json!({"scenario": string, "plugin": string, "reason": string, "until": time}), &[])},
            "dead_letters_by_reason": {"type": "object", "additionalProperties": integer},
            "recent_dead_letters": {"type": "array", "description": "the latest dead letters, newest first", "items": object(json!({
                "at": time, "reason": string, "error": string,
                "scenario": {"type": ["string", "null"]}, "plugin": {"type": ["string", "null"]},
                "topic": string, "partition": integer, "offset": integer,
                "preview": {"type": "string", "description": "the value's first 200 bytes"},
            }), &[])},
            "alerts_firing": {"type": "array", "items": object(json!({"rule": string, "summary": string, "since": time}), &[])},
        }), &[]),
        "ScenarioStats": object(json!({
            "scenario_id": string,
            "counting_since": {"type": ["string", "null"], "format": "date-time",
                "description": "when the counters started counting this scenario (a Redis restarted without persistence starts again)"},
            "uncounted": {"type": "array", "description": "ranges of source offsets whose events the counts miss: Redis lost them and the journal no longer held them (for every scenario of the consumer group)",
                "items": object(json!({
                    "topic": string, "partition": integer, "from_offset": integer,
                    "until_offset": integer, "noted_at": time,
                }), &[])},
            "total": integer, "matched": integer, "errors": integer, "dropped": integer,
            "success_ratio": {"type": "number"},
            "versions": {"type": "array", "items": object(json!({
                "plugin": string, "total": integer, "matched": integer, "errors": integer, "dropped": integer,
            }), &[])},
            "from": time, "to": time,
            "minutes": {"type": "array", "items": object(json!({
                "minute": time, "total": integer, "success": integer, "errors": integer,
                "success_ratio": {"type": "number"},
            }), &[])},
        }), &[]),
        "PluginVersion": object(version_properties, &[]),
        "Upload": object(upload_properties, &[]),
        "PluginSummary": object(json!({
            "name": string,
            "current_version": integer,
            "latest_version": integer,
            "current": schema_ref("PluginVersion"),
        }), &[]),
        "PluginList": object(json!({"plugins": {"type": "array", "items": schema_ref("PluginSummary")}}), &[]),
        "PluginDetail": object(json!({
            "name": string,
            "current_version": integer,
            "versions": {"type": "array", "items": schema_ref("PluginVersion")},
        }), &[]),
        "Deleted": object(json!({
            "deleted": string,
            "version": integer,
            "disabled_scenarios": {"type": "array", "items": string},
        }), &["version"]),
        "Rollback": object(json!({"to": {"type": "integer", "minimum": 1}}), &[]),
        "ScenarioDocument": {
            "type": "object",
            "description": "The scenario as users write it. weir reads the fields below; every \
                other field (log_format, filters, logical_operator, ...) is the plugin's \
                configuration, checked against the plugin's config schema.",
            "required": ["scenario_id"],
            "properties": {
                "scenario_id": {"type": ["string", "integer"]},
                "title": string,
                "manager": string,
                "plugin": {"type": "string", "description": "`name` or `name@version`; default `scenario`"},
                "source": {"type": "array", "items": string, "description": "topics bound to this scenario"},
                "output_topic": {"type": "string", "description": "default weir.out.<scenario_id>"},
                "enrich": object(json!({"by": string}), &[]),
                "enabled": {"type": "boolean"},
            },
        },
        "Scenario": object(json!({
            "scenario_id": string,
            "plugin": string,
            "enabled": {"type": "boolean"},
            "document": schema_ref("ScenarioDocument"),
            "created_at": time,
            "updated_at": time,
            "updated_by": string,
        }), &[]),
        "ScenarioList": object(json!({"scenarios": {"type": "array", "items": schema_ref("Scenario")}}), &[]),
        "Imported": object(json!({"imported": integer}), &[]),
        "Member": object(json!({"member_id": string, "attributes": {"type": "object"}}), &[]),
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
                },
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
