//! Where a node keeps its features, log and write-ahead log, read from a JSON file and `EDGEREC_FEATURES_*`
//! variables. Without an `aws` section everything is embedded under `data_dir`: `features.redb`, `wal/`, `log/`.
//! With one, features live in its DynamoDB table and the log in its S3 bucket (the WAL stays local: it must be
//! on the node's own disk to be synced before an acknowledgement).

use std::path::{Path, PathBuf};

use edgerec_aws::AwsConfig;
use serde::{Deserialize, Serialize};

use crate::dynamodb::DynamoFeatureStore;
use crate::embedded::EmbeddedFeatureStore;
use crate::ingest::IngestConfig;
use crate::log::EventLog;
use crate::store::{FeatureSettings, StoreError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeaturesConfig {
    pub data_dir: PathBuf,
    pub ingest: IngestConfig,
    pub features: FeatureSettings,
    pub aws: Option<AwsConfig>,
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("edgerec-data"),
            ingest: IngestConfig::default(),
            features: FeatureSettings::default(),
            aws: None,
        }
    }
}

impl FeaturesConfig {
    /// The file at `path` (defaults where absent), then `EDGEREC_FEATURES_DATA_DIR` and `EDGEREC_FEATURES_NODE_ID`
    /// over it.
    pub fn load(path: Option<&Path>) -> Result<Self, String> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => Self::default(),
        };
        if let Some(dir) = std::env::var_os("EDGEREC_FEATURES_DATA_DIR").filter(|d| !d.is_empty()) {
            config.data_dir = dir.into();
        }
        if let Ok(node) = std::env::var("EDGEREC_FEATURES_NODE_ID")
            && !node.is_empty()
        {
            config.ingest.node_id = node;
        }
        Ok(config)
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("wal")
    }

    /// The event log: the `aws` bucket, else `<data_dir>/log`.
    pub fn event_log(&self) -> EventLog {
        match &self.aws {
            Some(aws) => EventLog::s3(aws),
            None => EventLog::Folder(self.data_dir.join("log")),
        }
    }

    pub fn open_embedded(&self) -> Result<EmbeddedFeatureStore, StoreError> {
        EmbeddedFeatureStore::open(&self.data_dir.join("features.redb"), self.features)
    }

    /// The DynamoDB store of `aws`, its table created if missing.
    pub async fn open_dynamodb(&self, aws: &AwsConfig) -> Result<DynamoFeatureStore, StoreError> {
        let store = DynamoFeatureStore::connect(aws, self.features);
        store.ensure_created().await?;
        Ok(store)
    }
}
