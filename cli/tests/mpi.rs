//! `edgerec train` as an MPI job (`mpirun`, Open MPI from the test command's set-up): two processes sharing each
//! batch train the model one process trains; processes started differently are refused; a process that dies
//! ends the job with a message from the others and leaves a checkpoint that `--resume` continues.

#![cfg(feature = "mpi")]

// This file uses only part of what the test files share.
#[allow(dead_code)]
use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::succeeds;

const EDGEREC: &str = env!("CARGO_BIN_EXE_edgerec");

/// 150 users walk a cycle of 40 items from random starts (a linear congruential walk keeps the file fixed); the
/// training settings file [`train_args`] names is written beside it.
fn interactions(dir: &Path) -> PathBuf {
    let path = dir.join("interactions.csv");
    let mut text = String::from("user,item,timestamp\n");
    let mut state = 7u64;
    let mut next = |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    for user in 0..150 {
        let start = next(40);
        for step in 0..6 + next(12) {
            text.push_str(&format!("u{user},i{},{step}\n", (start + step) % 40));
        }
    }
    std::fs::write(&path, text).expect("test step succeeds");
    std::fs::write(
        settings(&path),
        r#"{"warmup_steps": 1, "final_learning_rate_fraction": 1.0}"#,
    )
    .expect("test step succeeds");
    path
}

fn settings(data: &Path) -> PathBuf {
    data.with_file_name("train-config.json")
}

/// Settings small enough for a test: a few steps per epoch, dropout on, so the masks' sharding is exercised, and
/// the full learning rate from the second step on, whatever `max_epochs`, so that each step moves the parameters
/// and a run resumed with more epochs continues as a longer run would have.
fn train_args(data: &Path, out: &Path, epochs: usize) -> Vec<String> {
    let config = settings(data);
    [
        "train",
        data.to_str().expect("test step succeeds"),
        "--config",
        config.to_str().expect("test step succeeds"),
        "--out",
        out.to_str().expect("test step succeeds"),
        "--max-len",
        "8",
        "--dim",
        "16",
        "--blocks",
        "1",
        "--batch-size",
        "64",
        "--dropout",
        "0.1",
        "--learning-rate",
        "0.005",
        "--threads",
        "1",
        "--max-epochs",
        &epochs.to_string(),
        "--patience-steps",
        "100000",
        "--evaluate-every-steps",
        "1",
    ]
    .map(String::from)
    .into_iter()
    .collect()
}

/// `mpirun` for a test: as root where the tests run as root, and never more processes than allowed by slots.
fn mpirun() -> Command {
    let mut command = Command::new("mpirun");
    command
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .arg("--oversubscribe");
    command
}

/// `edgerec train` as `processes` MPI processes with `train_args` and `extra`; requires success and rank 0's
/// line saying how the batch is shared.
fn train_as(processes: usize, args: Vec<String>, extra: &[&str]) -> Output {
    let output = succeeds(
        mpirun()
            .args(["-np", &processes.to_string(), EDGEREC])
            .args(args)
            .args(extra),
        &format!("training as {processes} MPI processes"),
    );
    let shared = format!("as {processes} processes sharing each batch of 64");
    assert!(stderr(&output).contains(&shared), "{}", stderr(&output));
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Parameters and Adam moments of a checkpoint, as saved after `epoch`.
fn checkpoint_state(out: &Path, epoch: usize) -> Vec<f32> {
    std::fs::read(out.join(format!("checkpoints/state-{epoch}.bin")))
        .expect("test step succeeds")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn report(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("test step succeeds"))
        .expect("test step succeeds")
}

/// Requires the parameters of the runs in `one` and `other`, both after epoch `epoch`, to be those of one run
/// up to the reassociation of float sums; returns how many tensors were compared.
fn assert_same_parameters(one: &Path, other: &Path, epoch: usize) -> usize {
    let (a, b) = (checkpoint_state(one, epoch), checkpoint_state(other, epoch));
    assert_eq!(a.len(), b.len());
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(one.join("checkpoints/checkpoint.json")).expect("test step succeeds"),
    )
    .expect("test step succeeds");
    let steps = epoch as f32 * 3.0;
    let mut offset = 0;
    let mut compared = 0;
    for entry in meta["layout"].as_array().expect("test step succeeds") {
        let name = entry[0].as_str().expect("test step succeeds");
        let len = entry[1].as_u64().expect("test step succeeds") as usize;
        let range = offset..offset + len;
        offset += len;
        let differ = a[range.clone()]
            .iter()
            .zip(&b[range])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        // Shards sum their gradients in another order than one process sums the batch: float32 additions
        // reassociated. Adam normalises each component by its own history, so the parameters differ by a few
        // units in the last place (1.2e-7 near 1; 1.2e-7 at most was measured over 4 epochs); 1e-6 is 8 of
        // them. The key biases are the exception: adding one vector to every key adds the same number to every
        // attention logit of a row, which the softmax ignores, so their true gradient is exactly 0 and the
        // computed one is rounding noise, which Adam's normalisation turns into steps of either sign. They
        // change no output (the validation metrics agree); Adam moves a component by about a step size (5e-3)
        // at most, so the runs may part by twice the steps' sizes.
        let tolerance = if name.ends_with("_bk") {
            2.0 * steps * 5e-3
        } else {
            1e-6
        };
        assert!(
            differ <= tolerance,
            "{name}: the runs differ by {differ} (tolerance {tolerance})"
        );
        compared += 1;
    }
    assert_eq!(offset, a.len() / 3, "{meta}");
    compared
}

#[test]
fn two_processes_reach_the_parameters_of_one() {
    let dir = tempfile::tempdir().expect("test step succeeds");
    let data = interactions(dir.path());
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    succeeds(
        Command::new(EDGEREC)
            .args(train_args(&data, &one, 2))
            .args(["--replicas", "1"]),
        "training as one process of one replica",
    );
    train_as(2, train_args(&data, &two, 2), &[]);

    // 150 users give about 170 windows: 3 steps of the global batch of 64 per epoch, 6 in all.
    assert!(assert_same_parameters(&one, &two, 2) > 10);
    // And the steps did move the parameters: the same run stopped after one epoch is elsewhere.
    let first = dir.path().join("first");
    succeeds(
        Command::new(EDGEREC).args(train_args(&data, &first, 1)),
        "training one epoch",
    );
    let a = checkpoint_state(&one, 2);
    let moved = checkpoint_state(&first, 1)
        .iter()
        .zip(&a)
        .take(a.len() / 3)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        moved > 0.01,
        "the second epoch moved the parameters by only {moved}"
    );

    let (one, two) = (report(&one), report(&two));
    for epoch in 0..2 {
        let (x, y) = (&one["epochs"][epoch], &two["epochs"][epoch]);
        assert_eq!(x["validation"]["hr@10"], y["validation"]["hr@10"]);
        assert_eq!(x["validation"]["users"], y["validation"]["users"]);
        let close = |key: &str, tolerance: f64| {
            let (p, q) = (
                x[key].as_f64().expect("test step succeeds"),
                y[key].as_f64().expect("test step succeeds"),
            );
            assert!((p - q).abs() < tolerance, "{key}: {p} against {q}");
        };
        close("train_loss", 1e-5);
        for key in ["ndcg@10", "recall@20", "mrr"] {
            let (p, q) = (
                x["validation"][key].as_f64().expect("test step succeeds"),
                y["validation"][key].as_f64().expect("test step succeeds"),
            );
            assert!((p - q).abs() < 1e-6, "validation {key}: {p} against {q}");
        }
    }
    assert_eq!(one["test"]["hr@10"], two["test"]["hr@10"]);
}

/// Rank 0 reads the checkpoint and sends it to the others, whose shards (22, 22 and 20 rows of 64) do not
/// divide the batch evenly.
#[test]
fn three_processes_resume_what_one_process_started() {
    let dir = tempfile::tempdir().expect("test step succeeds");
    let data = interactions(dir.path());
    let (whole, parts) = (dir.path().join("whole"), dir.path().join("parts"));
    succeeds(
        Command::new(EDGEREC).args(train_args(&data, &whole, 2)),
        "training two epochs as one process",
    );
    succeeds(
        Command::new(EDGEREC).args(train_args(&data, &parts, 1)),
        "training the first epoch as one process",
    );
    train_as(3, train_args(&data, &parts, 2), &["--resume"]);
    assert_same_parameters(&whole, &parts, 2);
    let (whole, parts) = (report(&whole), report(&parts));
    assert_eq!(parts["epochs"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        whole["epochs"][0]["train_loss"], parts["epochs"][0]["train_loss"],
        "the first epoch is the checkpoint's"
    );
    assert_eq!(whole["test"]["hr@10"], parts["test"]["hr@10"]);
}

#[test]
fn processes_started_differently_are_refused() {
    let dir = tempfile::tempdir().expect("test step succeeds");
    let data = interactions(dir.path());
    let out = dir.path().join("run");
    let output = mpirun()
        .args(["-np", "1", EDGEREC])
        .args(train_args(&data, &out, 2))
        .args([":", "-np", "1", EDGEREC])
        .args(train_args(&data, &out, 2))
        .args(["--seed", "7"])
        .output()
        .expect("test step succeeds");
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("were not started alike: rank(s) 1 differ from rank 0")
            && text.contains("config.seed is 7 here but 42 on rank 0"),
        "{text}"
    );
    assert!(
        !out.join("checkpoints").exists(),
        "nothing is trained or written"
    );
}

#[test]
fn a_process_that_dies_ends_the_job_and_its_checkpoint_resumes() {
    let dir = tempfile::tempdir().expect("test step succeeds");
    let data = interactions(dir.path());
    let out = dir.path().join("run");
    let job = mpirun()
        .args(["-np", "2", EDGEREC])
        .args(train_args(&data, &out, 400))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("test step succeeds");
    let meta = out.join("checkpoints/checkpoint.json");
    let started = Instant::now();
    while !meta.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint after two minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rank_1 = process_of_rank(&out, 1).expect("rank 1 runs");
    succeeds(
        Command::new("kill").args(["-KILL", &rank_1.to_string()]),
        "killing rank 1",
    );
    let output = job.wait_with_output().expect("test step succeeds");
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("rank 0 of 2: stopped by the MPI launcher")
            && text.contains("continues with --resume"),
        "{text}"
    );

    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta).expect("test step succeeds"))
            .expect("test step succeeds");
    let done = saved["epochs_done"].as_u64().expect("test step succeeds");
    assert!((1..400).contains(&done), "{saved}");
    // One process continues the two-process run: the global batch, not the process count, shapes the numbers.
    let resumed = succeeds(
        Command::new(EDGEREC)
            .args(train_args(&data, &out, done as usize + 2))
            .arg("--resume"),
        "resuming",
    );
    let history = report(&out)["epochs"]
        .as_array()
        .expect("test step succeeds")
        .clone();
    assert_eq!(history.len(), done as usize + 2, "{}", stderr(&resumed));
}

/// The process id of `rank` of the job writing to `out`, from the launcher's variables in its environment.
fn process_of_rank(out: &Path, rank: usize) -> Option<u32> {
    let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
    let out = out.to_str()?;
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let ours = String::from_utf8_lossy(&cmdline).contains(out)
                && cmdline.starts_with(EDGEREC.as_bytes());
            let of_rank = environ.split(|&b| b == 0).any(|v| v == wanted.as_bytes());
            (ours && of_rank).then_some(pid)
        })
}
