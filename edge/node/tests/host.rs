//! The wasmtime host against the real WASI ranker: caching, deadlines, poisoning, bad modules and bad bundles.

use std::time::Duration;

use edgerec_conformance::{golden_bundle, wasm_artifact};
use edgerec_core::{ItemId, RankRequest};
use edgerec_node::{DEFAULT_LOAD_DEADLINE, HostError, RankerEngine};

fn engine(cache: &std::path::Path) -> RankerEngine {
    RankerEngine::load(&wasm_artifact("ranker-wasi.wasm"), cache).expect("the WASI ranker compiles")
}

fn items(ids: &[&str]) -> Vec<ItemId> {
    ItemId::parse_all(ids.iter().copied()).expect("item ids")
}

#[test]
fn compiled_module_is_cached_and_a_corrupt_cache_is_recompiled() {
    let cache = tempfile::tempdir().expect("temp dir");
    drop(engine(cache.path()));
    let cached: Vec<_> = std::fs::read_dir(cache.path())
        .expect("cache dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(cached.len(), 1, "one precompiled module: {cached:?}");
    assert!(cached[0].extension().is_some_and(|e| e == "cwasm"));

    // A second engine deserialises the cached code, and ranks exactly like a fresh compile.
    let (manifest, model) = golden_bundle();
    let request = RankRequest::new(items(&["m1", "m7"]), 5);
    let mut rankings = Vec::new();
    for _ in 0..2 {
        let mut instance = engine(cache.path()).instantiate().expect("instantiates");
        instance
            .load_bundle(&manifest, &model, DEFAULT_LOAD_DEADLINE)
            .expect("loads");
        rankings.push(
            instance
                .rank(&request, Duration::from_secs(5))
                .expect("ranks"),
        );
    }
    assert_eq!(rankings[0], rankings[1]);

    std::fs::write(&cached[0], b"not machine code").expect("corrupt the cache");
    let mut instance = engine(cache.path())
        .instantiate()
        .expect("recompiled after a corrupt cache");
    instance
        .load_bundle(&manifest, &model, DEFAULT_LOAD_DEADLINE)
        .expect("loads");
    assert_eq!(
        instance
            .rank(&request, Duration::from_secs(5))
            .expect("ranks"),
        rankings[0]
    );
}

#[test]
fn deadline_stops_the_call_and_poisons_only_that_instance() {
    let cache = tempfile::tempdir().expect("temp dir");
    let engine = engine(cache.path());
    let (manifest, model) = golden_bundle();
    let mut instance = engine.instantiate().expect("instantiates");
    // Parsing and optimising the model takes tens of milliseconds: far beyond one millisecond.
    let err = instance
        .load_bundle(&manifest, &model, Duration::from_millis(1))
        .expect_err("deadline");
    assert!(matches!(err, HostError::DeadlineExceeded(_)), "{err}");
    assert!(instance.is_poisoned());
    assert!(matches!(
        instance.rank(&RankRequest::new(vec![], 3), Duration::from_secs(1)),
        Err(HostError::Poisoned)
    ));

    let mut fresh = engine.instantiate().expect("a new instance");
    fresh
        .load_bundle(&manifest, &model, DEFAULT_LOAD_DEADLINE)
        .expect("loads");
    assert_eq!(
        fresh
            .rank(&RankRequest::new(vec![], 3), Duration::from_secs(5))
            .expect("ranks")
            .items
            .len(),
        3
    );

    // Deadlines keep firing for an instance that outlives its engine.
    let mut orphan = engine.instantiate().expect("another instance");
    drop(engine);
    let err = orphan
        .load_bundle(&manifest, &model, Duration::from_millis(1))
        .expect_err("deadline");
    assert!(matches!(err, HostError::DeadlineExceeded(_)), "{err}");
}

#[test]
fn bad_bundles_and_requests_are_refused_and_the_current_model_keeps_serving() {
    let cache = tempfile::tempdir().expect("temp dir");
    let mut instance = engine(cache.path()).instantiate().expect("instantiates");
    let (manifest, model) = golden_bundle();

    let no_model = instance
        .rank(&RankRequest::new(vec![], 3), Duration::from_secs(1))
        .expect_err("no model yet");
    assert!(matches!(&no_model, HostError::NoModel), "{no_model}");

    instance
        .load_bundle(&manifest, &model, DEFAULT_LOAD_DEADLINE)
        .expect("loads");
    let before = instance
        .rank(&RankRequest::new(items(&["m3"]), 5), Duration::from_secs(5))
        .expect("ranks");

    let mut tampered = model.clone();
    tampered[500] ^= 0x55;
    let truncated = &model[..model.len() / 2];
    for (what, bad_manifest, bad_model) in [
        ("tampered model", manifest.as_slice(), tampered.as_slice()),
        ("truncated model", manifest.as_slice(), truncated),
        (
            "manifest that is not JSON",
            b"{\"format_version\": 1".as_slice(),
            model.as_slice(),
        ),
        ("empty bundle", b"".as_slice(), b"".as_slice()),
    ] {
        let err = instance
            .load_bundle(bad_manifest, bad_model, DEFAULT_LOAD_DEADLINE)
            .expect_err(what);
        assert!(
            matches!(&err, HostError::Guest(r) if r.kind == "invalid_bundle"),
            "{what}: {err}"
        );
    }
    let after = instance
        .rank(&RankRequest::new(items(&["m3"]), 5), Duration::from_secs(5))
        .expect("still ranks");
    assert_eq!(
        before, after,
        "a refused bundle must leave the current model serving"
    );

    let mut zero_k = RankRequest::new(vec![], 0);
    let err = instance
        .rank(&zero_k, Duration::from_secs(1))
        .expect_err("k = 0");
    assert!(
        matches!(&err, HostError::Guest(r) if r.kind == "invalid_k"),
        "{err}"
    );
    zero_k.k = u32::MAX;
    assert_eq!(
        instance
            .rank(&zero_k, Duration::from_secs(5))
            .expect("huge k ranks everything")
            .items
            .len(),
        3706
    );
    let mut unknown = RankRequest::new(vec![], 3);
    unknown.candidates = Some(items(&["m1", "not-in-the-model"]));
    let err = instance
        .rank(&unknown, Duration::from_secs(1))
        .expect_err("unknown candidate");
    assert!(
        matches!(&err, HostError::Guest(r) if r.kind == "unknown_candidate"
            && r.message.contains("not-in-the-model")),
        "{err}"
    );
    assert!(
        !instance.is_poisoned(),
        "refused input must not poison the instance"
    );
}

#[test]
fn modules_that_are_not_the_ranker_are_refused() {
    let err = RankerEngine::from_wasm(b"definitely not wasm").expect_err("garbage");
    assert!(matches!(err, HostError::Compile(_)), "{err}");
    // A core module (as the WASI preview 1 ranker was) is not a component.
    let err = RankerEngine::from_wasm(b"\0asm\x01\0\0\0").expect_err("a core module");
    assert!(matches!(err, HostError::Compile(_)), "{err}");
    // The smallest valid component: it compiles, but does not export the ranking interface.
    let err = RankerEngine::from_wasm(b"\0asm\x0d\0\x01\0").expect_err("no exports");
    assert!(
        matches!(&err, HostError::NotTheRanker(message) if message.contains("edgerec:ranker/ranking@0.1.0")),
        "{err}"
    );
}

/// A model's pool has a fixed size: rankings beyond it wait at most the pool's wait, then are refused as busy
/// (the node answers those by popularity); nothing builds extra instances.
#[test]
fn a_full_pool_answers_busy_instead_of_growing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use edgerec_core::{Digest, MODEL_FILE};
    use edgerec_node::model::{LoadedModel, ModelFiles, PoolSettings};
    use edgerec_registry_api::records::VersionRecord;

    let cache = tempfile::tempdir().expect("temp dir");
    let (manifest, model) = golden_bundle();
    let files = ModelFiles {
        record: VersionRecord {
            model: edgerec_core::ModelName::parse("golden-sasrec").expect("a name"),
            version: edgerec_core::Version::parse("1.0.0").expect("a version"),
            manifest_digest: Digest::of(&manifest),
            files: [(MODEL_FILE.to_string(), Digest::of(&model))].into(),
            metrics: Default::default(),
            lineage: Default::default(),
            items: 3706,
            published_by: "test".into(),
            published_at: 0,
            signature: String::new(),
        },
        manifest: manifest.into(),
        model: model.into(),
    };
    let settings = PoolSettings {
        instances: 1,
        wait: Duration::ZERO,
        memory_bytes: None,
        rank_deadline: Duration::from_secs(5),
        load_deadline: DEFAULT_LOAD_DEADLINE,
    };
    let loaded = Arc::new(
        LoadedModel::load(Arc::new(engine(cache.path())), files, &settings).expect("loads"),
    );
    let (answered, busy) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let rankers: Vec<_> = (0..3)
        .map(|_| {
            let (loaded, answered, busy) = (loaded.clone(), answered.clone(), busy.clone());
            std::thread::spawn(move || {
                let request = RankRequest::new(items(&["m1", "m7"]), 10);
                for _ in 0..200 {
                    match loaded.rank(&request) {
                        Ok(ranking) => {
                            assert_eq!(ranking.items.len(), 10);
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(HostError::Busy(_)) => {
                            busy.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(other) => panic!("unexpected {other}"),
                    }
                }
            })
        })
        .collect();
    for ranker in rankers {
        ranker.join().expect("the ranker thread");
    }
    let (answered, busy) = (
        answered.load(Ordering::Relaxed),
        busy.load(Ordering::Relaxed),
    );
    assert_eq!(answered + busy, 600);
    assert!(answered > 0, "the one instance answered");
    assert!(
        busy > 0,
        "three threads on one instance with no wait must meet a busy pool"
    );
    let (limit, used) = loaded.memory();
    assert!(used > 0 && used < limit, "{used} of {limit} bytes");
}
