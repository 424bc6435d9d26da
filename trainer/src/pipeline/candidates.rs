//! The end of a run: the reference rankers on the same split, the choice of what to export (the model alone or
//! blended with the transition and co-occurrence terms, or the terms alone) by validation NDCG@10, and the
//! chosen graph's test figures.

use std::time::Instant;

use edgerec_core::RankingMetrics;
use serde::Serialize;

use super::PipelineError;
use crate::baseline::Reference;
use crate::blend::{Blend, CandidateResult, Selection, Terms, blended_graph, select};
use crate::export::serving_model;
use crate::split::{Split, Stage};
use crate::train::{Trained, evaluate_model};

/// What a run exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportChoice {
    /// Whichever candidate ranks the validation targets best.
    #[default]
    Best,
    /// The sequence model alone.
    Model,
}

/// A reference ranker's figures on the split, or why it was not fitted.
#[derive(Debug, Clone, Serialize)]
pub struct ReferenceFigures {
    pub name: &'static str,
    pub validation: Option<RankingMetrics>,
    pub test: Option<RankingMetrics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_fitted: Option<String>,
    pub seconds: f64,
}

/// Fits every reference ranker on the training part before the validation targets and before the test targets,
/// and ranks both.
pub fn reference_figures(split: &Split) -> Vec<ReferenceFigures> {
    Reference::ALL
        .iter()
        .map(|&reference| {
            let started = Instant::now();
            let figures = reference
                .evaluate(split, Stage::Validation)
                .and_then(|validation| Ok((validation, reference.evaluate(split, Stage::Test)?)));
            let (validation, test, not_fitted) = match figures {
                Ok((validation, test)) => (Some(validation), Some(test), None),
                Err(e) => (None, None, Some(e.to_string())),
            };
            ReferenceFigures {
                name: reference.name(),
                validation,
                test,
                not_fitted,
                seconds: started.elapsed().as_secs_f64(),
            }
        })
        .collect()
}

/// The exported graph, what it is, and its test figures.
#[derive(Debug, Clone)]
pub struct Export {
    pub selection: Selection,
    pub chosen: Blend,
    pub model: Vec<u8>,
    pub test: RankingMetrics,
}

impl Export {
    /// The exported candidate's validation figures and name.
    pub fn chosen_candidate(&self) -> &CandidateResult {
        self.selection
            .candidates
            .iter()
            .find(|c| c.blend == self.chosen)
            .expect("the export is a candidate")
    }
}

/// Scores the candidates on validation, builds the chosen one (terms refitted on everything before the test
/// targets, as the model's inputs are) and ranks the test targets with it on ONNX Runtime.
pub fn export(
    split: &Split,
    trained: &Trained,
    choice: ExportChoice,
    threads: usize,
) -> Result<Export, PipelineError> {
    let model_alone = serving_model(trained)?;
    let selection = select(split, &trained.spec, &model_alone, threads)?;
    let chosen = match choice {
        ExportChoice::Best => selection.chosen().blend,
        ExportChoice::Model => Blend::MODEL,
    };
    let model = if chosen == Blend::MODEL {
        model_alone
    } else {
        let terms = Terms::fit(split, Stage::Test);
        blended_graph(
            &trained.spec,
            &trained.architecture,
            &trained.parameters,
            &chosen,
            &terms,
        )?
    };
    let test = evaluate_model(split, &trained.spec, &model, Stage::Test, threads)?;
    Ok(Export {
        selection,
        chosen,
        model,
        test,
    })
}
