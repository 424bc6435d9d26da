//! The ranker as a WebAssembly component (`wit/ranker.wit`, world `edgerec:ranker/ranker`).
//!
//! Built for `wasm32-wasip2`, where rustc links the component itself. Typed records cross the boundary: the
//! host's lists of ids arrive as strings and are parsed into [`ItemId`]s here, errors leave as a stable
//! [`ErrorKind`] and a message. The conversions also compile natively, so they are tested without a host.

use std::cell::RefCell;
use std::collections::BTreeMap;

use edgerec_core::{
    IdError, ItemId, LoadError, RankError, RankRequest, Ranker, Ranking, TractScorer,
    load_tract_ranker,
};

wit_bindgen::generate!({
    path: "../../wit",
    world: "edgerec:ranker/ranker",
});

use exports::edgerec::ranker::ranking::{
    Bundle, Error, ErrorKind, Guest, GuestModel, Model, ModelInfo, RankRequest as WitRequest,
    Ranked, ScoredItem,
};

/// The component's exports.
#[derive(Debug)]
pub struct Component;

impl Guest for Component {
    type Model = LoadedModel;
}

// Native builds (the unit tests below) leave the exports out: their symbol names (`edgerec:ranker/...`) are not
// valid in a native shared library's version script.
#[cfg(target_family = "wasm")]
export!(Component);

/// One loaded model behind the component's `model` resource. A component instance runs one call at a time, so
/// the ranker's scratch state needs no lock, only interior mutability (resource methods take `&self`).
#[derive(Debug)]
pub struct LoadedModel {
    ranker: RefCell<Ranker<TractScorer>>,
}

impl GuestModel for LoadedModel {
    fn load(bundle: Bundle) -> Result<Model, Error> {
        LoadedModel::from_bundle(&bundle).map(Model::new)
    }

    fn info(&self) -> ModelInfo {
        let ranker = self.ranker.borrow();
        ModelInfo {
            name: ranker.model_name().to_string(),
            version: ranker.model_version().to_string(),
            items: u32::try_from(ranker.vocab().len()).unwrap_or(u32::MAX),
        }
    }

    fn rank(&self, request: WitRequest) -> Result<Ranked, Error> {
        let request = core_request(request)?;
        let ranking = self
            .ranker
            .borrow_mut()
            .rank(&request)
            .map_err(|e| rank_error(&e))?;
        Ok(ranked(ranking))
    }
}

impl LoadedModel {
    /// Verifies, loads and probes a bundle (what the resource's `load` returns, before it becomes a handle).
    pub fn from_bundle(bundle: &Bundle) -> Result<Self, Error> {
        let ranker =
            load_tract_ranker(&bundle.manifest, &bundle.model).map_err(|e| load_error(&e))?;
        Ok(Self {
            ranker: RefCell::new(ranker),
        })
    }
}

fn core_request(request: WitRequest) -> Result<RankRequest, Error> {
    let ids = |texts: Vec<String>| ItemId::parse_all(texts).map_err(|e| id_error(&e));
    Ok(RankRequest {
        recent_items: ids(request.recent_items)?,
        k: request.k,
        exclude: ids(request.exclude)?,
        candidates: request.candidates.map(ids).transpose()?,
        context: request
            .context
            .into_iter()
            .map(|c| (c.name, c.value))
            .collect::<BTreeMap<_, _>>(),
        exclude_seen: request.exclude_seen,
    })
}

fn ranked(ranking: Ranking) -> Ranked {
    Ranked {
        items: ranking
            .items
            .into_iter()
            .map(|scored| ScoredItem {
                item: scored.item.into_string(),
                score: scored.score,
            })
            .collect(),
        unknown_items: ranking
            .unknown_items
            .into_iter()
            .map(ItemId::into_string)
            .collect(),
    }
}

fn id_error(error: &IdError) -> Error {
    Error {
        kind: ErrorKind::InvalidRequest,
        message: error.to_string(),
    }
}

fn load_error(error: &LoadError) -> Error {
    let kind = match error {
        LoadError::Bundle(_) => ErrorKind::InvalidBundle,
        LoadError::Model(_) => ErrorKind::InvalidModel,
        LoadError::Probe(_) => ErrorKind::ProbeFailed,
    };
    Error {
        kind,
        message: error.to_string(),
    }
}

fn rank_error(error: &RankError) -> Error {
    let kind = match error {
        RankError::ZeroK => ErrorKind::InvalidK,
        RankError::TooLarge { .. } => ErrorKind::RequestTooLarge,
        RankError::UnknownCandidate(_) => ErrorKind::UnknownCandidate,
        RankError::Feature(_) => ErrorKind::InvalidFeatures,
        RankError::Score(_) => ErrorKind::RuntimeError,
        RankError::OutputLength { .. } => ErrorKind::ModelOutputMismatch,
        RankError::NonFiniteScore { .. } => ErrorKind::NonFiniteScore,
    };
    Error {
        kind,
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use exports::edgerec::ranker::ranking::ContextValue;

    use super::*;

    fn golden() -> Bundle {
        let dir = std::path::Path::new(
            &std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"),
        )
        .join("../../testdata/golden/bundle");
        let read = |n: &str| std::fs::read(dir.join(n)).expect("golden bundle is committed");
        Bundle {
            manifest: read("manifest.json"),
            model: read("model.onnx"),
        }
    }

    fn request(recent: &[&str], k: u32) -> WitRequest {
        WitRequest {
            recent_items: recent.iter().map(|s| s.to_string()).collect(),
            k,
            exclude: Vec::new(),
            candidates: None,
            context: Vec::new(),
            exclude_seen: true,
        }
    }

    #[test]
    fn loads_and_ranks_like_the_core_ranker() {
        let bundle = golden();
        let model = LoadedModel::from_bundle(&bundle).expect("the golden bundle loads");
        let info = model.info();
        assert_eq!((info.name.as_str(), info.items), ("golden-sasrec", 3706));

        let mut core = load_tract_ranker(&bundle.manifest, &bundle.model).expect("loads");
        let mut wit = request(&["m1", "m2", "not-in-the-model"], 5);
        wit.exclude = vec!["m9".into()];
        wit.context = vec![ContextValue {
            name: "hour".into(),
            value: 13.0,
        }];
        let expected = core
            .rank(&core_request(wit.clone()).expect("valid"))
            .expect("ranks");
        let got = model.rank(wit).expect("ranks");
        assert_eq!(got.items.len(), 5);
        for (got, expected) in got.items.iter().zip(&expected.items) {
            assert_eq!(
                (got.item.as_str(), got.score),
                (expected.item.as_str(), expected.score)
            );
        }
        assert_eq!(got.unknown_items, ["not-in-the-model"]);
    }

    #[test]
    fn errors_carry_their_typed_kind() {
        let mut bundle = golden();
        bundle.model[100] ^= 0xff;
        let err = LoadedModel::from_bundle(&bundle).expect_err("tampered");
        assert_eq!(err.kind, ErrorKind::InvalidBundle);
        assert!(err.message.contains("model.onnx"), "{}", err.message);

        let model = LoadedModel::from_bundle(&golden()).expect("loads");
        let mut unknown = request(&[], 3);
        unknown.candidates = Some(vec!["nope".into()]);
        let mut bad_hour = request(&[], 3);
        bad_hour.context = vec![ContextValue {
            name: "hour".into(),
            value: 99.0,
        }];
        for (what, request, kind) in [
            ("k = 0", request(&[], 0), ErrorKind::InvalidK),
            ("empty id", request(&[""], 3), ErrorKind::InvalidRequest),
            ("unknown candidate", unknown, ErrorKind::UnknownCandidate),
            ("hour out of range", bad_hour, ErrorKind::InvalidFeatures),
        ] {
            let err = model.rank(request).expect_err(what);
            assert_eq!(err.kind, kind, "{what}: {}", err.message);
        }
    }
}
