//! Reads a request body's JSON into a type the way its OpenAPI document describes it: a struct
//! only from an object. serde's derive also reads a struct from an array of its fields in order
//! (`"guardrails": [null, null]`), which no client means and the document calls invalid; a
//! struct whose fields all have defaults would take it silently.
//!
//! [`Strict`] is a `serde_json::Value` seen through a deserializer that refuses an array where
//! a struct is asked for, and passes everything else to `Value`'s own. It is hand-written
//! because neither serde nor serde_json has the switch; it owns no other rule.

use serde::de::{
    self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Unexpected,
    Visitor,
};
use serde_json::{Map, Value};

/// A JSON value that gives structs only from objects.
pub struct Strict(pub Value);

type Error = serde_json::Error;

impl<'de> Deserializer<'de> for Strict {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(items) => visitor.visit_seq(Items(items.into_iter())),
            Value::Object(map) => visitor.visit_map(Entries::new(map)),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(map) => visitor.visit_map(Entries::new(map)),
            Value::Array(_) => Err(de::Error::invalid_type(Unexpected::Seq, &visitor)),
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(Strict(other)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

struct Items(std::vec::IntoIter<Value>);

impl<'de> SeqAccess<'de> for Items {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(Strict(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Entries {
    iter: serde_json::map::IntoIter,
    key: Option<String>,
    value: Option<Value>,
}

impl Entries {
    fn new(map: Map<String, Value>) -> Self {
        Entries {
            iter: map.into_iter(),
            key: None,
            value: None,
        }
    }
}

impl<'de> MapAccess<'de> for Entries {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.iter.next() {
            Some((key, value)) => {
                self.value = Some(value);
                let read = seed.deserialize(key.as_str().into_deserializer()).map(Some);
                self.key = Some(key);
                read
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        match self.value.take() {
            // Every `type` of the API is a name; serde would read a number there as a tagged
            // enum's variant index (`{"type": 0}`).
            Some(Value::Number(n)) if self.key.as_deref() == Some("type") => Err(
                de::Error::invalid_type(Unexpected::Other(&format!("number {n}")), &"a type name"),
            ),
            Some(v) => seed.deserialize(Strict(v)),
            None => Err(de::Error::custom("a value is missing")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Guard {
        #[serde(default)]
        max: Option<u32>,
        #[serde(default)]
        per: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Body {
        name: String,
        #[serde(default)]
        guard: Option<Guard>,
        #[serde(default)]
        steps: Vec<Guard>,
    }

    fn read(json: &str) -> Result<Body, Error> {
        Body::deserialize(Strict(serde_json::from_str(json).unwrap_or_default()))
    }

    #[test]
    fn objects_are_read_as_serde_reads_them() {
        assert_eq!(
            read(r#"{"name": "a", "guard": {"max": 3}, "steps": [{}, {"per": "PT1M"}]}"#).unwrap(),
            Body {
                name: "a".into(),
                guard: Some(Guard {
                    max: Some(3),
                    per: None
                }),
                steps: vec![
                    Guard::default(),
                    Guard {
                        max: None,
                        per: Some("PT1M".into())
                    }
                ],
            }
        );
        assert_eq!(read(r#"{"name": "a", "guard": null}"#).unwrap().guard, None);
        assert!(read(r#"{"name": "a", "other": 1}"#).is_err());
        assert!(read(r#"{"name": 5}"#).is_err());
    }

    #[test]
    fn a_struct_is_never_read_from_an_array() {
        for json in [
            r#"["a"]"#,
            r#"{"name": "a", "guard": [null, null]}"#,
            r#"{"name": "a", "guard": []}"#,
            r#"{"name": "a", "steps": [[3, "PT1M"]]}"#,
        ] {
            assert!(read(json).is_err(), "{json} read");
        }
    }

    #[test]
    fn a_tag_is_a_name_not_a_variant_index() {
        #[derive(Debug, Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Timing {
            Immediately,
            #[allow(dead_code)]
            Delay {
                delay: String,
            },
        }
        let read = |json: &str| {
            Timing::deserialize(Strict(serde_json::from_str(json).unwrap_or_default()))
        };
        assert!(read(r#"{"type": "immediately"}"#).is_ok());
        assert!(read(r#"{"type": 0}"#).is_err());
        assert!(matches!(
            read(r#"{"type": "immediately"}"#),
            Ok(Timing::Immediately)
        ));
    }
}
