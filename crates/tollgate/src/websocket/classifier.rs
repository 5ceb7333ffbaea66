//! Classifiers: which kind a text message is, for per-kind limits.

use std::fmt;

/// Chooses a message's kind from its text, for per-kind limits. The kind must be one of the
/// classifier's own names (so a client cannot invent unbounded kinds); `None` is an ordinary
/// message.
pub trait Classifier: Send + Sync + 'static {
    /// The kind of `text`, if it has one.
    fn classify(&self, text: &str) -> Option<&str>;
}

impl<F> Classifier for F
where
    F: Fn(&str) -> Option<&'static str> + Send + Sync + 'static,
{
    fn classify(&self, text: &str) -> Option<&str> {
        self(text)
    }
}

/// Classifies JSON objects by a top-level string field: with field `action` and kinds
/// `["catch_up"]`, `{"action":"catch_up","since":17}` is of kind `catch_up`. Anything else (not
/// JSON, not an object, another value) has no kind.
///
/// ```
/// use tollgate::websocket::{Classifier, JsonFieldClassifier};
///
/// let c = JsonFieldClassifier::new("action", ["catch_up"]);
/// assert_eq!(c.classify(r#"{"action":"catch_up","since":17}"#), Some("catch_up"));
/// assert_eq!(c.classify(r#"{"action":"say","text":"hi"}"#), None);
/// assert_eq!(c.classify("not json"), None);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct JsonFieldClassifier {
    field: String,
    kinds: Vec<String>,
}

impl fmt::Debug for JsonFieldClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonFieldClassifier").field("field", &self.field).field("kinds", &self.kinds).finish()
    }
}

impl JsonFieldClassifier {
    /// Classifies by the string value of `field`, among `kinds`.
    pub fn new(field: impl Into<String>, kinds: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { field: field.into(), kinds: kinds.into_iter().map(Into::into).collect() }
    }

    /// The field read.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The kinds recognised.
    pub fn kinds(&self) -> &[String] {
        &self.kinds
    }
}

impl Classifier for JsonFieldClassifier {
    fn classify(&self, text: &str) -> Option<&str> {
        // Cheap rejections first: most traffic is not a candidate.
        if !text.trim_start().starts_with('{') || !text.contains(self.field.as_str()) {
            return None;
        }
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        let kind = value.as_object()?.get(&self.field)?.as_str()?;
        self.kinds.iter().find(|k| k.as_str() == kind).map(String::as_str)
    }
}
