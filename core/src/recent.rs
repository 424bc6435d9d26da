//! The recent-items rule: a user's history holds each item once, at the position of its latest interaction
//! (ordered by time; at equal times, in arrival order), and only the newest `capacity` entries. The feature
//! store applies it to events, the edge node to the items a request adds, and the browser package (through the
//! browser build) to clicks, so every place that keeps a history keeps the same one.

/// One interaction for [`remember`]: the item and when (any clock that orders a user's interactions).
pub trait Interaction {
    fn item(&self) -> &str;
    fn time(&self) -> i64;
}

impl<T: AsRef<str>> Interaction for (T, i64) {
    fn item(&self) -> &str {
        self.0.as_ref()
    }
    fn time(&self) -> i64 {
        self.1
    }
}

/// Adds `entry` to `history` (oldest first) by the rule. An entry older than the item's latest one changes
/// nothing.
pub fn remember<T: Interaction>(history: &mut Vec<T>, entry: T, capacity: usize) {
    if let Some(at) = history.iter().position(|h| h.item() == entry.item()) {
        if history[at].time() > entry.time() {
            return;
        }
        history.remove(at);
    }
    let at = history.partition_point(|h| h.time() <= entry.time());
    history.insert(at, entry);
    if history.len() > capacity {
        let excess = history.len() - capacity;
        history.drain(..excess);
    }
}

/// Adds `items` (oldest first, all newer than anything in `history`) to a history of ids by the rule.
pub fn remember_all<T: AsRef<str> + Clone>(history: &mut Vec<T>, items: &[T], capacity: usize) {
    let mut timed: Vec<(T, i64)> = std::mem::take(history)
        .into_iter()
        .map(|item| (item, 0))
        .collect();
    for item in items {
        remember(&mut timed, (item.clone(), 1), capacity);
    }
    *history = timed.into_iter().map(|(item, _)| item).collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_item_once_at_its_latest_position() {
        let mut history = ids(&["a", "b", "c"]);
        remember_all(&mut history, &ids(&["b", "d", "b"]), 10);
        assert_eq!(history, ids(&["a", "c", "d", "b"]));
    }

    #[test]
    fn only_the_newest_capacity_entries_stay() {
        let mut history = ids(&["a", "b"]);
        remember_all(&mut history, &ids(&["c", "d"]), 3);
        assert_eq!(history, ids(&["b", "c", "d"]));
    }

    #[test]
    fn late_events_take_their_place_in_time_and_never_move_a_newer_one() {
        let mut history: Vec<(String, i64)> = Vec::new();
        for (item, time) in [("a", 10), ("b", 30), ("c", 20), ("b", 5), ("a", 40)] {
            remember(&mut history, (item.to_string(), time), 10);
        }
        let order: Vec<&str> = history.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(order, ["c", "b", "a"]);
        assert_eq!(history[1].1, 30, "the older `b` changed nothing");
    }
}
