//! How long ago each surface's plan was last confirmed with the registry (a plan read that verified and is in
//! service, or a `304 Not Modified` for it), so a node that cannot get a fresh plan says so (`/readyz`, the
//! `plan_age_seconds` metric) instead of serving an old one silently.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgerec_core::Surface;

/// When each surface's plan was last confirmed, and the age past which it counts as stale.
#[derive(Debug)]
pub struct PlanFreshness {
    /// A plan never confirmed since the node started (a restored one) is as old as the node.
    started: Instant,
    confirmed: Mutex<HashMap<String, Instant>>,
    max_age: Option<Duration>,
}

impl PlanFreshness {
    pub fn new(max_age: Option<Duration>) -> Self {
        Self::started_at(Instant::now(), max_age)
    }

    fn started_at(started: Instant, max_age: Option<Duration>) -> Self {
        Self {
            started,
            confirmed: Mutex::default(),
            max_age,
        }
    }

    /// The registry confirmed the plan `surface` serves now.
    pub fn confirm(&self, surface: &str) {
        self.confirm_at(surface, Instant::now());
    }

    fn confirm_at(&self, surface: &str, at: Instant) {
        self.lock().insert(surface.to_string(), at);
    }

    /// How long ago the plan of `surface` was last confirmed, at `now`.
    pub fn age(&self, surface: &str, now: Instant) -> Duration {
        let confirmed = self.lock().get(surface).copied().unwrap_or(self.started);
        now.saturating_duration_since(confirmed)
    }

    /// The surfaces whose plan is older than the maximum age, with their age (none without a maximum).
    pub fn stale(&self, surfaces: &[Surface], now: Instant) -> Vec<(Surface, Duration)> {
        let Some(max_age) = self.max_age else {
            return Vec::new();
        };
        surfaces
            .iter()
            .map(|surface| (surface.clone(), self.age(surface, now)))
            .filter(|(_, age)| *age > max_age)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.confirmed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_goes_stale_past_the_maximum_age_until_confirmed() {
        let start = Instant::now();
        let surfaces = [
            Surface::parse("home").expect("a surface"),
            Surface::parse("search").expect("a surface"),
        ];
        let freshness = PlanFreshness::started_at(start, Some(Duration::from_secs(10)));
        assert!(
            freshness
                .stale(&surfaces, start + Duration::from_secs(10))
                .is_empty()
        );
        let later = start + Duration::from_secs(11);
        assert_eq!(
            freshness.stale(&surfaces, later),
            vec![
                (surfaces[0].clone(), Duration::from_secs(11)),
                (surfaces[1].clone(), Duration::from_secs(11)),
            ]
        );
        freshness.confirm_at("home", later);
        let stale = freshness.stale(&surfaces, later + Duration::from_secs(1));
        assert_eq!(stale, vec![(surfaces[1].clone(), Duration::from_secs(12))]);
        // Without a maximum nothing is ever stale; the age is still kept for the metric.
        let unbounded = PlanFreshness::started_at(start, None);
        assert!(unbounded.stale(&surfaces, later).is_empty());
        assert_eq!(unbounded.age("home", later), Duration::from_secs(11));
    }
}
