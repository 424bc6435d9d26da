//! What a step trains on: training windows cut from the split, batches of them encoded by the feature
//! specification exactly as serving encodes a history, the seeded shuffle, sampled negatives and dropout masks.
//! Everything random derives from the seed and the epoch or step number, so a resumed run draws what the
//! uninterrupted one would have.

use std::collections::{BTreeMap, HashSet};

use edgerec_core::{FeatureSpec, TensorData};

use super::{TrainConfig, TrainError};
use crate::model::{POSITIONS, SEGMENTS};
use crate::rng::SplitMix;
use crate::split::{LoggedHistory, Split, Stage};
use crate::stepper::Batch;

/// A training window: up to `max_len` consecutive items of one user and the item after each, or one logged
/// history and the item that followed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    Sequence { user: u32, start: u32, end: u32 },
    Logged(u32),
}

/// Cuts each user's training items (everything before the validation target) into windows of `max_len`
/// predictions, newest first, so every training interaction is a target exactly once per epoch: in a sequence
/// window, or, when serving logged its history, in a window of that history alone.
fn windows(split: &Split, max_len: usize) -> Vec<Window> {
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
fn logged_targets(split: &Split) -> HashSet<(u32, u32)> {
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

/// The training windows packed into rows of `max_len` positions, once per run. A user's oldest window and a
/// logged history are usually short; alone in a row, the rest of it is padding that the step pays for in full
/// (the softmax over the catalogue above all). Packed, several share a row as segments: the step graph lets each
/// position attend only within its own segment and gives each item the position serving would give it, so a
/// packed row trains exactly what its windows would alone, in fewer rows.
pub(super) struct Examples {
    windows: Vec<Window>,
    /// Each row's windows, in the order they are laid out.
    rows: Vec<Vec<u32>>,
    logged_targets: HashSet<(u32, u32)>,
}

impl Examples {
    pub(super) fn new(split: &Split, max_len: usize) -> Self {
        let windows = windows(split, max_len);
        let lengths: Vec<usize> = windows
            .iter()
            .map(|&w| history_len(split, w, max_len))
            .collect();
        Self {
            rows: pack(&lengths, max_len),
            windows,
            logged_targets: logged_targets(split),
        }
    }

    /// Rows of an epoch; a batch is `batch_size` of them.
    pub(super) fn rows(&self) -> usize {
        self.rows.len()
    }

    /// Training windows of an epoch.
    pub(super) fn windows(&self) -> usize {
        self.windows.len()
    }

    /// Training windows in the packed rows `chunk`.
    pub(super) fn windows_in(&self, chunk: &[usize]) -> usize {
        chunk.iter().map(|&row| self.rows[row].len()).sum()
    }

    /// Lays out the rows `chunk` (indices into the packed rows) as a batch of `batch_size` rows; missing rows are
    /// padding with weight 0. Histories are encoded by the feature specification, as serving encodes them, and
    /// each window keeps the positions serving gives a history of its length.
    pub(super) fn batch(
        &self,
        split: &Split,
        spec: &FeatureSpec,
        chunk: &[usize],
        batch_size: usize,
    ) -> Result<Batch, TrainError> {
        let len = spec.sequence.max_len;
        // The encoded inputs (sequence and item features) first, then the layout's, as `row_inputs` lists them.
        let mut names = row_inputs(spec).into_iter();
        let mut inputs: Vec<(String, Vec<i64>)> = names
            .by_ref()
            .take(1 + spec.item_features.len())
            .map(|name| (name, vec![0; batch_size * len]))
            .collect();
        let mut layout = Layout {
            positions: vec![0; batch_size * len],
            segments: vec![0; batch_size * len],
            targets: vec![0; batch_size * len],
        };
        for (row, &packed) in chunk.iter().enumerate() {
            let mut offset = row * len;
            for (segment, &w) in self.rows[packed].iter().enumerate() {
                let (history, targets) = self.example(split, self.windows[w as usize], len);
                let encoded = spec
                    .encode(history, &BTreeMap::new())
                    .map_err(|e| TrainError::Config(format!("encoding a training history: {e}")))?;
                // Left padding: the history is the last `n` positions of each encoded input.
                let n = history.len();
                for ((_, values), tensor) in inputs.iter_mut().zip(&encoded) {
                    let TensorData::I64(encoded) = &tensor.data else {
                        return Err(TrainError::Config(format!(
                            "input `{}` is not int64",
                            tensor.name
                        )));
                    };
                    values[offset..offset + n].copy_from_slice(&encoded[len - n..]);
                }
                layout.place(offset, len - n, segment as i64 + 1, &targets);
                offset += n;
            }
        }
        let Layout {
            positions,
            segments,
            targets,
        } = layout;
        inputs.extend(names.zip([positions, segments]));
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

    /// A window's history and the target after each of its items (0 where the target is not learnt here).
    fn example<'s>(&self, split: &'s Split, window: Window, len: usize) -> (&'s [u32], Vec<i64>) {
        match window {
            Window::Sequence { user, start, end } => {
                let items = &split.users[user as usize].items;
                let (start, end) = (start as usize, end as usize);
                // A target whose logged history has a window of its own is not learnt twice.
                let targets = (start + 1..=end)
                    .map(|p| {
                        if self.logged_targets.contains(&(user, p as u32)) {
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
        }
    }
}

/// The step graph's `[batch, len]` int64 inputs, in the order a batch holds them: the sequence, each item
/// feature, then the packing's positions and segments.
pub(super) fn row_inputs(spec: &FeatureSpec) -> Vec<String> {
    std::iter::once(spec.sequence.input.clone())
        .chain(spec.item_features.iter().map(|f| f.input.clone()))
        .chain([POSITIONS, SEGMENTS].map(String::from))
        .collect()
}

/// The per-position inputs of a batch besides the encoded histories.
struct Layout {
    positions: Vec<i64>,
    segments: Vec<i64>,
    targets: Vec<i64>,
}

impl Layout {
    /// Places a window of `targets.len()` items at `offset`, as segment `segment`, its first item at serving
    /// position `first_position`.
    fn place(&mut self, offset: usize, first_position: usize, segment: i64, targets: &[i64]) {
        let n = targets.len();
        for (j, position) in self.positions[offset..offset + n].iter_mut().enumerate() {
            *position = (first_position + j) as i64;
        }
        self.segments[offset..offset + n].fill(segment);
        self.targets[offset..offset + n].copy_from_slice(targets);
    }
}

fn history_len(split: &Split, window: Window, max_len: usize) -> usize {
    match window {
        Window::Sequence { start, end, .. } => (end - start) as usize,
        Window::Logged(i) => split.logged[i as usize].history.len().min(max_len),
    }
}

/// Packs windows of `lengths` (each 1 to `max_len`) into rows of `max_len` positions: longest first, each into
/// the fullest row it fits (best fit decreasing, within a few percent of the fewest rows possible).
/// Deterministic: ties go by window index.
fn pack(lengths: &[usize], max_len: usize) -> Vec<Vec<u32>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&w| (std::cmp::Reverse(lengths[w]), w));
    let mut rows: Vec<Vec<u32>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    // Rows with room left, by how much: `with_room[f]` holds the rows with exactly `f` free positions.
    let mut with_room: Vec<Vec<usize>> = vec![Vec::new(); max_len];
    for w in order {
        let n = lengths[w];
        let row = match (n..max_len).find_map(|f| with_room[f].pop()) {
            Some(row) => row,
            None => {
                rows.push(Vec::new());
                free.push(max_len);
                rows.len() - 1
            }
        };
        rows[row].push(w as u32);
        free[row] -= n;
        if free[row] > 0 {
            with_room[free[row]].push(row);
        }
    }
    rows
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
    fn packed_rows_cover_every_training_target_once() {
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
        let len = 4;
        let examples = Examples::new(&split, len);
        let spec = sequence_spec(&split, len);
        let all: Vec<usize> = (0..examples.rows()).collect();
        let batch = examples
            .batch(&split, &spec, &all, examples.rows())
            .expect("batch");
        let input = |name: &str| {
            &batch
                .inputs
                .iter()
                .find(|(n, _)| n == name)
                .expect("an input")
                .1
        };
        let (items, positions, segments) = (input("item_ids"), input(POSITIONS), input(SEGMENTS));
        // Each segment of each row, read back as (history, serving positions, targets).
        let mut segments_seen = Vec::new();
        for row in 0..examples.rows() {
            let at = |values: &[i64], range: std::ops::Range<usize>| values[range].to_vec();
            let mut offset = row * len;
            for segment in 1.. {
                let n = segments[offset..(row + 1) * len]
                    .iter()
                    .take_while(|&&s| s == segment)
                    .count();
                if n == 0 {
                    break;
                }
                let range = offset..offset + n;
                segments_seen.push((
                    at(items, range.clone()),
                    at(positions, range.clone()),
                    at(&batch.targets, range),
                ));
                offset += n;
            }
            assert!(
                segments[offset..(row + 1) * len].iter().all(|&s| s == 0),
                "padding only after the segments"
            );
            assert!(
                batch.targets[offset..(row + 1) * len]
                    .iter()
                    .all(|&t| t == 0)
            );
        }
        // In row order, the windows the packing put there.
        let packed: Vec<Window> = examples
            .rows
            .iter()
            .flatten()
            .map(|&w| examples.windows[w as usize])
            .collect();
        assert_eq!(segments_seen.len(), packed.len(), "a segment per window");
        let mut covered = Vec::new();
        for ((history, served_at, targets), window) in segments_seen.iter().zip(packed) {
            let n = history.len();
            let expected_positions: Vec<i64> = (len - n..len).map(|p| p as i64).collect();
            assert_eq!(served_at, &expected_positions, "serving's positions");
            let as_i64 = |items: &[u32]| items.iter().map(|&i| i64::from(i)).collect::<Vec<_>>();
            match window {
                Window::Sequence { user, start, end } => {
                    let items = &split.users[user as usize].items;
                    assert_eq!(history, &as_i64(&items[start as usize..end as usize]));
                    for (p, &t) in (start + 1..=end).zip(targets) {
                        if t != 0 {
                            assert_eq!(t, i64::from(items[p as usize]));
                            covered.push((user, p));
                        }
                    }
                }
                Window::Logged(i) => {
                    let logged = &split.logged[i as usize];
                    assert_eq!(history, &as_i64(&logged.history), "as serving fed it");
                    let target = split.users[logged.user as usize].items[logged.position as usize];
                    assert!(targets[..n - 1].iter().all(|&t| t == 0));
                    assert_eq!(targets[n - 1], i64::from(target));
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
        assert!(
            examples.rows() < examples.windows(),
            "short windows share rows: {} rows for {} windows",
            examples.rows(),
            examples.windows()
        );
    }

    #[test]
    fn packing_fills_rows_with_the_fewest_it_can() {
        let lengths = [50, 3, 47, 20, 30, 1, 49, 25, 25, 50];
        let rows = pack(&lengths, 50);
        let mut placed: Vec<u32> = rows.iter().flatten().copied().collect();
        placed.sort_unstable();
        assert_eq!(placed, (0..10).collect::<Vec<u32>>(), "each window once");
        for row in &rows {
            let used: usize = row.iter().map(|&w| lengths[w as usize]).sum();
            assert!(used <= 50, "{row:?} holds {used} positions");
        }
        // 300 positions: six full rows (50, 50, 47+3, 49+1, 30+20, 25+25).
        assert_eq!(rows.len(), 6, "{rows:?}");
        assert_eq!(pack(&lengths, 50), rows, "deterministic");
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
