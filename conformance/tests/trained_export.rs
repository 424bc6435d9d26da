//! A model trained by `edgerec-trainer` and exported as a bundle scores the same in ONNX Runtime, in tract and in
//! the WASI ranker under wasmtime (within 1e-4), and its bundle verifies as any other.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use edgerec_core::{
    Bundle, ItemId, MODEL_FILE, RankRequest, Scorer, TractScorer, load_tract_ranker,
};
use edgerec_trainer::collective::SingleProcess;
use edgerec_trainer::data::Interaction;
use edgerec_trainer::export::{BundleInfo, serving_model, write_bundle};
use edgerec_trainer::split::Split;
use edgerec_trainer::train::{TrainConfig, Trained, train};

/// Users walking a cycle of 30 items, with a second, rarer successor for every fifth item.
fn interactions() -> Vec<Interaction> {
    let mut interactions = Vec::new();
    for user in 0..120usize {
        let mut item = (user * 7) % 30;
        for step in 0..(8 + user % 9) {
            interactions.push(Interaction::from_good_ids(
                &format!("user-{user}"),
                &format!("item-{item}"),
                step as i64,
            ));
            item = if item % 5 == 0 && user % 3 == 0 {
                (item + 2) % 30
            } else {
                (item + 1) % 30
            };
        }
    }
    interactions
}

fn trained(split: &Split) -> Trained {
    let config = TrainConfig {
        max_len: 10,
        dim: 16,
        blocks: 2,
        ffn_dim: 32,
        batch_size: 16,
        max_epochs: 3,
        learning_rate: 5e-3,
        warmup_steps: 2,
        threads: 1,
        ..TrainConfig::default()
    };
    train(split, &config, None, false, &SingleProcess, &mut |_| {
        ControlFlow::Continue(())
    })
    .expect("trains")
}

fn histories(split: &Split) -> Vec<Vec<u32>> {
    let mut histories: Vec<Vec<u32>> = split
        .users
        .iter()
        .take(12)
        .map(|u| u.items.clone())
        .collect();
    histories.push(vec![]);
    histories.push(vec![1]);
    histories.push((1..=30).collect()); // longer than max_len: truncated
    histories
}

#[test]
fn exported_bundle_scores_agree_in_onnxruntime_tract_and_wasmtime() {
    edgerec_onnxruntime::init().expect("ONNX Runtime loads");
    let split = Split::leave_last_out(&interactions());
    let trained = trained(&split);
    let dir = tempfile::tempdir().expect("temporary folder");
    let model = serving_model(&trained).expect("serving graph");
    write_bundle(
        dir.path(),
        BundleInfo {
            name: "cycle-sasrec".into(),
            version: "1.0.0".into(),
            spec: trained.spec.clone(),
            items: split.items.iter().map(ToString::to_string).collect(),
            metrics: BTreeMap::from([("validation_ndcg@10".into(), trained.validation.ndcg_at_10)]),
            lineage: BTreeMap::from([("dataset".into(), serde_json::json!("cycle"))]),
        },
        &model,
    )
    .expect("writes the bundle");
    let manifest = std::fs::read(dir.path().join("manifest.json")).expect("manifest written");
    let model = std::fs::read(dir.path().join(MODEL_FILE)).expect("model written");
    let bundle = Bundle::verify(&manifest, &[(MODEL_FILE, &model)]).expect("the bundle verifies");
    let spec = &bundle.manifest.feature_spec;

    let mut ort = edgerec_onnxruntime::OrtScorer::load(spec, &model, 1).expect("ORT loads it");
    let mut tract = TractScorer::load(spec, &model).expect("tract loads it");
    let mut worst = 0.0f32;
    for history in histories(&split) {
        let inputs = spec.encode(&history, &BTreeMap::new()).expect("encodes");
        let (a, b) = (
            ort.score(&inputs).expect("ORT"),
            tract.score(&inputs).expect("tract"),
        );
        assert_eq!(a.len(), split.items.len() + 1);
        for (x, y) in a.iter().zip(&b) {
            worst = worst.max((x - y).abs());
        }
    }
    assert!(worst <= 1e-4, "ONNX Runtime and tract differ by {worst}");

    let wasm = edgerec_conformance::wasm_artifact("ranker-wasi.wasm");
    let cache = tempfile::tempdir().expect("cache folder");
    let engine =
        edgerec_node::RankerEngine::load(&wasm, cache.path()).expect("WASI ranker compiles");
    let mut instance = engine.instantiate().expect("instantiates");
    let loaded = instance
        .load_bundle(&manifest, &model, edgerec_node::DEFAULT_LOAD_DEADLINE)
        .expect("the WASI ranker loads the exported bundle");
    assert_eq!(
        (loaded.name.as_str(), loaded.items),
        ("cycle-sasrec", split.items.len())
    );
    let mut native = load_tract_ranker(&manifest, &model).expect("native ranker");
    for user in split.users.iter().take(12) {
        let recent: Vec<ItemId> = user
            .items
            .iter()
            .map(|&i| split.items[i as usize - 1].clone())
            .collect();
        let request = RankRequest::new(recent, 10);
        let (in_wasm, natively) = (
            instance
                .rank(&request, std::time::Duration::from_secs(5))
                .expect("ranks in Wasm"),
            native.rank(&request).expect("ranks natively"),
        );
        assert_eq!(in_wasm.items.len(), 10);
        for (w, n) in in_wasm.items.iter().zip(&natively.items) {
            assert!((w.score - n.score).abs() <= 1e-4, "{w:?} against {n:?}");
        }
    }
}
