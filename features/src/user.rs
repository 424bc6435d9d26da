//! A user's hot features and the one function that updates them from an event.
//!
//! Recent-item policy: the sequence holds each item once, at the time of its latest event, ordered by event time
//! (equal times keep arrival order); it keeps the newest [`UserFeatures::capacity`] items. An event older than
//! every kept item of a full sequence changes the counters and last-seen time but not the sequence. A user nobody
//! has seen has the default: an empty sequence, no counts.

use std::collections::BTreeMap;

use edgerec_core::ItemId;
use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind};

/// The default sequence length: the trained model's `max_len`.
pub const DEFAULT_CAPACITY: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentItem {
    pub item: ItemId,
    pub time_ms: i64,
}

impl edgerec_core::recent::Interaction for RecentItem {
    fn item(&self) -> &str {
        &self.item
    }
    fn time(&self) -> i64 {
        self.time_ms
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserFeatures {
    /// Oldest first.
    pub recent: Vec<RecentItem>,
    pub counts: BTreeMap<EventKind, u64>,
    pub last_seen_ms: Option<i64>,
}

impl UserFeatures {
    /// Applies one event, keeping at most `capacity` recent items.
    pub fn apply(&mut self, event: &Event, capacity: usize) {
        *self.counts.entry(event.kind).or_default() += 1;
        self.last_seen_ms = Some(
            self.last_seen_ms
                .map_or(event.time_ms, |t| t.max(event.time_ms)),
        );
        let entry = RecentItem {
            item: event.item.clone(),
            time_ms: event.time_ms,
        };
        edgerec_core::recent::remember(&mut self.recent, entry, capacity);
    }

    /// The recent items as the model takes them: ids, oldest first.
    pub fn history(&self) -> Vec<ItemId> {
        self.recent.iter().map(|r| r.item.clone()).collect()
    }

    pub fn interactions(&self) -> u64 {
        self.counts.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(item: &str, time_ms: i64, kind: EventKind) -> Event {
        Event::from_good_ids(&format!("{item}@{time_ms}"), "u", item, kind, time_ms)
    }

    #[test]
    fn keeps_items_once_in_time_order_and_bounded() {
        let mut user = UserFeatures::default();
        for (item, t) in [("a", 10), ("b", 20), ("c", 15), ("a", 30), ("d", 30)] {
            user.apply(&event(item, t, EventKind::View), 3);
        }
        // a moved to its latest time; b..d ordered by time, ties by arrival; the oldest (c at 15) fell out.
        assert_eq!(user.history(), ["b", "a", "d"]);
        assert_eq!(user.counts[&EventKind::View], 5);
        assert_eq!(user.last_seen_ms, Some(30));

        // An older event of a kept item does not move it; one older than a full sequence changes only the counts.
        user.apply(&event("a", 25, EventKind::Click), 3);
        user.apply(&event("z", 1, EventKind::Click), 3);
        assert_eq!(user.history(), ["b", "a", "d"]);
        assert_eq!(user.counts[&EventKind::Click], 2);
        assert_eq!(user.interactions(), 7);
        assert_eq!(user.last_seen_ms, Some(30));
    }

    #[test]
    fn late_events_land_where_their_time_says() {
        let mut user = UserFeatures::default();
        for (item, t) in [("a", 10), ("c", 30), ("b", 20)] {
            user.apply(&event(item, t, EventKind::View), 50);
        }
        assert_eq!(user.history(), ["a", "b", "c"]);
    }
}
