//! What clients send (events) and what serving did (served requests), and the limits every event must meet.

use std::collections::BTreeMap;

use edgerec_core::id::check_external_id;
use edgerec_core::{EventId, ItemId, MAX_ID_BYTES, RequestId, UserId};
use serde::{Deserialize, Serialize};

/// What a user did with an item. Every kind counts as an interaction: it enters the user's recent items and the
/// item's popularity; the kinds are counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    View,
    Click,
    Purchase,
    Rating,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::View,
        EventKind::Click,
        EventKind::Purchase,
        EventKind::Rating,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::View => "view",
            EventKind::Click => "click",
            EventKind::Purchase => "purchase",
            EventKind::Rating => "rating",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One interaction, as a client reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Chosen by the client, unique per event: a retried send carries the same id and is applied once.
    pub id: String,
    pub user: String,
    pub item: String,
    pub kind: EventKind,
    /// When it happened, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// A rating's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f32>,
    /// The served request this event answers (a click on a recommendation), which ties it to the exact feature
    /// values that request was ranked with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// One answered recommendation request, with exactly what the model was fed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedRequest {
    pub request_id: String,
    pub time_ms: i64,
    pub user: Option<String>,
    pub surface: String,
    /// The recent items fed to the model, oldest first, as ids.
    pub history: Vec<String>,
    /// The context feature values fed to the model.
    pub context: BTreeMap<String, f64>,
    pub model_version: String,
    pub variant: String,
    pub items: Vec<String>,
    pub scores: Vec<f32>,
    /// Why the answer did not come from the model's full path, when it did not.
    pub degraded: Option<String>,
}

/// What the ingest accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventLimits {
    /// Events in one batch.
    pub max_batch: usize,
    /// Bytes in an id (event, user, item or request id): at most [`MAX_ID_BYTES`], the limit of every endpoint;
    /// lower it to refuse longer ids at this ingest.
    pub max_id_bytes: usize,
    /// How far in the future an event may be (client clocks run fast).
    pub max_future_ms: i64,
    /// How old an event may be. Deduplication remembers ids this long, so a retry is recognised for as long as it
    /// can be accepted.
    pub max_age_ms: i64,
}

impl Default for EventLimits {
    fn default() -> Self {
        Self {
            max_batch: 1000,
            max_id_bytes: MAX_ID_BYTES,
            max_future_ms: 5 * 60 * 1000,
            max_age_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// Why an event was refused. The whole batch it came in is refused with it, so nothing is half-written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    #[error("the batch holds {count} events; at most {max} are accepted at once")]
    BatchTooLarge { count: usize, max: usize },
    #[error("the batch is empty")]
    EmptyBatch,
    #[error("event {index} (id `{id}`): {reason}")]
    Invalid {
        index: usize,
        id: String,
        reason: String,
    },
}

impl EventLimits {
    /// Checks a batch against the limits at time `now_ms`.
    pub fn check(&self, events: &[Event], now_ms: i64) -> Result<(), EventError> {
        if events.is_empty() {
            return Err(EventError::EmptyBatch);
        }
        if events.len() > self.max_batch {
            return Err(EventError::BatchTooLarge {
                count: events.len(),
                max: self.max_batch,
            });
        }
        for (index, event) in events.iter().enumerate() {
            self.check_one(event, now_ms)
                .map_err(|reason| EventError::Invalid {
                    index,
                    id: event.id.chars().take(64).collect(),
                    reason,
                })?;
        }
        Ok(())
    }

    fn check_one(&self, event: &Event, now_ms: i64) -> Result<(), String> {
        let ids = [
            ("id", EventId::KIND, Some(&event.id)),
            ("user", UserId::KIND, Some(&event.user)),
            ("item", ItemId::KIND, Some(&event.item)),
            ("request_id", RequestId::KIND, event.request_id.as_ref()),
        ];
        for (name, kind, value) in ids {
            let Some(value) = value else { continue };
            // The one rule for ids (the same `/v1/recommend` and the model's vocabulary apply), then this
            // ingest's own limit, which may be lower.
            check_external_id(kind, value).map_err(|e| format!("`{name}`: {e}"))?;
            if value.len() > self.max_id_bytes {
                return Err(format!(
                    "`{name}` is {} bytes long; the limit is {}",
                    value.len(),
                    self.max_id_bytes
                ));
            }
        }
        if event.time_ms > now_ms + self.max_future_ms {
            return Err(format!(
                "`time_ms` is {} s in the future; clocks may differ by at most {} s",
                (event.time_ms - now_ms) / 1000,
                self.max_future_ms / 1000
            ));
        }
        if event.time_ms < now_ms - self.max_age_ms {
            return Err(format!(
                "`time_ms` is {} s old; events older than {} s are refused",
                (now_ms - event.time_ms) / 1000,
                self.max_age_ms / 1000
            ));
        }
        match (event.kind, event.value) {
            (EventKind::Rating, None) => return Err("a rating needs a `value`".into()),
            (_, Some(v)) if !v.is_finite() => return Err("`value` is not a finite number".into()),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, time_ms: i64) -> Event {
        Event {
            id: id.into(),
            user: "u".into(),
            item: "i".into(),
            kind: EventKind::Click,
            time_ms,
            value: None,
            request_id: None,
        }
    }

    #[test]
    fn each_bad_event_is_named_by_position_and_reason() {
        let limits = EventLimits::default();
        let now = 1_000_000_000_000;
        assert_eq!(limits.check(&[], now), Err(EventError::EmptyBatch));
        let many = vec![event("e", now); 1001];
        assert_eq!(
            limits.check(&many, now),
            Err(EventError::BatchTooLarge {
                count: 1001,
                max: 1000
            })
        );
        let cases: Vec<(Event, &str)> = vec![
            (event("", now), "`id`: event id is empty"),
            (
                event(&"x".repeat(257), now),
                "257 bytes long; the limit is 256",
            ),
            (event("a\nb", now), "control character"),
            (
                Event {
                    item: "x".repeat(257),
                    ..event("i", now)
                },
                "`item`: item id is 257 bytes long",
            ),
            (event("f", now + 10 * 60 * 1000), "in the future"),
            (event("o", now - 8 * 24 * 3600 * 1000), "old"),
            (
                Event {
                    kind: EventKind::Rating,
                    ..event("r", now)
                },
                "needs a `value`",
            ),
            (
                Event {
                    value: Some(f32::NAN),
                    ..event("n", now)
                },
                "finite",
            ),
        ];
        for (bad, reason) in cases {
            let batch = [event("ok", now), bad];
            match limits.check(&batch, now) {
                Err(EventError::Invalid {
                    index: 1,
                    reason: r,
                    ..
                }) => {
                    assert!(r.contains(reason), "{r} should say {reason}")
                }
                other => panic!("expected event 1 refused for {reason}, got {other:?}"),
            }
        }
        // An ingest may set a lower limit of its own.
        let strict = EventLimits {
            max_id_bytes: 8,
            ..EventLimits::default()
        };
        let refused = strict.check(&[event("123456789", now)], now);
        assert!(
            matches!(&refused, Err(EventError::Invalid { reason, .. }) if reason.contains("the limit is 8")),
            "{refused:?}"
        );
        assert_eq!(limits.check(&[event("ok", now)], now), Ok(()));
    }

    #[test]
    fn unknown_kinds_and_fields_are_refused_when_parsed() {
        let unknown_kind = r#"{"id":"1","user":"u","item":"i","kind":"like","time_ms":1}"#;
        let e = serde_json::from_str::<Event>(unknown_kind).expect_err("unknown kind");
        assert!(e.to_string().contains("unknown variant `like`"), "{e}");
        let unknown_field = r#"{"id":"1","user":"u","item":"i","kind":"view","time_ms":1,"x":2}"#;
        let e = serde_json::from_str::<Event>(unknown_field).expect_err("unknown field");
        assert!(e.to_string().contains("unknown field `x`"), "{e}");
    }
}
