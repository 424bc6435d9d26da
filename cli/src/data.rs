//! `edgerec data` and `edgerec eval`: public datasets, the leave-last-out split, reference baselines.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use edgerec_core::{Bundle, MODEL_FILE};
use edgerec_trainer::baseline::Reference;
use edgerec_trainer::bundle_eval::evaluate_bundle;
use edgerec_trainer::fetch::{self, KnownDataset};
use edgerec_trainer::pipeline::{LoadedDataset, Source, known_dataset};
use edgerec_trainer::split::{Split, Stage};

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Fetch a public dataset (movielens-1m, movielens-100k, movielens-latest-small, amazon-instant-video),
    /// checking pinned digests.
    Fetch(DatasetArgs),
    /// Write the leave-last-out split (train.tsv, valid.tsv, test.tsv) so other tools score on the same rows.
    Split {
        #[command(flatten)]
        dataset: DatasetArgs,
        /// Folder for the split files.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
pub struct DatasetArgs {
    /// movielens-1m (ml-1m), movielens-100k (ml-100k), movielens-latest-small (ml-latest-small),
    /// amazon-instant-video (amazon-video), or the path of an interaction file (ratings.dat, u.data,
    /// RecBole .inter, or .csv/.tsv with a user,item,timestamp header); `edgerec train` also takes `event-log`.
    pub(crate) dataset: String,
    /// Where datasets are kept (default ~/.cache/edgerec/data).
    #[arg(long, env = "EDGEREC_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

impl DatasetArgs {
    fn resolve(&self) -> Result<(KnownDataset, PathBuf)> {
        Ok((known_dataset(&self.dataset)?, self.data_dir()))
    }

    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(crate::paths::data_dir)
    }

    /// The data set or interaction file these arguments name.
    pub fn source(&self) -> Source {
        Source::Dataset {
            name_or_path: self.dataset.clone(),
            data_dir: self.data_dir(),
        }
    }

    /// Fetches if needed, loads and splits, reporting as it goes.
    fn split(&self) -> Result<Split> {
        Ok(self.load()?.split)
    }

    /// Fetches if needed, loads and splits, reporting as it goes; with the data set's name and digest.
    pub fn load(&self) -> Result<LoadedDataset> {
        let loaded = self.source().load()?;
        eprintln!("{}", loaded.summary());
        Ok(loaded)
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// Most interacted-with items first.
    Popularity,
    /// Sum of how often each item followed the user's last 5 items.
    Transitions,
    /// Item-based nearest neighbours (cosine of the items' user sets, 100 neighbours per item).
    ItemKnn,
    /// EASE: a linear item-to-item model solved in closed form (L2 penalty 500), for up to 16,384 items.
    Ease,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageArg {
    Validation,
    Test,
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    dataset: DatasetArgs,
    /// Which reference ranker to evaluate (default: transitions).
    #[arg(long, value_enum, conflicts_with = "bundle")]
    baseline: Option<Baseline>,
    /// Score this bundle (a folder with manifest.json and model.onnx, from `edgerec train` or made elsewhere)
    /// instead of a reference ranker: its items are matched to the data set's by id.
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// Print the figures as one JSON object (full precision) instead of text.
    #[arg(long)]
    json: bool,
    /// Rank the validation or the test targets.
    #[arg(long, value_enum, default_value_t = StageArg::Test)]
    stage: StageArg,
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Fetch(args) => {
            let (dataset, dir) = args.resolve()?;
            let path = fetch::fetch(dataset, &dir)?;
            println!("{}", path.display());
        }
        DataCommand::Split { dataset, out } => {
            let split = dataset.split()?;
            split
                .write_tsv(&out)
                .with_context(|| format!("writing the split to {}", out.display()))?;
            println!(
                "wrote train.tsv, valid.tsv and test.tsv to {}",
                out.display()
            );
        }
    }
    Ok(())
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let split = args.dataset.split()?;
    let stage = match args.stage {
        StageArg::Validation => Stage::Validation,
        StageArg::Test => Stage::Test,
    };
    let started = Instant::now();
    let (metrics, ranker) = match &args.bundle {
        Some(dir) => {
            let (manifest, model) = crate::read_bundle(dir)?;
            let bundle = Bundle::verify(&manifest, &[(MODEL_FILE, &model)])
                .with_context(|| format!("verifying the bundle in {}", dir.display()))?;
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let (metrics, coverage) = evaluate_bundle(&split, &bundle, stage, threads)
                .with_context(|| format!("scoring the bundle in {}", dir.display()))?;
            if coverage.known_items < coverage.split_items || coverage.unknown_targets > 0 {
                eprintln!(
                    "the bundle knows {} of the data set's {} items; {} target(s) it does not know count as \
                     ranked below every item it knows",
                    coverage.known_items, coverage.split_items, coverage.unknown_targets
                );
            }
            let name = format!(
                "bundle {} {}",
                bundle.manifest.name, bundle.manifest.version
            );
            (metrics, name)
        }
        None => {
            let reference = match args.baseline.unwrap_or(Baseline::Transitions) {
                Baseline::Popularity => Reference::Popularity,
                Baseline::Transitions => Reference::Transitions,
                Baseline::ItemKnn => Reference::ItemKnn,
                Baseline::Ease => Reference::Ease,
            };
            (
                reference.evaluate(&split, stage)?,
                reference.name().to_string(),
            )
        }
    };
    if args.json {
        let figures = serde_json::json!({
            "ranker": ranker,
            "dataset": args.dataset.dataset,
            "stage": format!("{:?}", args.stage).to_lowercase(),
            "metrics": metrics,
            "seconds": started.elapsed().as_secs_f64(),
        });
        println!("{figures}");
        return Ok(());
    }
    println!(
        "{} on {} ({:?} targets, full ranking minus seen items, {} users, {:.1} s):",
        ranker,
        args.dataset.dataset,
        args.stage,
        metrics.users,
        started.elapsed().as_secs_f64()
    );
    println!(
        "HR@10 {:.4}  NDCG@10 {:.4}  Recall@20 {:.4}  MRR {:.4}",
        metrics.hr_at_10, metrics.ndcg_at_10, metrics.recall_at_20, metrics.mrr
    );
    Ok(())
}
