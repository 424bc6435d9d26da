//! The registry's rules, run against both backends — the embedded store, and S3 + DynamoDB (s3s-fs and DynamoDB
//! Local on 127.0.0.1, which `scripts/test.sh` starts through `scripts/aws-local.sh`): publishing verifies and
//! signs, versions are immutable, plans are validated, conditional and audited, rollback restores the previous
//! plan, tokens authorise by scope, and an unreachable backend loses nothing.

use crate::support;

use support::{aws_config, aws_registry, embedded_registry, golden, golden_as, run};

use edgerec_core::{Digest, MODEL_FILE, Manifest, ModelName, VariantName, Version};
use edgerec_registry::aws::{AwsConfig, AwsStore};
use edgerec_registry::embedded::EmbeddedStore;
use edgerec_registry::service::{Published, Registry, RegistryError};
use edgerec_registry::signing::ManifestSigner;
use edgerec_registry::store::Store;
use edgerec_registry_api::records::{PlanRequest, Scope, Variant};
use edgerec_registry_api::signature::verify_manifest_signature;

/// Runs `check` on a fresh embedded registry and on a fresh S3 + DynamoDB registry.
macro_rules! on_both_backends {
    ($check:ident) => {
        mod $check {
            #[test]
            fn embedded() {
                let dir = tempfile::tempdir().expect("temporary folder");
                super::$check(&super::open_registry(dir.path()));
            }

            #[test]
            fn s3_and_dynamodb() {
                let dir = tempfile::tempdir().expect("temporary folder");
                let config = super::aws_config(stringify!($check));
                super::$check(&super::aws_registry(&config, dir.path(), 8 << 20));
            }
        }
    };
}

fn open_registry(dir: &std::path::Path) -> Registry<EmbeddedStore> {
    embedded_registry(dir, 8 << 20)
}

fn publish<S: Store>(registry: &Registry<S>, version: &str) {
    let (_, model) = golden();
    run(registry.upload_blob(&Digest::of(&model).to_string(), &model)).expect("uploads the model");
    run(registry.publish("golden-sasrec", &golden_as(version), "alice")).expect("publishes");
}

fn plan(variants: &[(&str, &str, u32)], reason: &str) -> PlanRequest {
    PlanRequest {
        variants: variants
            .iter()
            .map(|&(name, version, weight)| Variant {
                name: VariantName::parse(name).expect("a name"),
                model: ModelName::parse("golden-sasrec").expect("a name"),
                version: Version::parse(version).expect("a version"),
                weight,
            })
            .collect(),
        salt: None,
        reason: reason.into(),
    }
}

on_both_backends!(publishing_verifies_signs_and_keeps_versions_immutable);
fn publishing_verifies_signs_and_keeps_versions_immutable<S: Store>(registry: &Registry<S>) {
    let (manifest, model) = golden();

    // Nothing uploaded yet: the manifest names a blob the registry lacks.
    let error = run(registry.publish("golden-sasrec", &manifest, "alice")).expect_err("refused");
    assert!(
        matches!(&error, RegistryError::Unprocessable(m) if m.contains("has not been uploaded")),
        "{error}"
    );

    // A truncated upload does not hash to its digest and is not stored.
    let digest = Digest::of(&model).to_string();
    let error = run(registry.upload_blob(&digest, &model[..1000])).expect_err("refused");
    assert!(
        matches!(error, RegistryError::DigestMismatch { .. }),
        "{error}"
    );
    assert!(matches!(
        run(registry.blob(&digest)),
        Err(RegistryError::NotFound(_))
    ));
    let small_dir = tempfile::tempdir().expect("dir");
    let small = Registry {
        max_upload_bytes: 1000,
        probe: std::sync::Arc::new(edgerec_registry::service::InProcessProbe),
        ..open_registry(small_dir.path())
    };
    assert!(matches!(
        run(small.upload_blob(&digest, &model)),
        Err(RegistryError::TooLarge { .. })
    ));

    run(registry.upload_blob(&format!("sha256:{digest}"), &model)).expect("uploads");
    let published = run(registry.publish("golden-sasrec", &manifest, "alice")).expect("publishes");
    assert!(published.created);
    let record = published.version;
    assert_eq!(record.manifest_digest, Digest::of(&manifest));
    assert_eq!(
        (record.items, record.published_by.as_str()),
        (3706, "alice")
    );
    verify_manifest_signature(
        &registry.signer.public_key_hex(),
        &record.manifest_digest,
        &record.signature,
    )
    .expect("the registry's signature verifies");
    assert_eq!(
        run(registry.blob(&record.manifest_digest.to_string())).expect("manifest blob"),
        manifest
    );

    // Same manifest again: the same version. Another manifest under the same version: refused.
    assert_eq!(
        run(registry.publish("golden-sasrec", &manifest, "bob")).expect("idempotent"),
        Published {
            version: record,
            created: false
        }
    );
    let mut changed: Manifest = serde_json::from_slice(&manifest).expect("parses");
    changed.metrics.insert("hr@10".into(), 0.5);
    let changed = serde_json::to_vec(&changed).expect("serialises");
    assert!(matches!(
        run(registry.publish("golden-sasrec", &changed, "bob")),
        Err(RegistryError::Conflict(_))
    ));

    // A manifest that names another model, or is not JSON.
    assert!(matches!(
        run(registry.publish("other", &manifest, "bob")),
        Err(RegistryError::BadRequest(_))
    ));
    assert!(matches!(
        run(registry.publish("golden-sasrec", b"{", "bob")),
        Err(RegistryError::BadRequest(_))
    ));
}

on_both_backends!(a_model_that_does_not_serve_is_refused_and_leaves_nothing);
fn a_model_that_does_not_serve_is_refused_and_leaves_nothing<S: Store>(registry: &Registry<S>) {
    // Valid digests, but the "model" is not ONNX.
    let not_onnx = b"definitely not a protobuf".to_vec();
    let mut manifest: Manifest = serde_json::from_slice(&golden().0).expect("parses");
    manifest.version = "9.9.9".into();
    let entry = manifest.files.get_mut(MODEL_FILE).expect("model entry");
    entry.sha256 = Digest::of(&not_onnx);
    entry.size = not_onnx.len() as u64;
    let manifest = serde_json::to_vec(&manifest).expect("serialises");
    run(registry.upload_blob(&Digest::of(&not_onnx).to_string(), &not_onnx)).expect("uploads");
    let error = run(registry.publish("golden-sasrec", &manifest, "alice")).expect_err("refused");
    assert!(
        matches!(&error, RegistryError::Unprocessable(m) if m.contains("not servable")),
        "{error}"
    );
    assert!(
        run(registry.store.list_versions(None))
            .expect("lists")
            .is_empty()
    );
    assert!(run(registry.store.audit(10)).expect("audit").is_empty());

    // One large blob listed under many names (a manifest that would make the registry read it over and over), a
    // file name that is a path, and a bundle past the size limit: all refused from the manifest alone, before any
    // blob is read (none of these blobs was uploaded, so reading one would fail differently).
    let (golden_manifest, golden_model) = golden();
    let base: Manifest = serde_json::from_slice(&golden_manifest).expect("parses");
    let entry = base.files[MODEL_FILE].clone();
    let mut aliased = base.clone();
    aliased.version = "9.9.10".into();
    for i in 0..10 {
        aliased
            .files
            .insert(format!("alias-{i}.bin"), entry.clone());
    }
    let mut traversal = base.clone();
    traversal.version = "9.9.11".into();
    traversal.files.insert(
        "../../etc/passwd".into(),
        edgerec_core::FileEntry {
            sha256: Digest::of(b"x"),
            size: 1,
        },
    );
    let mut huge = base.clone();
    huge.version = "9.9.12".into();
    huge.files.get_mut(MODEL_FILE).expect("model").size = u64::MAX / 2;
    for (manifest, expected) in [
        (aliased, "same content"),
        (traversal, "not a bundle file name"),
        (huge, "limit"),
    ] {
        let json = serde_json::to_vec(&manifest).expect("serialises");
        let error = run(registry.publish("golden-sasrec", &json, "alice")).expect_err("refused");
        assert!(
            matches!(&error, RegistryError::Unprocessable(m) if m.contains(expected)),
            "{}: {error}",
            manifest.version
        );
    }
    assert!(golden_model.len() as u64 == entry.size);
    assert!(
        run(registry.store.list_versions(None))
            .expect("lists")
            .is_empty()
    );
}

on_both_backends!(plans_are_validated_conditional_audited_and_roll_back);
fn plans_are_validated_conditional_audited_and_roll_back<S: Store>(registry: &Registry<S>) {
    publish(registry, "1.0.0");
    publish(registry, "1.1.0");

    for (bad, why) in [
        (
            plan(&[("a", "1.0.0", 50), ("b", "1.1.0", 40)], "x"),
            "sum to 90%",
        ),
        (plan(&[("a", "2.0.0", 100)], "x"), "not published"),
        (
            plan(&[("a", "1.0.0", 50), ("a", "1.1.0", 50)], "x"),
            "appears twice",
        ),
        (plan(&[], "x"), "at least one variant"),
    ] {
        let error = run(registry.deploy("home", bad, None, "carol")).expect_err("refused");
        assert!(
            matches!(&error, RegistryError::Unprocessable(m) if m.contains(why)),
            "{error}"
        );
    }
    assert!(
        run(registry.store.get_plan("home"))
            .expect("reads")
            .is_none()
    );

    let first = run(registry.deploy(
        "home",
        plan(&[("control", "1.0.0", 100)], "launch"),
        None,
        "carol",
    ))
    .expect("first plan");
    assert_eq!(first.revision, 1);
    // Updating without the revision read, or with a stale one, is refused.
    let update = plan(
        &[("control", "1.0.0", 90), ("candidate", "1.1.0", 10)],
        "A/B test 1.1.0",
    );
    assert!(matches!(
        run(registry.deploy("home", update.clone(), None, "carol")),
        Err(RegistryError::PreconditionRequired(_))
    ));
    assert!(matches!(
        run(registry.deploy("home", update.clone(), Some(7), "carol")),
        Err(RegistryError::PreconditionFailed(_))
    ));
    let second = run(registry.deploy("home", update.clone(), Some(1), "carol")).expect("updates");
    assert_eq!(
        (second.revision, second.salt.as_str()),
        (2, first.salt.as_str())
    );
    // Two writers who both read revision 1: the second loses, nothing is overwritten.
    assert!(matches!(
        run(registry.deploy(
            "home",
            plan(&[("control", "1.1.0", 100)], "race"),
            Some(1),
            "dave"
        )),
        Err(RegistryError::PreconditionFailed(_))
    ));

    // A version a plan serves cannot be deleted; rollback restores revision 1's variants as revision 3.
    assert!(matches!(
        run(registry.delete_version("golden-sasrec", "1.1.0", "carol", "cleanup")),
        Err(RegistryError::Conflict(_))
    ));
    let rolled =
        run(registry.rollback("home", "candidate regressed", None, "carol")).expect("rolls back");
    assert_eq!((rolled.revision, &rolled.variants), (3, &first.variants));
    run(registry.delete_version("golden-sasrec", "1.1.0", "carol", "cleanup")).expect("deletes");
    // Rolling back again would restore a plan naming the deleted version.
    assert!(matches!(
        run(registry.rollback("home", "again", Some(3), "carol")),
        Err(RegistryError::Unprocessable(_))
    ));

    let history = run(registry.store.plan_history("home")).expect("history");
    assert_eq!(
        history.iter().map(|p| p.revision).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let audit = run(registry.store.audit(100)).expect("audit");
    let actions: Vec<&str> = audit.iter().rev().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "version.publish",
            "version.publish",
            "plan.update",
            "plan.update",
            "plan.rollback",
            "version.delete"
        ]
    );
    assert_eq!(audit[1].reason, "candidate regressed");
    assert!(audit.windows(2).all(|w| w[0].sequence == w[1].sequence + 1));
}

on_both_backends!(tokens_authorise_by_scope_and_are_stored_hashed);
fn tokens_authorise_by_scope_and_are_stored_hashed<S: Store>(registry: &Registry<S>) {
    let issued = run(registry.create_token("ci", vec![Scope::Publish, Scope::Read], "admin"))
        .expect("issues");
    assert!(issued.secret.starts_with("erk_"));
    let stored = run(registry.store.list_tokens()).expect("lists");
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0].secret_sha256, issued.secret);
    assert!(
        !serde_json::to_string(&stored)
            .expect("json")
            .contains(&issued.secret)
    );

    run(registry.authorize(Some(&issued.secret), Scope::Publish)).expect("publish allowed");
    assert!(matches!(
        run(registry.authorize(Some(&issued.secret), Scope::Deploy)),
        Err(RegistryError::Forbidden(_))
    ));
    assert!(matches!(
        run(registry.authorize(Some("erk_wrong"), Scope::Read)),
        Err(RegistryError::Unauthenticated(_))
    ));
    assert!(matches!(
        run(registry.authorize(None, Scope::Read)),
        Err(RegistryError::Unauthenticated(_))
    ));
    let admin = run(registry.create_token("root", vec![Scope::Admin], "admin")).expect("issues");
    run(registry.authorize(Some(&admin.secret), Scope::Deploy)).expect("admin allows everything");

    run(registry.revoke_token(&issued.token.id, "admin")).expect("revokes");
    assert!(matches!(
        run(registry.authorize(Some(&issued.secret), Scope::Read)),
        Err(RegistryError::Unauthenticated(_))
    ));
}

#[test]
fn a_second_process_cannot_open_a_registry_in_use() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let _first = EmbeddedStore::open(dir.path()).expect("opens");
    let error = EmbeddedStore::open(dir.path()).expect_err("refused");
    assert!(error.to_string().contains("in use"), "{error}");
}

/// The metadata store goes away between the blob upload and the publish: 503, and nothing becomes visible. Then S3
/// goes away: the upload is refused the same way.
#[test]
fn an_unreachable_backend_is_unavailable_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let config = aws_config("unreachable");
    let registry = aws_registry(&config, dir.path(), 8 << 20);
    let (_, model) = golden();
    run(registry.upload_blob(&Digest::of(&model).to_string(), &model)).expect("uploads");
    let nowhere = Some("http://127.0.0.1:9".to_string());
    let without_dynamodb = Registry {
        store: AwsStore::connect(&AwsConfig {
            dynamodb_endpoint: nowhere.clone(),
            ..config.clone()
        }),
        signer: ManifestSigner::load_or_create(&dir.path().join("signing.key")).expect("key"),
        max_upload_bytes: 8 << 20,
        probe: std::sync::Arc::new(edgerec_registry::service::InProcessProbe),
    };
    let error = run(without_dynamodb.publish("golden-sasrec", &golden_as("2.0.0"), "alice"))
        .expect_err("refused");
    assert!(matches!(error, RegistryError::Unavailable(_)), "{error}");
    assert!(
        run(registry.store.list_versions(None))
            .expect("lists")
            .is_empty()
    );
    assert!(run(registry.store.audit(10)).expect("audit").is_empty());

    let without_s3 = Registry {
        store: AwsStore::connect(&AwsConfig {
            s3_endpoint: nowhere,
            ..config
        }),
        signer: ManifestSigner::load_or_create(&dir.path().join("signing.key")).expect("key"),
        max_upload_bytes: 8 << 20,
        probe: std::sync::Arc::new(edgerec_registry::service::InProcessProbe),
    };
    let error =
        run(without_s3.upload_blob(&Digest::of(b"x").to_string(), b"x")).expect_err("refused");
    assert!(matches!(error, RegistryError::Unavailable(_)), "{error}");
}

#[test]
fn a_damaged_blob_is_replaced_by_the_next_upload_and_a_lost_key_is_not_remade() {
    let dir = tempfile::tempdir().expect("dir");
    let config = edgerec_registry::server::RegistryConfig {
        root: dir.path().to_path_buf(),
        ..Default::default()
    };
    let registry = config.open_embedded().expect("opens");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("signing.key"))
            .expect("the key")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the signing key is readable by its owner only"
        );
    }
    let (manifest, model) = golden();
    let digest = Digest::of(&model).to_string();
    run(registry.upload_blob(&digest, &model)).expect("uploads");
    let stored = dir.path().join("blobs").join("sha256").join(&digest);
    std::fs::write(&stored, &model[..100]).expect("truncates the stored copy");
    run(registry.upload_blob(&digest, &model)).expect("uploads again");
    assert_eq!(
        std::fs::read(&stored).expect("reads"),
        model,
        "the damaged copy was replaced"
    );
    run(registry.publish("golden-sasrec", &manifest, "alice")).expect("publishes");
    drop(registry);

    // The key that signed the published versions is gone: the registry does not start with a new one.
    std::fs::remove_file(dir.path().join("signing.key")).expect("removes the key");
    let error = config.open_embedded().expect_err("refuses to start");
    assert!(error.to_string().contains("no signing key"), "{error}");
    assert!(
        !dir.path().join("signing.key").exists(),
        "no new key was made"
    );
}

on_both_backends!(keys_rotate_in_a_chain_each_retired_key_signs);

/// Two rotations: each statement is signed by the key it retires and lands in the store's chain, which a verifier
/// configured with the first key follows; plans and records are signed with the newest key; a rotation from a key
/// that is no longer the current one is refused and leaves the chain as it was.
fn keys_rotate_in_a_chain_each_retired_key_signs<S: Store>(registry: &Registry<S>) {
    use edgerec_registry_api::keys::{KeyRotation, TrustedKeys, key_id};
    publish(registry, "1.0.0");
    let first = registry.signer.public_key_hex();
    let one = run(registry.rotate_key(3_600_000, "alice")).expect("rotates");
    let two = run(registry.rotate_key(0, "alice")).expect("rotates again");
    assert_eq!(
        (
            one.from_key.as_str(),
            one.to_key.as_str(),
            two.from_key.as_str()
        ),
        (first.as_str(), two.from_key.as_str(), one.to_key.as_str())
    );
    assert_eq!(one.old_valid_until - one.issued_at, 3_600_000);
    let chain = run(registry.store.key_rotations()).expect("the chain");
    assert_eq!(chain, [one.clone(), two.clone()]);
    assert_eq!(registry.signer.rotations(), chain);
    let trusted = TrustedKeys::from_chain(&first, &chain).expect("follows the chain");
    assert_eq!(
        trusted.current().public_key,
        registry.signer.public_key_hex()
    );
    assert_eq!(
        registry.signer.key_id(),
        key_id(&two.to_key).expect("an id")
    );
    // Records are re-signed with the current key when read.
    let record = run(registry.version("golden-sasrec", "1.0.0")).expect("the record");
    verify_manifest_signature(&two.to_key, &record.manifest_digest, &record.signature)
        .expect("signed by the current key");
    // A record written into the store by someone without a key is served as it was written: never vouched for.
    let planted = edgerec_registry_api::records::VersionRecord {
        version: Version::parse("6.6.6").expect("a version"),
        signature: registry.signer.sign(&Digest::of(b"another manifest")),
        ..record.clone()
    };
    let audit = |action: &'static str| edgerec_registry::store::AuditDraft {
        actor: "mallory".into(),
        action,
        target: String::new(),
        reason: String::new(),
        detail: serde_json::Value::Null,
    };
    run(registry
        .store
        .insert_version(&planted, audit("version.publish")))
    .expect("planted");
    let served = run(registry.version("golden-sasrec", "6.6.6")).expect("the record");
    assert_eq!(served.signature, planted.signature);
    assert!(
        verify_manifest_signature(&two.to_key, &served.manifest_digest, &served.signature).is_err()
    );
    // A second registry process still holding the middle key tries to rotate: refused, nothing written.
    let stale = KeyRotation {
        signature: String::new(),
        ..one.clone()
    };
    assert!(matches!(
        run(registry.store.add_key_rotation(&stale, audit("key.rotate"))),
        Err(edgerec_registry::store::StoreError::Conflict(_))
    ));
    assert_eq!(
        run(registry.store.key_rotations())
            .expect("the chain")
            .len(),
        2
    );
    // A chain whose links do not follow one another (an item planted in the store) is not adopted.
    let mut unlinked = chain.clone();
    unlinked.swap(0, 1);
    assert!(registry.signer.adopt(unlinked).is_err());
    assert_eq!(registry.signer.rotations(), chain);
    let audit = run(registry.store.audit(3)).expect("audit");
    assert_eq!(
        (audit[1].action.as_str(), audit[2].action.as_str()),
        ("key.rotate", "key.rotate")
    );
}

#[test]
fn a_registry_started_with_a_retired_key_refuses_and_an_interrupted_rotation_completes() {
    let dir = tempfile::tempdir().expect("dir");
    let config = edgerec_registry::server::RegistryConfig {
        root: dir.path().to_path_buf(),
        ..Default::default()
    };
    let key_file = dir.path().join("signing.key");
    let registry = config.open_embedded().expect("opens");
    let retired = std::fs::read(&key_file).expect("the key");
    run(registry.rotate_key(60_000, "alice")).expect("rotates");
    let current = registry.signer.public_key_hex();
    drop(registry);
    // The retired key's file put back (a replica that missed the rotation): refused, saying which key to install.
    let rotated = std::fs::read(&key_file).expect("the new key");
    std::fs::write(&key_file, &retired).expect("puts the old key back");
    let error = config.open_embedded().expect_err("refuses the retired key");
    let current_id = edgerec_registry_api::keys::key_id(&current).expect("an id");
    assert!(error.to_string().contains(&current_id), "{error}");
    // A crash after the statement landed but before the new key file moved into place: completed at start.
    let prepared = dir.path().join(format!("signing.next-{current_id}"));
    std::fs::write(&prepared, &rotated).expect("the prepared key");
    let registry = config.open_embedded().expect("completes the rotation");
    assert_eq!(registry.signer.public_key_hex(), current);
    assert_eq!(std::fs::read(&key_file).expect("the key"), rotated);
    assert!(!prepared.exists());
    // Two rotations at once: whichever way they interleave, neither loses the other's key (one may be refused),
    // and the key file holds the chain's head.
    let results: Vec<_> = std::thread::scope(|scope| {
        let rotations: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| run(registry.rotate_key(60_000, "alice"))))
            .collect();
        rotations
            .into_iter()
            .map(|r| r.join().expect("rotates"))
            .collect()
    });
    assert!(results.iter().any(Result::is_ok), "{results:?}");
    let chain = run(registry.store.key_rotations()).expect("the chain");
    let head = chain.last().expect("rotations").to_key.clone();
    assert_eq!(
        chain.len(),
        1 + results.iter().filter(|r| r.is_ok()).count()
    );
    assert_eq!(registry.signer.public_key_hex(), head);
    drop(registry);
    let reopened = config.open_embedded().expect("opens with the chain's head");
    assert_eq!(reopened.signer.public_key_hex(), head);
}

/// Replicas of the S3 + DynamoDB backend share the store and the key file: a rotation made by one is followed by
/// the others at their next check; a replica whose key file still holds the retired key keeps signing with it
/// (valid during the grace) instead of failing.
#[test]
fn a_replica_follows_a_rotation_through_the_shared_key_file() {
    let (shared, own) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let config = aws_config("replica_rotation");
    let first = aws_registry(&config, shared.path(), 8 << 20);
    let second = aws_registry(&config, shared.path(), 8 << 20);
    std::fs::copy(
        shared.path().join("signing.key"),
        own.path().join("signing.key"),
    )
    .expect("copies the key");
    let stale = aws_registry(&config, own.path(), 8 << 20);
    let retired = first.signer.public_key_hex();
    assert_eq!(second.signer.public_key_hex(), retired);
    let rotation = run(first.rotate_key(60_000, "alice")).expect("rotates");
    run(second.follow_rotations());
    assert_eq!(second.signer.public_key_hex(), rotation.to_key);
    assert_eq!(second.signer.rotations(), [rotation]);
    run(stale.follow_rotations());
    assert_eq!(
        stale.signer.public_key_hex(),
        retired,
        "keeps the key it has"
    );
}
