//! The leave-last-out split: per user a stable sort by time (ties keep file order); the last interaction is the
//! test target, the second-last the validation target, the rest is training history.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use edgerec_core::{ItemId, MetricsAccumulator, RankingMetrics, UserId, target_rank};

use crate::data::Interaction;

/// Users with fewer interactions than this train but are not evaluated (they have no history left to rank from).
pub const MIN_EVALUATED_INTERACTIONS: usize = 3;

/// One user's items (model indices) and their times, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct UserSequence {
    pub user: UserId,
    pub items: Vec<u32>,
    pub timestamps: Vec<i64>,
}

impl UserSequence {
    pub fn is_evaluated(&self) -> bool {
        self.items.len() >= MIN_EVALUATED_INTERACTIONS
    }
}

/// Which held-out target an evaluation ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Second-last interaction, from the history before it.
    Validation,
    /// Last interaction, from everything before it (validation target included).
    Test,
}

impl Stage {
    /// The history and target of `user` at this stage, if the user is evaluated.
    pub fn history_and_target(self, user: &UserSequence) -> Option<(&[u32], u32)> {
        if !user.is_evaluated() {
            return None;
        }
        let cut = user.items.len() - if self == Stage::Validation { 2 } else { 1 };
        Some((&user.items[..cut], user.items[cut]))
    }

    /// What a model may learn from before ranking at this stage: everything before each user's target (all of a
    /// user who is not evaluated).
    pub fn training_items(self, user: &UserSequence) -> &[u32] {
        match self.history_and_target(user) {
            Some((history, _)) => history,
            None => &user.items,
        }
    }
}

/// The split of a whole dataset, with its item vocabulary (model index `i + 1` is `items[i]`).
#[derive(Debug, Clone)]
pub struct Split {
    pub items: Vec<ItemId>,
    pub users: Vec<UserSequence>,
    /// Training targets whose history serving logged: they are learnt from that exact history instead of the one
    /// rebuilt from the sequence.
    pub logged: Vec<LoggedHistory>,
}

/// The history a served request fed the model, for the interaction at `position` of user `user`'s sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedHistory {
    pub user: u32,
    pub position: u32,
    /// Model indices, oldest first.
    pub history: Vec<u32>,
}

impl Split {
    /// Splits interactions given in file order. Items and users are numbered by first appearance.
    pub fn leave_last_out(interactions: &[Interaction]) -> Self {
        let mut item_index: HashMap<&str, u32> = HashMap::new();
        let mut items = Vec::new();
        let mut user_index: HashMap<&str, usize> = HashMap::new();
        let mut per_user: Vec<(UserId, Vec<(i64, u32)>)> = Vec::new();
        for interaction in interactions {
            let item = *item_index
                .entry(interaction.item.as_str())
                .or_insert_with(|| {
                    items.push(interaction.item.clone());
                    items.len() as u32
                });
            let user = *user_index
                .entry(interaction.user.as_str())
                .or_insert_with(|| {
                    per_user.push((interaction.user.clone(), Vec::new()));
                    per_user.len() - 1
                });
            per_user[user].1.push((interaction.timestamp, item));
        }
        let users = per_user
            .into_iter()
            .map(|(user, mut events)| {
                // Stable: equal timestamps keep file order, which decides 42% of ML-1M's last two events.
                events.sort_by_key(|&(timestamp, _)| timestamp);
                let (timestamps, items) = events.into_iter().unzip();
                UserSequence {
                    user,
                    items,
                    timestamps,
                }
            })
            .collect();
        Self {
            items,
            users,
            logged: Vec::new(),
        }
    }

    /// A 64-bit FNV-1a digest of the items, every user's sequence and the logged histories: processes of one
    /// training job compare it to make sure they read the same data.
    pub fn fingerprint(&self) -> u64 {
        let mut hash = Fnv1a::default();
        hash.write(&(self.items.len() as u64).to_le_bytes());
        for item in &self.items {
            hash.write(&(item.len() as u64).to_le_bytes());
            hash.write(item.as_bytes());
        }
        for user in &self.users {
            hash.write(&(user.items.len() as u64).to_le_bytes());
            user.items.iter().for_each(|i| hash.write(&i.to_le_bytes()));
        }
        for logged in &self.logged {
            hash.write(&logged.user.to_le_bytes());
            hash.write(&logged.position.to_le_bytes());
            hash.write(&(logged.history.len() as u64).to_le_bytes());
            logged
                .history
                .iter()
                .for_each(|i| hash.write(&i.to_le_bytes()));
        }
        hash.0
    }

    pub fn evaluated_users(&self) -> usize {
        self.users.iter().filter(|u| u.is_evaluated()).count()
    }

    /// Ranks each evaluated user's target at `stage` among all items the user has not seen, with scores from
    /// `score(history)` (one per model index, padding first).
    pub fn evaluate(&self, stage: Stage, score: impl FnMut(&[u32]) -> Vec<f32>) -> RankingMetrics {
        self.evaluate_shard(stage, 0, 1, score).finish()
    }

    /// [`Split::evaluate`] over shard `shard` of `shards` (every `shards`-th user from the `shard`-th), for
    /// processes that evaluate one shard each and add up their sums.
    pub fn evaluate_shard(
        &self,
        stage: Stage,
        shard: usize,
        shards: usize,
        mut score: impl FnMut(&[u32]) -> Vec<f32>,
    ) -> MetricsAccumulator {
        let mut metrics = MetricsAccumulator::default();
        for user in self.users.iter().skip(shard).step_by(shards.max(1)) {
            if let Some((history, target)) = stage.history_and_target(user) {
                let scores = score(history);
                metrics.add(target_rank(&scores, target, history));
            }
        }
        metrics
    }

    /// Writes `train.tsv`, `valid.tsv` and `test.tsv` (`user`, `item`, `timestamp`) so other tools score on the
    /// same rows. Users who are not evaluated are all training.
    pub fn write_tsv(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let open = |name: &str| -> std::io::Result<std::io::BufWriter<std::fs::File>> {
            let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join(name))?);
            writeln!(file, "user\titem\ttimestamp")?;
            Ok(file)
        };
        let (mut train, mut valid, mut test) =
            (open("train.tsv")?, open("valid.tsv")?, open("test.tsv")?);
        for user in &self.users {
            let n = user.items.len();
            let held_out = if user.is_evaluated() { 2 } else { 0 };
            for (position, (&item, &timestamp)) in
                user.items.iter().zip(&user.timestamps).enumerate()
            {
                let out = match n - position {
                    left if left > held_out => &mut train,
                    2 => &mut valid,
                    _ => &mut test,
                };
                writeln!(
                    out,
                    "{}\t{}\t{timestamp}",
                    user.user,
                    self.items[item as usize - 1]
                )?;
            }
        }
        for mut file in [train, valid, test] {
            file.flush()?;
        }
        Ok(())
    }
}

/// 64-bit FNV-1a: a digest processes compare, not a defence against anyone.
pub(crate) struct Fnv1a(pub u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    pub fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(rows: &[(&str, &str, i64)]) -> Vec<Interaction> {
        rows.iter()
            .map(|&(user, item, timestamp)| Interaction::from_good_ids(user, item, timestamp))
            .collect()
    }

    #[test]
    fn sorts_by_time_keeping_file_order_on_ties() {
        let split = Split::leave_last_out(&events(&[
            ("u", "c", 30),
            ("u", "a", 10),
            ("v", "a", 5),
            ("u", "d", 30),
            ("u", "b", 20),
        ]));
        assert_eq!(split.items, ["c", "a", "d", "b"]);
        let u = &split.users[0];
        // a(10) b(20) c(30) d(30): c before d because it came first in the file.
        assert_eq!(u.items, [2, 4, 1, 3]);
        assert_eq!(
            Stage::Validation.history_and_target(u),
            Some((&[2u32, 4][..], 1))
        );
        assert_eq!(
            Stage::Test.history_and_target(u),
            Some((&[2u32, 4, 1][..], 3))
        );
        assert_eq!(
            Stage::Test.history_and_target(&split.users[1]),
            None,
            "one interaction: not evaluated"
        );
        assert_eq!(Stage::Test.training_items(&split.users[1]), [2]);
        assert_eq!(split.evaluated_users(), 1);
    }

    #[test]
    fn evaluation_masks_the_history_and_ranks_the_target() {
        let split = Split::leave_last_out(&events(&[
            ("u", "a", 1),
            ("u", "b", 2),
            ("u", "c", 3),
            ("u", "d", 4),
        ]));
        // Scores favour a and b, which the user has seen at the test stage: the target d ranks first after c.
        let m = split.evaluate(Stage::Test, |history| {
            assert_eq!(history, [1, 2, 3]);
            vec![0.0, 0.9, 0.8, 0.1, 0.5]
        });
        assert_eq!((m.users, m.mrr), (1, 1.0));
        let m = split.evaluate(Stage::Validation, |_| vec![0.0, 0.9, 0.8, 0.1, 0.5]);
        // Target c (0.1) is behind d (0.5): rank 1.
        assert_eq!(m.mrr, 0.5);
    }

    #[test]
    fn writes_the_split_rows() {
        let split = Split::leave_last_out(&events(&[
            ("u", "a", 1),
            ("u", "b", 2),
            ("u", "c", 3),
            ("v", "a", 9),
        ]));
        let dir = tempfile::tempdir().expect("temp dir");
        split.write_tsv(dir.path()).expect("writes");
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect("written");
        assert_eq!(
            read("train.tsv"),
            "user\titem\ttimestamp\nu\ta\t1\nv\ta\t9\n"
        );
        assert_eq!(read("valid.tsv"), "user\titem\ttimestamp\nu\tb\t2\n");
        assert_eq!(read("test.tsv"), "user\titem\ttimestamp\nu\tc\t3\n");
    }
}
