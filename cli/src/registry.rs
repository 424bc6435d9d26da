//! `edgerec registry` (run the model registry, manage its tokens) and `edgerec model` (publish and deploy through
//! it).

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use edgerec_core::{IdError, ModelName, VariantName, Version};
use edgerec_registry::server::{RegistryConfig, serve};
use edgerec_registry::service::Registry;
use edgerec_registry::signing::ManifestSigner;
use edgerec_registry::store::Store;
use edgerec_registry_api::client::RegistryClient;
use edgerec_registry_api::keys::key_id;
use edgerec_registry_api::records::{Plan, PlanRequest, Scope, Variant};

#[derive(Subcommand, Debug)]
pub enum RegistryCommand {
    /// Serve the registry API (embedded backend: a folder with a redb file and the blobs).
    Serve {
        /// JSON configuration file (listen, root, signing_key, max_upload_bytes, workers, allowed_origins);
        /// EDGEREC_REGISTRY_* variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on, e.g. 127.0.0.1:7070.
        #[arg(long)]
        listen: Option<String>,
        /// The registry's folder (default ~/.cache/edgerec/registry).
        #[arg(long)]
        root: Option<PathBuf>,
        /// An origin whose web pages may call the registry from a browser (repeat it; `*` for any).
        #[arg(long = "allow-origin")]
        allowed_origins: Vec<String>,
    },
    /// Access tokens: on a registry folder directly (while no server holds it), or through a running registry
    /// with --registry and an admin token.
    Token {
        #[command(subcommand)]
        what: TokenCommand,
    },
    /// The signing key: create the one file every replica shares, or rotate to a new key.
    Key {
        #[command(subcommand)]
        what: RegistryKeyCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum RegistryKeyCommand {
    /// Make a new signing key file (owner-only), for a registry's `signing_key`: once, before the first start of
    /// an S3 + DynamoDB registry, whose replicas all sign with it. Prints the public key nodes are configured with.
    Create {
        #[arg(long)]
        out: PathBuf,
    },
    /// Rotate a running registry to a new key (admin token). The retired key signs a statement naming the new key
    /// and how long it stays valid; nodes and pages configured with it follow the chain. Other replicas refuse to
    /// start until they get the new key file (the registry's signing_key file is replaced).
    Rotate {
        /// How long the retired key still verifies, in hours: enough for every node and page to poll once.
        #[arg(long, default_value_t = 168)]
        grace_hours: u32,
        #[command(flatten)]
        registry: RegistryAddress,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown once).
    Create {
        #[arg(long)]
        name: String,
        /// read, publish, deploy or admin; repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<Scope>,
        #[command(flatten)]
        target: TokenTarget,
    },
    List {
        #[command(flatten)]
        target: TokenTarget,
    },
    Revoke {
        id: String,
        #[command(flatten)]
        target: TokenTarget,
    },
}

#[derive(clap::Args, Debug)]
pub struct TokenTarget {
    /// The registry folder to open directly (default ~/.cache/edgerec/registry).
    #[arg(long, conflicts_with = "registry")]
    root: Option<PathBuf>,
    /// The registry's configuration file, to open its backend directly (S3 + DynamoDB included).
    #[arg(long, conflicts_with = "registry")]
    config: Option<PathBuf>,
    /// A running registry to manage tokens through (needs an admin --token).
    #[arg(long)]
    registry: Option<String>,
    #[arg(long, env = "EDGEREC_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RegistryAddress {
    /// The registry's URL.
    #[arg(
        long,
        env = "EDGEREC_REGISTRY",
        default_value = "http://127.0.0.1:7070"
    )]
    pub registry: String,
    /// Bearer token.
    #[arg(long, env = "EDGEREC_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl RegistryAddress {
    pub fn client(&self) -> RegistryClient {
        RegistryClient::new(&self.registry, self.token.as_deref())
    }
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Upload a bundle folder (manifest.json and its files) and publish it as a version.
    Publish {
        bundle: PathBuf,
        #[command(flatten)]
        registry: RegistryAddress,
    },
    /// Models and their versions.
    List {
        #[command(flatten)]
        registry: RegistryAddress,
    },
    /// A model's versions, or one version, with metrics and lineage.
    Show {
        model: String,
        version: Option<String>,
        #[command(flatten)]
        registry: RegistryAddress,
    },
    /// Set the plan of a surface: --variant name=model@version:weight, weights summing to 100.
    Deploy {
        surface: String,
        #[arg(long = "variant", required = true, value_parser = parse_variant)]
        variants: Vec<Variant>,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: String,
        /// New bucketing salt (reshuffles users between variants); default: keep the current one.
        #[arg(long)]
        salt: Option<String>,
        #[command(flatten)]
        registry: RegistryAddress,
    },
    /// Restore the plan that preceded the current one.
    Rollback {
        surface: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        registry: RegistryAddress,
    },
    /// Revoke a version for good: edge nodes and browsers stop serving it at their next poll (its variants'
    /// users go to the plan's other variants, or to popularity), and no plan may name it again.
    Revoke(VersionChange),
    /// Delete a version no plan names (admin token); it goes on the revocation list.
    Delete(VersionChange),
    /// Every revoked or deleted version.
    Revocations {
        #[command(flatten)]
        registry: RegistryAddress,
    },
    /// Every revision of a surface's plan.
    History {
        surface: String,
        #[command(flatten)]
        registry: RegistryAddress,
    },
}

/// A version to revoke or delete, and why.
#[derive(clap::Args, Debug)]
pub struct VersionChange {
    model: String,
    version: String,
    /// Why (kept in the audit log and the revocation list).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    registry: RegistryAddress,
}

/// `name=model@version:weight`.
fn parse_variant(text: &str) -> Result<Variant, String> {
    let usage = || {
        format!(
            "`{text}` is not name=model@version:weight (for example control=ml-1m-sasrec@1.0.48:90)"
        )
    };
    let (name, rest) = text.split_once('=').ok_or_else(usage)?;
    let (model, rest) = rest.split_once('@').ok_or_else(usage)?;
    let (version, weight) = rest.rsplit_once(':').ok_or_else(usage)?;
    let invalid = |e: IdError| format!("`{text}`: {e}");
    Ok(Variant {
        name: VariantName::parse(name).map_err(invalid)?,
        model: ModelName::parse(model).map_err(invalid)?,
        version: Version::parse(version).map_err(invalid)?,
        weight: weight.parse().map_err(|_| usage())?,
    })
}

pub fn run_registry(command: RegistryCommand) -> Result<()> {
    match command {
        RegistryCommand::Serve {
            config,
            listen,
            root,
            allowed_origins,
        } => {
            let mut config = RegistryConfig::load(config.as_deref())?;
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if let Some(root) = root {
                config.root = root;
            }
            if !allowed_origins.is_empty() {
                config.allowed_origins = allowed_origins;
            }
            let opened =
                |e: Box<dyn std::error::Error + Send + Sync>| anyhow!("opening the registry: {e}");
            match &config.aws {
                Some(aws) => serve_registry(config.open_aws(aws).map_err(opened)?, &config),
                None => serve_registry(config.open_embedded().map_err(opened)?, &config),
            }
        }
        RegistryCommand::Token { what } => token(what),
        RegistryCommand::Key { what } => registry_key(what),
    }
}

fn registry_key(command: RegistryKeyCommand) -> Result<()> {
    match command {
        RegistryKeyCommand::Create { out } => {
            let signer = ManifestSigner::create(&out)?;
            println!(
                "created {} (key {}); public key, for edge nodes' --public-key: {}",
                out.display(),
                signer.key_id(),
                signer.public_key_hex()
            );
        }
        RegistryKeyCommand::Rotate {
            grace_hours,
            registry,
        } => {
            let rotation = registry.client().rotate_key(grace_hours)?;
            println!(
                "rotated to key {} ({}); key {} stays valid until {} ms since the epoch",
                key_id(&rotation.to_key).unwrap_or_default(),
                rotation.to_key,
                key_id(&rotation.from_key).unwrap_or_default(),
                rotation.old_valid_until
            );
        }
    }
    Ok(())
}

/// Serves `registry` as `config` says, telling the operator where, with which key, and whether a token exists.
fn serve_registry<S: Store + Send + Sync + 'static>(
    mut registry: Registry<S>,
    config: &RegistryConfig,
) -> Result<()> {
    registry.probe = model_probe(config)?;
    let backend = match &config.aws {
        Some(aws) => format!("DynamoDB table {} and S3 bucket {}", aws.table, aws.bucket),
        None => format!("folder {}", config.root.display()),
    };
    let public_key = registry.signer.public_key_hex();
    let (key_id, rotations) = (registry.signer.key_id(), registry.signer.rotations().len());
    let no_tokens = block_on(registry.store.list_tokens())??.is_empty();
    serve(registry, config, |addresses| {
        for address in addresses {
            eprintln!("edgerec registry listening on http://{address} ({backend})");
        }
        eprintln!(
            "signing key {key_id}, after {rotations} rotations (configure edge nodes with it, or with any earlier key \
             of its chain): {public_key}"
        );
        if no_tokens {
            eprintln!(
                "no tokens yet: create an admin token with `edgerec registry token create --name admin --scope admin` (registry stopped, same --root or --config)"
            );
        }
    })
    .with_context(|| format!("serving on {}", config.listen))
}

/// The probe of published models: the WASI ranker under wasmtime with the limits of edge nodes, or, when no
/// ranker was built (and none configured), tract in this process, with a warning.
fn model_probe(
    config: &RegistryConfig,
) -> Result<std::sync::Arc<dyn edgerec_registry_api::probe::ModelProbe>> {
    let wasm = match &config.probe.ranker_wasm {
        Some(wasm) => {
            anyhow::ensure!(
                wasm.is_file(),
                "probe.ranker_wasm: no WASI ranker at {}",
                wasm.display()
            );
            wasm.clone()
        }
        None => {
            let wasm = crate::paths::wasm_artifact("ranker-wasi.wasm");
            if !wasm.is_file() {
                eprintln!(
                    "warning: no WASI ranker at {} (scripts/build-wasm.sh builds it): published models are probed with \
                     tract in this process, without memory or time bounds",
                    wasm.display()
                );
                return Ok(std::sync::Arc::new(
                    edgerec_registry::service::InProcessProbe,
                ));
            }
            wasm
        }
    };
    let engine = edgerec_node::RankerEngine::load(&wasm, &crate::paths::module_cache_dir())
        .with_context(|| {
            format!(
                "loading the WASI ranker {} for the model probe",
                wasm.display()
            )
        })?;
    let memory = config
        .probe
        .instance_memory_mb
        .map(|mb| usize::try_from(mb << 20).unwrap_or(usize::MAX));
    Ok(std::sync::Arc::new(edgerec_node::probe::WasiProbe::new(
        engine,
        memory,
        std::time::Duration::from_millis(config.probe.deadline_ms),
    )))
}

/// Runs a store future to completion (the S3 + DynamoDB backend needs a Tokio runtime).
pub(crate) fn block_on<T>(future: impl std::future::Future<Output = T>) -> Result<T> {
    Ok(actix_web::rt::Runtime::new()?.block_on(future))
}

/// What a token command does to a registry opened directly.
enum LocalTokenCommand {
    Create { name: String, scopes: Vec<Scope> },
    List,
    Revoke { id: String },
}

async fn local_token<S: Store>(registry: &Registry<S>, command: LocalTokenCommand) -> Result<()> {
    match command {
        LocalTokenCommand::Create { name, scopes } => {
            print_issued(&registry.create_token(&name, scopes, "local-admin").await?)
        }
        LocalTokenCommand::List => print_tokens(registry.store.list_tokens().await?),
        LocalTokenCommand::Revoke { id } => {
            registry.revoke_token(&id, "local-admin").await?;
            println!("revoked {id}");
        }
    }
    Ok(())
}

fn print_issued(issued: &edgerec_registry_api::records::IssuedToken) {
    eprintln!(
        "token {} ({}) with scopes {}; its secret, shown only now:",
        issued.token.id,
        issued.token.name,
        issued
            .token
            .scopes
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("{}", issued.secret);
}

fn print_tokens(tokens: Vec<edgerec_registry_api::records::TokenRecord>) {
    for token in tokens {
        println!(
            "{}  {:<20} {:<28} {}",
            token.id,
            token.name,
            token
                .scopes
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(","),
            if token.revoked { "revoked" } else { "active" }
        );
    }
}

fn token(command: TokenCommand) -> Result<()> {
    let (target, local) = match command {
        TokenCommand::Create {
            name,
            scopes,
            target,
        } => (target, LocalTokenCommand::Create { name, scopes }),
        TokenCommand::List { target } => (target, LocalTokenCommand::List),
        TokenCommand::Revoke { id, target } => (target, LocalTokenCommand::Revoke { id }),
    };
    if let Some(url) = &target.registry {
        let client = RegistryClient::new(url, target.token.as_deref());
        match local {
            LocalTokenCommand::Create { name, scopes } => {
                print_issued(&client.create_token(&name, &scopes)?)
            }
            LocalTokenCommand::List => print_tokens(client.tokens()?),
            LocalTokenCommand::Revoke { id } => {
                client.revoke_token(&id)?;
                println!("revoked {id}");
            }
        }
        return Ok(());
    }
    let mut config = RegistryConfig::load(target.config.as_deref())?;
    if let Some(root) = target.root {
        config.root = root;
    }
    let opened = |e: Box<dyn std::error::Error + Send + Sync>| anyhow!("opening the registry: {e}");
    match &config.aws {
        Some(aws) => block_on(local_token(&config.open_aws(aws).map_err(opened)?, local))?,
        None => block_on(local_token(&config.open_embedded().map_err(opened)?, local))?,
    }
}

fn print_plan(plan: &Plan) {
    println!(
        "{} revision {} (salt {}, by {}: {})",
        plan.surface, plan.revision, plan.salt, plan.updated_by, plan.reason
    );
    for v in &plan.variants {
        println!("  {:<16} {}@{}  {}%", v.name, v.model, v.version, v.weight);
    }
}

/// `model revoke`, `model delete` and `model revocations`.
fn run_revocation(command: ModelCommand) -> Result<()> {
    match command {
        ModelCommand::Revoke(VersionChange {
            model,
            version,
            reason,
            registry,
        }) => {
            let answer = registry.client().revoke(&model, &version, &reason)?;
            println!("revoked {model} {version}");
            for named in answer["still_named_by"].as_array().into_iter().flatten() {
                println!(
                    "  still named by variant `{}` ({}%) of surface `{}` at revision {}: its users go to the \
                     other variants (or to popularity) until the plan changes",
                    named["variant"].as_str().unwrap_or_default(),
                    named["weight"],
                    named["surface"].as_str().unwrap_or_default(),
                    named["revision"]
                );
            }
        }
        ModelCommand::Delete(VersionChange {
            model,
            version,
            reason,
            registry,
        }) => {
            registry
                .client()
                .delete_version(&model, &version, &reason)?;
            println!("deleted {model} {version} (on the revocation list)");
        }
        ModelCommand::Revocations { registry } => {
            for revocation in registry.client().revocations()? {
                println!(
                    "{:<32} {:<12} {:<8} by {} at {} ms: {}",
                    revocation.model,
                    revocation.version,
                    revocation.cause,
                    revocation.revoked_by,
                    revocation.revoked_at,
                    revocation.reason
                );
            }
        }
        other => bail!("not a revocation command: {other:?}"),
    }
    Ok(())
}

pub fn run_model(command: ModelCommand) -> Result<()> {
    match command {
        ModelCommand::Publish { bundle, registry } => {
            let (version, created) = registry.client().publish_bundle(&bundle)?;
            println!(
                "{} {} {} (manifest sha256:{}, signed)",
                if created {
                    "published"
                } else {
                    "already published:"
                },
                version.model,
                version.version,
                version.manifest_digest
            );
        }
        ModelCommand::List { registry } => {
            let models = registry.client().models()?;
            for model in models.as_array().into_iter().flatten() {
                println!(
                    "{:<32} latest {:<12} versions {}",
                    model["model"].as_str().unwrap_or_default(),
                    model["latest"].as_str().unwrap_or("-"),
                    model["versions"].as_array().map_or(0, Vec::len)
                );
            }
        }
        ModelCommand::Show {
            model,
            version,
            registry,
        } => {
            let client = registry.client();
            let versions = match version {
                Some(version) => vec![client.version(&model, &version)?],
                None => client.versions(&model)?,
            };
            println!("{}", serde_json::to_string_pretty(&versions)?);
        }
        ModelCommand::Deploy {
            surface,
            variants,
            reason,
            salt,
            registry,
        } => {
            let client = registry.client();
            let current = client.plan(&surface)?;
            let plan = client.deploy(
                &surface,
                &PlanRequest {
                    variants,
                    salt,
                    reason,
                },
                current.as_ref().map(|p| p.revision),
            )?;
            print_plan(&plan);
        }
        ModelCommand::Rollback {
            surface,
            reason,
            registry,
        } => {
            let plan = registry.client().rollback(&surface, &reason)?;
            print_plan(&plan);
        }
        ModelCommand::Revoke(_) | ModelCommand::Delete(_) | ModelCommand::Revocations { .. } => {
            run_revocation(command)?
        }
        ModelCommand::History { surface, registry } => {
            let history = registry.client().history(&surface)?;
            if history.is_empty() {
                bail!("surface `{surface}` has no plan");
            }
            for plan in &history {
                print_plan(plan);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse_from_the_command_line() {
        let variant = parse_variant("control=ml-1m-sasrec@1.0.48:90").expect("parses");
        assert_eq!(
            variant,
            Variant {
                name: VariantName::parse("control").expect("a name"),
                model: ModelName::parse("ml-1m-sasrec").expect("a name"),
                version: Version::parse("1.0.48").expect("a version"),
                weight: 90,
            }
        );
        for bad in [
            "control",
            "control=model:90",
            "control=model@1.0",
            "control=model@1.0:ninety",
        ] {
            let error = parse_variant(bad).expect_err("refused");
            assert!(error.contains("name=model@version:weight"), "{error}");
        }
    }
}
