//! Credentials that never print: `Debug` and `Display` show `<redacted>`.

use std::fmt;

/// A secret string (a bearer token, a password).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself: only for building a request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Removes every occurrence of the secrets from a message (errors from libraries may echo
/// request data).
pub fn redact(message: &str, secrets: &[&Secret]) -> String {
    let mut m = message.to_string();
    for s in secrets {
        if !s.0.is_empty() {
            m = m.replace(&s.0, "<redacted>");
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_format() {
        let s = Secret::new("hunter2-token");
        assert_eq!(format!("{s} {s:?}"), "<redacted> Secret(<redacted>)");
        assert_eq!(
            redact("bad token hunter2-token!", &[&s]),
            "bad token <redacted>!"
        );
    }
}
