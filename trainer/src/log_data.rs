//! A training set from a time range of the event log: the events become the interaction sequences, and an event
//! that answers a served request (a click on a recommendation) is learnt from the history that request fed the
//! model, exactly as serving saw it. Every other target's history is rebuilt from the sequence by the feature
//! specification, as serving builds it. (The sequence keeps repeated items where the feature store keeps each item
//! once, at its latest time: the two agree on logs without repeats, such as MovieLens.)

use std::collections::HashMap;

use edgerec_core::ItemId;
use edgerec_features::log::LogSlice;

use crate::data::Interaction;
use crate::split::{LoggedHistory, Split};

/// The split of a log slice and what went into it.
#[derive(Debug, Clone)]
pub struct LogDataset {
    pub interactions: Vec<Interaction>,
    pub split: Split,
    /// Events that answered a served request found in the slice.
    pub logged_histories: usize,
}

/// Builds the leave-last-out split of `slice`. Interaction timestamps are the events' milliseconds.
pub fn from_log(slice: &LogSlice) -> LogDataset {
    let interactions: Vec<Interaction> = slice
        .events
        .iter()
        .map(|e| Interaction {
            user: e.event.user.clone(),
            item: e.event.item.clone(),
            timestamp: e.event.time_ms,
            value: e.event.value,
        })
        .collect();
    let mut split = Split::leave_last_out(&interactions);
    let user_index: HashMap<&str, u32> = split
        .users
        .iter()
        .enumerate()
        .map(|(i, u)| (u.user.as_str(), i as u32))
        .collect();
    let item_index: HashMap<&str, u32> = split
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| (item.as_str(), i as u32 + 1))
        .collect();
    let served: HashMap<&str, &Vec<ItemId>> = slice
        .served
        .iter()
        .map(|s| (s.request_id.as_str(), &s.history))
        .collect();
    // The log is in time order and the split sorts each user stably by time, so an event's position in its user's
    // sequence is the number of that user's events before it.
    let mut seen: HashMap<&str, u32> = HashMap::new();
    let mut logged = Vec::new();
    for logged_event in &slice.events {
        let event = &logged_event.event;
        let position = seen.entry(event.user.as_str()).or_default();
        if let Some(history) = event.request_id.as_deref().and_then(|r| served.get(r)) {
            logged.push(LoggedHistory {
                user: user_index[event.user.as_str()],
                position: *position,
                // Ids the model does not know are skipped, as serving skips them.
                history: history
                    .iter()
                    .filter_map(|id| item_index.get(id.as_str()).copied())
                    .collect(),
            });
        }
        *position += 1;
    }
    let logged_histories = logged.len();
    split.logged = logged;
    LogDataset {
        interactions,
        split,
        logged_histories,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgerec_core::{RequestId, Surface, UserId, VariantName, Version};
    use edgerec_features::event::{Event, EventKind, ServedRequest};
    use edgerec_features::log::LoggedEvent;

    #[test]
    fn answered_requests_carry_their_logged_history() {
        let event = |seq: u64, user: &str, item: &str, request: Option<&str>| LoggedEvent {
            node: "n".into(),
            incarnation: String::new(),
            seq,
            event: Event {
                request_id: request.map(|r| RequestId::parse(r).expect("a request id")),
                ..Event::from_good_ids(&seq.to_string(), user, item, EventKind::Click, seq as i64)
            },
        };
        let slice = LogSlice {
            events: vec![
                event(1, "u", "a", None),
                event(2, "v", "b", None),
                event(3, "u", "b", None),
                event(4, "u", "c", Some("r1")),
            ],
            served: vec![ServedRequest {
                request_id: RequestId::parse("r1").expect("a request id"),
                time_ms: 4,
                user: Some(UserId::parse("u").expect("a user id")),
                surface: Surface::parse("home").expect("a surface"),
                // Serving had not seen `b` yet, and knew an item the log never names.
                history: ItemId::parse_all(["a", "unknown"]).expect("item ids"),
                context: Default::default(),
                model_version: Version::parse("v1").expect("a version"),
                variant: VariantName::parse("control").expect("a variant"),
                items: ItemId::parse_all(["c"]).expect("item ids"),
                scores: vec![1.0],
                degraded: None,
            }],
            files: vec![],
        };
        let data = from_log(&slice);
        assert_eq!(data.logged_histories, 1);
        assert_eq!(data.split.users[0].items, [1, 2, 3]);
        assert_eq!(
            data.split.logged,
            [LoggedHistory {
                user: 0,
                position: 2,
                history: vec![1]
            }]
        );
    }
}
