//! Where a run's interactions come from: a public data set (fetched on first use, digests pinned), an interaction
//! file, or a time range of the event log; read and split, with what names them in the bundle's lineage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use edgerec_core::ItemId;
use edgerec_features::config::FeaturesConfig;
use edgerec_features::item::ItemMetadata;
use edgerec_features::log::LogError;

use crate::collective::Collective;
use crate::data::{DataError, Dataset, Interaction, read_interactions};
use crate::fetch::{self, FetchError, KnownDataset};
use crate::split::Split;

/// The name `edgerec train` takes for the event log as its data set.
pub const EVENT_LOG: &str = "event-log";

/// What a run trains on.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A known data set's name (fetched into `data_dir` on first use) or the path of an interaction file.
    Dataset {
        name_or_path: String,
        data_dir: PathBuf,
    },
    /// The last `days` days of the event log that a features configuration names (the embedded default without
    /// one), read from `data_dir` when given.
    EventLog {
        config: Option<PathBuf>,
        data_dir: Option<PathBuf>,
        days: i64,
    },
}

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("unknown dataset `{name}` (known: {known}; or the path of an interaction file)")]
    UnknownDataset { name: String, known: String },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("loading {name}: {source}")]
    Data { name: String, source: DataError },
    #[error("the features configuration: {0}")]
    FeaturesConfig(String),
    #[error("reading the event log: {0}")]
    Log(#[from] LogError),
    #[error("starting the event log's reader: {0}")]
    Reader(std::io::Error),
    #[error(
        "the event log ({place}) holds no events from the last {days} days: ingest and ship some first \
         (`edgerec events ingest`, `edgerec events ship`)"
    )]
    EmptyLog { place: String, days: i64 },
}

/// A data set read and split.
#[derive(Debug, Clone)]
pub struct LoadedDataset {
    pub name: String,
    /// sha256 of the interactions as `user\titem\ttimestamp\n` lines in file order: the same for the same data in
    /// any file format.
    pub interactions_sha256: String,
    pub interactions: usize,
    pub split: Split,
    /// Where the data came from beyond the data set's name (the event log's range and files).
    pub source: Option<serde_json::Value>,
    /// Titles and genres of the items, where the data set has them.
    pub catalogue: BTreeMap<ItemId, ItemMetadata>,
    /// Seconds spent reading and splitting.
    pub seconds: f64,
}

impl LoadedDataset {
    /// One line on what was read, for progress output.
    pub fn summary(&self) -> String {
        let what = match &self.source {
            Some(source) => format!(
                "{} events and {} served requests in {} files; {} targets learnt from logged histories; ",
                source["events"],
                source["served_requests"],
                source["files"].as_array().map_or(0, Vec::len),
                source["logged_histories"]
            ),
            None => format!("{} interactions, ", self.interactions),
        };
        format!(
            "{}: {what}{} users ({} evaluated), {} items, loaded and split in {:.1} s",
            self.name,
            self.split.users.len(),
            self.split.evaluated_users(),
            self.split.items.len(),
            self.seconds
        )
    }
}

impl Source {
    /// Reads and splits the source, fetching a known data set first if it is not on disk yet.
    pub fn load(&self) -> Result<LoadedDataset, SourceError> {
        match self {
            Self::Dataset {
                name_or_path,
                data_dir,
            } => load_dataset(name_or_path, data_dir),
            Self::EventLog {
                config,
                data_dir,
                days,
            } => load_event_log(config.as_deref(), data_dir.as_deref(), *days),
        }
    }

    /// [`Source::load`] in every process of a job: one process per machine fetches a missing data set while the
    /// others wait, then all read it.
    pub fn load_in(&self, collective: &dyn Collective) -> Result<LoadedDataset, SourceError> {
        let fetches = collective.local_rank() == 0;
        if !fetches {
            collective.barrier();
        }
        let loaded = self.load();
        if fetches {
            collective.barrier();
        }
        loaded
    }
}

/// The known data set `name`, or an error listing the known ones.
pub fn known_dataset(name: &str) -> Result<KnownDataset, SourceError> {
    KnownDataset::parse(name).ok_or_else(|| SourceError::UnknownDataset {
        name: name.to_string(),
        known: KnownDataset::ALL
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn load_dataset(name_or_path: &str, data_dir: &Path) -> Result<LoadedDataset, SourceError> {
    let started = Instant::now();
    let path = Path::new(name_or_path);
    let (name, data) = match KnownDataset::parse(name_or_path) {
        None if path.is_file() => {
            let interactions = read_interactions(path).map_err(|source| SourceError::Data {
                name: name_or_path.to_string(),
                source,
            })?;
            let name = path
                .file_stem()
                .map_or("interactions".into(), |s| s.to_string_lossy().into_owned());
            let data = Dataset {
                name: name_or_path.to_string(),
                interactions,
                items: Default::default(),
            };
            (name, data)
        }
        _ => {
            let dataset = known_dataset(name_or_path)?;
            fetch::fetch(dataset, data_dir)?;
            let data = fetch::load(dataset, data_dir).map_err(|source| SourceError::Data {
                name: dataset.name().to_string(),
                source,
            })?;
            (dataset.name().to_string(), data)
        }
    };
    Ok(LoadedDataset {
        name,
        interactions_sha256: interactions_digest(&data.interactions),
        interactions: data.interactions.len(),
        split: Split::leave_last_out(&data.interactions),
        source: None,
        catalogue: data.items,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The split of the last `days` days of the event log (and the hour ahead, for clocks a little fast), with the
/// range and the files read (and their digests) as lineage.
fn load_event_log(
    config: Option<&Path>,
    data_dir: Option<&Path>,
    days: i64,
) -> Result<LoadedDataset, SourceError> {
    let started = Instant::now();
    let mut config = FeaturesConfig::load(config).map_err(SourceError::FeaturesConfig)?;
    if let Some(dir) = data_dir {
        config.data_dir = dir.to_path_buf();
    }
    let to_ms = edgerec_features::now_ms() + 3600 * 1000;
    let from_ms = to_ms - (days + 1) * 24 * 3600 * 1000;
    let slice = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SourceError::Reader)?
        .block_on(config.event_log().read(from_ms, to_ms))?;
    if slice.events.is_empty() {
        return Err(SourceError::EmptyLog {
            place: match &config.aws {
                Some(aws) => format!("s3://{}", aws.bucket),
                None => config.data_dir.join("log").display().to_string(),
            },
            days,
        });
    }
    let data = crate::log_data::from_log(&slice);
    Ok(LoadedDataset {
        name: EVENT_LOG.into(),
        interactions_sha256: interactions_digest(&data.interactions),
        interactions: data.interactions.len(),
        split: data.split,
        source: Some(serde_json::json!({
            "from_ms": from_ms,
            "to_ms": to_ms,
            "events": slice.events.len(),
            "served_requests": slice.served.len(),
            "logged_histories": data.logged_histories,
            "files": slice.files,
        })),
        catalogue: Default::default(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// sha256 of `interactions` as `user\titem\ttimestamp\n` lines in order.
pub fn interactions_digest(interactions: &[Interaction]) -> String {
    let mut text = Vec::with_capacity(interactions.len() * 24);
    for i in interactions {
        text.extend_from_slice(format!("{}\t{}\t{}\n", i.user, i.item, i.timestamp).as_bytes());
    }
    edgerec_core::Digest::of(&text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interaction(user: &str, item: &str, timestamp: i64) -> Interaction {
        Interaction::from_good_ids(user, item, timestamp)
    }

    #[test]
    fn the_digest_depends_on_every_field_and_the_order() {
        let a = vec![interaction("u", "i", 1), interaction("u", "j", 2)];
        let reordered = vec![a[1].clone(), a[0].clone()];
        let retimed = vec![interaction("u", "i", 1), interaction("u", "j", 3)];
        let with_value = vec![
            Interaction {
                value: Some(4.0),
                ..a[0].clone()
            },
            a[1].clone(),
        ];
        assert_ne!(interactions_digest(&a), interactions_digest(&reordered));
        assert_ne!(interactions_digest(&a), interactions_digest(&retimed));
        // A rating is not part of the sequence the model learns from.
        assert_eq!(interactions_digest(&a), interactions_digest(&with_value));
    }

    #[test]
    fn an_interaction_file_is_read_and_named_by_its_stem() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("shop.csv");
        let rows: String = (0..6)
            .map(|t| format!("u{},i{},{t}\n", t % 2, t % 3))
            .collect();
        std::fs::write(&path, format!("user,item,timestamp\n{rows}")).expect("writes");
        let loaded = Source::Dataset {
            name_or_path: path.display().to_string(),
            data_dir: dir.path().to_path_buf(),
        }
        .load()
        .expect("loads");
        assert_eq!(loaded.name, "shop");
        assert_eq!(loaded.interactions, 6);
        assert_eq!(loaded.split.users.len(), 2);
        assert!(
            loaded
                .summary()
                .starts_with("shop: 6 interactions, 2 users"),
            "{}",
            loaded.summary()
        );
    }

    #[test]
    fn an_unknown_name_lists_the_known_data_sets() {
        let error = Source::Dataset {
            name_or_path: "no-such-data".into(),
            data_dir: PathBuf::from("/nonexistent"),
        }
        .load()
        .expect_err("unknown");
        let text = error.to_string();
        assert!(text.contains("unknown dataset `no-such-data`"), "{text}");
        assert!(text.contains("movielens-1m"), "{text}");
    }
}
