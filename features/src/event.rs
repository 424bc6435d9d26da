//! What clients send (events) and what serving did (served requests), and the limits every event must meet.

use std::collections::BTreeMap;

use edgerec_core::{
    EventId, IdError, ItemId, MAX_ID_BYTES, RequestId, Surface, UserId, VariantName, Version,
};
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

/// One interaction, as the system holds it once its ids are parsed ([`EventLimits::accept`] makes these from what
/// clients send; the log and the write-ahead log hold them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Chosen by the client, unique per event: a retried send carries the same id and is applied once.
    pub id: EventId,
    pub user: UserId,
    pub item: ItemId,
    pub kind: EventKind,
    /// When it happened, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// A rating's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f32>,
    /// The served request this event answers (a click on a recommendation), which ties it to the exact feature
    /// values that request was ranked with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

impl Event {
    /// An event from ids that are already known to be good (tests, benchmarks, generated data); panics on a bad
    /// one, naming it.
    pub fn from_good_ids(id: &str, user: &str, item: &str, kind: EventKind, time_ms: i64) -> Self {
        fn good<T>(parsed: Result<T, IdError>) -> T {
            parsed.unwrap_or_else(|e| panic!("{e}"))
        }
        Self {
            id: good(EventId::parse(id)),
            user: good(UserId::parse(user)),
            item: good(ItemId::parse(item)),
            kind,
            time_ms,
            value: None,
            request_id: None,
        }
    }
}

/// One interaction as a client sends it (the body of `POST /v1/events`, a line of an imported file): the same
/// fields as [`Event`] with the ids not yet parsed, so that a node can first check who may name which user (a
/// caller without the right gets 401/403 whatever the ids hold) and then refuse a bad id as an invalid event,
/// named by its position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEvent {
    pub id: String,
    pub user: String,
    pub item: String,
    pub kind: EventKind,
    pub time_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// One answered recommendation request, with exactly what the model was fed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedRequest {
    pub request_id: RequestId,
    pub time_ms: i64,
    pub user: Option<UserId>,
    pub surface: Surface,
    /// The recent items fed to the model, oldest first, as ids.
    pub history: Vec<ItemId>,
    /// The context feature values fed to the model.
    pub context: BTreeMap<String, f64>,
    pub model_version: Version,
    pub variant: VariantName,
    pub items: Vec<ItemId>,
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
    /// The batch's events with their ids parsed, if every one meets the limits at time `now_ms`; otherwise the
    /// first that does not, by position and reason (all or none are accepted).
    pub fn accept(&self, batch: Vec<ClientEvent>, now_ms: i64) -> Result<Vec<Event>, EventError> {
        if batch.is_empty() {
            return Err(EventError::EmptyBatch);
        }
        if batch.len() > self.max_batch {
            return Err(EventError::BatchTooLarge {
                count: batch.len(),
                max: self.max_batch,
            });
        }
        batch
            .into_iter()
            .enumerate()
            .map(|(index, sent)| {
                let shown = sent.id.chars().take(64).collect();
                self.accept_one(sent, now_ms)
                    .map_err(|reason| EventError::Invalid {
                        index,
                        id: shown,
                        reason,
                    })
            })
            .collect()
    }

    fn accept_one(&self, sent: ClientEvent, now_ms: i64) -> Result<Event, String> {
        let event = Event {
            id: self.parse_id("id", sent.id, EventId::parse)?,
            user: self.parse_id("user", sent.user, UserId::parse)?,
            item: self.parse_id("item", sent.item, ItemId::parse)?,
            kind: sent.kind,
            time_ms: sent.time_ms,
            value: sent.value,
            request_id: sent
                .request_id
                .map(|id| self.parse_id("request_id", id, RequestId::parse))
                .transpose()?,
        };
        // Saturating: `time_ms` is whatever the client sent, down to i64::MIN.
        let ahead = event.time_ms.saturating_sub(now_ms);
        if ahead > self.max_future_ms {
            return Err(format!(
                "`time_ms` is {} s in the future; clocks may differ by at most {} s",
                ahead / 1000,
                self.max_future_ms / 1000
            ));
        }
        let age = now_ms.saturating_sub(event.time_ms);
        if age > self.max_age_ms {
            return Err(format!(
                "`time_ms` is {} s old; events older than {} s are refused",
                age / 1000,
                self.max_age_ms / 1000
            ));
        }
        match (event.kind, event.value) {
            (EventKind::Rating, None) => return Err("a rating needs a `value`".into()),
            (_, Some(v)) if !v.is_finite() => return Err("`value` is not a finite number".into()),
            _ => {}
        }
        Ok(event)
    }

    /// `text` parsed by the one rule for ids (the same `/v1/recommend` and the model's vocabulary apply), then
    /// held to this ingest's own limit, which may be lower.
    fn parse_id<T>(
        &self,
        field: &str,
        text: String,
        parse: impl FnOnce(String) -> Result<T, IdError>,
    ) -> Result<T, String> {
        let len = text.len();
        let id = parse(text).map_err(|e| format!("`{field}`: {e}"))?;
        if len > self.max_id_bytes {
            return Err(format!(
                "`{field}` is {len} bytes long; the limit is {}",
                self.max_id_bytes
            ));
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, time_ms: i64) -> ClientEvent {
        ClientEvent {
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
        assert_eq!(limits.accept(Vec::new(), now), Err(EventError::EmptyBatch));
        let many = vec![event("e", now); 1001];
        assert_eq!(
            limits.accept(many, now),
            Err(EventError::BatchTooLarge {
                count: 1001,
                max: 1000
            })
        );
        let cases: Vec<(ClientEvent, &str)> = vec![
            (event("", now), "`id`: event id is empty"),
            (
                event(&"x".repeat(257), now),
                "257 bytes long; the limit is 256",
            ),
            (event("a\nb", now), "control character"),
            (
                ClientEvent {
                    item: "x".repeat(257),
                    ..event("i", now)
                },
                "`item`: item id is 257 bytes long",
            ),
            (event("f", now + 10 * 60 * 1000), "in the future"),
            (event("o", now - 8 * 24 * 3600 * 1000), "old"),
            (event("oldest", i64::MIN), "old"),
            (event("latest", i64::MAX), "in the future"),
            (
                ClientEvent {
                    kind: EventKind::Rating,
                    ..event("r", now)
                },
                "needs a `value`",
            ),
            (
                ClientEvent {
                    value: Some(f32::NAN),
                    ..event("n", now)
                },
                "finite",
            ),
        ];
        for (bad, reason) in cases {
            let batch = vec![event("ok", now), bad];
            match limits.accept(batch, now) {
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
        let refused = strict.accept(vec![event("123456789", now)], now);
        assert!(
            matches!(&refused, Err(EventError::Invalid { reason, .. }) if reason.contains("the limit is 8")),
            "{refused:?}"
        );
        let accepted = limits
            .accept(vec![event("ok", now)], now)
            .expect("a good event is accepted");
        assert_eq!(accepted[0].id, "ok");
    }

    #[test]
    fn unknown_kinds_and_fields_are_refused_when_parsed() {
        let unknown_kind = r#"{"id":"1","user":"u","item":"i","kind":"like","time_ms":1}"#;
        let e = serde_json::from_str::<ClientEvent>(unknown_kind).expect_err("unknown kind");
        assert!(e.to_string().contains("unknown variant `like`"), "{e}");
        let unknown_field = r#"{"id":"1","user":"u","item":"i","kind":"view","time_ms":1,"x":2}"#;
        let e = serde_json::from_str::<ClientEvent>(unknown_field).expect_err("unknown field");
        assert!(e.to_string().contains("unknown field `x`"), "{e}");
    }

    #[test]
    fn a_held_event_reads_back_as_written_and_a_bad_id_is_refused_when_read() {
        let now = 1_000_000_000_000;
        let accepted = EventLimits::default()
            .accept(vec![event("e1", now)], now)
            .expect("accepted");
        let text = serde_json::to_string(&accepted[0]).expect("serialises");
        assert_eq!(
            text,
            serde_json::to_string(&event("e1", now)).expect("serialises"),
            "an event is held in the form clients send it"
        );
        assert_eq!(
            serde_json::from_str::<Event>(&text).expect("reads back"),
            accepted[0]
        );
        let bad = text.replace(r#""user":"u""#, r#""user":"""#);
        let e = serde_json::from_str::<Event>(&bad).expect_err("an empty user id");
        assert!(e.to_string().contains("user id is empty"), "{e}");
    }
}
