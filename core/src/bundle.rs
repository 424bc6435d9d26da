//! Model bundles: a manifest and the files it names, each checked against its sha256 before use.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::spec::{FeatureSpec, SpecError};
use crate::vocab::{ItemVocabulary, VocabError};

/// The manifest format version this build reads and writes.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// The inference graph every bundle carries.
pub const MODEL_FILE: &str = "model.onnx";

/// Most files a manifest may list.
pub const MAX_BUNDLE_FILES: usize = 16;

/// `manifest.json`: what a bundle is, what its model takes, and the digest of every file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    pub version: String,
    pub feature_spec: FeatureSpec,
    /// External item ids; the id at position `i` has model index `i + 1`.
    pub items: Vec<String>,
    /// Offline evaluation results (for example `"hr@10"`).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Where the model came from: data set and digest, split, code revision, hyper-parameters.
    #[serde(default)]
    pub lineage: BTreeMap<String, serde_json::Value>,
    pub files: BTreeMap<String, FileEntry>,
}

/// A file of the bundle, addressed by content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub sha256: Digest,
    pub size: u64,
}

/// Why a bundle was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BundleError {
    #[error("manifest.json is not a valid manifest: {0}")]
    ManifestJson(String),
    #[error(
        "manifest format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedFormat { found: u32, supported: u32 },
    #[error("the manifest's {field} is empty or longer than 128 characters")]
    BadField { field: &'static str },
    #[error("the manifest lists no `{MODEL_FILE}`")]
    NoModelFile,
    #[error("the manifest lists `{0}` but the bundle does not contain it")]
    MissingFile(String),
    #[error("the bundle contains `{0}`, which the manifest does not list")]
    UnlistedFile(String),
    #[error("`{file}` is {actual} bytes but the manifest says {expected} (truncated or replaced?)")]
    SizeMismatch {
        file: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "`{file}` has sha256 {actual} but the manifest says {expected} (corrupted or tampered with)"
    )]
    DigestMismatch {
        file: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "`{0}` is not a bundle file name (1 to 128 of A-Z, a-z, 0-9, `.`, `_`, `-`; not starting with `.`)"
    )]
    BadFileName(String),
    #[error("the manifest lists `{0}` more than once")]
    DuplicateFile(String),
    #[error(
        "`{first}` and `{second}` are the same content (sha256 {digest}); each file must be listed once"
    )]
    SharedContent {
        first: String,
        second: String,
        digest: Digest,
    },
    #[error("the manifest lists {0} files; a bundle has at most {MAX_BUNDLE_FILES}")]
    TooManyFiles(usize),
    #[error("the manifest's files add up to {total} bytes; the limit is {limit}")]
    TooLarge { total: u64, limit: u64 },
    #[error("the item vocabulary is invalid: {0}")]
    Vocabulary(#[from] VocabError),
    #[error("the feature specification is invalid: {0}")]
    FeatureSpec(#[from] SpecError),
}

/// Whether `name` may name a bundle file: a plain file name, never a path (no `/`, `\\`, `..` or leading `.`).
pub fn check_file_name(name: &str) -> Result<(), BundleError> {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > 128 || !plain || name.starts_with('.') {
        return Err(BundleError::BadFileName(name.chars().take(200).collect()));
    }
    Ok(())
}

/// The names under `files` in `manifest_json` as written, duplicates included (a map keeps only the last).
fn listed_file_names(manifest_json: &[u8]) -> Result<Vec<String>, BundleError> {
    struct Names(Vec<String>);
    impl<'de> Deserialize<'de> for Names {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Names;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a map of file names")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Names, A::Error> {
                    let mut names = Vec::new();
                    while let Some((name, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                        names.push(name);
                    }
                    Ok(Names(names))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    #[derive(Deserialize)]
    struct Files {
        files: Names,
    }
    serde_json::from_slice::<Files>(manifest_json)
        .map(|f| f.files.0)
        .map_err(|e| BundleError::ManifestJson(e.to_string()))
}

impl Manifest {
    /// Checks the file list alone, before any file is read: safe names, each listed once, each content once (so
    /// one large blob cannot be counted under many names), at most [`MAX_BUNDLE_FILES`] files and
    /// `max_total_bytes` in all. `manifest_json` is the text this manifest was parsed from.
    pub fn check_files(
        &self,
        manifest_json: &[u8],
        max_total_bytes: u64,
    ) -> Result<(), BundleError> {
        let names = listed_file_names(manifest_json)?;
        if names.len() > MAX_BUNDLE_FILES {
            return Err(BundleError::TooManyFiles(names.len()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for name in &names {
            check_file_name(name)?;
            if !seen.insert(name.as_str()) {
                return Err(BundleError::DuplicateFile(name.clone()));
            }
        }
        let mut contents: BTreeMap<Digest, &str> = BTreeMap::new();
        let mut total = 0u64;
        for (name, entry) in &self.files {
            if let Some(first) = contents.insert(entry.sha256, name) {
                return Err(BundleError::SharedContent {
                    first: first.to_string(),
                    second: name.clone(),
                    digest: entry.sha256,
                });
            }
            total = total.saturating_add(entry.size);
        }
        if total > max_total_bytes {
            return Err(BundleError::TooLarge {
                total,
                limit: max_total_bytes,
            });
        }
        Ok(())
    }
}

/// A bundle whose every file matched its manifest entry.
#[derive(Debug, Clone)]
pub struct Bundle<'a> {
    pub manifest: Manifest,
    pub vocab: ItemVocabulary,
    /// sha256 of `manifest.json` as given: what the registry signs.
    pub manifest_digest: Digest,
    /// The ONNX inference graph.
    pub model: &'a [u8],
}

impl<'a> Bundle<'a> {
    /// Checks `manifest.json` and the bundle's files (by name) and returns the verified bundle.
    ///
    /// Every listed file must be present with its size and sha256; unlisted files are refused so that nothing
    /// unverified travels with a bundle.
    pub fn verify(manifest_json: &[u8], files: &[(&str, &'a [u8])]) -> Result<Self, BundleError> {
        let manifest: Manifest = serde_json::from_slice(manifest_json)
            .map_err(|e| BundleError::ManifestJson(e.to_string()))?;
        if manifest.format_version != MANIFEST_FORMAT_VERSION {
            return Err(BundleError::UnsupportedFormat {
                found: manifest.format_version,
                supported: MANIFEST_FORMAT_VERSION,
            });
        }
        for (field, value) in [("name", &manifest.name), ("version", &manifest.version)] {
            if value.is_empty() || value.chars().count() > 128 {
                return Err(BundleError::BadField { field });
            }
        }
        if !manifest.files.contains_key(MODEL_FILE) {
            return Err(BundleError::NoModelFile);
        }
        manifest.check_files(manifest_json, u64::MAX)?;
        if let Some((name, _)) = files
            .iter()
            .find(|(name, _)| !manifest.files.contains_key(*name))
        {
            return Err(BundleError::UnlistedFile((*name).to_string()));
        }
        for (name, entry) in &manifest.files {
            let bytes = files
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| *b)
                .ok_or_else(|| BundleError::MissingFile(name.clone()))?;
            let actual_size = bytes.len() as u64;
            if actual_size != entry.size {
                return Err(BundleError::SizeMismatch {
                    file: name.clone(),
                    expected: entry.size,
                    actual: actual_size,
                });
            }
            let actual = Digest::of(bytes);
            if actual != entry.sha256 {
                return Err(BundleError::DigestMismatch {
                    file: name.clone(),
                    expected: entry.sha256,
                    actual,
                });
            }
        }
        let vocab = ItemVocabulary::new(manifest.items.clone())?;
        manifest.feature_spec.validate(vocab.len())?;
        let model = files
            .iter()
            .find(|(n, _)| *n == MODEL_FILE)
            .map(|(_, b)| *b)
            .ok_or(BundleError::NoModelFile)?;
        Ok(Self {
            manifest_digest: Digest::of(manifest_json),
            manifest,
            vocab,
            model,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{FEATURE_SPEC_VERSION, OutputSpec, Padding, SequenceSpec};

    const MODEL: &[u8] = b"not really onnx, but bundles only check digests";

    fn manifest_for(model: &[u8]) -> Manifest {
        Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            name: "tiny".into(),
            version: "1".into(),
            feature_spec: FeatureSpec {
                version: FEATURE_SPEC_VERSION,
                sequence: SequenceSpec {
                    input: "item_ids".into(),
                    max_len: 4,
                    padding: Padding::Left,
                },
                item_features: vec![],
                context: vec![],
                output: OutputSpec {
                    name: "scores".into(),
                    num_items: 3,
                },
            },
            items: vec!["a".into(), "b".into()],
            metrics: BTreeMap::new(),
            lineage: BTreeMap::new(),
            files: BTreeMap::from([(
                MODEL_FILE.to_string(),
                FileEntry {
                    sha256: Digest::of(model),
                    size: model.len() as u64,
                },
            )]),
        }
    }

    fn json(m: &Manifest) -> Vec<u8> {
        serde_json::to_vec(m).expect("manifest serialises")
    }

    #[test]
    fn file_lists_are_checked_before_any_file_is_read() {
        let manifest = manifest_for(MODEL);
        assert_eq!(manifest.check_files(&json(&manifest), 1 << 20), Ok(()));
        assert!(matches!(
            manifest.check_files(&json(&manifest), 3),
            Err(BundleError::TooLarge { limit: 3, .. })
        ));
        for bad in [
            "../model.onnx",
            "/etc/passwd",
            "a/b",
            ".hidden",
            "",
            "x\\y",
            "naïve",
        ] {
            assert!(
                matches!(check_file_name(bad), Err(BundleError::BadFileName(_))),
                "{bad:?}"
            );
        }
        // One blob under two names.
        let mut shared = manifest.clone();
        let entry = shared.files[MODEL_FILE].clone();
        shared.files.insert("copy.onnx".into(), entry);
        assert!(matches!(
            shared.check_files(&json(&shared), u64::MAX),
            Err(BundleError::SharedContent { .. })
        ));
        // A name written twice in the JSON (a map would keep only the last).
        let text = String::from_utf8(json(&manifest)).expect("utf-8");
        let key = format!("\"{MODEL_FILE}\":");
        let at = text.find(&key).expect("the model's entry");
        let entry_end = at + text[at..].find('}').expect("entry end") + 1;
        let twice = format!("{},{}", &text[..entry_end], &text[at..]);
        let reparsed: Manifest = serde_json::from_str(&twice).expect("serde keeps the last");
        assert!(matches!(
            reparsed.check_files(twice.as_bytes(), u64::MAX),
            Err(BundleError::DuplicateFile(name)) if name == MODEL_FILE
        ));
        let mut many = manifest.clone();
        for i in 0..MAX_BUNDLE_FILES {
            many.files.insert(
                format!("extra-{i}.bin"),
                FileEntry {
                    sha256: Digest::of(&[i as u8]),
                    size: 1,
                },
            );
        }
        assert!(matches!(
            many.check_files(&json(&many), u64::MAX),
            Err(BundleError::TooManyFiles(_))
        ));
    }

    #[test]
    fn accepts_a_consistent_bundle() {
        let manifest = json(&manifest_for(MODEL));
        let bundle = Bundle::verify(&manifest, &[(MODEL_FILE, MODEL)]).expect("valid bundle");
        assert_eq!(bundle.vocab.len(), 2);
        assert_eq!(bundle.model, MODEL);
        assert_eq!(bundle.manifest_digest, Digest::of(&manifest));
    }

    #[test]
    fn refuses_truncated_and_tampered_files() {
        let manifest = json(&manifest_for(MODEL));
        let truncated = &MODEL[..10];
        assert!(matches!(
            Bundle::verify(&manifest, &[(MODEL_FILE, truncated)]),
            Err(BundleError::SizeMismatch { expected, actual: 10, .. }) if expected == MODEL.len() as u64
        ));
        let mut tampered = MODEL.to_vec();
        tampered[0] ^= 1;
        assert!(matches!(
            Bundle::verify(&manifest, &[(MODEL_FILE, &tampered)]),
            Err(BundleError::DigestMismatch { .. })
        ));
        assert_eq!(
            Bundle::verify(&manifest, &[]).err(),
            Some(BundleError::MissingFile(MODEL_FILE.into()))
        );
        assert_eq!(
            Bundle::verify(&manifest, &[(MODEL_FILE, MODEL), ("extra.bin", b"x")]).err(),
            Some(BundleError::UnlistedFile("extra.bin".into()))
        );
    }

    #[test]
    fn refuses_malformed_manifests() {
        assert!(matches!(
            Bundle::verify(b"{", &[(MODEL_FILE, MODEL)]),
            Err(BundleError::ManifestJson(_))
        ));
        let full = json(&manifest_for(MODEL));
        assert!(matches!(
            Bundle::verify(&full[..full.len() / 2], &[(MODEL_FILE, MODEL)]),
            Err(BundleError::ManifestJson(_))
        ));
        let mut m = manifest_for(MODEL);
        m.format_version = 9;
        assert!(matches!(
            Bundle::verify(&json(&m), &[(MODEL_FILE, MODEL)]),
            Err(BundleError::UnsupportedFormat { .. })
        ));
        let mut m = manifest_for(MODEL);
        m.items.push("a".into());
        assert!(matches!(
            Bundle::verify(&json(&m), &[(MODEL_FILE, MODEL)]),
            Err(BundleError::Vocabulary(_))
        ));
        let mut m = manifest_for(MODEL);
        m.items.push("c".into());
        assert!(matches!(
            Bundle::verify(&json(&m), &[(MODEL_FILE, MODEL)]),
            Err(BundleError::FeatureSpec(_))
        ));
        let mut m = manifest_for(MODEL);
        m.files.clear();
        assert_eq!(
            Bundle::verify(&json(&m), &[]).err(),
            Some(BundleError::NoModelFile)
        );
        let mut m = manifest_for(MODEL);
        m.name.clear();
        assert_eq!(
            Bundle::verify(&json(&m), &[(MODEL_FILE, MODEL)]).err(),
            Some(BundleError::BadField { field: "name" })
        );
        let with_bad_digest = String::from_utf8(full.clone())
            .expect("utf8")
            .replace(&Digest::of(MODEL).to_string(), "beef");
        assert!(matches!(
            Bundle::verify(with_bad_digest.as_bytes(), &[(MODEL_FILE, MODEL)]),
            Err(BundleError::ManifestJson(msg)) if msg.contains("sha256")
        ));
    }
}
