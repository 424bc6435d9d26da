//! What a step trains on: training windows cut from the split, batches of them encoded by the feature
//! specification exactly as serving encodes a history, the seeded shuffle, sampled negatives and dropout masks.
//! Everything random derives from the seed and the epoch or step number, so a resumed run draws what the
//! uninterrupted one would have.

use std::collections::{BTreeMap, HashSet};

use edgerec_core::{FeatureSpec, TensorData};

use super::{TrainConfig, TrainError};
use crate::rng::SplitMix;
use crate::split::{LoggedHistory, Split, Stage};
use crate::stepper::Batch;

/// A training window: up to `max_len` consecutive items of one user and the item after each, or one logged
/// history and the item that followed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Window {
    Sequence { user: u32, start: u32, end: u32 },
    Logged(u32),
}

/// Cuts each user's training items (everything before the validation target) into windows of `max_len`
/// predictions, newest first, so every training interaction is a target exactly once per epoch: in a sequence
/// window, or, when serving logged its history, in a window of that history alone.
pub(super) fn windows(split: &Split, max_len: usize) -> Vec<Window> {
    let mut windows = Vec::new();
    for (user, sequence) in split.users.iter().enumerate() {
        let items = Stage::Validation.training_items(sequence);
        // Histories end at index `end` (exclusive); the target of the last one is `items[end]`.
        let mut end = items.len().saturating_sub(1);
        while end > 0 {
            let start = end.saturating_sub(max_len);
            windows.push(Window::Sequence {
                user: user as u32,
                start: start as u32,
                end: end as u32,
            });
            end = start;
        }
    }
    for (i, logged) in split.logged.iter().enumerate() {
        if is_logged_training_target(split, logged) {
            windows.push(Window::Logged(i as u32));
        }
    }
    windows
}

/// The (user, position) of every target learnt from a logged history, which sequence windows leave out.
pub(super) fn logged_targets(split: &Split) -> HashSet<(u32, u32)> {
    split
        .logged
        .iter()
        .filter(|l| is_logged_training_target(split, l))
        .map(|l| (l.user, l.position))
        .collect()
}

/// Whether a logged history's target is a training interaction (not a held-out one) with a history to learn from.
fn is_logged_training_target(split: &Split, logged: &LoggedHistory) -> bool {
    let Some(sequence) = split.users.get(logged.user as usize) else {
        return false;
    };
    let training = Stage::Validation.training_items(sequence).len();
    logged.position > 0 && (logged.position as usize) < training && !logged.history.is_empty()
}

/// Lays out the windows `chunk` (indices into `windows`) as a batch of `batch_size` rows; missing rows are
/// padding with weight 0. Histories are encoded by the feature specification, as serving encodes them.
pub(super) fn make_batch(
    split: &Split,
    spec: &FeatureSpec,
    windows: &[Window],
    logged_targets: &HashSet<(u32, u32)>,
    chunk: &[usize],
    batch_size: usize,
) -> Result<Batch, TrainError> {
    let len = spec.sequence.max_len;
    let mut inputs: Vec<(String, Vec<i64>)> = std::iter::once(spec.sequence.input.clone())
        .chain(spec.item_features.iter().map(|f| f.input.clone()))
        .map(|name| (name, vec![0; batch_size * len]))
        .collect();
    let mut targets = vec![0i64; batch_size * len];
    for (row, &w) in chunk.iter().enumerate() {
        let (history, row_targets): (&[u32], Vec<i64>) = match windows[w] {
            Window::Sequence { user, start, end } => {
                let items = &split.users[user as usize].items;
                let (start, end) = (start as usize, end as usize);
                // A target whose logged history has a window of its own is not learnt twice.
                let targets = (start + 1..=end)
                    .map(|p| {
                        if logged_targets.contains(&(user, p as u32)) {
                            0
                        } else {
                            i64::from(items[p])
                        }
                    })
                    .collect();
                (&items[start..end], targets)
            }
            Window::Logged(i) => {
                let logged = &split.logged[i as usize];
                let history = &logged.history[logged.history.len().saturating_sub(len)..];
                let target = split.users[logged.user as usize].items[logged.position as usize];
                let mut targets = vec![0; history.len()];
                if let Some(last) = targets.last_mut() {
                    *last = i64::from(target);
                }
                (history, targets)
            }
        };
        let encoded = spec
            .encode(history, &BTreeMap::new())
            .map_err(|e| TrainError::Config(format!("encoding a training history: {e}")))?;
        for ((_, rows), tensor) in inputs.iter_mut().zip(&encoded) {
            let TensorData::I64(values) = &tensor.data else {
                return Err(TrainError::Config(format!(
                    "input `{}` is not int64",
                    tensor.name
                )));
            };
            rows[row * len..(row + 1) * len].copy_from_slice(values);
        }
        let pad = len - history.len();
        targets[row * len + pad..(row + 1) * len].copy_from_slice(&row_targets);
    }
    let count = targets.iter().filter(|&&t| t > 0).count().max(1);
    let weights = targets
        .iter()
        .map(|&t| if t > 0 { 1.0 / count as f32 } else { 0.0 })
        .collect();
    Ok(Batch {
        inputs,
        targets,
        weights,
        negatives: vec![],
    })
}

/// A permutation of `0..n` for `epoch`.
pub(super) fn shuffled(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = SplitMix::new(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

/// Uniformly drawn negative item indices for `step` (padding excluded).
pub(super) fn negatives(config: &TrainConfig, num_items: usize, step: u64) -> Vec<i64> {
    let mut rng = SplitMix::new(config.seed ^ step.wrapping_mul(0xA24B_AED4_963E_E407));
    (0..config.sampled_negatives)
        .map(|_| 1 + rng.below(num_items - 1) as i64)
        .collect()
}

/// Fills the inverted-dropout mask of `site` at `step` from element `first` of the whole batch's mask on: each
/// element is kept with probability `1 - p` and scaled by `1 / (1 - p)`. A process's shard of rows gets exactly
/// those rows of the one-process mask.
pub(super) fn fill_dropout_mask(
    config: &TrainConfig,
    site: usize,
    step: u64,
    first: usize,
    mask: &mut [f32],
) {
    let keep = 1.0 - config.dropout;
    let scale = 1.0 / keep;
    // Compare 32-bit draws with a threshold: two mask elements per random word.
    let threshold = (f64::from(keep) * f64::from(u32::MAX)) as u32;
    let mut rng =
        SplitMix::new(config.seed ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ (site as u64) << 56);
    rng.skip((first / 2) as u64);
    let value = |draw: u32| if draw < threshold { scale } else { 0.0 };
    // A shard starting at an odd element takes the high half of its first word alone.
    let rest = match (first % 2, mask.split_first_mut()) {
        (1, Some((head, rest))) => {
            *head = value((rng.next_u64() >> 32) as u32);
            rest
        }
        _ => mask,
    };
    let mut pairs = rest.chunks_exact_mut(2);
    for pair in &mut pairs {
        let word = rng.next_u64();
        pair[0] = value(word as u32);
        pair[1] = value((word >> 32) as u32);
    }
    if let [last] = pairs.into_remainder() {
        *last = value(rng.next_u64() as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::fixtures::planted_pattern;
    use crate::train::sequence_spec;

    #[test]
    fn windows_cover_every_training_target_once() {
        let mut split = planted_pattern(20);
        // Serving logged the history of user 0's third and user 1's second interactions; one log points at a
        // held-out target and is not trained on.
        let held_out = split.users[2].items.len() as u32 - 1;
        split.logged = vec![
            LoggedHistory {
                user: 0,
                position: 2,
                history: vec![7, 8, 9],
            },
            LoggedHistory {
                user: 1,
                position: 1,
                history: vec![5],
            },
            LoggedHistory {
                user: 2,
                position: held_out,
                history: vec![1],
            },
        ];
        let windows = windows(&split, 4);
        let spec = sequence_spec(&split, 4);
        let all: Vec<usize> = (0..windows.len()).collect();
        let batch = make_batch(
            &split,
            &spec,
            &windows,
            &logged_targets(&split),
            &all,
            windows.len(),
        )
        .expect("batch");
        // (user, target) of every nonzero target, from each row's window.
        let mut covered = Vec::new();
        for (row, window) in windows.iter().enumerate() {
            let targets = &batch.targets[row * 4..(row + 1) * 4];
            match *window {
                Window::Sequence { user, start, end } => {
                    assert!(end > start && end - start <= 4);
                    let items = &split.users[user as usize].items;
                    for p in start + 1..=end {
                        let t = targets[4 - (end - p) as usize - 1];
                        if t != 0 {
                            assert_eq!(t, i64::from(items[p as usize]));
                            covered.push((user, p));
                        }
                    }
                }
                Window::Logged(i) => {
                    let logged = &split.logged[i as usize];
                    let target = split.users[logged.user as usize].items[logged.position as usize];
                    assert_eq!(targets[..3], [0, 0, 0]);
                    assert_eq!(targets[3], i64::from(target));
                    let history = &batch.inputs[0].1[row * 4..(row + 1) * 4];
                    let padded: Vec<i64> = std::iter::repeat_n(0, 4 - logged.history.len())
                        .chain(logged.history.iter().map(|&h| i64::from(h)))
                        .collect();
                    assert_eq!(
                        history,
                        padded.as_slice(),
                        "the logged history, as serving fed it"
                    );
                    covered.push((logged.user, logged.position));
                }
            }
        }
        covered.sort_unstable();
        let expected: Vec<(u32, u32)> = split
            .users
            .iter()
            .enumerate()
            .flat_map(|(u, s)| {
                (1..Stage::Validation.training_items(s).len() as u32).map(move |p| (u as u32, p))
            })
            .collect();
        assert_eq!(covered, expected, "each training target once");
        assert_eq!(
            windows
                .iter()
                .filter(|w| matches!(w, Window::Logged(_)))
                .count(),
            2
        );
    }

    #[test]
    fn dropout_masks_keep_the_expected_share_and_repeat_per_step() {
        let config = TrainConfig {
            batch_size: 4,
            max_len: 10,
            dim: 50,
            dropout: 0.2,
            ..TrainConfig::default()
        };
        let masks_at = |step: u64| -> Vec<Vec<f32>> {
            (0..3)
                .map(|site| {
                    let mut mask = vec![f32::NAN; 2000];
                    fill_dropout_mask(&config, site, step, 0, &mut mask);
                    mask
                })
                .collect()
        };
        let masks = masks_at(7);
        assert_eq!(masks.len(), 3);
        let kept = masks[0].iter().filter(|&&v| v > 0.0).count() as f64 / 2000.0;
        assert!((kept - 0.8).abs() < 0.04, "kept {kept}");
        assert!(
            masks[0]
                .iter()
                .all(|&v| v == 0.0 || (v - 1.25).abs() < 1e-6)
        );
        assert_ne!(masks[0], masks[1]);
        assert_eq!(masks, masks_at(7));
        assert_ne!(masks, masks_at(8));
        // A shard starting at any element, odd or even, gets those elements of the whole mask.
        for first in [1, 2, 999] {
            let mut tail = vec![f32::NAN; 2000 - first];
            fill_dropout_mask(&config, 1, 7, first, &mut tail);
            assert_eq!(tail, masks[1][first..], "from element {first}");
        }
    }
}
