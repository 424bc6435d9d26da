//! `edgerec demo`: the whole system on one machine, on the embedded defaults. Trains a model on MovieLens (or
//! reuses the one trained before), starts a registry, publishes and deploys the model, starts an edge node that
//! follows the registry and serves the web demo page, replays the data set's held-out interactions as live
//! traffic, and prints live figures until Ctrl-C.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use edgerec_core::{ItemId, UserId, VariantName};
use edgerec_registry_api::client::RegistryClient;
use edgerec_registry_api::records::{PlanRequest, Variant, VersionRecord};
use serde_json::{Value, json};

use edgerec_trainer::adapt::DataShape;
use edgerec_trainer::collective::SingleProcess;
use edgerec_trainer::pipeline::{ExportChoice, Job, LoadedDataset, Settings};

use crate::data::DatasetArgs;
use crate::edge::VisitorMinter;

const SURFACE: &str = "home";
/// Events per `/v1/events` request while the history is loaded (the node's batch limit).
const EVENT_BATCH: usize = 1_000;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Train with the full settings (about 8 minutes on 2 cores, test HR@10 about 0.33 on ML-1M) instead of the
    /// quick ones (a cosine schedule of 8 epochs, about 2 minutes).
    #[arg(long)]
    full: bool,
    /// The data set (default movielens-1m); any `edgerec train` data set works.
    #[arg(long, default_value = "movielens-1m")]
    dataset: String,
    /// Where the datasets are kept (default ~/.cache/edgerec/data).
    #[arg(long, env = "EDGEREC_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A training settings file, as `edgerec train --config` takes (overrides the quick/full choice).
    #[arg(long)]
    train_config: Option<PathBuf>,
    /// Train again even if this folder holds a model trained with the same settings.
    #[arg(long)]
    retrain: bool,
    /// Where the demo keeps its model, registry and node data (the registry and node start fresh each run).
    #[arg(long, default_value = "runs/demo")]
    dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7070")]
    registry_listen: String,
    #[arg(long, default_value = "127.0.0.1:8080")]
    node_listen: String,
    /// The node's admin address (/metrics, /v1/deployments).
    #[arg(long, default_value = "127.0.0.1:8081")]
    node_admin_listen: String,
    /// Replayed requests per second (0: as fast as the node answers).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Concurrent replay clients.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Recommendations per request.
    #[arg(long, default_value_t = 10)]
    k: u32,
    /// Stop after this many seconds of serving after the replay (default: run until Ctrl-C or SIGTERM).
    #[arg(long)]
    duration: Option<u64>,
    /// The web demo folder served at the node's `/` (default: web-demo/ of this repository).
    #[arg(long)]
    web_demo: Option<PathBuf>,
    /// The ranker component (default: the one scripts/build-wasm.sh built).
    #[arg(long, env = "EDGEREC_WASI_RANKER")]
    wasm: Option<PathBuf>,
}

/// A child service, stopped (SIGTERM, then SIGKILL after 15 s) when dropped.
struct Service {
    child: Child,
    name: &'static str,
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("{} did not stop in 15 s; killing it", self.name);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn step(text: &str) {
    eprintln!("\n==> {text}");
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Whether `GET url` answers 200.
fn answers_ok(url: &str) -> bool {
    agent().get(url).call().is_ok_and(|r| r.status() == 200)
}

/// POSTs `body` with `credential` (a visitor token or an API key) as its bearer.
fn post(agent: &ureq::Agent, url: &str, credential: &str, body: &Value) -> Result<Value> {
    let mut response = agent
        .post(url)
        .header("Content-Type", "application/json")
        .header("Authorization", format!("Bearer {credential}"))
        .send(body.to_string())
        .with_context(|| format!("POST {url}"))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string()?;
    if status != 200 {
        bail!("POST {url} answered {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

/// Waits for Ctrl-C or SIGTERM (`kill`, a service manager): either stops the demo and the services it started,
/// which a process killed outright would leave running.
async fn stop_requested() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted,
        _ = terminate.recv() => Ok(()),
    }
}

pub fn run(args: DemoArgs) -> Result<()> {
    let exe = std::env::current_exe().context("locating the edgerec binary")?;
    let stop = watch_for_stop();
    std::fs::create_dir_all(&args.dir)?;
    check_addresses_free(&args)?;

    let dataset = DatasetArgs {
        dataset: args.dataset.clone(),
        data_dir: args.data_dir.clone(),
    };
    step(&format!("loading {}", args.dataset));
    let loaded = dataset.load()?;
    let (bundle, offline_hr) = train(&args, &loaded)?;

    step("starting the registry");
    let (_registry, registry) = start_registry(&args, &exe, &stop, &bundle)?;

    step("starting the edge node");
    let node_data = args.dir.join("node");
    let _ = std::fs::remove_dir_all(&node_data);
    load_catalogue(&node_data, &loaded)?;
    // The demo plays the site's backend: it signs visitor tokens for the replayed users with its own secret, and
    // imports their history with an API key; pages get anonymous sessions from the node.
    let minter = VisitorMinter::create(&args.dir.join("visitor-secret"), "demo-site")?;
    let (_, import_key) = edgerec_node::auth::api_keys::create(
        &edgerec_node::auth::api_keys::default_path(&node_data.join("node")),
        "demo history import",
        &[edgerec_node::auth::Scope::Events],
    )?;
    let (_node, node_url) = start_node(&args, &exe, &stop, &registry, &minter, &node_data)?;
    let admin_url = format!("http://{}", args.node_admin_listen);

    step("replaying the data set as live traffic");
    load_history(&node_url, &admin_url, &import_key, &loaded, &stop)?;
    let replay = replay(&node_url, &minter, &loaded, &args, &stop)?;
    eprintln!(
        "replay finished: {} requests, online HR@{} {:.4} (offline test HR@10 of this model {}), {} degraded, {} failed",
        replay.requests,
        args.k,
        replay.hit_rate(),
        offline_hr.map_or("unknown".into(), |hr| format!("{hr:.4}")),
        replay.degraded,
        replay.failed
    );

    step("serving");
    let example = loaded.split.users.first().map_or("1", |u| u.user.as_str());
    eprintln!(
        "try, with a visitor token for user {example} (valid 10 minutes; `edgerec edge mint-token` makes more):\n  curl -s {node_url}/v1/recommend -H 'Content-Type: application/json' -H 'Authorization: Bearer {}' -d '{{\"user_id\": \"{example}\", \"k\": 5, \"surface\": \"{SURFACE}\"}}'",
        minter.mint(example, 600)?
    );
    eprintln!(
        "metrics: {admin_url}/metrics; A/B report once the log is shipped (every 10 s): edgerec ab report --surface {SURFACE} --data {}",
        node_data.display()
    );
    serve_until_stopped(args.duration, &stop);
    eprintln!("stopping the edge node and the registry");
    Ok(())
}

/// A flag set when Ctrl-C or SIGTERM arrives, so every wait of the demo can stop early.
fn watch_for_stop() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(runtime) = runtime
            && runtime.block_on(stop_requested()).is_ok()
        {
            flag.store(true, Ordering::SeqCst);
        }
    });
    stop
}

/// A registry or node already listening on one of the demo's addresses would answer in place of ours (and refuse
/// our token): refuse to start instead.
fn check_addresses_free(args: &DemoArgs) -> Result<()> {
    for (what, address, flag) in [
        ("registry", &args.registry_listen, "--registry-listen"),
        ("edge node", &args.node_listen, "--node-listen"),
        (
            "edge node's admin",
            &args.node_admin_listen,
            "--node-admin-listen",
        ),
    ] {
        if let Err(e) = std::net::TcpListener::bind(address) {
            bail!(
                "cannot use {address} for the demo's {what}: {e} (is another demo or server running? pass {flag})"
            );
        }
    }
    Ok(())
}

/// The running registry as the node sees it: its address, an admin token and the version it serves.
struct RunningRegistry {
    url: String,
    token: String,
    /// Its signing key, which the node is given (it never trusts what a registry answers first).
    public_key: String,
    record: VersionRecord,
}

/// Starts a fresh registry, publishes `bundle` and deploys it to the demo's surface.
fn start_registry(
    args: &DemoArgs,
    exe: &Path,
    stop: &AtomicBool,
    bundle: &Path,
) -> Result<(Service, RunningRegistry)> {
    let registry_root = args.dir.join("registry");
    let _ = std::fs::remove_dir_all(&registry_root);
    let token = create_token(exe, &registry_root)?;
    let registry_log = std::fs::File::create(args.dir.join("registry.log"))?;
    let service = Service {
        child: Command::new(exe)
            .args([
                "registry",
                "serve",
                "--listen",
                &args.registry_listen,
                "--root",
            ])
            .arg(&registry_root)
            .stdout(Stdio::null())
            .stderr(registry_log)
            .spawn()
            .context("starting the registry")?,
        name: "the registry",
    };
    let url = format!("http://{}", args.registry_listen);
    wait_until(
        Duration::from_secs(30),
        "the registry to answer",
        stop,
        || answers_ok(&format!("{url}/healthz")),
    )?;
    let client = RegistryClient::new(&url, Some(&token));
    let (record, _) = client
        .publish_bundle(bundle)
        .context("publishing the model")?;
    let plan = client.deploy(
        SURFACE,
        &PlanRequest {
            variants: vec![Variant {
                name: VariantName::parse("control").expect("a valid name"),
                model: record.model.clone(),
                version: record.version.clone(),
                weight: 100,
            }],
            salt: None,
            reason: "edgerec demo".into(),
        },
        None,
    )?;
    eprintln!(
        "registry {url}: published {}@{} (signed), deployed to surface `{SURFACE}` (plan revision {}); logs in {}",
        record.model,
        record.version,
        plan.revision,
        args.dir.join("registry.log").display()
    );
    let public_key = client
        .signing_key()
        .context("reading the registry's signing key")?
        .public_key;
    Ok((
        service,
        RunningRegistry {
            url,
            token,
            public_key,
            record,
        },
    ))
}

/// Starts the edge node on the registry's plan, with the web demo when its folder is found; returns once it
/// serves the model.
fn start_node(
    args: &DemoArgs,
    exe: &Path,
    stop: &AtomicBool,
    registry: &RunningRegistry,
    minter: &VisitorMinter,
    node_data: &Path,
) -> Result<(Service, String)> {
    let web_demo = args.web_demo.clone().or_else(|| {
        [
            PathBuf::from("web-demo"),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../web-demo"),
        ]
        .into_iter()
        .find(|p| p.join("index.html").is_file())
    });
    let node_config = json!({
        "listen": args.node_listen,
        "admin_listen": args.node_admin_listen,
        "auth": {
            "visitor_tokens": { "hs256": [{ "kid": minter.kid(), "secret_file": minter.secret_file() }] },
            "anonymous_sessions": { "enabled": true },
        },
        // The replay is thousands of visitors from one address: the per-address limit is raised for it; each
        // visitor keeps the default limit.
        "rate_limits": { "per_address": { "per_second": 20_000, "burst": 40_000 } },
        "surfaces": [SURFACE],
        "registry": {
            "url": registry.url, "token": registry.token, "public_key": registry.public_key,
            "poll_interval_ms": 1000,
        },
        "ship_interval_ms": 10_000,
        "web_demo": web_demo,
        "browser_package": web_demo.as_ref().map(|_| crate::paths::wasm_artifact("browser")),
        "features": { "data_dir": node_data, "ingest": { "node_id": "demo-node" } },
    });
    let config_path = args.dir.join("node.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&node_config)?)?;
    let mut command = Command::new(exe);
    command
        .args(["edge", "serve", "--config"])
        .arg(&config_path);
    if let Some(wasm) = &args.wasm {
        command.arg("--wasm").arg(wasm);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(args.dir.join("node.log"))?)
        .spawn()
        .context("starting the edge node")?;
    let mut first_line = String::new();
    if let Some(stdout) = child.stdout.take() {
        BufReader::new(stdout).read_line(&mut first_line)?;
    }
    let service = Service {
        child,
        name: "the edge node",
    };
    if first_line.is_empty() {
        bail!(
            "the edge node did not start: see {}",
            args.dir.join("node.log").display()
        );
    }
    let node_url = format!("http://{}", args.node_listen);
    wait_until(
        Duration::from_secs(120),
        "the edge node to load the model",
        stop,
        || answers_ok(&format!("{node_url}/readyz")),
    )?;
    eprintln!(
        "edge node {node_url}: serving {}@{}; logs in {}",
        registry.record.model,
        registry.record.version,
        args.dir.join("node.log").display()
    );
    if web_demo.is_some() {
        eprintln!("web demo: open {node_url}/ in a browser");
    }
    Ok((service, node_url))
}

/// Waits for Ctrl-C or SIGTERM, or `duration` seconds when given.
fn serve_until_stopped(duration: Option<u64>, stop: &AtomicBool) {
    let started = Instant::now();
    match duration {
        Some(seconds) => eprintln!("stopping in {seconds} s (Ctrl-C or SIGTERM stops earlier)"),
        None => eprintln!("Ctrl-C (or SIGTERM) stops the demo"),
    }
    while !stop.load(Ordering::SeqCst)
        && duration.is_none_or(|s| started.elapsed() < Duration::from_secs(s))
    {
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_until(
    limit: Duration,
    what: &str,
    stop: &AtomicBool,
    mut done: impl FnMut() -> bool,
) -> Result<()> {
    let started = Instant::now();
    while !done() {
        if stop.load(Ordering::SeqCst) {
            bail!("interrupted while waiting for {what}");
        }
        if started.elapsed() > limit {
            bail!("gave up waiting for {what} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Trains the model unless this folder holds one trained with the same settings; returns the bundle and its
/// offline test HR@10.
fn train(args: &DemoArgs, loaded: &LoadedDataset) -> Result<(PathBuf, Option<f64>)> {
    let setting = match (&args.train_config, args.full) {
        (Some(_), _) => "custom",
        (None, true) => "full",
        (None, false) => "quick",
    };
    // A custom settings file gets its own folder per content, so editing it trains again.
    let setting = match &args.train_config {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            format!(
                "{setting}-{}",
                &edgerec_core::Digest::of(&bytes).to_string()[..12]
            )
        }
        None => setting.to_string(),
    };
    let out = args.dir.join(format!("model-{}-{setting}", loaded.name));
    let bundle = out.join("bundle");
    let report = out.join("report.json");
    if args.retrain || !report.is_file() {
        step(&format!(
            "training the {setting} model on {} (progress below)",
            loaded.name
        ));
        let _ = std::fs::remove_dir_all(&out);
        train_in_process(args, loaded, out.clone())?;
    } else {
        step(&format!(
            "reusing the {setting} model trained earlier in {} (--retrain to train again)",
            out.display()
        ));
    }
    let hr = std::fs::read(&report)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|r| r["test"]["hr@10"].as_f64());
    Ok((bundle, hr))
}

/// Runs the trainer's pipeline in this process, as `edgerec train` does for one process, with the quick, full or
/// custom settings.
fn train_in_process(args: &DemoArgs, loaded: &LoadedDataset, out: PathBuf) -> Result<()> {
    let mut flags = crate::train::SettingFlags::default();
    if args.train_config.is_none() && !args.full {
        // A short cosine schedule: the learning rate's cosine ends at epoch 8, about 2 minutes on 2 cores.
        flags.max_epochs = Some(8);
    }
    let settings = Settings {
        file: args.train_config.clone(),
        overrides: flags.overrides(),
    };
    let (config, choices) = settings.resolve(&DataShape::of(&loaded.split))?;
    let job = Job {
        data: loaded,
        config,
        choices,
        out,
        resume: false,
        export: ExportChoice::Best,
        code_version: crate::train::code_version(),
    };
    crate::train::print_start(&job, 1, 1);
    crate::train::run_job(&job, &SingleProcess)?.context("a single process is rank 0")?;
    Ok(())
}

fn create_token(exe: &Path, root: &Path) -> Result<String> {
    let output = Command::new(exe)
        .args([
            "registry", "token", "create", "--name", "demo", "--scope", "admin", "--root",
        ])
        .arg(root)
        .output()
        .context("creating the registry token")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    text.split_whitespace()
        .find(|w| w.starts_with("erk_"))
        .map(str::to_string)
        .with_context(|| format!("no token in the output of `registry token create`: {text}"))
}

/// Puts the catalogue's titles and genres into the node's feature store before the node opens it.
fn load_catalogue(node_data: &Path, loaded: &LoadedDataset) -> Result<()> {
    if loaded.catalogue.is_empty() {
        return Ok(());
    }
    let config = edgerec_features::config::FeaturesConfig {
        data_dir: node_data.to_path_buf(),
        ..Default::default()
    };
    std::fs::create_dir_all(node_data)?;
    let store = config.open_embedded()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(crate::features::refresh_items(
            &config,
            &store,
            &loaded.catalogue,
            &loaded.name,
            0.0,
            1,
        ))
}

/// Sends every user's interactions but the last as events, in their original order, re-timed into the last hour
/// (the node takes events up to 7 days old), then waits until the feature store has applied them.
fn load_history(
    node_url: &str,
    admin_url: &str,
    import_key: &str,
    loaded: &LoadedDataset,
    stop: &AtomicBool,
) -> Result<()> {
    let split = &loaded.split;
    let mut order: Vec<(i64, usize, usize)> = Vec::new();
    for (u, user) in split.users.iter().enumerate() {
        for position in 0..user.items.len().saturating_sub(1) {
            order.push((user.timestamps[position], u, position));
        }
    }
    order.sort();
    let now = edgerec_features::now_ms();
    let span = 3_540_000.0 / order.len().max(1) as f64;
    let events: Vec<Value> = order
        .iter()
        .enumerate()
        .map(|(i, &(_, u, position))| {
            let user = &split.users[u];
            json!({
                "id": format!("demo-history-{}-{position}", user.user),
                "user": user.user,
                "item": split.items[user.items[position] as usize - 1],
                "kind": "view",
                "time_ms": now - 3_600_000 + (i as f64 * span) as i64,
            })
        })
        .collect();
    let started = Instant::now();
    let batches: Vec<&[Value]> = events.chunks(EVENT_BATCH).collect();
    let next = AtomicUsize::new(0);
    let sent = AtomicUsize::new(0);
    let failure: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                let agent = agent();
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(batch) = batches.get(i) else {
                        return;
                    };
                    // Sent in order per sender; users' events interleave across senders only within a second
                    // of replayed time, which the store orders by event time anyway.
                    if let Err(e) = post(
                        &agent,
                        &format!("{node_url}/v1/events"),
                        import_key,
                        &json!({ "events": batch }),
                    ) {
                        *failure.lock().expect("lock") = Some(e.to_string());
                        stop.store(true, Ordering::SeqCst);
                        return;
                    }
                    let done = sent.fetch_add(batch.len(), Ordering::SeqCst) + batch.len();
                    if i.is_multiple_of(100) {
                        eprint!("\rhistory: {done}/{} events sent", events.len());
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().expect("lock") {
        bail!("loading the history: {e}");
    }
    eprintln!(
        "\rhistory: {} events of {} users sent in {:.1} s ({:.0} events/s, durable before each acknowledgement)",
        events.len(),
        split.users.len(),
        started.elapsed().as_secs_f64(),
        events.len() as f64 / started.elapsed().as_secs_f64()
    );
    let agent = agent();
    wait_until(
        Duration::from_secs(600),
        "the feature store to apply the history",
        stop,
        || {
            agent
                .get(format!("{admin_url}/metrics"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|text| {
                    text.lines()
                        .find(|l| l.starts_with("edgerec_node_ingest_backlog_records "))
                        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                })
                == Some(0)
        },
    )?;
    eprintln!(
        "history applied to the feature store {:.1} s after the first event",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(Default)]
struct ReplayFigures {
    requests: u64,
    hits: u64,
    degraded: u64,
    failed: u64,
}

impl ReplayFigures {
    fn hit_rate(&self) -> f64 {
        self.hits as f64 / self.requests.max(1) as f64
    }
}

/// For each user, in a shuffled order: asks the node for recommendations, counts a hit when the held-out item is
/// among them, and sends the held-out interaction as an event quoting the request. Prints figures every 2 s.
fn replay(
    node_url: &str,
    minter: &VisitorMinter,
    loaded: &LoadedDataset,
    args: &DemoArgs,
    stop: &AtomicBool,
) -> Result<ReplayFigures> {
    let split = &loaded.split;
    let mut users: Vec<(UserId, ItemId)> = split
        .users
        .iter()
        .filter(|u| u.items.len() >= 2)
        .map(|u| {
            let held_out = u.items[u.items.len() - 1] as usize - 1;
            (u.user.clone(), split.items[held_out].clone())
        })
        .collect();
    // A fixed shuffle (64-bit LCG), so runs are comparable.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in (1..users.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        users.swap(i, (state >> 33) as usize % (i + 1));
    }
    let next = AtomicUsize::new(0);
    let (hits, degraded, failed, done) = (
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    );
    let latencies: Mutex<Vec<f64>> = Mutex::new(Vec::new());
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let started = Instant::now();
    let finished = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..args.concurrency.max(1) {
            scope.spawn(|| {
                let agent = agent();
                let fail = |error: String| {
                    failed.fetch_add(1, Ordering::SeqCst);
                    first_error.lock().expect("lock").get_or_insert(error);
                };
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((user, held_out)) = users.get(i) else {
                        return;
                    };
                    if args.rate > 0.0 {
                        let due = started + Duration::from_secs_f64(i as f64 / args.rate);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    // What the site's page would have been given by its backend.
                    let token = match minter.mint(user, 600) {
                        Ok(token) => token,
                        Err(e) => {
                            fail(e.to_string());
                            continue;
                        }
                    };
                    let asked = Instant::now();
                    let answer = post(
                        &agent,
                        &format!("{node_url}/v1/recommend"),
                        &token,
                        &json!({ "user_id": user, "k": args.k, "surface": SURFACE }),
                    );
                    let seconds = asked.elapsed().as_secs_f64();
                    let answer = match answer {
                        Ok(answer) => answer,
                        Err(e) => {
                            fail(e.to_string());
                            continue;
                        }
                    };
                    latencies.lock().expect("lock").push(seconds);
                    let hit = answer["items"]
                        .as_array()
                        .is_some_and(|items| items.iter().any(|i| i["item"] == held_out.as_str()));
                    hits.fetch_add(u64::from(hit), Ordering::SeqCst);
                    degraded.fetch_add(
                        u64::from(answer.get("degraded").is_some()),
                        Ordering::SeqCst,
                    );
                    let event = json!({ "events": [{
                        "id": format!("demo-live-{user}"),
                        "user": user,
                        "item": held_out,
                        "kind": if hit { "click" } else { "view" },
                        "time_ms": edgerec_features::now_ms(),
                        "request_id": answer["request_id"],
                    }]});
                    if let Err(e) = post(&agent, &format!("{node_url}/v1/events"), &token, &event) {
                        fail(e.to_string());
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        scope.spawn(|| {
            let mut last = (Instant::now(), 0u64);
            while !finished.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                if last.0.elapsed() < Duration::from_secs(2) {
                    continue;
                }
                let count = done.load(Ordering::SeqCst);
                let window: Vec<f64> = {
                    let mut all = latencies.lock().expect("lock");
                    std::mem::take(&mut *all)
                };
                let rate = (count - last.1) as f64 / last.0.elapsed().as_secs_f64();
                last = (Instant::now(), count);
                eprintln!(
                    "replay: {count}/{} users  {rate:.0} requests/s  p50 {:.2} ms  p99 {:.2} ms  online HR@{} {:.4}  degraded {}  failed {}",
                    users.len(),
                    1e3 * percentile(window.clone(), 0.50),
                    1e3 * percentile(window, 0.99),
                    args.k,
                    hits.load(Ordering::SeqCst) as f64 / count.max(1) as f64,
                    degraded.load(Ordering::SeqCst),
                    failed.load(Ordering::SeqCst),
                );
            }
        });
        // The scope waits for the workers; the reporter stops once they have.
        while next.load(Ordering::SeqCst) < users.len() + args.concurrency.max(1)
            && !stop.load(Ordering::SeqCst)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        finished.store(true, Ordering::SeqCst);
    });
    if let Some(e) = first_error.into_inner().expect("lock") {
        eprintln!("first failure: {e}");
    }
    Ok(ReplayFigures {
        requests: done.load(Ordering::SeqCst),
        hits: hits.load(Ordering::SeqCst),
        degraded: degraded.load(Ordering::SeqCst),
        failed: failed.load(Ordering::SeqCst),
    })
}

fn percentile(mut values: Vec<f64>, q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}
