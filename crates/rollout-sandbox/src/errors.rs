//! The API server's errors (a `Status` body with a code, a reason, a message and field causes)
//! and its timestamps.

use serde_json::{Value, json};

use crate::store::Key;

/// A Kubernetes-style API error: HTTP code, reason, message.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `BadRequest`, ...
    pub reason: &'static str,
    /// Message.
    pub message: String,
    /// Name, group and kind (or plural) for `details`.
    pub details: Option<Box<(String, String, String)>>,
    /// Field errors (`field: message`) for `details.causes`, which kubectl prints.
    pub causes: Vec<String>,
}

impl ApiError {
    /// The `Status` body.
    pub fn status(&self) -> Value {
        let mut v = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some((name, group, kind)) = self.details.as_deref() {
            v["details"] = json!({"name": name, "group": group, "kind": kind});
            if !self.causes.is_empty() {
                let causes: Vec<Value> = self
                    .causes
                    .iter()
                    .map(|c| match c.split_once(": ") {
                        Some((field, message)) => {
                            json!({"reason": "FieldValueInvalid", "message": message, "field": field})
                        }
                        None => json!({"reason": "FieldValueInvalid", "message": c}),
                    })
                    .collect();
                v["details"]["causes"] = json!(causes);
            }
        }
        v
    }

    /// A 404 for an object.
    pub fn not_found(key: &Key) -> ApiError {
        let (group, plural) = split_id(&key.res);
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{}\" not found", key.res, key.name),
            details: Some(Box::new((key.name.clone(), group, plural))),
            causes: Vec::new(),
        }
    }

    /// A 409 Conflict for an object.
    pub fn conflict(key: &Key) -> ApiError {
        let (group, plural) = split_id(&key.res);
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                key.res, key.name
            ),
            details: Some(Box::new((key.name.clone(), group, plural))),
            causes: Vec::new(),
        }
    }

    /// A 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            details: None,
            causes: Vec::new(),
        }
    }

    /// A 422 Invalid for an object, with its field errors.
    pub fn invalid(kind: &str, group: &str, name: &str, errors: &[String]) -> ApiError {
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let list = if errors.len() == 1 {
            errors[0].clone()
        } else {
            format!("[{}]", errors.join(", "))
        };
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("{qualified} \"{name}\" is invalid: {list}"),
            details: Some(Box::new((
                name.to_string(),
                group.to_string(),
                kind.to_string(),
            ))),
            causes: errors.to_vec(),
        }
    }
}

pub(crate) fn split_id(id: &str) -> (String, String) {
    match id.split_once('.') {
        Some((plural, group)) => (group.to_string(), plural.to_string()),
        None => (String::new(), id.to_string()),
    }
}

/// The current time as RFC 3339 (seconds).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since the epoch as RFC 3339 (UTC).
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}
