//! Offline ranking metrics of the leave-last-out protocol: one held-out target per user, ranked among every item
//! the user has not seen.

use serde::{Deserialize, Serialize};

/// The 0-based rank of `target` among the eligible model indices: how many eligible items score higher, or score
/// the same with a lower index (the tie order the ranker serves). Index 0 (padding) and `masked` indices are not
/// eligible; the target itself always is.
pub fn target_rank(scores: &[f32], target: u32, masked: &[u32]) -> usize {
    let target_score = scores[target as usize];
    let ahead = |index: usize, score: f32| {
        score > target_score || (score == target_score && index < target as usize)
    };
    let mut rank = scores
        .iter()
        .enumerate()
        .skip(1)
        .filter(|&(index, &score)| index != target as usize && ahead(index, score))
        .count();
    let mut masked = masked.to_vec();
    masked.sort_unstable();
    masked.dedup();
    for &index in &masked {
        let i = index as usize;
        if index != 0 && index != target && i < scores.len() && ahead(i, scores[i]) {
            rank -= 1;
        }
    }
    rank
}

/// HR@10, NDCG@10, Recall@20 and MRR averaged over users (one target each).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RankingMetrics {
    #[serde(rename = "hr@10")]
    pub hr_at_10: f64,
    #[serde(rename = "ndcg@10")]
    pub ndcg_at_10: f64,
    #[serde(rename = "recall@20")]
    pub recall_at_20: f64,
    pub mrr: f64,
    pub users: usize,
}

/// Sums per-user contributions; [`MetricsAccumulator::finish`] averages them.
#[derive(Debug, Clone, Default)]
pub struct MetricsAccumulator {
    sum: RankingMetrics,
}

impl MetricsAccumulator {
    /// Adds one user whose target came at 0-based `rank`.
    pub fn add(&mut self, rank: usize) {
        let s = &mut self.sum;
        s.users += 1;
        if rank < 10 {
            s.hr_at_10 += 1.0;
            s.ndcg_at_10 += 1.0 / ((rank + 2) as f64).log2();
        }
        if rank < 20 {
            s.recall_at_20 += 1.0;
        }
        s.mrr += 1.0 / (rank + 1) as f64;
    }

    /// Merges another accumulator (for example from another worker).
    pub fn merge(&mut self, other: &MetricsAccumulator) {
        let (s, o) = (&mut self.sum, &other.sum);
        s.users += o.users;
        s.hr_at_10 += o.hr_at_10;
        s.ndcg_at_10 += o.ndcg_at_10;
        s.recall_at_20 += o.recall_at_20;
        s.mrr += o.mrr;
    }

    /// The sums, as numbers another process can add to its own: HR@10, NDCG@10, Recall@20, MRR, users.
    pub fn sums(&self) -> [f64; 5] {
        let s = &self.sum;
        [
            s.hr_at_10,
            s.ndcg_at_10,
            s.recall_at_20,
            s.mrr,
            s.users as f64,
        ]
    }

    /// The accumulator of [`MetricsAccumulator::sums`] (added up over processes).
    pub fn from_sums([hr_at_10, ndcg_at_10, recall_at_20, mrr, users]: [f64; 5]) -> Self {
        Self {
            sum: RankingMetrics {
                hr_at_10,
                ndcg_at_10,
                recall_at_20,
                mrr,
                users: users as usize,
            },
        }
    }

    pub fn finish(&self) -> RankingMetrics {
        let s = &self.sum;
        if s.users == 0 {
            return RankingMetrics::default();
        }
        let n = s.users as f64;
        RankingMetrics {
            hr_at_10: s.hr_at_10 / n,
            ndcg_at_10: s.ndcg_at_10 / n,
            recall_at_20: s.recall_at_20 / n,
            mrr: s.mrr / n,
            users: s.users,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_skips_padding_and_masked_items_and_breaks_ties_by_index() {
        //            pad   1    2    3    4    5    6
        let scores = [9.0, 0.5, 0.9, 0.7, 0.7, 0.1, 0.8];
        // Item 4 (0.7): ahead are 2 (0.9), 6 (0.8) and 3 (0.7, lower index); padding never counts.
        assert_eq!(target_rank(&scores, 4, &[]), 3);
        // Masking 2 and 6 (seen) leaves only 3 ahead; masking the target itself changes nothing.
        assert_eq!(target_rank(&scores, 4, &[2, 6, 6, 4, 0]), 1);
        assert_eq!(target_rank(&scores, 2, &[]), 0);
        assert_eq!(target_rank(&scores, 5, &[1]), 4);
    }

    /// Hand-computed: ranks 0, 3, 12 and 25 for four users.
    /// HR@10 = 2/4; NDCG@10 = (1/log2(2) + 1/log2(5)) / 4 = (1 + 0.430677) / 4;
    /// Recall@20 = 3/4; MRR = (1 + 1/4 + 1/13 + 1/26) / 4.
    #[test]
    fn metrics_match_hand_computed_values() {
        let mut acc = MetricsAccumulator::default();
        for rank in [0, 3, 12, 25] {
            acc.add(rank);
        }
        let m = acc.finish();
        assert_eq!(m.users, 4);
        assert!((m.hr_at_10 - 0.5).abs() < 1e-12);
        assert!((m.ndcg_at_10 - 1.430_676_558_073_393 / 4.0).abs() < 1e-12);
        assert!((m.recall_at_20 - 0.75).abs() < 1e-12);
        assert!((m.mrr - (1.0 + 0.25 + 1.0 / 13.0 + 1.0 / 26.0) / 4.0).abs() < 1e-12);
    }

    #[test]
    fn merging_equals_adding_everything_to_one() {
        let ranks = [0usize, 5, 11, 40, 2];
        let (mut even, mut odd, mut all) = (
            MetricsAccumulator::default(),
            MetricsAccumulator::default(),
            MetricsAccumulator::default(),
        );
        for (i, &rank) in ranks.iter().enumerate() {
            if i % 2 == 0 {
                even.add(rank)
            } else {
                odd.add(rank)
            }
            all.add(rank);
        }
        even.merge(&odd);
        let (merged, all) = (even.finish(), all.finish());
        assert_eq!(merged.users, all.users);
        for (a, b) in [
            (merged.hr_at_10, all.hr_at_10),
            (merged.ndcg_at_10, all.ndcg_at_10),
            (merged.recall_at_20, all.recall_at_20),
            (merged.mrr, all.mrr),
        ] {
            assert!((a - b).abs() < 1e-12, "{a} != {b}");
        }
        assert_eq!(MetricsAccumulator::default().finish().users, 0);
    }
}
