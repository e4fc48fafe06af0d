//! Finds the line and column of a YAML path in the source text. The typed
//! decoder works on a parsed tree that has no positions; on the (rare) error
//! path we walk the text once more with serde, which stamps the position of the
//! node where the walk stops onto the error it returns.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::error::Location;
use super::path::Segment;

/// Where `path` (or its deepest existing ancestor) starts in `source`.
pub fn locate(source: &str, path: &[Segment]) -> Option<Location> {
    let deserializer = serde_yaml_ng::Deserializer::from_str(source);
    let error = Seek { path }.deserialize(deserializer).err()?;
    let location = error.location()?;
    Some(Location {
        line: location.line(),
        column: location.column(),
    })
}

const FOUND: &str = "found";

struct Seek<'p> {
    path: &'p [Segment],
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

macro_rules! stop_here {
    ($($method:ident: $ty:ty),*) => {
        $(fn $method<E: de::Error>(self, _: $ty) -> Result<(), E> { Err(E::custom(FOUND)) })*
    };
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }

    stop_here!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if let Some((Segment::Key(wanted), rest)) = self.path.split_first() {
            while let Some(key) = map.next_key::<serde_yaml_ng::Value>()? {
                if key.as_str() == Some(wanted.as_str()) {
                    return map.next_value_seed(Seek { path: rest });
                }
                map.next_value::<IgnoredAny>()?;
            }
        }
        Err(de::Error::custom(FOUND))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some((Segment::Index(wanted), rest)) = self.path.split_first() {
            let mut index = 0;
            while index < *wanted {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Err(de::Error::custom(FOUND));
                }
                index += 1;
            }
            if let Some(()) = seq.next_element_seed(Seek { path: rest })? {
                return Ok(());
            }
        }
        Err(de::Error::custom(FOUND))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::path::YamlPath;

    const DOC: &str = "listen:\n  egress: 127.0.0.1:1\nservices:\n  stripe:\n    route: /stripe\n    auth: { kind: bearer, token: x }\n    list: [a, b]\n";

    fn at(path: YamlPath) -> (usize, usize) {
        let location = locate(DOC, path.segments()).expect("located");
        (location.line, location.column)
    }

    #[test]
    fn finds_block_and_flow_values() {
        let stripe = YamlPath::root().key("services").key("stripe");
        assert_eq!(at(stripe.key("route")), (5, 12));
        assert_eq!(at(stripe.key("auth").key("token")), (6, 34));
        assert_eq!(at(stripe.key("list").index(1)), (7, 15));
    }

    #[test]
    fn falls_back_to_the_deepest_existing_parent() {
        let missing = YamlPath::root()
            .key("services")
            .key("stripe")
            .key("upstream");
        assert_eq!(at(missing), (5, 5));
    }
}
