//! Strict JSON input: an object that names a key twice is refused, wherever
//! JSON comes in (API bodies, `lastclick ingest` lines).
//!
//! serde's derived structs refuse a repeated field, but a `Value` keeps the
//! last one silently, so `{"amount": "1", "amount": "1000"}` would mean
//! whatever the last parser to read it decides. One pass over the text,
//! before it is parsed for real, finds the first repeated key.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// A key named twice in one object (its first 64 characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the key `{}` appears twice in one object", .0.escape_debug())]
pub struct RepeatedKey(pub String);

/// Whether `text` is JSON without a repeated key: `Ok` for malformed JSON
/// too (the real parse names that), else the first key seen twice in one
/// object.
pub fn refuse_repeated_keys(text: &[u8]) -> Result<(), RepeatedKey> {
    let repeated = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(text);
    // Malformed JSON stops the walk too; only a repeated key is answered.
    let _ = Strict(&repeated).deserialize(&mut de);
    match repeated.into_inner() {
        Some(key) => Err(RepeatedKey(key)),
        None => Ok(()),
    }
}

/// Walks any JSON value; stops at the first key repeated in one object,
/// kept in the cell.
#[derive(Clone, Copy)]
struct Strict<'r>(&'r RefCell<Option<String>>);

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value_seed(self)?;
            if let Some(key) = seen.replace(key) {
                *self.0.borrow_mut() = Some(key.chars().take(64).collect());
                return Err(serde::de::Error::custom("repeated key"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_named_twice_in_one_object_is_found_at_any_depth() {
        let check = |text: &str| refuse_repeated_keys(text.as_bytes()).map_err(|e| e.0);
        assert_eq!(check(r#"{"a": 1, "b": 2}"#), Ok(()));
        assert_eq!(check(r#"{"a": 1, "a": 2}"#), Err("a".into()));
        assert_eq!(check(r#"[{"x": {"k": 1, "k": 1}}]"#), Err("k".into()));
        assert_eq!(check(r#"[{"a": 1}, {"a": 2}]"#), Ok(()), "two objects");
        assert_eq!(check(r#"{"a": {"a": 1}}"#), Ok(()), "two levels");
        assert_eq!(check("not json"), Ok(()), "left to the real parse");
        assert_eq!(check(r#"{"a\u0062": 1, "ab": 2}"#), Err("ab".into()));
    }
}
