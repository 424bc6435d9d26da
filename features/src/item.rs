//! An item's cold features: catalogue metadata and popularity that halves every half-life.

use serde::{Deserialize, Serialize};

/// The default popularity half-life: a week.
pub const DEFAULT_HALF_LIFE_MS: i64 = 7 * 24 * 3600 * 1000;

/// A decayed count of interactions: `score` as of `at_ms`. Adding is commutative, so events applied late or out of
/// order give the same popularity.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Popularity {
    pub score: f64,
    pub at_ms: i64,
}

fn decay(elapsed_ms: i64, half_life_ms: i64) -> f64 {
    0.5f64.powf(elapsed_ms as f64 / half_life_ms as f64)
}

impl Popularity {
    /// Adds an interaction of `weight` at `time_ms`.
    pub fn add(&mut self, weight: f64, time_ms: i64, half_life_ms: i64) {
        if self.score == 0.0 || time_ms >= self.at_ms {
            self.score = self.score * decay(time_ms - self.at_ms, half_life_ms) + weight;
            self.at_ms = time_ms;
        } else {
            self.score += weight * decay(self.at_ms - time_ms, half_life_ms);
        }
    }

    /// The score as of `now_ms`.
    pub fn at(&self, now_ms: i64, half_life_ms: i64) -> f64 {
        self.score * decay((now_ms - self.at_ms).max(0), half_life_ms)
    }
}

/// What the catalogue says of an item.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ItemMetadata {
    pub title: String,
    pub genres: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ItemFeatures {
    /// Absent until a catalogue refresh names the item.
    pub metadata: Option<ItemMetadata>,
    pub popularity: Popularity,
    pub interactions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn popularity_halves_every_half_life_and_ignores_arrival_order() {
        let day = 24 * 3600 * 1000;
        let mut p = Popularity::default();
        p.add(1.0, 10 * day, DEFAULT_HALF_LIFE_MS);
        assert!((p.at(17 * day, DEFAULT_HALF_LIFE_MS) - 0.5).abs() < 1e-12);

        let times = [3 * day, day, 9 * day, 2 * day];
        let mut forward = Popularity::default();
        let mut backward = Popularity::default();
        for &t in &times {
            forward.add(1.0, t, DEFAULT_HALF_LIFE_MS);
        }
        for &t in times.iter().rev() {
            backward.add(1.0, t, DEFAULT_HALF_LIFE_MS);
        }
        let now = 20 * day;
        let expected: f64 = times
            .iter()
            .map(|&t| 0.5f64.powf((now - t) as f64 / DEFAULT_HALF_LIFE_MS as f64))
            .sum();
        assert!((forward.at(now, DEFAULT_HALF_LIFE_MS) - expected).abs() < 1e-9);
        assert!((backward.at(now, DEFAULT_HALF_LIFE_MS) - expected).abs() < 1e-9);
    }
}
