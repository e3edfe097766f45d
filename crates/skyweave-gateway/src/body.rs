//! A client's JSON request body, kept as the client sent it.
//!
//! The gateway reads only a few members of a request (`model`, `stream`,
//! `messages`, ...) and forwards the rest unchanged. Parsing the whole body
//! into a `serde_json::Value` tree and serializing it back for the upstream
//! cost more than any other step of a proxied request, and re-encoding is
//! not byte-faithful (integers beyond 64 bits become floats, key order
//! changes). So [`RequestBody`] checks the body is a JSON object once,
//! records where each top-level member's value lies in the text, and lets
//! OpenAI-compatible providers splice the upstream body from those slices.
//! Providers that translate to another protocol (Bedrock, Vertex's Gemini
//! API, the simulator) ask for the tree with [`RequestBody::tree`], parsed on
//! first use.
//!
//! [`measure`] walks one member's value without building it: the size of its
//! strings (for token estimates) and its shape (for validation).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Why a body is not a usable request.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is not valid JSON ({0}); send a JSON object")]
    NotJson(String),
    #[error("the request body must be a JSON object")]
    NotObject,
}

/// A JSON object as received: its text and where each member lies in it.
#[derive(Debug)]
pub struct RequestBody {
    text: String,
    /// Top-level members in the client's order; a repeated key keeps its
    /// last value (as a parsed map would).
    members: Vec<Member>,
    tree: OnceLock<Map<String, Value>>,
}

#[derive(Debug)]
struct Member {
    key: Key,
    value: Range<usize>,
}

/// A member's key: where it lies in the text when it has no escapes (the
/// usual case, no allocation), else its decoded form.
#[derive(Debug)]
enum Key {
    Span(Range<usize>),
    Decoded(Box<str>),
}

impl Key {
    /// The key, given the text it was read from.
    fn read<'a>(&'a self, text: &'a str) -> &'a str {
        match self {
            Key::Span(range) => &text[range.clone()],
            Key::Decoded(key) => key,
        }
    }
}

impl RequestBody {
    /// Checks that `bytes` is one JSON object and indexes its members.
    pub fn parse(bytes: Bytes) -> Result<RequestBody, BodyError> {
        let text = String::from_utf8(Vec::from(bytes))
            .map_err(|error| BodyError::NotJson(format!("not UTF-8: {error}")))?;
        let mut deserializer = serde_json::Deserializer::from_str(&text);
        let members = Members { text: &text }
            .deserialize(&mut deserializer)
            .and_then(|members| deserializer.end().map(|()| members))
            .map_err(|error| BodyError::NotJson(error.to_string()))?
            .ok_or(BodyError::NotObject)?;
        Ok(RequestBody { text, members, tree: OnceLock::new() })
    }

    /// The body's text, exactly as received.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn key<'a>(&'a self, member: &'a Member) -> &'a str {
        member.key.read(&self.text)
    }

    /// Each member's key and the JSON text of its value, in the client's
    /// order.
    pub fn members(&self) -> impl Iterator<Item = (&str, &str)> {
        self.members.iter().map(|m| (self.key(m), &self.text[m.value.clone()]))
    }

    /// The JSON text of a member's value.
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.members.iter().find(|m| self.key(m) == key).map(|m| &self.text[m.value.clone()])
    }

    /// A member whose value is a string; `None` if absent or of another type.
    pub fn str(&self, key: &str) -> Option<Cow<'_, str>> {
        let raw = self.raw(key)?;
        let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
        if !inner.contains('\\') {
            return Some(Cow::Borrowed(inner));
        }
        serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
    }

    /// A member whose value is a non-negative integer (as `Value::as_u64`).
    pub fn u64(&self, key: &str) -> Option<u64> {
        let raw = self.raw(key)?;
        if !raw.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        raw.parse().ok()
    }

    /// The body as a tree, parsed on first use (for providers that
    /// translate it to another protocol).
    pub fn tree(&self) -> Result<&Map<String, Value>, serde_json::Error> {
        if let Some(tree) = self.tree.get() {
            return Ok(tree);
        }
        let tree = serde_json::from_str(&self.text)?;
        Ok(self.tree.get_or_init(|| tree))
    }
}

/// Reads the top-level value: `Some(members)` for an object, `None` for
/// any other JSON value.
struct Members<'de> {
    text: &'de str,
}

impl Members<'_> {
    fn key<'a>(&'a self, key: &'a Key) -> &'a str {
        key.read(self.text)
    }
}

/// Up to this many members, a repeated key is found by comparing with each
/// member before it; beyond, through a hash map (a hostile body may hold
/// many thousands of members).
const LINEAR_DEDUP: usize = 16;

impl<'de> DeserializeSeed<'de> for Members<'de> {
    type Value = Option<Vec<Member>>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Members<'de> {
    type Value = Option<Vec<Member>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let base = self.text.as_ptr() as usize;
        let mut members: Vec<Member> = Vec::with_capacity(8);
        let mut index: Option<HashMap<Box<str>, usize>> = None;
        while let Some(key) = map.next_key_seed(KeySeed { base })? {
            let raw: &'de RawValue = map.next_value()?;
            let start = raw.get().as_ptr() as usize - base;
            let value = start..start + raw.get().len();
            // A repeated key keeps its first place and takes the new value.
            let name = self.key(&key);
            let earlier = match &mut index {
                Some(index) => index.get(name).copied(),
                None => members.iter().position(|m| self.key(&m.key) == name),
            };
            match earlier {
                Some(i) => members[i].value = value,
                None => {
                    if let Some(index) = &mut index {
                        index.insert(name.into(), members.len());
                    }
                    members.push(Member { key, value });
                    if index.is_none() && members.len() > LINEAR_DEDUP {
                        index = Some(
                            members
                                .iter()
                                .enumerate()
                                .map(|(i, m)| (self.key(&m.key).into(), i))
                                .collect(),
                        );
                    }
                }
            }
        }
        Ok(Some(members))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
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

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

struct KeySeed {
    base: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Key, E> {
        let start = key.as_ptr() as usize - self.base;
        Ok(Key::Span(start..start + key.len()))
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(Key::Decoded(key.into()))
    }
}

/// What [`measure`] found in a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Measured {
    /// Bytes of text that count towards a prompt's tokens: every string,
    /// inside objects only those under `content`, `text` and `arguments`,
    /// plus 16 for each object with `content` (a message's overhead).
    pub chars: usize,
    pub shape: Shape,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// `null`, a boolean or a number.
    #[default]
    Scalar,
    /// A string; `empty` when it is `""`.
    String { empty: bool },
    /// An array of `len` items; `first_without_role` is the index of the
    /// first item that is not an object with a string `role` (for
    /// `messages`).
    Array { len: usize, first_without_role: Option<usize> },
    /// An object; `role` when it has a string `role` member.
    Object { role: bool },
}

/// Walks a JSON value (text already known to be valid JSON) without
/// building it.
pub fn measure(raw: &str) -> Result<Measured, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(raw);
    Measure.deserialize(&mut deserializer)
}

struct Measure;

impl<'de> DeserializeSeed<'de> for Measure {
    type Value = Measured;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Measured, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Measure {
    type Value = Measured;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Measured, E> {
        Ok(Measured { chars: s.len(), shape: Shape::String { empty: s.is_empty() } })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Measured, A::Error> {
        let (mut chars, mut len, mut first_without_role) = (0, 0, None);
        while let Some(item) = seq.next_element_seed(Measure)? {
            chars += item.chars;
            if first_without_role.is_none() && item.shape != (Shape::Object { role: true }) {
                first_without_role = Some(len);
            }
            len += 1;
        }
        Ok(Measured { chars, shape: Shape::Array { len, first_without_role } })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Measured, A::Error> {
        let (mut chars, mut role) = (0, false);
        while let Some(key) = map.next_key_seed(FieldSeed)? {
            match key {
                Field::Content | Field::Text | Field::Arguments => {
                    chars += map.next_value_seed(Measure)?.chars;
                    if key == Field::Content {
                        chars += 16;
                    }
                }
                Field::Role => {
                    role = matches!(map.next_value_seed(Measure)?.shape, Shape::String { .. });
                }
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Measured { chars, shape: Shape::Object { role } })
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Measured, E> {
        Ok(Measured::default())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Measured, E> {
        Ok(Measured::default())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Measured, E> {
        Ok(Measured::default())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Measured, E> {
        Ok(Measured::default())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Measured, E> {
        Ok(Measured::default())
    }
}

/// The object keys [`measure`] reads, recognized without allocating.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Content,
    Text,
    Arguments,
    Role,
    Other,
}

struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Field;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Field, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Field, E> {
        Ok(match key {
            "content" => Field::Content,
            "text" => Field::Text,
            "arguments" => Field::Arguments,
            "role" => Field::Role,
            _ => Field::Other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> RequestBody {
        RequestBody::parse(Bytes::copy_from_slice(text.as_bytes())).unwrap()
    }

    #[test]
    fn members_are_slices_of_the_text_in_order() {
        let b = body(r#" {"model": "m", "n": 18446744073709551617, "x": {"a": [1, 2]}} "#);
        let members: Vec<_> = b.members().collect();
        assert_eq!(
            members,
            [("model", r#""m""#), ("n", "18446744073709551617"), ("x", r#"{"a": [1, 2]}"#)]
        );
        assert_eq!(b.str("model").as_deref(), Some("m"));
        assert_eq!(b.str("n"), None);
        assert_eq!(b.raw("missing"), None);
        assert_eq!(b.tree().unwrap()["model"], "m");
    }

    #[test]
    fn escaped_keys_and_strings_are_decoded() {
        let b = body(r#"{"mo\u0064el": "a\"b", "k": 5}"#);
        assert_eq!(b.members().next().unwrap().0, "model");
        assert_eq!(b.str("model").as_deref(), Some("a\"b"));
        assert_eq!(b.u64("k"), Some(5));
    }

    #[test]
    fn a_repeated_key_reads_as_its_last_value() {
        let b = body(r#"{"stream": false, "model": "m", "stream": true}"#);
        assert_eq!(b.raw("stream"), Some("true"));
        assert_eq!(b.members().count(), 2);
        // Past the linear search too.
        let many: Vec<String> = (0..40).map(|i| format!("\"k{}\": {i}", i % 20)).collect();
        let b = body(&format!("{{{}}}", many.join(",")));
        assert_eq!(b.members().count(), 20);
        assert_eq!(b.raw("k3"), Some("23"));
        assert_eq!(b.members().nth(3), Some(("k3", "23")));
    }

    #[test]
    fn numbers_read_as_integers_only_when_they_are() {
        let b = body(r#"{"a": 12, "b": -1, "c": 1.5, "d": "7", "e": 1e3}"#);
        assert_eq!(b.u64("a"), Some(12));
        assert_eq!([b.u64("b"), b.u64("c"), b.u64("d"), b.u64("e")], [None; 4]);
    }

    #[test]
    fn not_objects_and_not_json_are_told_apart() {
        for text in ["[1]", "\"s\"", "3", "null", "true"] {
            let error = RequestBody::parse(Bytes::from(text)).unwrap_err();
            assert!(matches!(error, BodyError::NotObject), "{text}: {error}");
        }
        for text in ["", "{", "{\"a\":}", "{} x", "{\"a\": 1,}", "\u{0}"] {
            let error = RequestBody::parse(Bytes::from(text)).unwrap_err();
            assert!(matches!(error, BodyError::NotJson(_)), "{text:?}: {error}");
        }
        let error = RequestBody::parse(Bytes::from_static(b"{\"a\": \"\xff\"}")).unwrap_err();
        assert!(error.to_string().contains("not UTF-8"), "{error}");
    }

    #[test]
    fn measuring_counts_prompt_text_and_finds_messages_without_roles() {
        let messages = r#"[{"role": "user", "content": "abcd"},
                          {"role": "tool", "content": [{"type": "text", "text": "xy"}],
                           "tool_calls": [{"function": {"arguments": "ignored here"}}]},
                          {"content": "no role"}, 7]"#;
        let measured = measure(messages).unwrap();
        // 4 + 16, then 2 + 16 (the part object has no `content`), then 7 + 16.
        assert_eq!(measured.chars, 61);
        assert_eq!(measured.shape, Shape::Array { len: 4, first_without_role: Some(2) });
        assert_eq!(measure(r#"{"role": 1}"#).unwrap().shape, Shape::Object { role: false });
        assert_eq!(measure(r#""""#).unwrap().shape, Shape::String { empty: true });
        assert_eq!(measure("null").unwrap(), Measured::default());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{{\"messages\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        match RequestBody::parse(Bytes::from(deep)) {
            Err(error) => assert!(matches!(error, BodyError::NotJson(_)), "{error}"),
            Ok(body) => assert!(measure(body.raw("messages").unwrap()).is_err()),
        }
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(".{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(body) = RequestBody::parse(Bytes::from(bytes)) {
                for (_, value) in body.members() {
                    let _ = measure(value);
                }
            }
        }

        #[test]
        fn members_rebuild_the_object(
            members in prop::collection::vec((".{0,6}", json()), 0..8),
            pretty in any::<bool>(),
        ) {
            // Written by hand so that repeated keys stay repeated.
            let mut text = String::from("{");
            for (i, (key, value)) in members.iter().enumerate() {
                if i > 0 {
                    text.push_str(if pretty { ",\n  " } else { "," });
                }
                text.push_str(&serde_json::to_string(key).unwrap());
                text.push_str(if pretty { " : " } else { ":" });
                let value = if pretty {
                    serde_json::to_string_pretty(value).unwrap()
                } else {
                    value.to_string()
                };
                text.push_str(&value);
            }
            text.push('}');
            let expected: Map<String, Value> = serde_json::from_str(&text).unwrap();
            let body = RequestBody::parse(Bytes::from(text)).unwrap();
            let rebuilt: Map<String, Value> = body
                .members()
                .map(|(key, raw)| (key.to_string(), serde_json::from_str(raw).unwrap()))
                .collect();
            prop_assert_eq!(body.members().count(), expected.len());
            prop_assert_eq!(&rebuilt, &expected);
            prop_assert_eq!(body.tree().unwrap(), &expected);
            for (key, value) in &expected {
                let read = body.str(key);
                prop_assert_eq!(read.as_deref(), value.as_str());
                prop_assert_eq!(body.u64(key), value.as_u64());
            }
        }
    }
}
