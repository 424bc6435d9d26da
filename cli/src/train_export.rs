//! The end of `edgerec train`: the reference rankers on the same split, the choice of what to export (the model
//! alone or blended with the transition and co-occurrence terms, or the terms alone) by validation NDCG@10, and
//! the chosen graph's test figures.

use std::time::Instant;

use anyhow::Result;
use clap::ValueEnum;
use edgerec_core::RankingMetrics;
use edgerec_trainer::baseline::Reference;
use edgerec_trainer::blend::{Blend, Selection, Terms, blended_graph, select};
use edgerec_trainer::export::serving_model;
use edgerec_trainer::split::{Split, Stage};
use edgerec_trainer::train::{Trained, evaluate_model};
use serde::Serialize;

/// What `edgerec train` exports.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExportChoice {
    /// Whichever candidate ranks the validation targets best: the model, the model blended with the transition
    /// and co-occurrence terms, or the terms alone.
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
pub struct Export {
    pub selection: Selection,
    pub chosen: Blend,
    pub model: Vec<u8>,
    pub test: RankingMetrics,
}

/// Scores the candidates on validation, builds the chosen one (terms refitted on everything before the test
/// targets, as the model's inputs are) and ranks the test targets with it on ONNX Runtime.
pub fn export(
    split: &Split,
    trained: &Trained,
    choice: ExportChoice,
    threads: usize,
) -> Result<Export> {
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

/// Prints every candidate's and reference ranker's validation figures, says plainly where a reference beats the
/// model, and what is exported.
pub fn print_comparison(export: &Export, references: &[ReferenceFigures]) {
    let model = export.selection.model_alone().validation;
    eprintln!("validation targets (the export is chosen by NDCG@10):");
    let row = |name: &str, m: &RankingMetrics| {
        eprintln!(
            "  {name:<50} HR@10 {:.4}  NDCG@10 {:.4}",
            m.hr_at_10, m.ndcg_at_10
        )
    };
    row("sequence model", &model);
    for reference in references {
        match (&reference.validation, &reference.not_fitted) {
            (Some(m), _) => row(reference.name, m),
            (None, Some(why)) => eprintln!("  {:<50} not fitted: {why}", reference.name),
            (None, None) => {}
        }
    }
    let best = export.selection.chosen();
    row(&format!("best candidate: {}", best.name), &best.validation);
    for reference in references {
        if let Some(m) = &reference.validation
            && m.ndcg_at_10 > model.ndcg_at_10
        {
            eprintln!(
                "note: the {} baseline beats the sequence model on validation (NDCG@10 {:.4} > {:.4})",
                reference.name, m.ndcg_at_10, model.ndcg_at_10
            );
        }
    }
    let chosen = export
        .selection
        .candidates
        .iter()
        .find(|c| c.blend == export.chosen)
        .expect("the export is a candidate");
    eprintln!(
        "exporting {} (validation NDCG@10 {:.4}{})",
        chosen.name,
        chosen.validation.ndcg_at_10,
        if export.chosen == best.blend {
            ", the best candidate"
        } else {
            "; --export model"
        }
    );
}

/// The test figures of the export beside the reference rankers'.
pub fn print_test_table(export: &Export, references: &[ReferenceFigures]) {
    println!(
        "test targets:  {:<50} {:>7} {:>8} {:>10} {:>7}",
        "", "HR@10", "NDCG@10", "Recall@20", "MRR"
    );
    let row = |name: &str, m: &RankingMetrics| {
        println!(
            "               {name:<50} {:>7.4} {:>8.4} {:>10.4} {:>7.4}",
            m.hr_at_10, m.ndcg_at_10, m.recall_at_20, m.mrr
        )
    };
    row(&format!("export: {}", export.chosen.name()), &export.test);
    for reference in references {
        if let Some(m) = &reference.test {
            row(reference.name, m);
        }
    }
}
