//! Node cards: what a node says about itself (stream `nodes`). Every node
//! writes only its own card; the newest card of each node wins everywhere,
//! so every node learns every other (the `SELVES.md` page is rendered from
//! them). A card also carries the join self-test marker.

use serde::{Deserialize, Serialize};

use crate::{Name, NodeId, UnixMillis};

/// Longest role, location or interface, in characters.
pub const MAX_FIELD_CHARS: usize = 200;
/// Longest marker, in bytes.
pub const MAX_MARKER_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCard {
    pub id: NodeId,
    pub name: Name,
    /// What this node is for, e.g. "conversations with users".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// Where it runs, e.g. "Hetzner VPS (Falkenstein)".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
    /// How one talks to it, e.g. "Telegram bot", "terminal".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface: String,
    /// e.g. "selves 0.1.0".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub software: String,
    /// When the node wrote this card, by its clock; the newer card of a
    /// node wins (the writer stamps past its previous card).
    pub updated_at: UnixMillis,
    /// The node's last successful sync with any peer, when it wrote this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_at: Option<UnixMillis>,
    /// The latest join self-test marker the node wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
    /// The node's public key, whose signatures prove what it wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<crate::sign::PublicKey>,
}

impl NodeCard {
    /// A card with only the identity filled in.
    pub fn new(id: NodeId, name: Name, updated_at: UnixMillis) -> NodeCard {
        NodeCard {
            id,
            name,
            role: String::new(),
            location: String::new(),
            interface: String::new(),
            software: String::new(),
            updated_at,
            last_sync_at: None,
            marker: None,
            key: None,
        }
    }

    /// Refuses a card whose text fields could not be rendered on one line.
    pub fn check(&self) -> Result<(), String> {
        crate::row::check_ms("updated_at", self.updated_at).map_err(|e| e.to_string())?;
        if let Some(ms) = self.last_sync_at {
            crate::row::check_ms("last_sync_at", ms).map_err(|e| e.to_string())?;
        }
        for (what, value) in [
            ("role", &self.role),
            ("location", &self.location),
            ("interface", &self.interface),
            ("software", &self.software),
        ] {
            check_field(what, value)?;
        }
        if let Some(m) = &self.marker {
            check_marker(m)?;
        }
        Ok(())
    }

    /// Whether `self` is newer than `other` (a total order: ties on the
    /// stamp are broken by the content, so every node keeps the same card).
    pub fn newer_than(&self, other: &NodeCard) -> bool {
        let key = |c: &NodeCard| (c.updated_at, serde_json::to_string(c).unwrap_or_default());
        key(self) > key(other)
    }
}

/// A role, location or interface: one line, at most [`MAX_FIELD_CHARS`].
pub fn check_field(what: &str, value: &str) -> Result<(), String> {
    if value.chars().count() > MAX_FIELD_CHARS {
        return Err(format!(
            "{what} is longer than {MAX_FIELD_CHARS} characters"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!(
            "{what} contains a control character (one line only)"
        ));
    }
    Ok(())
}

/// A marker: 1 to 64 of `[A-Za-z0-9-]`.
pub fn check_marker(marker: &str) -> Result<(), String> {
    let ok = !marker.is_empty()
        && marker.len() <= MAX_MARKER_LEN
        && marker
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err("a marker is 1 to 64 letters, digits or dashes".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> NodeCard {
        NodeCard {
            role: "hub".into(),
            location: "VPS, Falkenstein".into(),
            last_sync_at: Some(5),
            ..NodeCard::new(NodeId::from_bytes([7; 16]), "vps".parse().unwrap(), 10)
        }
    }

    #[test]
    fn json() {
        expect_test::expect![[r#"{"id":"07070707070707070707070707070707","name":"vps","role":"hub","location":"VPS, Falkenstein","updated_at":10,"last_sync_at":5}"#]]
        .assert_eq(&serde_json::to_string(&card()).unwrap());
    }

    #[test]
    fn checks_fields_and_orders_versions() {
        assert_eq!(card().check(), Ok(()));
        let bad = NodeCard {
            role: "two\nlines".into(),
            ..card()
        };
        assert!(bad.check().unwrap_err().contains("role"));
        let long = NodeCard {
            location: "x".repeat(MAX_FIELD_CHARS + 1),
            ..card()
        };
        assert!(long.check().is_err());
        for marker in ["", "a b", "../x", &"m".repeat(65)] {
            let c = NodeCard {
                marker: Some(marker.to_owned()),
                ..card()
            };
            assert!(c.check().is_err(), "{marker:?}");
        }
        let newer = NodeCard {
            updated_at: 11,
            ..card()
        };
        assert!(newer.newer_than(&card()) && !card().newer_than(&newer));
        let tie = NodeCard {
            role: "other".into(),
            ..card()
        };
        assert_ne!(tie.newer_than(&card()), card().newer_than(&tie));
        assert!(!card().newer_than(&card()));
    }
}
