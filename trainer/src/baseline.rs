//! Reference rankers that check the evaluation protocol against published figures: item popularity, and a count
//! of what followed the user's last items.

use std::collections::HashMap;

use crate::split::{Split, Stage};

/// How many of the user's most recent items the transition baseline looks at.
pub const TRANSITION_WINDOW: usize = 5;

/// Scores every item by how often it was interacted with before the stage's targets.
pub fn popularity(split: &Split, stage: Stage) -> Vec<f32> {
    let mut counts = vec![0f32; split.items.len() + 1];
    for user in &split.users {
        for &item in stage.training_items(user) {
            counts[item as usize] += 1.0;
        }
    }
    counts
}

/// "What followed the last items": for each of the user's last [`TRANSITION_WINDOW`] items `a`, item `b` gains the
/// share of `a`'s successors in the training sequences that were `b`, weighted 1, 1/2, 1/3, ... from the most
/// recent item back; popularity, scaled far below any such share, breaks ties. (Plain unweighted counts reach
/// HR@10 0.208 on ML-1M, this 0.248: docs/benchmarks.md.)
#[derive(Debug, Clone)]
pub struct Transitions {
    followers: Vec<HashMap<u32, u32>>,
    tie_break: Vec<f32>,
}

impl Transitions {
    pub fn fit(split: &Split, stage: Stage) -> Self {
        let mut followers = vec![HashMap::new(); split.items.len() + 1];
        for user in &split.users {
            for pair in stage.training_items(user).windows(2) {
                *followers[pair[0] as usize].entry(pair[1]).or_insert(0) += 1;
            }
        }
        let popularity = popularity(split, stage);
        // The smallest weighted share, 1 / (5 x successors of one item), stays far above 1e-6 on our catalogues.
        let max = popularity.iter().copied().fold(0.0, f32::max) + 1.0;
        Self {
            followers,
            tie_break: popularity.iter().map(|p| 1e-6 * p / max).collect(),
        }
    }

    pub fn score(&self, history: &[u32]) -> Vec<f32> {
        let mut scores = self.tie_break.clone();
        for (age, &item) in history.iter().rev().take(TRANSITION_WINDOW).enumerate() {
            let followers = &self.followers[item as usize];
            let total: u32 = followers.values().sum();
            let weight = 1.0 / ((age + 1) as f32 * total.max(1) as f32);
            for (&next, &count) in followers {
                scores[next as usize] += weight * count as f32;
            }
        }
        scores
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Interaction;

    /// Every user walks the same cycle of items, starting somewhere: what follows the last item is always known.
    #[test]
    fn transitions_learn_a_planted_sequence_and_popularity_does_not() {
        let items = 30;
        let mut log = Vec::new();
        for user in 0..60 {
            for step in 0..12 {
                let item = (user * 7 + step) % items;
                log.push(Interaction {
                    user: format!("u{user}"),
                    item: format!("i{item}"),
                    timestamp: step as i64,
                    value: None,
                });
            }
        }
        let split = Split::leave_last_out(&log);
        let transitions = Transitions::fit(&split, Stage::Test);
        let m = split.evaluate(Stage::Test, |history| transitions.score(history));
        assert_eq!((m.users, m.hr_at_10, m.mrr), (60, 1.0, 1.0));
        let pop = popularity(&split, Stage::Test);
        let m = split.evaluate(Stage::Test, |_| pop.clone());
        assert!(m.mrr < 0.5, "popularity cannot know what comes next: {m:?}");
    }
}
