//! The conformance suite: the golden cases ranked by every runtime EdgeRec ships.

use edgerec_conformance::{GoldenCase, check_ranking, golden_bundle, golden_cases, max_abs_diff};
use edgerec_core::{Ranking, load_tract_ranker};

fn assert_all_cases(runtime: &str, mut rank: impl FnMut(&GoldenCase) -> Ranking) {
    let cases = golden_cases();
    assert!(cases.len() >= 10, "the golden set lost cases");
    let mut worst: f32 = 0.0;
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let got = rank(case);
            worst = worst.max(max_abs_diff(case, &got));
            check_ranking(case, &got).err()
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{runtime} disagrees with the golden cases:\n{}",
        failures.join("\n")
    );
    eprintln!(
        "{runtime}: {} golden cases match, max |score - reference| = {worst:e}",
        cases.len()
    );
}

#[test]
fn tract_native_matches_golden_cases() {
    let (manifest, model) = golden_bundle();
    let mut ranker = load_tract_ranker(&manifest, &model).expect("golden bundle loads");
    assert_all_cases("tract native", |case| {
        ranker.rank(&case.request).expect("golden request ranks")
    });
}

#[test]
fn onnxruntime_native_matches_golden_cases() {
    edgerec_onnxruntime::init()
        .expect("ONNX Runtime loads (scripts/setup.sh installs it and sets ORT_DYLIB_PATH)");
    let (manifest, model) = golden_bundle();
    let bundle = edgerec_core::Bundle::verify(&manifest, &[(edgerec_core::MODEL_FILE, &model)])
        .expect("valid");
    let scorer =
        edgerec_onnxruntime::OrtScorer::load(&bundle.manifest.feature_spec, bundle.model, 1)
            .expect("ONNX Runtime loads the golden model");
    let mut ranker = edgerec_core::Ranker::new(&bundle, scorer);
    assert_all_cases("ONNX Runtime", |case| {
        ranker.rank(&case.request).expect("golden request ranks")
    });
}

#[test]
fn ranker_component_in_wasmtime_matches_golden_cases() {
    let wasm = edgerec_conformance::wasm_artifact("ranker-wasi.wasm");
    let cache = std::env::temp_dir().join(format!("edgerec-conformance-{}", std::process::id()));
    let engine =
        edgerec_node::RankerEngine::load(&wasm, &cache).expect("the ranker component compiles");
    let mut instance = engine.instantiate().expect("instantiates");
    let (manifest, model) = golden_bundle();
    let loaded = instance
        .load_bundle(&manifest, &model, edgerec_node::DEFAULT_LOAD_DEADLINE)
        .expect("loads");
    assert_eq!(
        (loaded.name.as_str(), loaded.items),
        ("golden-sasrec", 3706)
    );
    assert_all_cases("wasmtime (ranker component)", |case| {
        instance
            .rank(&case.request, std::time::Duration::from_secs(5))
            .expect("golden request ranks")
    });
    let _ = std::fs::remove_dir_all(cache);
}

#[derive(serde::Deserialize)]
struct NodeReport {
    cases: Vec<NodeCase>,
    errors: Vec<NodeError>,
}

#[derive(serde::Deserialize)]
struct NodeCase {
    name: String,
    ranking: Ranking,
}

#[derive(serde::Deserialize, Debug, PartialEq)]
struct NodeError {
    check: String,
    kind: String,
}

#[test]
fn browser_build_under_node_matches_golden_cases_and_refuses_bad_input() {
    let package = edgerec_conformance::wasm_artifact("browser/edgerec_ranker.js");
    let script =
        std::path::Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
            .join("node/conformance.mjs");
    let output = std::process::Command::new("node")
        .arg(&script)
        .arg(&package)
        .arg(edgerec_conformance::golden_dir())
        .output()
        .expect("node runs (scripts/setup.sh checks it is installed)");
    assert!(
        output.status.success(),
        "node failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: NodeReport =
        serde_json::from_slice(&output.stdout).expect("the node script prints its report");
    let mut by_name: std::collections::HashMap<String, Ranking> = report
        .cases
        .into_iter()
        .map(|c| (c.name, c.ranking))
        .collect();
    assert_all_cases("Node (browser build)", |case| {
        by_name
            .remove(&case.name)
            .unwrap_or_else(|| panic!("node did not rank {}", case.name))
    });
    let expected = [
        ("tampered model", "invalid_bundle"),
        ("truncated model", "invalid_bundle"),
        ("model that does not match its spec", "invalid_model"),
        ("manifest that is not JSON", "invalid_bundle"),
        ("k = 0", "invalid_k"),
        ("unknown candidate", "unknown_candidate"),
        ("misspelt option", "invalid_request"),
        ("options that are not an object", "invalid_request"),
        ("context out of range", "invalid_features"),
    ];
    let expected: Vec<NodeError> = expected
        .iter()
        .map(|(check, kind)| NodeError {
            check: check.to_string(),
            kind: kind.to_string(),
        })
        .collect();
    assert_eq!(report.errors, expected);
}
