//! Ids, parsed once where they cross into the system (HTTP bodies and paths, files, the Wasm ABI) by one rule per
//! kind, so an id one endpoint accepts is accepted by every other.
//!
//! - **External ids** ([`ItemId`], [`UserId`], [`EventId`], [`RequestId`]): what sites choose; 1 to
//!   [`MAX_ID_BYTES`] bytes of UTF-8 without control characters (they end up in logs, headers and files).
//! - **Names** ([`ModelName`], [`Version`], [`Surface`], [`VariantName`]): what the registry files things under;
//!   1 to [`MAX_NAME_BYTES`] of `[A-Za-z0-9._-]`, not starting with `.` (they become keys and file names).

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

/// Longest external id (item, user, event or request id) accepted anywhere.
pub const MAX_ID_BYTES: usize = 256;
/// Longest name (model, version, surface, variant) accepted anywhere.
pub const MAX_NAME_BYTES: usize = 128;

/// Why a string is not an id of its kind; the message names the kind and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} bytes long; the limit is {max}")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind} holds a control character")]
    ControlCharacter { kind: &'static str },
    #[error("{kind} `{shown}` must be letters, digits, '.', '_' or '-', not starting with '.'")]
    BadName { kind: &'static str, shown: String },
}

/// Whether `text` is 1 to `max` bytes long.
fn check_length(kind: &'static str, text: &str, max: usize) -> Result<(), IdError> {
    match text.len() {
        0 => Err(IdError::Empty { kind }),
        len if len > max => Err(IdError::TooLong { kind, len, max }),
        _ => Ok(()),
    }
}

/// Checks `text` against the external-id rule.
pub fn check_external_id(kind: &'static str, text: &str) -> Result<(), IdError> {
    check_length(kind, text, MAX_ID_BYTES)?;
    if text.chars().any(char::is_control) {
        return Err(IdError::ControlCharacter { kind });
    }
    Ok(())
}

/// Checks `text` against the name rule.
pub fn check_name(kind: &'static str, text: &str) -> Result<(), IdError> {
    check_length(kind, text, MAX_NAME_BYTES)?;
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !plain || text.starts_with('.') {
        return Err(IdError::BadName {
            kind,
            shown: text.chars().take(MAX_NAME_BYTES + 12).collect(),
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $rule:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// What the rule calls this kind of id in its messages.
            pub const KIND: &'static str = $kind;

            /// `text` as this kind of id, or why it is not one.
            pub fn parse(text: impl Into<String>) -> Result<Self, IdError> {
                let text = text.into();
                $rule($kind, &text)?;
                Ok(Self(text))
            }

            /// Each of `texts` as this kind of id, or why the first that is not one is not.
            pub fn parse_all<T: Into<String>>(
                texts: impl IntoIterator<Item = T>,
            ) -> Result<Vec<Self>, IdError> {
                texts.into_iter().map(Self::parse).collect()
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(text: String) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
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

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

id_type!(
    /// A site's id of an item.
    ItemId, "item id", check_external_id
);
id_type!(
    /// A site's id of a user or visitor.
    UserId, "user id", check_external_id
);
id_type!(
    /// A client's id of one event: a retried send carries the same one.
    EventId, "event id", check_external_id
);
id_type!(
    /// The id of one answered recommendation request.
    RequestId, "request id", check_external_id
);
id_type!(
    /// A model's name in the registry and in its bundle's manifest.
    ModelName, "model name", check_name
);
id_type!(
    /// A model's version.
    Version, "version", check_name
);
id_type!(
    /// A place on a site that recommendations are served to; plans are per surface.
    Surface, "surface", check_name
);
id_type!(
    /// An A/B variant's name within a plan.
    VariantName, "variant name", check_name
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_ids_follow_one_rule() {
        assert!(ItemId::parse("movie/1193 — Ω").is_ok());
        assert!(UserId::parse("x".repeat(MAX_ID_BYTES)).is_ok());
        assert_eq!(ItemId::parse(""), Err(IdError::Empty { kind: "item id" }));
        assert_eq!(
            EventId::parse("x".repeat(MAX_ID_BYTES + 1)),
            Err(IdError::TooLong {
                kind: "event id",
                len: MAX_ID_BYTES + 1,
                max: MAX_ID_BYTES
            })
        );
        assert_eq!(
            UserId::parse("a\nb"),
            Err(IdError::ControlCharacter { kind: "user id" })
        );
        // Multi-byte characters count by bytes.
        assert!(RequestId::parse("é".repeat(MAX_ID_BYTES / 2 + 1)).is_err());
    }

    #[test]
    fn names_follow_one_rule() {
        for good in ["ml-1m-sasrec", "1.0.47", "home_page", "A"] {
            assert!(ModelName::parse(good).is_ok(), "{good}");
            assert!(Surface::parse(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", "ü"] {
            assert!(Version::parse(bad).is_err(), "{bad:?}");
        }
        assert!(VariantName::parse("v".repeat(MAX_NAME_BYTES + 1)).is_err());
        let message = ModelName::parse("../etc").expect_err("refused").to_string();
        assert!(
            message.starts_with("model name `../etc` must be"),
            "{message}"
        );
    }

    #[test]
    fn deserialising_parses_and_serialising_writes_the_plain_string() {
        let id: ItemId = serde_json::from_str("\"42\"").expect("an item id");
        assert_eq!(id.as_str(), "42");
        assert_eq!(serde_json::to_string(&id).expect("serialises"), "\"42\"");
        let refused = serde_json::from_str::<ItemId>("\"\"").expect_err("empty");
        assert!(
            refused.to_string().contains("item id is empty"),
            "{refused}"
        );
        let ids: Vec<UserId> = serde_json::from_str(r#"["a", "b"]"#).expect("user ids");
        assert_eq!(ids[1], *"b");
    }
}
