//! What `edgerec train` shows: the progress of the run, every candidate and reference ranker on validation, and
//! the test table.

use edgerec_core::RankingMetrics;
use edgerec_trainer::pipeline::{Event, Export, ReferenceFigures};
use edgerec_trainer::train::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// Renders a run's events: a progress bar per epoch and a line per validation on rank 0, nothing elsewhere.
pub struct ProgressView {
    bar: ProgressBar,
    leader: bool,
    processes: usize,
    min_improvement: f64,
    patience_steps: u64,
}

impl ProgressView {
    pub fn new(leader: bool, processes: usize, min_improvement: f64, patience_steps: u64) -> Self {
        let bar = if leader {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} batches  {msg}  ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        Self {
            bar,
            leader,
            processes,
            min_improvement,
            patience_steps,
        }
    }

    pub fn show(&self, event: Event) {
        let bar = &self.bar;
        match event {
            Event::Training(progress) => self.show_training(progress),
            Event::FittingReferences => {
                bar.finish_and_clear();
                eprintln!(
                    "fitting the reference rankers (popularity, transitions, item-kNN, EASE) on the same split"
                );
            }
            Event::ScoringCandidates => {
                eprintln!("scoring the export candidates on the validation targets")
            }
        }
    }

    fn show_training(&self, progress: Progress) {
        let bar = &self.bar;
        match progress {
            Progress::EpochStarted { epoch, batches } => {
                bar.reset();
                bar.set_length(batches as u64);
                bar.set_prefix(format!("epoch {epoch}"));
            }
            Progress::Step {
                batch,
                loss,
                examples_per_second,
            } => {
                bar.set_position(batch as u64);
                bar.set_message(format!(
                    "loss {loss:.4}  {examples_per_second:.0} sequences/s"
                ));
            }
            Progress::Evaluating => bar.set_message("evaluating on the validation targets"),
            Progress::EpochFinished(_) | Progress::Annealing { .. } | Progress::AnnealGaveUp { .. }
                if !self.leader => {}
            Progress::AnnealGaveUp {
                steps_done,
                share,
                best_ndcg_at_10,
            } => bar.suspend(|| {
                eprintln!(
                    "no validation in the first {:.0}% of the anneal beat the best NDCG@10 before it \
                     ({best_ndcg_at_10:.4}): training ends at step {steps_done}",
                    share * 100.0
                )
            }),
            Progress::Annealing {
                steps_done,
                steps,
                batch_rows,
                learning_rate,
                final_learning_rate,
            } => bar.suspend(|| {
                eprintln!(
                    "validation NDCG@10 has not gained {}% in {} steps: the learning rate falls from \
                     {learning_rate:.2e} to {final_learning_rate:.2e} over the next {steps} steps of {batch_rows} \
                     rows from step {steps_done}, then training ends (sooner if the anneal does not gain)",
                    self.min_improvement * 100.0,
                    self.patience_steps
                )
            }),
            Progress::EpochFinished(record) => bar.suspend(|| {
                eprintln!(
                    "epoch {:>3}  step {:>6}  loss {:.4}  validation HR@10 {:.4}  NDCG@10 {:.4}  lr {:.2e}  \
                     {:.1} s ({:.0} examples/s; {:.2} s preparing inputs{})",
                    record.epoch,
                    record.steps,
                    record.train_loss,
                    record.validation.hr_at_10,
                    record.validation.ndcg_at_10,
                    record.learning_rate,
                    record.seconds,
                    record.examples_per_second,
                    record.host_seconds,
                    match self.processes {
                        1 => String::new(),
                        _ => format!(", {:.2} s summing gradients", record.exchange_seconds),
                    }
                )
            }),
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
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
    let chosen = export.chosen_candidate();
    eprintln!(
        "exported {} (validation NDCG@10 {:.4}{})",
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
