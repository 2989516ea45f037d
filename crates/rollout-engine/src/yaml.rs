//! The one place YAML is read (serde_yaml, as the product owner asked).

use serde::de::DeserializeOwned;

/// Parses YAML text into `T`. Errors carry a line and column when serde_yaml knows them.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_yaml::from_str(text).map_err(|e| match e.location() {
        Some(l) => format!("line {}, column {}: {e}", l.line(), l.column()),
        None => e.to_string(),
    })
}

/// A YAML value (for inline documents inside other documents).
pub type Value = serde_yaml::Value;

/// Writes a YAML value back to text.
pub fn to_string(v: &Value) -> Result<String, String> {
    serde_yaml::to_string(v).map_err(|e| e.to_string())
}

/// Writes any serialisable value as YAML.
pub fn to_string_of<T: serde::Serialize>(v: &T) -> Result<String, String> {
    serde_yaml::to_string(v).map_err(|e| e.to_string())
}

/// Parses every document of a multi-document YAML text (`---` separated) into `T`.
pub fn documents<T: DeserializeOwned>(text: &str) -> Result<Vec<T>, String> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| {
            T::deserialize(d).map_err(|e| match e.location() {
                Some(l) => format!("line {}, column {}: {e}", l.line(), l.column()),
                None => e.to_string(),
            })
        })
        .collect()
}
