//! Models that do not match their feature specification, and files that are not models, are refused with a
//! precise error by every runtime — never a panic.

use edgerec_conformance::{golden_bundle, golden_manifest_with as manifest_with};
use edgerec_core::{
    Bundle, ContextKind, LoadError, MODEL_FILE, Manifest, ModelError, SignatureError,
    load_tract_ranker,
};

type Edit = Box<dyn Fn(&mut Manifest)>;

/// Each edit, and the signature error it must produce.
fn mismatches() -> Vec<(&'static str, Edit, SignatureError)> {
    vec![
        (
            "shorter history than the model takes",
            Box::new(|m| m.feature_spec.sequence.max_len = 40),
            SignatureError::Shape {
                name: "item_ids".into(),
                expected: vec![1, 40],
                found: "[1, 50]".into(),
            },
        ),
        (
            "sequence input under another name",
            Box::new(|m| m.feature_spec.sequence.input = "history".into()),
            SignatureError::MissingInput("history".into()),
        ),
        (
            "a context input the spec does not describe",
            Box::new(|m| m.feature_spec.context.clear()),
            SignatureError::UnexpectedInput("hour".into()),
        ),
        (
            "numeric context fed to an int64 input",
            Box::new(|m| m.feature_spec.context[0].kind = ContextKind::Numeric),
            SignatureError::ElemType {
                name: "hour".into(),
                expected: edgerec_core::ElemType::F32,
                found: edgerec_core::ElemType::I64,
            },
        ),
        (
            "output under another name",
            Box::new(|m| m.feature_spec.output.name = "logits".into()),
            SignatureError::MissingOutput("logits".into()),
        ),
    ]
}

#[test]
fn tract_refuses_models_that_do_not_match_their_spec() {
    let (_, model) = golden_bundle();
    for (what, edit, expected) in mismatches() {
        let manifest = manifest_with(&model, edit);
        let err = load_tract_ranker(&manifest, &model).expect_err(what);
        assert_eq!(
            err,
            LoadError::Model(ModelError::Signature(expected)),
            "{what}"
        );
    }
}

#[test]
fn tract_refuses_files_that_are_not_onnx() {
    for (what, bytes) in [
        ("text", b"this is not a model".to_vec()),
        ("empty file", Vec::new()),
        ("half a model", golden_bundle().1[..600_000].to_vec()),
    ] {
        let manifest = manifest_with(&bytes, |_| {});
        let err = load_tract_ranker(&manifest, &bytes).expect_err(what);
        assert!(
            matches!(err, LoadError::Model(ModelError::Load(_))),
            "{what}: {err}"
        );
    }
}

#[test]
fn onnxruntime_refuses_models_that_do_not_match_their_spec() {
    edgerec_onnxruntime::init().expect("ONNX Runtime loads");
    let (_, model) = golden_bundle();
    for (what, edit, expected) in mismatches() {
        let manifest = manifest_with(&model, edit);
        let bundle = Bundle::verify(&manifest, &[(MODEL_FILE, &model)]).expect("digests are right");
        let err = edgerec_onnxruntime::OrtScorer::load(&bundle.manifest.feature_spec, &model, 1)
            .expect_err(what);
        assert_eq!(err, ModelError::Signature(expected), "{what}");
    }
    let spec = serde_json::from_slice::<Manifest>(&golden_bundle().0)
        .expect("parses")
        .feature_spec;
    let err = edgerec_onnxruntime::OrtScorer::load(&spec, b"not onnx", 1).expect_err("garbage");
    assert!(matches!(err, ModelError::Load(_)), "{err}");
}

#[test]
fn wasi_ranker_refuses_models_that_do_not_match_their_spec() {
    let wasm = edgerec_conformance::wasm_artifact("ranker-wasi.wasm");
    let cache = tempfile_dir();
    let engine = edgerec_node::RankerEngine::load(&wasm, &cache).expect("compiles");
    let mut instance = engine.instantiate().expect("instantiates");
    let (_, model) = golden_bundle();
    for (what, edit, expected) in mismatches() {
        let manifest = manifest_with(&model, edit);
        let err = instance
            .load_bundle(&manifest, &model, edgerec_node::DEFAULT_LOAD_DEADLINE)
            .expect_err(what);
        match err {
            edgerec_node::HostError::Guest(report) => {
                assert_eq!(report.kind, "invalid_model", "{what}");
                assert!(
                    report.message.contains(&expected.to_string()),
                    "{what}: {}",
                    report.message
                );
            }
            other => panic!("{what}: {other}"),
        }
    }
    assert!(!instance.is_poisoned());
    let _ = std::fs::remove_dir_all(cache);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("edgerec-bad-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
