//! What each A/B variant achieved, from the event log: click-through (a click or purchase that quotes a served
//! request and names one of its items) and hit rate (the user's next interaction after a request is one of the
//! items it served), each with a 95% Wilson interval, and each variant's difference from the first (the control)
//! with a 95% normal-approximation interval.

use std::collections::{BTreeMap, HashMap, HashSet};

use edgerec_core::ItemId;
use serde::Serialize;

use crate::event::{EventKind, ServedRequest};
use crate::log::LogSlice;

/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// A proportion with its 95% Wilson score interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Proportion {
    pub successes: u64,
    pub trials: u64,
    pub rate: f64,
    pub low: f64,
    pub high: f64,
}

impl Proportion {
    pub fn new(successes: u64, trials: u64) -> Self {
        if trials == 0 {
            return Self {
                successes,
                trials,
                rate: 0.0,
                low: 0.0,
                high: 1.0,
            };
        }
        let n = trials as f64;
        let p = successes as f64 / n;
        let z2 = Z95 * Z95;
        let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
        let half = Z95 / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
        Self {
            successes,
            trials,
            rate: p,
            low: (centre - half).max(0.0),
            high: (centre + half).min(1.0),
        }
    }

    /// This rate minus `control`'s, with Newcombe's hybrid score interval (95%; built from the two Wilson
    /// intervals, so it stays sensible near 0% and 100%, where the normal approximation claims certainty), or
    /// `None` when either side has no trials.
    pub fn difference(&self, control: &Proportion) -> Option<Difference> {
        if self.trials == 0 || control.trials == 0 {
            return None;
        }
        let delta = self.rate - control.rate;
        Some(Difference {
            delta,
            low: delta
                - ((self.rate - self.low).powi(2) + (control.high - control.rate).powi(2)).sqrt(),
            high: delta
                + ((self.high - self.rate).powi(2) + (control.rate - control.low).powi(2)).sqrt(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    pub delta: f64,
    pub low: f64,
    pub high: f64,
}

impl Difference {
    /// Whether the interval excludes zero.
    pub fn significant(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantOutcome {
    pub variant: String,
    pub model_versions: Vec<String>,
    pub requests: u64,
    /// Requests answered by a fallback rather than the model.
    pub degraded: u64,
    pub click_through: Proportion,
    /// Over requests with a user whose next interaction is in the log.
    pub hit_rate: Proportion,
    /// Against the first variant; absent for the first itself.
    pub click_through_vs_control: Option<Difference>,
    pub hit_rate_vs_control: Option<Difference>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AbReport {
    pub surface: String,
    pub variants: Vec<VariantOutcome>,
}

/// The report of `surface` over `slice`. A hit counts only if the next interaction comes within `window_ms` of
/// the request. The variant named `control` comes first and the others are compared with it; without it in the
/// log, the first variant served is the reference.
pub fn ab_report(slice: &LogSlice, surface: &str, control: &str, window_ms: i64) -> AbReport {
    let served: Vec<&ServedRequest> = slice
        .served
        .iter()
        .filter(|s| s.surface == surface)
        .collect();

    // Clicks by the request they quote, with who clicked: only the user a request was served to can click it.
    let mut clicked: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
    let mut by_user: HashMap<&str, Vec<(i64, &str)>> = HashMap::new();
    for logged in &slice.events {
        let event = &logged.event;
        by_user
            .entry(event.user.as_str())
            .or_default()
            .push((event.time_ms, event.item.as_str()));
        if matches!(event.kind, EventKind::Click | EventKind::Purchase)
            && let Some(request) = &event.request_id
        {
            clicked
                .entry(request.as_str())
                .or_default()
                .push((event.user.as_str(), event.item.as_str()));
        }
    }
    for events in by_user.values_mut() {
        events.sort_by_key(|(time, _)| *time);
    }

    #[derive(Default)]
    struct Tally<'a> {
        versions: Vec<&'a str>,
        requests: u64,
        degraded: u64,
        clicks: u64,
        hit_trials: u64,
        hits: u64,
    }
    let mut order: Vec<&str> = Vec::new();
    let mut tallies: BTreeMap<&str, Tally> = BTreeMap::new();
    for request in served {
        let tally = tallies.entry(request.variant.as_str()).or_insert_with(|| {
            order.push(request.variant.as_str());
            Tally::default()
        });
        if !tally.versions.contains(&request.model_version.as_str()) {
            tally.versions.push(request.model_version.as_str());
        }
        tally.requests += 1;
        tally.degraded += u64::from(request.degraded.is_some());
        let shown: HashSet<&str> = request.items.iter().map(ItemId::as_str).collect();
        let by_its_user = |user: &str| request.user.as_deref().is_none_or(|u| u == user);
        if clicked
            .get(request.request_id.as_str())
            .is_some_and(|clicks| {
                clicks
                    .iter()
                    .any(|(user, item)| by_its_user(user) && shown.contains(item))
            })
        {
            tally.clicks += 1;
        }
        let next = request.user.as_deref().and_then(|user| {
            let events = by_user.get(user)?;
            // At or after: a reaction logged in the same millisecond as the answer counts.
            let after = events.partition_point(|(time, _)| *time < request.time_ms);
            events
                .get(after)
                .filter(|(time, _)| *time - request.time_ms <= window_ms)
        });
        if let Some((_, item)) = next {
            tally.hit_trials += 1;
            tally.hits += u64::from(shown.contains(item));
        }
    }

    if let Some(position) = order.iter().position(|v| *v == control) {
        let named = order.remove(position);
        order.insert(0, named);
    }
    let mut variants: Vec<VariantOutcome> = order
        .iter()
        .map(|name| {
            let t = &tallies[name];
            VariantOutcome {
                variant: name.to_string(),
                model_versions: t.versions.iter().map(|v| v.to_string()).collect(),
                requests: t.requests,
                degraded: t.degraded,
                click_through: Proportion::new(t.clicks, t.requests),
                hit_rate: Proportion::new(t.hits, t.hit_trials),
                click_through_vs_control: None,
                hit_rate_vs_control: None,
            }
        })
        .collect();
    if let Some((control, others)) = variants.split_first_mut() {
        for other in others {
            other.click_through_vs_control = other.click_through.difference(&control.click_through);
            other.hit_rate_vs_control = other.hit_rate.difference(&control.hit_rate);
        }
    }
    AbReport {
        surface: surface.to_string(),
        variants,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgerec_core::{RequestId, Surface, UserId, VariantName, Version};

    use crate::event::Event;
    use crate::log::LoggedEvent;

    #[test]
    fn wilson_interval_matches_published_values() {
        // Newcombe (1998), example: 81 of 263 → 0.3080, Wilson 95% interval 0.2553–0.3662.
        let p = Proportion::new(81, 263);
        assert!((p.rate - 0.30798).abs() < 1e-4, "{p:?}");
        assert!((p.low - 0.2553).abs() < 1e-4, "{p:?}");
        assert!((p.high - 0.3662).abs() < 1e-4, "{p:?}");
        let none = Proportion::new(0, 10);
        assert_eq!(none.low, 0.0);
        assert!((none.high - 0.2775).abs() < 1e-4, "{none:?}");
        let empty = Proportion::new(0, 0);
        assert_eq!((empty.low, empty.high), (0.0, 1.0));
    }

    #[test]
    fn difference_interval_matches_newcombe() {
        // Newcombe (1998), example (a): 56/70 against 48/80 → 0.2000, method 10 interval 0.0524 to 0.3339.
        let d = Proportion::new(56, 70)
            .difference(&Proportion::new(48, 80))
            .expect("both have trials");
        assert!((d.delta - 0.2).abs() < 1e-12);
        assert!((d.low - 0.0524).abs() < 1e-4, "{d:?}");
        assert!((d.high - 0.3339).abs() < 1e-4, "{d:?}");
        assert!(d.significant());
        // One success in one trial is not evidence of anything.
        let tiny = Proportion::new(1, 1)
            .difference(&Proportion::new(0, 1))
            .expect("trials");
        assert!(!tiny.significant(), "{tiny:?}");
        assert!(
            Proportion::new(1, 1)
                .difference(&Proportion::new(0, 0))
                .is_none()
        );
    }

    fn served(id: &str, user: &str, variant: &str, time_ms: i64, items: &[&str]) -> ServedRequest {
        ServedRequest {
            request_id: RequestId::parse(id).expect("a request id"),
            time_ms,
            user: Some(UserId::parse(user).expect("a user id")),
            surface: Surface::parse("home").expect("a surface"),
            history: Vec::new(),
            context: Default::default(),
            model_version: Version::parse(format!("{variant}-v")).expect("a version"),
            variant: VariantName::parse(variant).expect("a variant"),
            items: ItemId::parse_all(items.iter().copied()).expect("item ids"),
            scores: vec![1.0; items.len()],
            degraded: None,
        }
    }

    fn event(
        id: &str,
        user: &str,
        item: &str,
        kind: EventKind,
        time_ms: i64,
        request: Option<&str>,
    ) -> LoggedEvent {
        LoggedEvent {
            node: "n".into(),
            incarnation: String::new(),
            seq: 0,
            event: Event {
                request_id: request.map(|r| RequestId::parse(r).expect("a request id")),
                ..Event::from_good_ids(id, user, item, kind, time_ms)
            },
        }
    }

    #[test]
    fn clicks_and_hits_are_attributed_per_variant() {
        let mut other_surface = served("r9", "u1", "control", 0, &["a"]);
        other_surface.surface = Surface::parse("search").expect("a surface");
        let slice = LogSlice {
            served: vec![
                served("r1", "u1", "control", 100, &["a", "b"]),
                served("r2", "u2", "control", 100, &["a", "b"]),
                served("r3", "u3", "candidate", 100, &["c", "d"]),
                served("r4", "u4", "candidate", 100, &["c", "d"]),
                other_surface,
            ],
            events: vec![
                // u1 clicks a served item of r1: a click and a hit.
                event("e1", "u1", "b", EventKind::Click, 200, Some("r1")),
                // u2's next interaction is not served (a miss); its later click quotes r2 with an item not shown.
                event("e2", "u2", "z", EventKind::View, 150, None),
                event("e3", "u2", "z", EventKind::Click, 300, Some("r2")),
                // u3 views a served item (a hit, no click); u4 does nothing after the request.
                event("e4", "u3", "d", EventKind::View, 150, None),
                event("e5", "u4", "c", EventKind::View, 50, None),
                // Too late for the window.
                event("e6", "u4", "c", EventKind::View, 100 + 10_000, None),
                // Someone else clicking a shown item of u3's and u4's requests: not their clicks.
                event("e7", "mallory", "c", EventKind::Click, 200, Some("r3")),
                event("e8", "mallory", "d", EventKind::Purchase, 200, Some("r4")),
            ],
            files: Vec::new(),
        };
        let report = ab_report(&slice, "home", "control", 1_000);
        assert_eq!(report.variants.len(), 2);
        let control = &report.variants[0];
        assert_eq!(control.variant, "control");
        assert_eq!(control.requests, 2);
        assert_eq!(
            (
                control.click_through.successes,
                control.click_through.trials
            ),
            (1, 2)
        );
        assert_eq!(
            (control.hit_rate.successes, control.hit_rate.trials),
            (1, 2)
        );
        assert!(control.click_through_vs_control.is_none());
        let candidate = &report.variants[1];
        assert_eq!(
            (
                candidate.click_through.successes,
                candidate.click_through.trials
            ),
            (0, 2)
        );
        assert_eq!(
            (candidate.hit_rate.successes, candidate.hit_rate.trials),
            (1, 1)
        );
        let d = candidate.hit_rate_vs_control.as_ref().expect("compared");
        assert!((d.delta - 0.5).abs() < 1e-12);
        assert_eq!(candidate.model_versions, ["candidate-v"]);

        // The named control comes first whatever was served first.
        let flipped = ab_report(&slice, "home", "candidate", 1_000);
        assert_eq!(flipped.variants[0].variant, "candidate");
        assert!(flipped.variants[0].hit_rate_vs_control.is_none());
    }
}
