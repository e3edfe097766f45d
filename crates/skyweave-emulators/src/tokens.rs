//! Cheap request-body readers: count the characters of chat message contents
//! without building a JSON tree, and estimate tokens from them.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Token estimate used for `prompt_tokens`: characters / 4, at least 1.
pub(crate) fn estimate_tokens(chars: usize) -> u64 {
    (chars as u64 / 4).max(1)
}

/// Number of characters of text in a message `content`: a string, `null`,
/// or an array of parts whose `text` members are counted (image parts and
/// other members count nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CharCount(pub(crate) usize);

impl<'de> Deserialize<'de> for CharCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CharCountVisitor)
    }
}

struct CharCountVisitor;

impl<'de> Visitor<'de> for CharCountVisitor {
    type Value = CharCount;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, an array of content parts, or null")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CharCount, E> {
        Ok(CharCount(v.chars().count()))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<CharCount, E> {
        Ok(CharCount(0))
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<CharCount, E> {
        Ok(CharCount(0))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<CharCount, E> {
        Ok(CharCount(0))
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<CharCount, E> {
        Ok(CharCount(0))
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<CharCount, E> {
        Ok(CharCount(0))
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<CharCount, E> {
        Ok(CharCount(0))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CharCount, A::Error> {
        let mut n = 0;
        while let Some(CharCount(c)) = seq.next_element()? {
            n += c;
        }
        Ok(CharCount(n))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CharCount, A::Error> {
        let mut n = 0;
        while let Some(key) = map.next_key::<KeyIsText>()? {
            if key.0 {
                n += map.next_value::<CharCount>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(CharCount(n))
    }
}

/// A map key, reduced to "is it `text`".
struct KeyIsText(bool);

impl<'de> Deserialize<'de> for KeyIsText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyIsText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyIsText, E> {
                Ok(KeyIsText(v == "text"))
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON string, borrowed from the request body when it has no escapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CowStr<'a>(pub(crate) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = CowStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<CowStr<'a>, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CowStr<'a>, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<CowStr<'a>, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(json: &str) -> usize {
        serde_json::from_str::<CharCount>(json).unwrap().0
    }

    #[test]
    fn counts_strings_parts_and_nulls() {
        assert_eq!(count(r#""hello""#), 5);
        assert_eq!(count(r#""h\u00e9llo""#), 5);
        assert_eq!(count("null"), 0);
        assert_eq!(
            count(
                r#"[{"type":"text","text":"abc"},{"type":"image_url","image_url":{"url":"data:xyz"}},{"type":"text","text":"de"}]"#
            ),
            5
        );
    }

    #[test]
    fn cow_str_borrows_when_it_can() {
        let plain: CowStr<'_> = serde_json::from_str(r#""gpt-4o""#).unwrap();
        assert!(matches!(plain.0, Cow::Borrowed("gpt-4o")));
        let escaped: CowStr<'_> = serde_json::from_str(r#""a\"b""#).unwrap();
        assert_eq!(escaped.0, "a\"b");
        assert!(serde_json::from_str::<CowStr<'_>>("12").is_err());
    }

    #[test]
    fn estimate_has_floor_of_one() {
        assert_eq!(estimate_tokens(0), 1);
        assert_eq!(estimate_tokens(7), 1);
        assert_eq!(estimate_tokens(8), 2);
        assert_eq!(estimate_tokens(400), 100);
    }
}
