//! `edgerec train` exports what ranks the validation targets best: on data without order, a co-occurrence term
//! beats a model that has had few steps; on data whose next item depends on more than the last one, the
//! sequence model beats the transition count. `edgerec eval --bundle` then reproduces the manifest's test
//! figures exactly.

// This file uses only part of what the test files share.
#[allow(dead_code)]
use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::succeeds;

const EDGEREC: &str = env!("CARGO_BIN_EXE_edgerec");

/// A fixed pseudo-random stream, so the files are the same on every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn write_log(dir: &Path, rows: &[(usize, u64, usize)]) -> PathBuf {
    let path = dir.join("interactions.csv");
    let mut text = String::from("user,item,timestamp\n");
    for (user, item, step) in rows {
        text.push_str(&format!("u{user},i{item},{step}\n"));
    }
    std::fs::write(&path, text).expect("test step succeeds");
    path
}

/// 320 users each like one of 8 groups of 12 items and take 9 of them in a random order: what goes together is
/// known, what comes next is not.
fn order_free(dir: &Path) -> PathBuf {
    let mut rng = Lcg(5);
    let mut rows = Vec::new();
    for user in 0..320 {
        let group = (user % 8) as u64;
        let mut items: Vec<u64> = (0..12).map(|i| group * 12 + i).collect();
        for i in (1..items.len()).rev() {
            items.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for (step, &item) in items.iter().take(9).enumerate() {
            rows.push((user, item, step));
        }
    }
    write_log(dir, &rows)
}

/// 300 users walk a cycle of 40 items, half of them a step at a time and half three steps: after item `i`
/// comes `i + 1` or `i + 3`, and only the step before tells which.
fn second_order(dir: &Path) -> PathBuf {
    let mut rng = Lcg(9);
    let mut rows = Vec::new();
    for user in 0..300 {
        let stride = if user % 2 == 0 { 1 } else { 3 };
        let start = rng.below(40);
        for step in 0..8 + rng.below(8) {
            rows.push((user, (start + stride * step) % 40, step as usize));
        }
    }
    write_log(dir, &rows)
}

fn train(data: &Path, out: &Path, steps: u64, learning_rate: f64) -> Value {
    succeeds(
        Command::new(EDGEREC).args([
            "train",
            data.to_str().expect("test step succeeds"),
            "--out",
            out.to_str().expect("test step succeeds"),
            "--max-len",
            "8",
            "--dim",
            "32",
            "--blocks",
            "1",
            "--batch-size",
            "64",
            "--dropout",
            "0.1",
            "--threads",
            "1",
            "--learning-rate",
            &learning_rate.to_string(),
            "--max-steps",
            &steps.to_string(),
            "--evaluate-every-steps",
            "20",
        ]),
        "edgerec train",
    );
    let manifest = std::fs::read(out.join("bundle/manifest.json")).expect("test step succeeds");
    serde_json::from_slice(&manifest).expect("test step succeeds")
}

/// The validation NDCG@10 of the named candidate, as the manifest's lineage records it.
fn candidate_ndcg(manifest: &Value, name: &str) -> f64 {
    manifest["lineage"]["export"]["candidates"]
        .as_array()
        .expect("candidates are recorded")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no candidate {name}"))["validation"]["ndcg@10"]
        .as_f64()
        .expect("a figure")
}

fn exported_ndcg(manifest: &Value) -> f64 {
    let export = &manifest["lineage"]["export"];
    candidate_ndcg(manifest, export["exported"].as_str().expect("a name"))
}

#[test]
fn without_order_in_the_data_a_co_occurrence_term_is_exported() {
    let dir = tempfile::tempdir().expect("test step succeeds");
    let data = order_free(dir.path());
    let out = dir.path().join("run");
    // Ten steps at a low rate: a model that has not learnt the groups yet, as on a log too small for it.
    let manifest = train(&data, &out, 10, 0.0005);
    let export = &manifest["lineage"]["export"];
    assert!(
        export["blend"]["co_occurrence"].as_f64().expect("a weight") > 0.0,
        "exported {}",
        export["exported"]
    );
    assert!(
        exported_ndcg(&manifest) > candidate_ndcg(&manifest, "model") + 0.1,
        "exported {} ({}) against the model ({})",
        export["exported"],
        exported_ndcg(&manifest),
        candidate_ndcg(&manifest, "model")
    );
    let item_knn = export["baselines"]
        .as_array()
        .expect("baselines are recorded")
        .iter()
        .find(|b| b["name"] == "item-knn")
        .expect("item-kNN is fitted");
    assert!(item_knn["test"]["hr@10"].as_f64().expect("a figure") > 0.5);
    assert!(manifest["metrics"]["baseline item-knn: test_ndcg@10"].is_f64());

    // The bundle, scored again from outside, gives the manifest's test figures exactly.
    let output = succeeds(
        Command::new(EDGEREC).args([
            "eval",
            data.to_str().expect("test step succeeds"),
            "--bundle",
            out.join("bundle").to_str().expect("test step succeeds"),
            "--json",
        ]),
        "edgerec eval --bundle",
    );
    let figures: Value = serde_json::from_slice(&output.stdout).expect("eval prints JSON");
    for (figure, metric) in [
        ("hr@10", "test_hr@10"),
        ("ndcg@10", "test_ndcg@10"),
        ("recall@20", "test_recall@20"),
        ("mrr", "test_mrr"),
    ] {
        assert_eq!(
            figures["metrics"][figure].as_f64(),
            manifest["metrics"][metric].as_f64(),
            "{figure}"
        );
    }
}

#[test]
fn where_the_next_item_depends_on_the_one_before_the_model_is_exported() {
    let dir = tempfile::tempdir().expect("test step succeeds");
    let data = second_order(dir.path());
    let out = dir.path().join("run");
    let manifest = train(&data, &out, 400, 0.01);
    let export = &manifest["lineage"]["export"];
    assert_eq!(
        export["blend"]["model"], true,
        "exported {}",
        export["exported"]
    );
    assert!(
        exported_ndcg(&manifest) > candidate_ndcg(&manifest, "transitions") + 0.05,
        "exported {} ({}) against transitions ({})",
        export["exported"],
        exported_ndcg(&manifest),
        candidate_ndcg(&manifest, "transitions")
    );
}

#[test]
fn eval_refuses_a_bundle_that_does_not_verify() {
    let dir = tempfile::tempdir().expect("test step succeeds");
    let data = order_free(dir.path());
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(&bundle).expect("test step succeeds");
    std::fs::write(bundle.join("manifest.json"), "{\"not\": \"a manifest\"}")
        .expect("test step succeeds");
    std::fs::write(bundle.join("model.onnx"), b"not onnx").expect("test step succeeds");
    let output = Command::new(EDGEREC)
        .args([
            "eval",
            data.to_str().expect("test step succeeds"),
            "--bundle",
            bundle.to_str().expect("test step succeeds"),
        ])
        .output()
        .expect("test step succeeds");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("verifying the bundle"), "{stderr}");
}
