//! The names the config gives things, and the provider's event id, as types
//! of their own: a function that takes a `WebhookName` cannot be handed an
//! upstream's name by mistake. Each is a `String` underneath, serialized as
//! one, and reads as a `&str` where text is needed.

macro_rules! name {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(name: impl Into<String>) -> Self {
                Self(name.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            // `pad`, not `write_str`: `{:<22}` lines up names as it does text.
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(name: &str) -> Self {
                Self(name.to_string())
            }
        }

        impl From<String> for $name {
            fn from(name: String) -> Self {
                Self(name)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl redis::ToRedisArgs for $name {
            fn write_redis_args<W>(&self, out: &mut W)
            where
                W: ?Sized + redis::RedisWrite,
            {
                self.0.write_redis_args(out)
            }
        }
    };
}

name!(
    /// `services.<name>`: an egress service.
    ServiceName
);
name!(
    /// `webhooks.<name>`: a webhook the ingress verifies.
    WebhookName
);
name!(
    /// `upstreams.<name>`: a group of backends.
    UpstreamName
);
name!(
    /// The provider's id of an event (Stripe's `evt_...`, a Standard
    /// Webhooks `msg_...`), or the digest that stands for it.
    EventId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_reads_and_serializes_as_its_text() {
        let name = WebhookName::new("stripe");
        assert_eq!(name, "stripe");
        assert_eq!(name.len(), 6);
        assert_eq!(format!("[{name:<8}]"), "[stripe  ]");
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"stripe\"");
        let back: WebhookName = serde_json::from_str("\"stripe\"").unwrap();
        assert_eq!(back, name);
        let mut map = std::collections::HashMap::new();
        map.insert(UpstreamName::new("notify"), 1);
        assert_eq!(map.get("notify"), Some(&1));
    }
}
