//! What a component may contain, checked before anything compiles it, and
//! what a plugin's configuration schema may be, checked before the host ever
//! evaluates it.
//!
//! Compilation has no budget of its own (Cranelift cannot be interrupted), so
//! its cost is bounded by refusing, at upload, the shapes that make it costly:
//! the cost of compiling a function grows with its size and with the square of
//! its control-flow nesting (docs/performance.md has what a small component
//! with one function nested 100,000 deep costs), and the whole with the number of
//! functions. Counts of memories, tables and core instances are refused here
//! with a clear reason; the same bounds hold again at instantiation (the store's
//! limiter and the pooling allocator), which is exact where a module
//! instantiated twice would be counted once here.
//!
//! Schemas: the host checks scenario configurations against the plugin's JSON
//! Schema (so that errors name the field before the plugin runs), and an
//! evaluation is bounded only when the schema is: a `$ref` cycle expands
//! without end and references to one definition from several places multiply.
//! So a schema may not use references at all, and its size, depth and number
//! of subschemas are capped; `pattern` regexes run under the validator's
//! backtracking limit.

use serde_json::Value;
use wasmparser::{Operator, Parser, Payload};

/// Largest component accepted, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 32 << 20;
/// Most linear memories a component may define (a Rust `wasm32-wasip2` plugin has one).
pub const MAX_MEMORIES: usize = 4;
/// Most tables a component may define.
pub const MAX_TABLES: usize = 16;
/// Most core instances a component may create.
pub const MAX_CORE_INSTANCES: usize = 32;
/// Most functions a component may define, over all its core modules.
pub const MAX_FUNCTIONS: usize = 100_000;
/// Largest function body, in bytes.
pub const MAX_FUNCTION_BYTES: usize = 1 << 20;
/// Deepest control-flow nesting (`block`, `loop`, `if`, `try_table`) in one function.
pub const MAX_NESTING: usize = 2_000;
/// Deepest nesting of components and modules inside the component.
pub const MAX_COMPONENT_NESTING: usize = 4;

/// Most host handles (pollables, streams) one store may hold at once: each
/// takes host memory outside the guest's memory budget. A wasm32-wasip2
/// plugin holds a handful.
pub const MAX_HOST_HANDLES: usize = 10_000;

/// Largest configuration schema, in bytes of JSON.
pub const MAX_SCHEMA_BYTES: usize = 64 << 10;
/// Most objects (subschemas and keyword objects) in a configuration schema.
pub const MAX_SCHEMA_NODES: usize = 2_000;
/// Deepest nesting of a configuration schema's JSON.
pub const MAX_SCHEMA_DEPTH: usize = 32;

/// What a component holds, counted while checking it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Linear memories defined by its core modules.
    pub memories: usize,
    /// Tables defined by its core modules.
    pub tables: usize,
    /// Core instances it creates.
    pub core_instances: usize,
    /// Functions defined by its core modules.
    pub functions: usize,
    /// Largest function body, in bytes.
    pub largest_function: usize,
    /// Deepest control-flow nesting of any function.
    pub deepest_nesting: usize,
}

/// Why a component is refused before compiling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It does not parse as WebAssembly.
    Malformed(String),
    /// It passes a bound; which one, and the bound.
    TooCostly(String),
}

impl Refusal {
    /// The runtime error for a component whose short sha256 is `sha256`.
    pub(crate) fn into_error(self, sha256: &str) -> crate::RuntimeError {
        let sha256 = sha256.to_owned();
        match self {
            Refusal::TooCostly(reason) => crate::RuntimeError::TooCostly { sha256, reason },
            Refusal::Malformed(reason) => crate::RuntimeError::Compile { sha256, reason },
        }
    }
}

/// Counts what `bytes` holds and refuses it, with the reason, when any count
/// passes its cap or it does not parse.
pub fn check_component(bytes: &[u8]) -> Result<Shape, Refusal> {
    check_shape(bytes).map_err(|refusal| match refusal {
        Ok(reason) => Refusal::TooCostly(reason),
        Err(parse) => Refusal::Malformed(parse.to_string()),
    })
}

/// The check: `Err(Ok(reason))` for a bound passed, `Err(Err(_))` for a parse error.
fn check_shape(bytes: &[u8]) -> Result<Shape, Result<String, wasmparser::BinaryReaderError>> {
    if bytes.len() > MAX_COMPONENT_BYTES {
        return Err(Ok(format!(
            "the component is {} bytes; at most {MAX_COMPONENT_BYTES} are accepted",
            bytes.len()
        )));
    }
    let mut shape = Shape::default();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(Err)?;
        match payload {
            Payload::Version { .. } => {
                depth += 1;
                if depth > MAX_COMPONENT_NESTING {
                    return Err(Ok(format!(
                        "modules and components nest more than {MAX_COMPONENT_NESTING} deep"
                    )));
                }
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::MemorySection(reader) => shape.memories += reader.count() as usize,
            Payload::TableSection(reader) => shape.tables += reader.count() as usize,
            Payload::FunctionSection(reader) => shape.functions += reader.count() as usize,
            Payload::InstanceSection(reader) => shape.core_instances += reader.count() as usize,
            Payload::CodeSectionEntry(body) => {
                let size = body.range().len();
                shape.largest_function = shape.largest_function.max(size);
                if size > MAX_FUNCTION_BYTES {
                    return Err(Ok(format!(
                        "a function body is {size} bytes; at most {MAX_FUNCTION_BYTES} are accepted"
                    )));
                }
                let nesting = nesting(&body).map_err(Err)?;
                shape.deepest_nesting = shape.deepest_nesting.max(nesting);
                if nesting > MAX_NESTING {
                    return Err(Ok(format!(
                        "a function nests blocks {nesting} deep; at most {MAX_NESTING} are accepted \
                         (compiling such code costs the square of its depth)"
                    )));
                }
            }
            _ => {}
        }
        let over = |what: &str, count: usize, cap: usize| {
            (count > cap).then(|| format!("it defines {count} {what}; at most {cap} are accepted"))
        };
        if let Some(reason) = over("linear memories", shape.memories, MAX_MEMORIES)
            .or_else(|| over("tables", shape.tables, MAX_TABLES))
            .or_else(|| over("core instances", shape.core_instances, MAX_CORE_INSTANCES))
            .or_else(|| over("functions", shape.functions, MAX_FUNCTIONS))
        {
            return Err(Ok(reason));
        }
    }
    Ok(shape)
}

/// The deepest control-flow nesting in one function body, stopping early once
/// it passes the cap (the rest need not be read to refuse it).
fn nesting(body: &wasmparser::FunctionBody<'_>) -> wasmparser::Result<usize> {
    let mut reader = body.get_operators_reader()?;
    let (mut depth, mut deepest) = (0usize, 0usize);
    while !reader.eof() {
        match reader.read()? {
            Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::TryTable { .. }
            | Operator::Try { .. } => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > MAX_NESTING {
                    break;
                }
            }
            // `delegate` closes a legacy `try` the way `end` closes a block.
            Operator::End | Operator::Delegate { .. } => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(deepest)
}

/// Refuses a configuration schema whose evaluation could be unbounded (see the
/// module doc), with the reason.
pub fn check_schema(text: &str, schema: &Value) -> Result<(), String> {
    if text.len() > MAX_SCHEMA_BYTES {
        return Err(format!(
            "the schema is {} bytes; at most {MAX_SCHEMA_BYTES} are accepted",
            text.len()
        ));
    }
    let mut nodes = 0usize;
    let mut stack = vec![(schema, 1usize, String::new())];
    while let Some((value, depth, at)) = stack.pop() {
        if depth > MAX_SCHEMA_DEPTH {
            return Err(format!(
                "the schema nests more than {MAX_SCHEMA_DEPTH} deep (at {at})"
            ));
        }
        match value {
            Value::Object(map) => {
                nodes += 1;
                if nodes > MAX_SCHEMA_NODES {
                    return Err(format!(
                        "the schema has more than {MAX_SCHEMA_NODES} objects"
                    ));
                }
                for (key, child) in map {
                    if matches!(key.as_str(), "$ref" | "$dynamicRef" | "$recursiveRef") {
                        return Err(format!(
                            "`{key}` at {at}/{key}: references are not accepted, so that checking a \
                             configuration stays bounded; write the subschema in place"
                        ));
                    }
                    stack.push((child, depth + 1, format!("{at}/{key}")));
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    stack.push((child, depth + 1, format!("{at}/{i}")));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(text: &str) -> Result<(), String> {
        check_schema(text, &serde_json::from_str(text).unwrap())
    }

    #[test]
    fn references_and_oversized_schemas_are_refused() {
        assert!(schema(r#"{"type":"object","properties":{"a":{"enum":[1,2]}}}"#).is_ok());
        let cycle =
            schema(r##"{"$defs":{"a":{"anyOf":[{"$ref":"#/$defs/a"}]}},"$ref":"#/$defs/a"}"##)
                .unwrap_err();
        assert!(cycle.contains("references are not accepted"), "{cycle}");
        let dynamic = schema(r#"{"items":{"$dynamicRef":"x"}}"#).unwrap_err();
        assert!(
            dynamic.contains("`$dynamicRef` at /items/$dynamicRef"),
            "{dynamic}"
        );

        let fan_out = format!(
            r#"{{"anyOf":[{}]}}"#,
            vec![r#"{"type":"string"}"#; MAX_SCHEMA_NODES].join(",")
        );
        assert!(
            schema(&fan_out)
                .unwrap_err()
                .contains("more than 2000 objects")
        );
        let deep = format!(
            "{}{}",
            r#"{"not":"#.repeat(40),
            "true".to_owned() + &"}".repeat(40)
        );
        assert!(
            schema(&deep)
                .unwrap_err()
                .contains("nests more than 32 deep")
        );
        let big = format!(r#"{{"description":"{}"}}"#, "x".repeat(MAX_SCHEMA_BYTES));
        assert!(schema(&big).unwrap_err().contains("at most 65536"));
    }

    #[test]
    fn garbage_and_oversized_components_are_refused_before_compiling() {
        let garbage = check_component(b"\0asm\x0d\0\x01\0\xff\xff").unwrap_err();
        assert!(matches!(garbage, Refusal::Malformed(_)), "{garbage:?}");
        let huge = vec![0u8; MAX_COMPONENT_BYTES + 1];
        let Refusal::TooCostly(reason) = check_component(&huge).unwrap_err() else {
            panic!("a size refusal");
        };
        assert!(reason.contains("at most 33554432"), "{reason}");
    }
}
