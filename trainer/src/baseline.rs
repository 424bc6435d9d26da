//! Reference rankers that check the evaluation protocol against published figures and that the model must beat:
//! item popularity, a count of what followed the user's last items, item-based nearest neighbours and EASE.

mod ease;

use std::collections::HashMap;

pub use ease::{EASE_LAMBDA, EASE_MAX_ITEMS, Ease, EaseError};

use edgerec_core::RankingMetrics;

use crate::split::{Split, Stage};

/// The reference rankers, as `edgerec eval --baseline` and the trainer's report name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reference {
    Popularity,
    Transitions,
    ItemKnn,
    Ease,
}

impl Reference {
    pub const ALL: [Reference; 4] = [
        Reference::Popularity,
        Reference::Transitions,
        Reference::ItemKnn,
        Reference::Ease,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reference::Popularity => "popularity",
            Reference::Transitions => "transitions",
            Reference::ItemKnn => "item-knn",
            Reference::Ease => "ease",
        }
    }

    /// Fits on the training part of `stage` and ranks its targets.
    pub fn evaluate(self, split: &Split, stage: Stage) -> Result<RankingMetrics, EaseError> {
        Ok(match self {
            Reference::Popularity => {
                let scores = popularity(split, stage);
                split.evaluate(stage, |_| scores.clone())
            }
            Reference::Transitions => {
                let ranker = Transitions::fit(split, stage);
                split.evaluate(stage, |history| ranker.score(history))
            }
            Reference::ItemKnn => {
                let ranker = ItemKnn::fit(split, stage);
                split.evaluate(stage, |history| ranker.score(history))
            }
            Reference::Ease => {
                let ranker = Ease::fit(split, stage, EASE_LAMBDA)?;
                split.evaluate(stage, |history| ranker.score(history))
            }
        })
    }
}

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

/// Popularity scaled to at most 1e-6: added to a ranker's scores, it orders only the items the ranker scores
/// alike. (The smallest weighted share of [`Transitions`], 1 / (5 x successors of one item), stays far above it on
/// our catalogues.)
pub(crate) fn tie_break(split: &Split, stage: Stage) -> Vec<f32> {
    let popularity = popularity(split, stage);
    let max = popularity.iter().copied().fold(0.0, f32::max) + 1.0;
    popularity.iter().map(|p| 1e-6 * p / max).collect()
}

/// The distinct items of `history`: the order-free rankers count each once.
pub(crate) fn distinct(history: &[u32]) -> Vec<u32> {
    let mut items = history.to_vec();
    items.sort_unstable();
    items.dedup();
    items
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
        Self {
            followers,
            tie_break: tie_break(split, stage),
        }
    }

    /// The items that followed `item` in the training sequences, each with its share of `item`'s successors.
    pub fn shares(&self, item: u32) -> Vec<(u32, f32)> {
        let followers = &self.followers[item as usize];
        let total: u32 = followers.values().sum();
        followers
            .iter()
            .map(|(&next, &count)| (next, count as f32 / total as f32))
            .collect()
    }

    pub fn score(&self, history: &[u32]) -> Vec<f32> {
        let mut scores = self.tie_break.clone();
        // Oldest first, in the arithmetic of the exported transitions term (`blend`), which ranks as this does.
        let recent = &history[history.len().saturating_sub(TRANSITION_WINDOW)..];
        for (position, &item) in recent.iter().enumerate() {
            let weight = 1.0 / (recent.len() - position) as f32;
            for (next, share) in self.shares(item) {
                scores[next as usize] += share * weight;
            }
        }
        scores
    }
}

/// Neighbours kept per item by [`ItemKnn`]: the usual size in published comparisons, not tuned per data set.
pub const KNN_NEIGHBOURS: usize = 100;

/// Item-based nearest neighbours: two items are similar by the cosine of the sets of users who interacted with
/// them (in the stage's training part); a user's score for an item is the sum of its similarities to every item
/// of the user's history, over each history item's [`KNN_NEIGHBOURS`] nearest. Order in the history plays no part,
/// so on data without sequential structure this is the baseline to beat.
#[derive(Debug, Clone)]
pub struct ItemKnn {
    /// Per item: its nearest neighbours and their similarity.
    neighbours: Vec<Vec<(u32, f32)>>,
    tie_break: Vec<f32>,
}

impl ItemKnn {
    pub fn fit(split: &Split, stage: Stage) -> Self {
        let n = split.items.len() + 1;
        // Each user's distinct items, and per item the users who had it.
        let histories: Vec<Vec<u32>> = split
            .users
            .iter()
            .map(|user| distinct(stage.training_items(user)))
            .collect();
        let mut users_of = vec![Vec::new(); n];
        for (u, items) in histories.iter().enumerate() {
            for &item in items {
                users_of[item as usize].push(u as u32);
            }
        }
        let norm: Vec<f32> = users_of.iter().map(|u| (u.len() as f32).sqrt()).collect();
        // One row of co-occurrence counts at a time: memory stays O(items), not O(items²).
        let mut row = vec![0u32; n];
        let mut touched = Vec::new();
        let neighbours = (0..n)
            .map(|a| {
                for &u in &users_of[a] {
                    for &b in &histories[u as usize] {
                        if b as usize != a {
                            if row[b as usize] == 0 {
                                touched.push(b);
                            }
                            row[b as usize] += 1;
                        }
                    }
                }
                let mut similar: Vec<(u32, f32)> = touched
                    .drain(..)
                    .map(|b| {
                        let together = std::mem::take(&mut row[b as usize]) as f32;
                        (b, together / (norm[a] * norm[b as usize]))
                    })
                    .collect();
                if similar.len() > KNN_NEIGHBOURS {
                    similar.select_nth_unstable_by(KNN_NEIGHBOURS - 1, |x, y| {
                        y.1.total_cmp(&x.1).then(x.0.cmp(&y.0))
                    });
                    similar.truncate(KNN_NEIGHBOURS);
                }
                similar
            })
            .collect();
        Self {
            neighbours,
            tie_break: tie_break(split, stage),
        }
    }

    /// The nearest neighbours of `item` and their similarity.
    pub fn neighbours(&self, item: u32) -> &[(u32, f32)] {
        &self.neighbours[item as usize]
    }

    pub fn score(&self, history: &[u32]) -> Vec<f32> {
        let mut scores = self.tie_break.clone();
        for item in distinct(history) {
            for &(next, similarity) in &self.neighbours[item as usize] {
                scores[next as usize] += similarity;
            }
        }
        scores
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Interaction;

    fn interaction(user: usize, item: usize, step: usize) -> Interaction {
        Interaction::from_good_ids(&format!("u{user}"), &format!("i{item}"), step as i64)
    }

    /// Every user walks the same cycle of items, starting somewhere: what follows the last item is always known.
    #[test]
    fn transitions_learn_a_planted_sequence_and_popularity_does_not() {
        let items = 30;
        let mut log = Vec::new();
        for user in 0..60 {
            for step in 0..12 {
                log.push(interaction(user, (user * 7 + step) % items, step));
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

    /// Users each like one of three groups of items, in any order: what goes together is known, what comes next
    /// is not.
    #[test]
    fn item_knn_finds_what_goes_together_where_order_says_nothing() {
        let (groups, per_group) = (3, 15);
        let mut log = Vec::new();
        let mut state = 17u64;
        for user in 0..90 {
            let group = user % groups;
            let mut items: Vec<usize> = (0..per_group).map(|i| group * per_group + i).collect();
            // A shuffled order of 10 of the group's items, so transitions carry no signal.
            for i in (1..items.len()).rev() {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                items.swap(i, (state >> 33) as usize % (i + 1));
            }
            for (step, item) in items.iter().take(10).enumerate() {
                log.push(interaction(user, *item, step));
            }
        }
        let split = Split::leave_last_out(&log);
        let knn = ItemKnn::fit(&split, Stage::Test);
        let m_knn = split.evaluate(Stage::Test, |history| knn.score(history));
        assert!(
            m_knn.hr_at_10 > 0.9,
            "the target is one of the group's 5 unseen items: {m_knn:?}"
        );
        let pop = popularity(&split, Stage::Test);
        let m_pop = split.evaluate(Stage::Test, |_| pop.clone());
        assert!(
            m_pop.hr_at_10 < 0.5,
            "popularity cannot tell the groups apart: {m_pop:?}"
        );
        // EASE learns the same groups (a small penalty: this catalogue has 45 items and 90 users).
        let ease = Ease::fit(&split, Stage::Test, 10.0).expect("fits");
        let m_ease = split.evaluate(Stage::Test, |history| ease.score(history));
        assert!(m_ease.hr_at_10 > 0.9, "EASE: {m_ease:?}");
    }
}
