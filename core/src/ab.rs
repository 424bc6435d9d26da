//! A/B assignment: which variant of a deployment plan a user gets.
//!
//! The bucket depends only on the plan's salt and the user id, so every node, every restart and the offline
//! report agree on it without sharing state; a new salt reshuffles everyone.

use sha2::{Digest as _, Sha256};

/// Number of buckets; plan weights are percentages, so each bucket is one percent of users.
pub const BUCKETS: u32 = 100;

/// The bucket (0–99) of `user` under `salt`.
pub fn bucket(salt: &str, user: &str) -> u32 {
    let mut hasher = Sha256::new();
    // Length-prefixed so that ("ab", "c") and ("a", "bc") hash differently.
    hasher.update((salt.len() as u64).to_le_bytes());
    hasher.update(salt.as_bytes());
    hasher.update(user.as_bytes());
    let digest = hasher.finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    (u64::from_le_bytes(head) % u64::from(BUCKETS)) as u32
}

/// The index of the variant `user` is assigned to, given each variant's weight in percent (summing to 100), or
/// `None` when the weights cover no bucket. Variants own consecutive ranges of buckets in plan order.
pub fn assign(salt: &str, user: &str, weights: impl IntoIterator<Item = u32>) -> Option<usize> {
    let bucket = bucket(salt, user);
    let mut upper = 0u32;
    for (index, weight) in weights.into_iter().enumerate() {
        upper = upper.saturating_add(weight);
        if bucket < upper {
            return Some(index);
        }
    }
    None
}

/// Where a user goes when some of a plan's variants may not serve (their version was revoked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    /// The variant the plan assigns (as [`assign`]).
    pub own: usize,
    /// The variant that serves: `own` when it may, else one of those that may, chosen by a second bucket (under
    /// the salt followed by `/reassigned`) over their weights, evenly when those are all zero; `None` when no
    /// variant may serve.
    pub serving: Option<usize>,
}

/// [`assign`], with `serving[i]` saying whether variant `i` may serve: users of a variant that may keep it, and
/// those of one that may not are spread over the others by weight, the same way on every node and browser.
/// `None` when the weights cover no bucket.
pub fn assign_serving(
    salt: &str,
    user: &str,
    weights: &[u32],
    serving: &[bool],
) -> Option<Assignment> {
    let own = assign(salt, user, weights.iter().copied())?;
    let may = |index: usize| serving.get(index).copied().unwrap_or(false);
    if may(own) {
        return Some(Assignment {
            own,
            serving: Some(own),
        });
    }
    let candidates: Vec<usize> = (0..weights.len()).filter(|&i| may(i)).collect();
    let total: u64 = candidates.iter().map(|&i| u64::from(weights[i])).sum();
    let share = |index: usize| {
        if total == 0 {
            1
        } else {
            u64::from(weights[index])
        }
    };
    let spread: u64 = candidates.iter().map(|&i| share(i)).sum();
    let point =
        u64::from(bucket(&format!("{salt}/reassigned"), user)) * spread / u64::from(BUCKETS);
    let mut upper = 0;
    let serving = candidates.into_iter().find(|&index| {
        upper += share(index);
        point < upper
    });
    Some(Assignment { own, serving })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_are_pinned() {
        // Golden values: a change here moves users between variants on every deployed node.
        let pinned: Vec<u32> = ["u1", "u2", "u3", "u4"]
            .iter()
            .map(|u| bucket("s", u))
            .collect();
        assert_eq!(pinned, [17, 59, 38, 89]);
    }

    #[test]
    fn weights_route_every_bucket() {
        assert_eq!(assign("s", "u", [100]), Some(0));
        assert_eq!(assign("s", "u", [0, 100]), Some(1));
        assert_eq!(assign("s", "u", []), None);
        assert_eq!(assign("s", "u", [0]), None);
    }

    #[test]
    fn split_is_balanced() {
        let users = 20_000;
        let mut counts = [0usize; 3];
        for u in 0..users {
            let index = assign("plan-7", &format!("user-{u}"), [50, 30, 20]).expect("assigned");
            counts[index] += 1;
        }
        // Binomial standard deviation at 20,000 users is under 0.4 points: 2 points is beyond chance.
        for (count, weight) in counts.iter().zip([50.0, 30.0, 20.0]) {
            let share = 100.0 * *count as f64 / users as f64;
            assert!((share - weight).abs() < 2.0, "{counts:?}");
        }
    }

    proptest! {
        #[test]
        fn assignment_is_stable_and_respects_zero_weights(
            salt in "[a-z0-9]{0,12}",
            user in "[a-zA-Z0-9_#-]{1,40}",
            first in 0u32..=100,
        ) {
            let weights = [first, 100 - first];
            let index = assign(&salt, &user, weights).expect("weights sum to 100");
            prop_assert_eq!(Some(index), assign(&salt, &user, weights));
            prop_assert!(weights[index] > 0);
            prop_assert_eq!(index == 0, bucket(&salt, &user) < first);
        }
    }

    #[test]
    fn a_variant_that_may_not_serve_sends_its_users_to_the_others_by_weight() {
        let weights = [50, 30, 20];
        let mut counts = [0usize; 3];
        let users = 20_000;
        for u in 0..users {
            let user = format!("user-{u}");
            let all = assign_serving("s", &user, &weights, &[true; 3]).expect("assigned");
            let own = assign("s", &user, weights).expect("assigned");
            assert_eq!(
                all,
                Assignment {
                    own,
                    serving: Some(own)
                }
            );
            let without_first =
                assign_serving("s", &user, &weights, &[false, true, true]).expect("assigned");
            assert_eq!(without_first.own, own);
            let serving = without_first.serving.expect("two variants serve");
            // Users of a variant that serves keep it; the first's go 60/40 to the others.
            if own != 0 {
                assert_eq!(serving, own);
            }
            counts[serving] += 1;
        }
        assert_eq!(counts[0], 0);
        let share = 100.0 * counts[1] as f64 / users as f64;
        assert!((share - 60.0).abs() < 2.0, "{counts:?}");
        // None may serve: no variant; only zero weights left: spread evenly over them.
        let none = assign_serving("s", "u", &[100], &[false]).expect("assigned");
        assert_eq!(
            none,
            Assignment {
                own: 0,
                serving: None
            }
        );
        let mut zero_weighted = [0usize; 3];
        for u in 0..3_000 {
            let assigned =
                assign_serving("s", &format!("u{u}"), &[100, 0, 0], &[false, true, true])
                    .expect("assigned");
            zero_weighted[assigned.serving.expect("two serve")] += 1;
        }
        assert!(
            zero_weighted[1] > 1_300 && zero_weighted[2] > 1_300,
            "{zero_weighted:?}"
        );
        assert_eq!(assign_serving("s", "u", &[], &[]), None);
    }
}
