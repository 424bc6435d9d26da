//! The trainer's model builder, given the golden model's weights, must rank the golden cases exactly as the
//! independent reference does — in tract and in ONNX Runtime. This pins the Rust-built graph to the architecture
//! the reference implements.

use edgerec_conformance::{check_ranking, golden_bundle, golden_cases};
use edgerec_core::{Bundle, Digest, FileEntry, MODEL_FILE, Manifest, Ranker, load_tract_ranker};
use edgerec_trainer::model::{Architecture, Parameters, inference_graph, parameter_shapes};
use prost::Message;
use tract_onnx::pb;

/// The golden weights, under the builder's parameter names.
fn golden_parameters(manifest: &Manifest) -> Parameters {
    let (_, model) = golden_bundle();
    let proto = pb::ModelProto::decode(model.as_slice()).expect("golden model decodes");
    let graph = proto.graph.expect("a graph");
    let arch = Architecture::default();
    let mut parameters = Parameters::default();
    for (name, dims) in parameter_shapes(&manifest.feature_spec, &arch).expect("supported") {
        let golden_name = match name.as_str() {
            "emb_genre" => "G",
            "emb_hour" => "H",
            other => other,
        };
        let tensor = graph
            .initializer
            .iter()
            .find(|t| t.name == golden_name)
            .unwrap_or_else(|| panic!("golden model has no {golden_name}"));
        let data: Vec<f32> = if tensor.raw_data.is_empty() {
            tensor.float_data.clone()
        } else {
            tensor
                .raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        assert_eq!(tensor.dims, dims, "{name}");
        parameters.0.insert(name, (dims, data));
    }
    parameters
}

fn built_bundle() -> (Vec<u8>, Vec<u8>) {
    let (manifest_json, _) = golden_bundle();
    let mut manifest: Manifest = serde_json::from_slice(&manifest_json).expect("parses");
    let parameters = golden_parameters(&manifest);
    let model = inference_graph(
        &manifest.feature_spec,
        &Architecture::default(),
        &parameters,
    )
    .expect("builds");
    manifest.files.insert(
        MODEL_FILE.into(),
        FileEntry {
            sha256: Digest::of(&model),
            size: model.len() as u64,
        },
    );
    (serde_json::to_vec(&manifest).expect("serialises"), model)
}

#[test]
fn built_graph_ranks_the_golden_cases_in_tract() {
    let (manifest, model) = built_bundle();
    let mut ranker =
        load_tract_ranker(&manifest, &model).expect("the built graph loads and probes");
    for case in golden_cases() {
        let got = ranker.rank(&case.request).expect("ranks");
        check_ranking(&case, &got).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn built_graph_ranks_the_golden_cases_in_onnxruntime() {
    edgerec_onnxruntime::init().expect("ONNX Runtime loads");
    let (manifest, model) = built_bundle();
    let bundle = Bundle::verify(&manifest, &[(MODEL_FILE, &model)]).expect("valid");
    let scorer = edgerec_onnxruntime::OrtScorer::load(&bundle.manifest.feature_spec, &model, 1)
        .expect("ORT loads it");
    let mut ranker = Ranker::new(&bundle, scorer);
    for case in golden_cases() {
        let got = ranker.rank(&case.request).expect("ranks");
        check_ranking(&case, &got).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn freshly_initialised_model_loads_everywhere_with_finite_scores() {
    let (manifest_json, _) = golden_bundle();
    let mut manifest: Manifest = serde_json::from_slice(&manifest_json).expect("parses");
    let arch = Architecture {
        dim: 16,
        blocks: 1,
        ffn_dim: 32,
    };
    let parameters = Parameters::init(&manifest.feature_spec, &arch, 7).expect("initialises");
    assert_eq!(
        parameters,
        Parameters::init(&manifest.feature_spec, &arch, 7).expect("again"),
        "seeded"
    );
    let model = inference_graph(&manifest.feature_spec, &arch, &parameters).expect("builds");
    manifest.files.insert(
        MODEL_FILE.into(),
        FileEntry {
            sha256: Digest::of(&model),
            size: model.len() as u64,
        },
    );
    let manifest = serde_json::to_vec(&manifest).expect("serialises");
    let mut ranker = load_tract_ranker(&manifest, &model).expect("loads and probes finite");
    let ranking = ranker.rank(&golden_cases()[1].request).expect("ranks");
    assert!(ranking.items.iter().all(|i| i.score.is_finite()));
}
