//! Members: the user attributes (`age`, `gender`, …) scenarios filter on,
//! imported in bulk and read by id.
//!
//! An import is JSON Lines (one object per line) or CSV (a header row, then
//! one member per row). The id comes from the first of `member_id`,
//! `memberId` or `id` present; every other field is an attribute. CSV cells
//! that read as JSON numbers or `true`/`false` become numbers and booleans, so
//! `age > 20` compares numbers; empty cells are left out. An import is all or
//! nothing: any bad line refuses the whole import, listing every bad line, and
//! an id already stored gets the new attributes (the old ones are replaced).

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Backend, FieldError, Registry, RegistryError, db, get, now_ms};

/// Field names that hold a member's id, in order of preference.
const ID_FIELDS: [&str; 3] = ["member_id", "memberId", "id"];

/// Most line errors reported for one import; the rest are counted.
const MAX_ERRORS: usize = 50;

/// Members written per statement.
const CHUNK: usize = 100;

/// The text format of a member import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberFormat {
    /// One JSON object per line.
    JsonLines,
    /// A header row naming the fields, then one row per member.
    Csv,
}

/// One member.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The member id, as events carry it.
    pub member_id: String,
    /// Every other field.
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
}

/// Parses an import, reporting every bad line (up to a limit) at once.
pub fn parse_members(text: &[u8], format: MemberFormat) -> Result<Vec<Member>, Vec<FieldError>> {
    let mut members = Vec::new();
    let mut errors = Vec::new();
    match format {
        MemberFormat::JsonLines => {
            for (i, line) in text.split(|b| *b == b'\n').enumerate() {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let field = format!("line {}", i + 1);
                match serde_json::from_slice::<Value>(line) {
                    Ok(Value::Object(object)) => match member_from(object) {
                        Ok(member) => members.push(member),
                        Err(reason) => errors.push(FieldError::new(field, reason)),
                    },
                    Ok(_) => errors.push(FieldError::new(
                        field,
                        "expected a JSON object such as {\"member_id\": \"m1\", \"age\": 31}",
                    )),
                    Err(e) => errors.push(FieldError::new(field, format!("not JSON: {e}"))),
                }
            }
        }
        MemberFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .from_reader(text);
            let headers = match reader.headers() {
                Ok(headers) => headers.clone(),
                Err(e) => {
                    return Err(vec![FieldError::new(
                        "line 1",
                        format!("unreadable header row: {e}"),
                    )]);
                }
            };
            if !ID_FIELDS.iter().any(|f| headers.iter().any(|h| h == *f)) {
                return Err(vec![FieldError::new(
                    "line 1",
                    format!(
                        "the header row has no id column; name one of {}",
                        ID_FIELDS.join(", ")
                    ),
                )]);
            }
            for record in reader.records() {
                let record = match record {
                    Ok(record) => record,
                    Err(e) => {
                        let line = e.position().map_or(0, |p| p.line());
                        errors.push(FieldError::new(format!("line {line}"), e.to_string()));
                        continue;
                    }
                };
                let line = record.position().map_or(0, |p| p.line());
                let mut object = Map::new();
                for (header, cell) in headers.iter().zip(record.iter()) {
                    if !cell.is_empty() {
                        object.insert(header.to_owned(), csv_value(cell));
                    }
                }
                match member_from(object) {
                    Ok(member) => members.push(member),
                    Err(reason) => errors.push(FieldError::new(format!("line {line}"), reason)),
                }
            }
        }
    }
    if members.is_empty() && errors.is_empty() {
        errors.push(FieldError::new(
            "(body)",
            "no members found; send JSON Lines or CSV with a header row",
        ));
    }
    if errors.is_empty() {
        Ok(members)
    } else {
        if errors.len() > MAX_ERRORS {
            let more = errors.len() - MAX_ERRORS;
            errors.truncate(MAX_ERRORS);
            errors.push(FieldError::new(
                "…",
                format!("{more} more bad lines not shown"),
            ));
        }
        Err(errors)
    }
}

fn csv_value(cell: &str) -> Value {
    match cell {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => match serde_json::from_str::<serde_json::Number>(cell) {
            Ok(n) => Value::Number(n),
            Err(_) => Value::String(cell.to_owned()),
        },
    }
}

fn member_from(mut object: Map<String, Value>) -> Result<Member, String> {
    let Some(key) = ID_FIELDS.iter().find(|f| object.contains_key(**f)) else {
        return Err(format!(
            "no member id; give one of {}",
            ID_FIELDS.join(", ")
        ));
    };
    let id = match object.remove(*key) {
        Some(Value::String(s)) if (1..=128).contains(&s.len()) => s,
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(format!(
                "`{key}` is {other}; expected a string of 1 to 128 characters or a number"
            ));
        }
        None => unreachable!("the key was found above"),
    };
    Ok(Member {
        member_id: id,
        attributes: object,
    })
}

impl Registry {
    /// Stores members, replacing the attributes of ids already stored, in one
    /// transaction. Returns how many were written.
    pub async fn import_members(&self, members: &[Member]) -> Result<usize, RegistryError> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        // A later line for the same id wins, as it would row by row.
        let mut latest = std::collections::HashMap::new();
        for (i, m) in members.iter().enumerate() {
            latest.insert(m.member_id.as_str(), i);
        }
        let unique: Vec<&Member> = members
            .iter()
            .enumerate()
            .filter(|(i, m)| latest.get(m.member_id.as_str()) == Some(i))
            .map(|(_, m)| m)
            .collect();
        for chunk in unique.chunks(CHUNK) {
            let rows = vec!["(?, ?, ?)"; chunk.len()].join(", ");
            let upsert = match self.backend {
                Backend::MySql => {
                    "ON DUPLICATE KEY UPDATE attributes = VALUES(attributes), \
                                   updated_at = VALUES(updated_at)"
                }
                Backend::Sqlite | Backend::Postgres => {
                    "ON CONFLICT (member_id) DO UPDATE SET attributes = excluded.attributes, \
                     updated_at = excluded.updated_at"
                }
            };
            let sql = format!(
                "INSERT INTO members (member_id, attributes, updated_at) VALUES {rows} {upsert}"
            );
            let mut query = sqlx::query(self.sql(&sql));
            for member in chunk {
                query = query
                    .bind(member.member_id.clone())
                    .bind(Value::Object(member.attributes.clone()).to_string())
                    .bind(now);
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(db("importing members"))?;
        }
        tx.commit()
            .await
            .map_err(db("committing a member import"))?;
        tracing::info!(members = unique.len(), "members imported");
        Ok(unique.len())
    }

    /// One member by id.
    pub async fn member(&self, id: &str) -> Result<Member, RegistryError> {
        let row = sqlx::query(self.sql("SELECT attributes FROM members WHERE member_id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a member"))?
            .ok_or_else(|| RegistryError::MemberNotFound { id: id.to_owned() })?;
        let text: String = get(&row, "attributes", "members")?;
        let attributes = serde_json::from_str(&text).map_err(|e| RegistryError::Corrupt {
            what: format!("members.attributes of `{id}`"),
            reason: e.to_string(),
        })?;
        Ok(Member {
            member_id: id.to_owned(),
            attributes,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_lines_take_the_id_from_any_id_field() {
        let text = b"{\"memberId\": \"m1\", \"age\": 31, \"gender\": \"MALE\"}\n\n{\"member_id\": 7, \"age\": 19}\r\n";
        let members = parse_members(text, MemberFormat::JsonLines).unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].member_id, "m1");
        assert_eq!(members[0].attributes["age"], 31);
        assert!(!members[0].attributes.contains_key("memberId"));
        assert_eq!(members[1].member_id, "7");
    }

    #[test]
    fn every_bad_json_line_is_listed() {
        let text = b"{\"id\": \"a\"}\nnot json\n[1]\n{\"age\": 3}\n{\"id\": true}\n";
        let errors = parse_members(text, MemberFormat::JsonLines).unwrap_err();
        let lines: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(lines, ["line 2", "line 3", "line 4", "line 5"]);
        assert!(errors[0].reason.starts_with("not JSON"));
        assert!(errors[2].reason.contains("member_id, memberId, id"));
    }

    #[test]
    fn csv_cells_become_typed_attributes() {
        let text =
            "memberId,age,gender,vip,nickname\nm1,31,MALE,true,\nm2, 19 ,FEMALE,false,구매왕\n";
        let members = parse_members(text.as_bytes(), MemberFormat::Csv).unwrap();
        assert_eq!(
            Value::Object(members[0].attributes.clone()),
            json!({"age": 31, "gender": "MALE", "vip": true})
        );
        assert_eq!(members[1].attributes["age"], 19);
        assert_eq!(members[1].attributes["nickname"], "구매왕");
    }

    #[test]
    fn csv_without_an_id_column_or_with_ragged_rows_is_refused() {
        let errors = parse_members(b"age,gender\n3,MALE\n", MemberFormat::Csv).unwrap_err();
        assert!(errors[0].reason.contains("no id column"), "{errors:?}");
        let errors = parse_members(b"id,age\na,1\nb,2,3\n", MemberFormat::Csv).unwrap_err();
        assert_eq!(errors[0].field, "line 3", "{errors:?}");
    }

    #[test]
    fn an_empty_import_is_refused() {
        let errors = parse_members(b"\n\n", MemberFormat::JsonLines).unwrap_err();
        assert!(errors[0].reason.starts_with("no members found"));
    }
}
