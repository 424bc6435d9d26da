//! Checkpoints: the state (parameters and moments), the best parameters and the run's progress, written so that
//! a save interrupted anywhere leaves the previous checkpoint whole, and read back only for the same settings,
//! data and model.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use edgerec_core::FeatureSpec;
use serde::{Deserialize, Serialize};

use super::{EpochRecord, TrainConfig, TrainError};
use crate::stepper::ModelState;

/// The state a checkpoint restores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct CheckpointMeta {
    pub(super) config: TrainConfig,
    pub(super) spec: FeatureSpec,
    pub(super) epochs_done: usize,
    pub(super) steps_done: u64,
    pub(super) history: Vec<EpochRecord>,
    pub(super) best_epoch: Option<usize>,
    /// The step the last phase's anneal began at, once the patience ran out.
    #[serde(default)]
    pub(super) anneal_from: Option<u64>,
    /// Tensor names and lengths, in the order the state and best-parameter files hold them.
    pub(super) layout: Vec<(String, usize)>,
}

pub(super) const CHECKPOINT_META: &str = "checkpoint.json";
/// The state and best parameters after epoch `epoch`: each save writes new files, so a save that never
/// finishes leaves the files the metadata names untouched.
pub(super) fn state_file(epoch: usize) -> String {
    format!("state-{epoch}.bin")
}
pub(super) fn best_file(epoch: usize) -> String {
    format!("best-{epoch}.bin")
}

/// Parameters, then first moments, then second moments, each in name order: the layout of checkpoints and of the
/// state sent between processes.
fn tensors(state: &ModelState) -> impl Iterator<Item = &Vec<f32>> {
    [
        &state.parameters,
        &state.first_moments,
        &state.second_moments,
    ]
    .into_iter()
    .flat_map(|map| map.values())
}

/// [`tensors`] end to end.
pub(super) fn flatten(state: &ModelState) -> Vec<f32> {
    tensors(state).flatten().copied().collect()
}

/// Overwrites `state` (whose tensors have their lengths already) from the start of `values`, laid out as
/// [`flatten`] lays it out; returns the values that follow.
pub(super) fn unflatten<'a>(state: &mut ModelState, values: &'a [f32]) -> &'a [f32] {
    let mut rest = values;
    for map in [
        &mut state.parameters,
        &mut state.first_moments,
        &mut state.second_moments,
    ] {
        rest = overwrite(map, rest);
    }
    rest
}

/// Overwrites each tensor of `map` in name order from the start of `values`; returns the values that follow.
pub(super) fn overwrite<'a>(map: &mut BTreeMap<String, Vec<f32>>, values: &'a [f32]) -> &'a [f32] {
    let mut rest = values;
    for tensor in map.values_mut() {
        let (head, tail) = rest.split_at(tensor.len());
        tensor.copy_from_slice(head);
        rest = tail;
    }
    rest
}

fn checkpoint_error(path: &Path, message: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn write_tensors(path: &Path, tensors: &[&Vec<f32>]) -> Result<(), TrainError> {
    let temporary = path.with_extension("partial");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&temporary).map_err(|e| checkpoint_error(&temporary, e))?,
    );
    for tensor in tensors {
        for value in tensor.iter() {
            file.write_all(&value.to_le_bytes())
                .map_err(|e| checkpoint_error(&temporary, e))?;
        }
    }
    file.flush().map_err(|e| checkpoint_error(&temporary, e))?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(|e| checkpoint_error(path, e))
}

/// The `len` values of the file at `path`.
fn read_values(path: &Path, len: usize) -> Result<Vec<f32>, TrainError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| checkpoint_error(path, e))?;
    let expected = len * 4;
    if bytes.len() != expected {
        return Err(checkpoint_error(
            path,
            format!("{} bytes where the layout needs {expected}", bytes.len()),
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Writes the state and the best parameters to files of this epoch, then the metadata that names them through a
/// rename, then removes the previous epoch's files: a save interrupted anywhere (a process killed, a disk
/// full) leaves the previous checkpoint whole and usable.
pub(super) fn save_checkpoint(
    dir: &Path,
    meta: &mut CheckpointMeta,
    state: &ModelState,
    best: &BTreeMap<String, Vec<f32>>,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| checkpoint_error(dir, e))?;
    meta.layout = state
        .parameters
        .iter()
        .map(|(name, data)| (name.clone(), data.len()))
        .collect();
    let (state_name, best_name) = (state_file(meta.epochs_done), best_file(meta.epochs_done));
    write_tensors(&dir.join(&state_name), &tensors(state).collect::<Vec<_>>())?;
    write_tensors(&dir.join(&best_name), &best.values().collect::<Vec<_>>())?;
    let path = dir.join(CHECKPOINT_META);
    let temporary = path.with_extension("partial");
    let json = serde_json::to_vec_pretty(meta).map_err(|e| checkpoint_error(&path, e))?;
    std::fs::write(&temporary, json).map_err(|e| checkpoint_error(&temporary, e))?;
    std::fs::rename(&temporary, &path).map_err(|e| checkpoint_error(&path, e))?;
    // Earlier epochs' files (and any left by an interrupted save) are no longer named by the metadata.
    let entries = std::fs::read_dir(dir).map_err(|e| checkpoint_error(dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with("state-") || name.starts_with("best-");
        if ours && name != state_name && name != best_name {
            std::fs::remove_file(entry.path()).map_err(|e| checkpoint_error(&entry.path(), e))?;
        }
    }
    Ok(())
}

pub(super) type Restored = (CheckpointMeta, ModelState, BTreeMap<String, Vec<f32>>);

pub(super) fn load_checkpoint(
    dir: &Path,
    config: &TrainConfig,
    spec: &FeatureSpec,
) -> Result<Restored, TrainError> {
    let path = dir.join(CHECKPOINT_META);
    let json = std::fs::read(&path).map_err(|e| checkpoint_error(&path, e))?;
    let meta: CheckpointMeta =
        serde_json::from_slice(&json).map_err(|e| checkpoint_error(&path, e))?;
    // The run may be given more epochs or patience; everything that shapes the numbers must match.
    let comparable = |c: &TrainConfig| TrainConfig {
        max_epochs: 0,
        patience_steps: 0,
        min_improvement: 0.0,
        threads: 0,
        replicas: 0,
        ..c.clone()
    };
    if comparable(&meta.config) != comparable(config) {
        return Err(checkpoint_error(
            &path,
            "was written with a different configuration (only max_epochs, patience_steps, min_improvement, threads and replicas may change)",
        ));
    }
    if &meta.spec != spec {
        return Err(checkpoint_error(
            &path,
            "was written for different data (another item vocabulary)",
        ));
    }
    // The layout is in name order, as the state's maps hold the tensors.
    let expected: Vec<(String, usize)> =
        crate::model::parameter_shapes(spec, &config.architecture())?
            .into_iter()
            .map(|(name, dims)| (name, dims.iter().product::<i64>() as usize))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect();
    if meta.layout != expected {
        return Err(checkpoint_error(
            &path,
            "holds tensors other than this model's parameters",
        ));
    }
    let state_path = dir.join(state_file(meta.epochs_done));
    if !state_path.exists() && dir.join("state.bin").exists() {
        return Err(checkpoint_error(
            dir,
            "was written by an earlier edgerec (state.bin), which this version does not resume: train again",
        ));
    }
    let zeros = || -> BTreeMap<String, Vec<f32>> {
        meta.layout
            .iter()
            .map(|(name, len)| (name.clone(), vec![0.0; *len]))
            .collect()
    };
    let mut state = ModelState {
        parameters: zeros(),
        first_moments: zeros(),
        second_moments: zeros(),
    };
    let total: usize = meta.layout.iter().map(|(_, len)| len).sum();
    unflatten(&mut state, &read_values(&state_path, 3 * total)?);
    let mut best = zeros();
    overwrite(
        &mut best,
        &read_values(&dir.join(best_file(meta.epochs_done)), total)?,
    );
    Ok((meta, state, best))
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use super::*;
    use crate::collective::SingleProcess;
    use crate::train::fixtures::{planted_pattern, resume_to_the_end, small_config, train_alone};
    use crate::train::{Progress, train};

    #[test]
    fn resuming_gives_the_parameters_of_an_uninterrupted_run() {
        let split = planted_pattern(60);
        let config = TrainConfig {
            max_epochs: 4,
            patience_steps: 10_000,
            evaluate_every_steps: 1,
            ..small_config()
        };
        let whole = tempfile::tempdir().expect("test step succeeds");
        let uninterrupted =
            train_alone(&split, &config, Some(whole.path()), false).expect("trains");

        let parts = tempfile::tempdir().expect("test step succeeds");
        let interrupt_after_two = &mut |p| match p {
            Progress::EpochFinished(record) if record.epoch == 2 => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        };
        let first_half = train(
            &split,
            &config,
            Some(parts.path()),
            false,
            &SingleProcess,
            interrupt_after_two,
        )
        .expect("first half");
        assert_eq!(first_half.history.len(), 2);
        let (resumed, started) = resume_to_the_end(&split, &config, parts.path());
        let epochs_seen: Vec<usize> = started.iter().map(|&(epoch, _)| epoch).collect();
        assert_eq!(epochs_seen, vec![3, 4], "resumed at the wrong epoch");
        assert_eq!(resumed.history, {
            // Timings differ between runs; everything else must not.
            let mut expected = uninterrupted.history.clone();
            for (e, r) in expected.iter_mut().zip(&resumed.history) {
                e.seconds = r.seconds;
                e.examples_per_second = r.examples_per_second;
                e.host_seconds = r.host_seconds;
                e.exchange_seconds = r.exchange_seconds;
            }
            expected
        });
        assert_eq!(resumed.parameters, uninterrupted.parameters);
        let final_state =
            |dir: &Path| std::fs::read(dir.join(state_file(4))).expect("test step succeeds");
        assert_eq!(final_state(parts.path()), final_state(whole.path()));
        let mut files: Vec<String> = std::fs::read_dir(parts.path())
            .expect("test step succeeds")
            .map(|e| {
                e.expect("test step succeeds")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        files.sort();
        assert_eq!(
            files,
            ["best-4.bin", "checkpoint.json", "state-4.bin"],
            "earlier epochs' files are removed"
        );
    }

    #[test]
    fn resume_refuses_a_checkpoint_of_another_configuration() {
        let split = planted_pattern(30);
        let config = TrainConfig {
            max_epochs: 1,
            ..small_config()
        };
        let dir = tempfile::tempdir().expect("test step succeeds");
        train_alone(&split, &config, Some(dir.path()), false).expect("trains");
        let other = TrainConfig {
            dim: 8,
            ..config.clone()
        };
        let error =
            train_alone(&split, &other, Some(dir.path()), true).expect_err("must be refused");
        assert!(
            error.to_string().contains("different configuration"),
            "{error}"
        );
        let missing = tempfile::tempdir().expect("test step succeeds");
        let error =
            train_alone(&split, &config, Some(missing.path()), true).expect_err("must be refused");
        assert!(error.to_string().contains("checkpoint.json"), "{error}");

        // A layout naming other tensors (another model's code) is refused before any state is read.
        let meta_path = dir.path().join(CHECKPOINT_META);
        let original = std::fs::read_to_string(&meta_path).expect("test step succeeds");
        std::fs::write(&meta_path, original.replace("\"b0_bk\"", "\"b0_bias\""))
            .expect("test step succeeds");
        let error =
            train_alone(&split, &config, Some(dir.path()), true).expect_err("must be refused");
        assert!(
            error.to_string().contains("other than this model's"),
            "{error}"
        );
        // The single state file of earlier versions is named as such.
        std::fs::write(&meta_path, &original).expect("test step succeeds");
        std::fs::rename(dir.path().join(state_file(1)), dir.path().join("state.bin"))
            .expect("test step succeeds");
        let error =
            train_alone(&split, &config, Some(dir.path()), true).expect_err("must be refused");
        assert!(error.to_string().contains("earlier edgerec"), "{error}");
    }
}
