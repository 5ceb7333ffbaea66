//! Classifiers: which kind a text message is, for per-kind limits.

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

/// Classifies JSON objects by top-level string fields: with field `action` and kinds
/// `["catch_up"]`, `{"action":"catch_up","since":17}` is of kind `catch_up`. Anything else (not
/// JSON, not an object, another value) has no kind. More rules (another field, a value mapped to
/// a differently named kind) are added with [`JsonFieldClassifier::rule`]; the first match wins.
///
/// ```
/// use tollgate::websocket::{Classifier, JsonFieldClassifier};
///
/// let c = JsonFieldClassifier::new("action", ["catch_up"]).rule("op", "resync", "catch_up");
/// assert_eq!(c.classify(r#"{"action":"catch_up","since":17}"#), Some("catch_up"));
/// assert_eq!(c.classify(r#"{"op":"resync"}"#), Some("catch_up"));
/// assert_eq!(c.classify(r#"{"action":"say","text":"hi"}"#), None);
/// assert_eq!(c.classify("not json"), None);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JsonFieldClassifier {
    rules: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    field: String,
    equals: String,
    kind: String,
}

impl JsonFieldClassifier {
    /// Classifies by the string value of `field`, each of `kinds` naming itself.
    pub fn new(field: impl Into<String>, kinds: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let field = field.into();
        let rules = kinds
            .into_iter()
            .map(|k| {
                let k = k.into();
                Rule { field: field.clone(), equals: k.clone(), kind: k }
            })
            .collect();
        Self { rules }
    }

    /// Adds a rule: a message whose `field` is the string `equals` is of kind `kind`.
    #[must_use]
    pub fn rule(mut self, field: impl Into<String>, equals: impl Into<String>, kind: impl Into<String>) -> Self {
        self.rules.push(Rule { field: field.into(), equals: equals.into(), kind: kind.into() });
        self
    }
}

impl Classifier for JsonFieldClassifier {
    fn classify(&self, text: &str) -> Option<&str> {
        // Cheap rejections first: most traffic is not a candidate.
        if self.rules.is_empty() || !text.trim_start().starts_with('{') {
            return None;
        }
        if !self.rules.iter().any(|r| text.contains(r.field.as_str())) {
            return None;
        }
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        let object = value.as_object()?;
        self.rules
            .iter()
            .find(|r| object.get(&r.field).and_then(serde_json::Value::as_str) == Some(r.equals.as_str()))
            .map(|r| r.kind.as_str())
    }
}
