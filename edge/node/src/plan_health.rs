//! What a node knows of its plans' standing with the registry, so that it says when it is out of step instead of
//! serving an old plan silently (`/readyz`, the `plan_age_seconds` metric): how long ago each surface's plan was
//! last confirmed (counted from when the registry signed an answer for it, `served_at`: an unsigned `304 Not
//! Modified`, or an old answer replayed, confirms nothing), and which surfaces' current plans do not verify against
//! the key the node trusts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgerec_core::Surface;

/// When each surface's plan was last confirmed, the age past which it counts as stale, and the plans refused for
/// their signature.
#[derive(Debug)]
pub struct PlanHealth {
    /// A plan never confirmed since the node started (a restored one) is as old as the node.
    started: Instant,
    confirmed: Mutex<HashMap<String, Instant>>,
    max_age: Option<Duration>,
    /// By surface: the revision whose signature did not verify against the trusted key, and why.
    untrusted: Mutex<HashMap<String, (u64, String)>>,
}

impl PlanHealth {
    pub fn new(max_age: Option<Duration>) -> Self {
        Self::started_at(Instant::now(), max_age)
    }

    fn started_at(started: Instant, max_age: Option<Duration>) -> Self {
        Self {
            started,
            confirmed: Mutex::default(),
            max_age,
            untrusted: Mutex::default(),
        }
    }

    /// The registry signed an answer for the plan `surface` serves at `served_at_ms` (its clock), read now
    /// (`now_ms`, this node's): confirmed as of then (never later than now).
    pub fn confirm(&self, surface: &str, served_at_ms: i64, now_ms: i64) {
        let ago = Duration::from_millis(now_ms.saturating_sub(served_at_ms).max(0) as u64);
        let now = Instant::now();
        self.confirm_at(surface, now.checked_sub(ago).unwrap_or(self.started));
    }

    /// How often a node asks for a freshly signed answer even when its plan is unchanged: at half the maximum
    /// age, or every minute without one (so the age metric stays meaningful).
    pub fn refresh_every(&self) -> Duration {
        self.max_age.map_or(Duration::from_secs(60), |max| max / 2)
    }

    /// Whether the plan of `surface` should be confirmed again with a freshly signed answer.
    pub fn needs_refresh(&self, surface: &str, now: Instant) -> bool {
        self.age(surface, now) >= self.refresh_every()
    }

    fn confirm_at(&self, surface: &str, at: Instant) {
        self.lock().insert(surface.to_string(), at);
        self.lock_untrusted().remove(surface);
    }

    /// The registry's current plan of `surface` (`revision`) does not verify against the trusted key.
    pub fn untrusted(&self, surface: &str, revision: u64, why: String) {
        self.lock_untrusted()
            .insert(surface.to_string(), (revision, why));
    }

    /// The surfaces whose current plan did not verify, with its revision and why, by surface; a surface leaves the
    /// list when its plan is next confirmed.
    pub fn untrusted_plans(&self) -> Vec<(String, u64, String)> {
        let mut plans: Vec<_> = self
            .lock_untrusted()
            .iter()
            .map(|(surface, (revision, why))| (surface.clone(), *revision, why.clone()))
            .collect();
        plans.sort();
        plans
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

    fn lock_untrusted(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, String)>> {
        self.untrusted.lock().unwrap_or_else(|e| e.into_inner())
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
        let health = PlanHealth::started_at(start, Some(Duration::from_secs(10)));
        assert!(
            health
                .stale(&surfaces, start + Duration::from_secs(10))
                .is_empty()
        );
        let later = start + Duration::from_secs(11);
        assert_eq!(
            health.stale(&surfaces, later),
            vec![
                (surfaces[0].clone(), Duration::from_secs(11)),
                (surfaces[1].clone(), Duration::from_secs(11)),
            ]
        );
        health.confirm_at("home", later);
        let stale = health.stale(&surfaces, later + Duration::from_secs(1));
        assert_eq!(stale, vec![(surfaces[1].clone(), Duration::from_secs(12))]);
        // Without a maximum nothing is ever stale; the age is still kept for the metric.
        let unbounded = PlanHealth::started_at(start, None);
        assert!(unbounded.stale(&surfaces, later).is_empty());
        assert_eq!(unbounded.age("home", later), Duration::from_secs(11));
    }

    #[test]
    fn an_untrusted_plan_is_listed_until_its_surface_is_confirmed() {
        let health = PlanHealth::new(None);
        assert!(health.untrusted_plans().is_empty());
        health.untrusted("search", 4, "bad".into());
        health.untrusted("home", 7, "unsigned".into());
        assert_eq!(
            health.untrusted_plans(),
            vec![
                ("home".to_string(), 7, "unsigned".to_string()),
                ("search".to_string(), 4, "bad".to_string()),
            ]
        );
        health.confirm("home", 1_000, 1_000);
        assert_eq!(
            health.untrusted_plans(),
            vec![("search".to_string(), 4, "bad".to_string())]
        );
    }

    #[test]
    fn a_plan_is_as_fresh_as_the_answer_the_registry_signed() {
        let health = PlanHealth::new(Some(Duration::from_secs(10)));
        assert_eq!(health.refresh_every(), Duration::from_secs(5));
        // Signed 7 s before it was read (replayed, or held in the middle): 7 s old already.
        health.confirm("home", 10_000, 17_000);
        let age = health.age("home", Instant::now());
        assert!(
            age >= Duration::from_secs(7) && age < Duration::from_secs(8),
            "{age:?}"
        );
        assert!(health.needs_refresh("home", Instant::now()));
        // A registry clock ahead of the node's counts as now.
        health.confirm("home", 20_000, 17_000);
        assert!(health.age("home", Instant::now()) < Duration::from_secs(1));
        assert!(!health.needs_refresh("home", Instant::now()));
        assert_eq!(
            PlanHealth::new(None).refresh_every(),
            Duration::from_secs(60)
        );
    }
}
