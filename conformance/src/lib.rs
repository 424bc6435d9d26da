//! The golden cases: a committed sequence model, requests, and the rankings a float64 reference computed for
//! them (`scripts/gen_golden.py`). Every runtime must return the same items with scores within
//! [`SCORE_TOLERANCE`].

use std::path::PathBuf;

use edgerec_core::{Digest, FileEntry, MODEL_FILE, Manifest, RankRequest, Ranking, ScoredItem};
use serde::Deserialize;

/// Largest difference allowed between a runtime's score and the reference.
pub const SCORE_TOLERANCE: f32 = 1e-5;

/// One golden request and its expected ranking.
#[derive(Debug, Clone, Deserialize)]
pub struct GoldenCase {
    pub name: String,
    pub request: RankRequest,
    pub expected: Vec<ScoredItem>,
}

/// The folder holding the golden bundle and cases: found from the package of the running test (cargo sets
/// `CARGO_MANIFEST_DIR` when it runs one), so a build shared between two checkouts of the workspace reads this
/// checkout's files, not those of the checkout that compiled this crate.
pub fn golden_dir() -> PathBuf {
    let relative = std::path::Path::new("testdata/golden");
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|package| {
            package
                .ancestors()
                .map(|dir| dir.join(relative))
                .find(|dir| dir.is_dir())
        })
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(relative)
        })
}

/// `manifest.json` and `model.onnx` of the golden bundle.
pub fn golden_bundle() -> (Vec<u8>, Vec<u8>) {
    let dir = golden_dir().join("bundle");
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .unwrap_or_else(|e| panic!("reading golden {name} in {}: {e}", dir.display()))
    };
    (read("manifest.json"), read("model.onnx"))
}

/// The golden manifest after `edit`, naming `model` (its digest and size) as the model file: a bundle whose only
/// difference from the golden one is the edit and the model.
pub fn golden_manifest_with(model: &[u8], edit: impl FnOnce(&mut Manifest)) -> Vec<u8> {
    let (manifest, _) = golden_bundle();
    let mut manifest: Manifest = serde_json::from_slice(&manifest).expect("golden manifest parses");
    edit(&mut manifest);
    manifest.files.insert(
        MODEL_FILE.into(),
        FileEntry {
            sha256: Digest::of(model),
            size: model.len() as u64,
        },
    );
    serde_json::to_vec(&manifest).expect("serialises")
}

pub fn golden_cases() -> Vec<GoldenCase> {
    let path = golden_dir().join("cases.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Compares a runtime's ranking with the expectation: the same items in the same order, scores within
/// [`SCORE_TOLERANCE`]. Two items whose reference scores are closer than twice the tolerance may come in either
/// order, since float32 rounding can legitimately swap them.
pub fn check_ranking(case: &GoldenCase, got: &Ranking) -> Result<(), String> {
    let expected = &case.expected;
    if got.items.len() != expected.len() {
        return Err(format!(
            "{}: {} items returned, expected {}",
            case.name,
            got.items.len(),
            expected.len()
        ));
    }
    let reference = |item: &str| expected.iter().find(|e| e.item == item).map(|e| e.score);
    for (rank, (g, e)) in got.items.iter().zip(expected).enumerate() {
        let Some(reference_score) = reference(&g.item) else {
            return Err(format!(
                "{}: rank {rank} is {}, which the reference does not return",
                case.name, g.item
            ));
        };
        let diff = (g.score - reference_score).abs();
        if diff > SCORE_TOLERANCE {
            return Err(format!(
                "{}: {} scored {} but the reference says {reference_score} (difference {diff:e})",
                case.name, g.item, g.score
            ));
        }
        if g.item != e.item && (reference_score - e.score).abs() > 2.0 * SCORE_TOLERANCE {
            return Err(format!(
                "{}: rank {rank} is {}, expected {}",
                case.name, g.item, e.item
            ));
        }
    }
    Ok(())
}

/// Largest score difference from the reference over the items both return.
pub fn max_abs_diff(case: &GoldenCase, got: &Ranking) -> f32 {
    got.items
        .iter()
        .filter_map(|g| {
            case.expected
                .iter()
                .find(|e| e.item == g.item)
                .map(|e| (g.score - e.score).abs())
        })
        .fold(0.0, f32::max)
}

/// Where `scripts/build-wasm.sh` leaves the Wasm rankers: `$EDGEREC_WASM_DIR`, which `scripts/test.sh` sets.
pub fn wasm_dir() -> PathBuf {
    std::env::var_os("EDGEREC_WASM_DIR").map(PathBuf::from).unwrap_or_else(|| {
        panic!("EDGEREC_WASM_DIR is not set: run the tests through scripts/test.sh, or source scripts/env.sh")
    })
}

/// A built Wasm artifact, or a panic that says how to build it.
pub fn wasm_artifact(relative: &str) -> PathBuf {
    let path = wasm_dir().join(relative);
    assert!(
        path.exists(),
        "{} is missing: build the Wasm rankers first with scripts/build-wasm.sh (scripts/test.sh does)",
        path.display()
    );
    path
}
