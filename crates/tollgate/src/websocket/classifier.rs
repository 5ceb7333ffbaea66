//! Classifiers: which kind a text message is, for per-kind limits.

use std::fmt;

use serde::Deserializer as _;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

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
/// JSON, not an object, another value, a field of a nested object) has no kind. More rules
/// (another field, a value mapped to a differently named kind) are added with
/// [`JsonFieldClassifier::rule`]; the first rule that matches wins.
///
/// It decides on what a JSON parser reads, not on the raw text: keys and values spelled with
/// escapes (`{"\u0061ction":"catch\u005fup"}`) are the `action` and `catch_up` they stand for.
/// JSON parsers disagree on a key given twice (most keep the last, some the first), so the
/// classifier counts the strictest reading: a message is of a kind when **any** of its top-level
/// entries matches the rule, whichever one the application's parser keeps.
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
        // Cheap rejections first: most traffic is not a candidate. Without a backslash every key
        // is spelled in the text as a parser reads it, so a text naming no rule's field has no
        // kind; with one, a key may be escaped and only the parse can tell.
        if self.rules.is_empty() || !text.trim_start().starts_with('{') {
            return None;
        }
        if !text.contains('\\') && !self.rules.iter().any(|r| text.contains(r.field.as_str())) {
            return None;
        }
        let mut parser = serde_json::Deserializer::from_str(text);
        let first = parser.deserialize_map(Entries { rules: &self.rules }).ok()?;
        // Trailing bytes: not one JSON value, so not what a parser reads as an object.
        parser.end().ok()?;
        first.map(|i| self.rules[i].kind.as_str())
    }
}

/// Walks a JSON object's top-level entries, every one (duplicates included), to the first rule
/// (in the rules' order) that any entry matches. Keys are borrowed from the text unless escaped;
/// only the values of keys some rule names are read.
struct Entries<'r> {
    rules: &'r [Rule],
}

impl<'de> Visitor<'de> for Entries<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<usize>, A::Error> {
        let mut first: Option<usize> = None;
        while let Some(key) = map.next_key_seed(Text)? {
            if !self.rules.iter().any(|r| r.field == *key) {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value = map.next_value_seed(StringValue)?;
            let Some(value) = value else { continue };
            let matched = self.rules.iter().position(|r| r.field == *key && r.equals == *value);
            first = match (first, matched) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(first)
    }
}

/// A JSON string, borrowed from the text when it has no escapes.
enum Str<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl std::ops::Deref for Str<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Str::Borrowed(s) => s,
            Str::Owned(s) => s,
        }
    }
}

/// Reads a key as a [`Str`].
struct Text;

impl<'de> DeserializeSeed<'de> for Text {
    type Value = Str<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Str<'de>, D::Error> {
        deserializer.deserialize_str(StrVisitor)
    }
}

/// Reads a value: a string as a [`Str`], anything else (number, object, ...) as `None`.
struct StringValue;

impl<'de> DeserializeSeed<'de> for StringValue {
    type Value = Option<Str<'de>>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Option<Str<'de>>, D::Error> {
        deserializer.deserialize_any(AnyVisitor)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Str<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
        Ok(Str::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
        Ok(Str::Owned(v.to_owned()))
    }
}

/// A value of any type, kept only when it is a string.
struct AnyVisitor;

impl<'de> Visitor<'de> for AnyVisitor {
    type Value = Option<Str<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Str::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Str::Owned(v.to_owned())))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catch_up() -> JsonFieldClassifier {
        JsonFieldClassifier::new("action", ["catch_up"])
    }

    #[test]
    fn escaped_keys_and_values_are_what_a_parser_reads() {
        let c = catch_up();
        for text in [
            r#"{"\u0061ction":"catch_up"}"#,
            r#"{"action":"catch\u005fup"}"#,
            r#"{"\u0061\u0063tion":"\u0063atch_up","since":1}"#,
            r#"{"act\u0069on" : "catch_up"}"#,
        ] {
            assert_eq!(c.classify(text), Some("catch_up"), "{text}");
        }
        assert_eq!(c.classify(r#"{"\u0061ction":"say"}"#), None);
        assert_eq!(c.classify(r#"{"note":"\u0061ction catch_up"}"#), None);
    }

    #[test]
    fn a_key_given_twice_counts_if_either_matches() {
        let c = catch_up();
        assert_eq!(c.classify(r#"{"action":"catch_up","action":"say"}"#), Some("catch_up"));
        assert_eq!(c.classify(r#"{"action":"say","action":"catch_up"}"#), Some("catch_up"));
        assert_eq!(c.classify(r#"{"action":"say","action":"hello"}"#), None);
        // The first rule in order wins when entries match several.
        let two = JsonFieldClassifier::new("action", ["a", "b"]);
        assert_eq!(two.classify(r#"{"action":"b","action":"a"}"#), Some("a"));
    }

    #[test]
    fn whitespace_nesting_and_other_values() {
        let c = catch_up();
        assert_eq!(c.classify(" \n\t{ \"action\" :\n \"catch_up\" } \n"), Some("catch_up"));
        assert_eq!(c.classify(r#"{"data":{"action":"catch_up"}}"#), None, "only top-level fields");
        assert_eq!(c.classify(r#"{"action":{"name":"catch_up"},"x":[1,{"action":"catch_up"}]}"#), None);
        assert_eq!(c.classify(r#"{"action":["catch_up"]}"#), None);
        assert_eq!(c.classify(r#"{"action":null,"n":1.5,"t":true}"#), None);
        assert_eq!(c.classify(r#"{"action":"catch_up"} trailing"#), None, "not one JSON value");
        assert_eq!(c.classify(r#"{"action":"catch_up""#), None, "cut off");
        assert_eq!(c.classify(r#"["action","catch_up"]"#), None);
    }
}
