//! What a run leaves behind about itself: the bundle's metrics and lineage, and `report.json`.

use std::collections::BTreeMap;

use edgerec_core::RankingMetrics;
use serde::Serialize;

use super::candidates::{Export, ReferenceFigures};
use super::source::LoadedDataset;
use crate::adapt::Choice;
use crate::blend::CandidateResult;
use crate::train::{EpochRecord, TrainConfig, Trained};

/// `report.json`: the settings and why, the training curve, the exported graph's test figures, every candidate
/// and reference ranker on the same split.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub dataset: &'a str,
    pub interactions_sha256: &'a str,
    pub protocol: &'static str,
    pub config: &'a TrainConfig,
    /// The settings the data decided, and why.
    pub config_choices: &'a [Choice],
    pub epochs: &'a [EpochRecord],
    pub best_epoch: usize,
    /// The sequence model's best validation figures.
    pub validation: RankingMetrics,
    /// The exported graph's test figures.
    pub test: RankingMetrics,
    /// What was exported, every candidate's validation figures, and the reference rankers on the same split.
    pub exported: &'a str,
    pub candidates: &'a [CandidateResult],
    pub baselines: &'a [ReferenceFigures],
    pub training_seconds: f64,
    pub code_version: &'a str,
}

pub const PROTOCOL: &str =
    "leave-last-out; full ranking over all items minus the user's seen items";

/// The bundle's metrics: the export's test figures and validation NDCG@10, every candidate's validation figures
/// and every reference ranker's figures.
pub fn bundle_metrics(export: &Export, references: &[ReferenceFigures]) -> BTreeMap<String, f64> {
    let test = export.test;
    let mut metrics = BTreeMap::from([
        ("test_hr@10".to_string(), test.hr_at_10),
        ("test_ndcg@10".to_string(), test.ndcg_at_10),
        ("test_recall@20".to_string(), test.recall_at_20),
        ("test_mrr".to_string(), test.mrr),
        (
            "validation_ndcg@10".to_string(),
            export.chosen_candidate().validation.ndcg_at_10,
        ),
    ]);
    for candidate in &export.selection.candidates {
        let m = &candidate.validation;
        for (figure, value) in [("hr@10", m.hr_at_10), ("ndcg@10", m.ndcg_at_10)] {
            metrics.insert(
                format!("candidate {}: validation_{figure}", candidate.name),
                value,
            );
        }
    }
    for reference in references {
        for (stage, figures) in [
            ("validation", &reference.validation),
            ("test", &reference.test),
        ] {
            if let Some(m) = figures {
                for (figure, value) in [("hr@10", m.hr_at_10), ("ndcg@10", m.ndcg_at_10)] {
                    metrics.insert(
                        format!("baseline {}: {stage}_{figure}", reference.name),
                        value,
                    );
                }
            }
        }
    }
    metrics
}

/// What the bundle was made from: the data and its digest, the split, the settings and why, the best epoch, the
/// export's choice with every candidate and reference ranker, the code, and the event log's range where it was
/// the source.
pub fn lineage(
    data: &LoadedDataset,
    config: &TrainConfig,
    choices: &[Choice],
    trained: &Trained,
    export: &Export,
    references: &[ReferenceFigures],
    code_version: &str,
) -> BTreeMap<String, serde_json::Value> {
    let mut lineage = BTreeMap::from([
        ("dataset".to_string(), serde_json::json!(data.name)),
        (
            "interactions_sha256".to_string(),
            serde_json::json!(data.interactions_sha256),
        ),
        (
            "split".to_string(),
            serde_json::json!(
                "leave-last-out by timestamp; trained on history before each validation target"
            ),
        ),
        ("config".to_string(), serde_json::json!(config)),
        ("config_choices".to_string(), serde_json::json!(choices)),
        (
            "best_epoch".to_string(),
            serde_json::json!(trained.best_epoch),
        ),
        (
            "export".to_string(),
            serde_json::json!({
                "exported": export.chosen_candidate().name,
                "blend": export.chosen,
                "chosen_by": "validation NDCG@10",
                "candidates": export.selection.candidates,
                "baselines": references,
            }),
        ),
        ("code_version".to_string(), serde_json::json!(code_version)),
    ]);
    if let Some(source) = &data.source {
        lineage.insert("event_log".to_string(), source.clone());
    }
    lineage
}
