//! A registry and edge nodes as real processes on 127.0.0.1, and a site backend that signs visitor tokens for
//! them: what the node tests drive.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use edgerec_core::{Digest, MODEL_FILE};
use edgerec_registry::embedded::EmbeddedStore;
use edgerec_registry::signing::ManifestSigner;
use edgerec_registry::store::{AuditDraft, Store};
use edgerec_registry_api::records::VersionRecord;
use serde_json::{Value, json};

use super::free_port;

/// Runs the browser package's test script `script` (in `edge/browser/tests/`) under Node with the built package
/// (`$EDGEREC_WASM_DIR/browser`) as its first argument and then `args`; it must succeed. Its standard output.
pub fn browser_package_script(script: &str, args: &[&std::ffi::OsStr], what: &str) -> Vec<u8> {
    let package_dir = std::env::var("EDGEREC_WASM_DIR").expect(
        "EDGEREC_WASM_DIR is not set: run the tests through scripts/test.sh, which builds the browser package",
    );
    let output = Command::new("node")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../edge/browser/tests")
                .join(script),
        )
        .arg(Path::new(&package_dir).join("browser"))
        .args(args)
        .output()
        .expect("runs node");
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

pub fn wasm() -> PathBuf {
    edgerec_conformance::wasm_artifact("ranker-wasi.wasm")
}

/// The `edgerec` binary, with none of the variables that would point it elsewhere.
pub fn edgerec() -> Command {
    super::warm_module_cache();
    let mut command = Command::new(env!("CARGO_BIN_EXE_edgerec"));
    for name in [
        "EDGEREC_TOKEN",
        "EDGEREC_REGISTRY",
        "EDGEREC_NODE_LISTEN",
        "EDGEREC_NODE_DATA_DIR",
        "EDGEREC_NODE_ID",
        "EDGEREC_FEATURES_DATA_DIR",
        "EDGEREC_FEATURES_NODE_ID",
    ] {
        command.env_remove(name);
    }
    command
}

/// An admin token of a registry that is not running yet, created by the command line.
pub fn admin_token(root: &Path) -> String {
    let created = super::succeeds(
        edgerec()
            .args([
                "registry", "token", "create", "--name", "admin", "--scope", "admin", "--root",
            ])
            .arg(root),
        "creating a registry token",
    );
    String::from_utf8_lossy(&created.stdout)
        .split_whitespace()
        .chain(String::from_utf8_lossy(&created.stderr).split_whitespace())
        .find(|w| w.starts_with("erk_"))
        .expect("prints the secret")
        .to_string()
}

pub fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Process {
    pub child: Child,
    pub name: String,
}

impl Process {
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

pub struct Registry {
    pub process: Option<Process>,
    pub root: PathBuf,
    pub url: String,
    pub port: u16,
}

impl Registry {
    pub fn start(root: &Path) -> Self {
        let port = free_port();
        let mut registry = Self {
            process: None,
            root: root.into(),
            url: format!("http://127.0.0.1:{port}"),
            port,
        };
        registry.restart();
        registry
    }

    pub fn restart(&mut self) {
        let log = std::fs::File::create(self.root.with_extension("log")).expect("log file");
        let child = edgerec()
            .args(["registry", "serve", "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--root")
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starts the registry");
        self.process = Some(Process {
            child,
            name: "registry".into(),
        });
        wait_for(Duration::from_secs(30), "the registry to answer", || {
            ureq::get(format!("{}/healthz", self.url)).call().is_ok()
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }
}

/// A site's backend: the HS256 secret it shares with the nodes, and the visitor tokens it signs.
#[derive(Clone)]
pub struct Site {
    pub secret_file: PathBuf,
    pub kid: String,
    secret: String,
}

impl Site {
    pub fn new(dir: &Path, kid: &str) -> Self {
        let secret = format!("{kid}-secret-{}", "s".repeat(32));
        let secret_file = dir.join(format!("{kid}.secret"));
        std::fs::write(&secret_file, &secret).expect("writes the secret");
        Self {
            secret_file,
            kid: kid.into(),
            secret,
        }
    }

    /// The node configuration's `auth` section for this site, with anonymous sessions.
    pub fn auth_config(&self) -> Value {
        json!({
            "visitor_tokens": { "hs256": [{ "kid": self.kid, "secret_file": self.secret_file }] },
            "anonymous_sessions": { "enabled": true },
        })
    }

    /// A token for `user`, valid for ten minutes.
    pub fn token(&self, user: &str) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        self.sign(&json!({ "sub": user, "iat": now, "exp": now + 600 }), None)
    }

    /// A token with these claims, signed with `secret` (default: the site's).
    pub fn sign(&self, claims: &Value, secret: Option<&str>) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        let key = jsonwebtoken::EncodingKey::from_secret(secret.unwrap_or(&self.secret).as_bytes())
            .expect("a secret");
        jsonwebtoken::encode(&header, claims, &key).expect("signs")
    }
}

/// An HTTP answer: status, JSON body (Null when not JSON) and the `Retry-After` header.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl Answer {
    pub fn kind(&self) -> Option<&str> {
        self.body["error"]["kind"].as_str()
    }
}

pub struct Node {
    pub process: Process,
    /// The node's data folder (its API keys are there).
    pub data: PathBuf,
    pub url: String,
    /// Where `/metrics` and `/v1/deployments` are.
    pub admin_url: String,
    pub agent: ureq::Agent,
    /// Signs a visitor token for the user a request names (none: requests go without credential).
    pub site: Option<Site>,
}

impl Node {
    /// Starts `edgerec edge serve` with `config` (its admin routes on a free loopback port unless it says).
    pub fn start(name: &str, dir: &Path, mut config: Value, site: Option<Site>) -> Self {
        if config.get("admin_listen").is_none() {
            config["admin_listen"] = json!("127.0.0.1:0");
        }
        let config_path = dir.join(format!("{name}.json"));
        std::fs::write(&config_path, config.to_string()).expect("writes the node config");
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
        let mut child = edgerec()
            .args(["edge", "serve", "--config"])
            .arg(&config_path)
            .arg("--wasm")
            .arg(wasm())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starts the node");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut address = |what: &str| {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("reads an address line");
            line.split_whitespace()
                .find(|w| w.starts_with("http://"))
                .unwrap_or_else(|| {
                    panic!("{name} printed no {what} address: {line:?} (see {name}.log)")
                })
                .to_string()
        };
        let url = address("public");
        let admin_url = address("admin");
        let data = config["features"]["data_dir"]
            .as_str()
            .map(PathBuf::from)
            .expect("the test names the node's data folder");
        Self {
            data,
            process: Process {
                child,
                name: name.into(),
            },
            url,
            admin_url,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into(),
            site,
        }
    }

    fn get_from(&self, base: &str, path: &str) -> (u16, String) {
        let mut response = self
            .agent
            .get(format!("{base}{path}"))
            .call()
            .expect("the node answers");
        let body = response.body_mut().read_to_string().unwrap_or_default();
        (response.status().as_u16(), body)
    }

    /// A new API key of this node with `scopes`, made with `edgerec edge key create`.
    pub fn api_key(&self, scopes: &[&str]) -> String {
        let mut command = edgerec();
        command
            .args(["edge", "key", "create", "--name", "test", "--data"])
            .arg(&self.data);
        for scope in scopes {
            command.args(["--scope", scope]);
        }
        let output = command.output().expect("runs edgerec edge key create");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.get_from(&self.url, path)
    }

    pub fn admin_get(&self, path: &str) -> (u16, String) {
        self.get_from(&self.admin_url, path)
    }

    /// POSTs `body` with `Authorization: Bearer <credential>` when one is given.
    pub fn send(
        &self,
        path: &str,
        body: &Value,
        credential: Option<&str>,
    ) -> Result<Answer, String> {
        self.send_with(path, body, credential, &[])
    }

    /// [`Node::send`] with more headers.
    pub fn send_with(
        &self,
        path: &str,
        body: &Value,
        credential: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let mut request = self
            .agent
            .post(format!("{}{path}", self.url))
            .header("Content-Type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(credential) = credential {
            request = request.header("Authorization", format!("Bearer {credential}"));
        }
        let mut response = request.send(body.to_string()).map_err(|e| e.to_string())?;
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let text = response.body_mut().read_to_string().unwrap_or_default();
        Ok(Answer {
            status: response.status().as_u16(),
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            retry_after,
        })
    }

    /// POSTs `body` as the visitor it names (`user_id`, or the one user of its events), with a token the site
    /// signs; without a user, or without a site, no credential.
    pub fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), String> {
        let user = body["user_id"].as_str().map(String::from).or_else(|| {
            let events = body["events"].as_array()?;
            let first = events.first()?["user"].as_str()?;
            events
                .iter()
                .all(|e| e["user"] == first)
                .then(|| first.to_string())
        });
        let token = match (&self.site, user) {
            (Some(site), Some(user)) if !user.is_empty() => Some(site.token(&user)),
            _ => None,
        };
        let answer = self.send(path, body, token.as_deref())?;
        Ok((answer.status, answer.body))
    }

    pub fn recommend(&self, body: Value) -> Value {
        let (status, answer) = self.post("/v1/recommend", &body).expect("answers");
        assert_eq!(status, 200, "{answer}");
        answer
    }

    pub fn revision(&self, surface: &str) -> Option<u64> {
        let (_, body) = self.admin_get("/v1/deployments");
        let status: Value = serde_json::from_str(&body).ok()?;
        status["deployments"]
            .as_array()?
            .iter()
            .find(|d| d["surface"] == surface)?["revision"]
            .as_u64()
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, text) = self.admin_get("/metrics");
        text.lines()
            .filter(|line| line.starts_with(name) && !line.starts_with('#'))
            .filter(|line| {
                labels
                    .iter()
                    .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

pub fn run<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// The golden manifest relabelled as `version`, with `model` as its model file.
pub fn manifest_for(version: &str, model: &[u8]) -> Vec<u8> {
    edgerec_conformance::golden_manifest_with(model, |m| m.version = version.into())
}

/// Writes a version straight into a stopped registry's store, as tampering with its storage would: `sign` says
/// whether it carries the registry's real signature or a forged one.
pub fn plant_version(
    root: &Path,
    template: &VersionRecord,
    version: &str,
    model: &[u8],
    sign: bool,
) {
    let manifest = manifest_for(version, model);
    let manifest_digest = Digest::of(&manifest);
    let signer = ManifestSigner::load_or_create(&root.join("signing.key")).expect("registry key");
    let signature = if sign {
        signer.sign(&manifest_digest)
    } else {
        // A well-formed signature, of other content.
        signer.sign(&Digest::of(b"something else"))
    };
    let record = VersionRecord {
        version: edgerec_core::Version::parse(version).expect("a version"),
        manifest_digest,
        files: BTreeMap::from([(MODEL_FILE.to_string(), Digest::of(model))]),
        signature,
        ..template.clone()
    };
    run(async {
        let store = EmbeddedStore::open(root).expect("opens the stopped registry's store");
        store
            .put_blob(&manifest_digest, &manifest)
            .await
            .expect("manifest blob");
        store
            .put_blob(&Digest::of(model), model)
            .await
            .expect("model blob");
        store
            .insert_version(
                &record,
                AuditDraft {
                    actor: "test".into(),
                    action: "model.publish",
                    target: format!("{}@{version}", record.model),
                    reason: "planted".into(),
                    detail: Value::Null,
                },
            )
            .await
            .expect("inserts the version");
    });
}

/// Deploys `variants` (name, version of `model`, weight in percent) to `surface`, conditional on the plan read
/// just before; returns the new revision.
pub fn deploy(
    client: &edgerec_registry_api::client::RegistryClient,
    surface: &str,
    model: &str,
    variants: &[(&str, &str, u32)],
    reason: &str,
) -> u64 {
    use edgerec_core::{ModelName, VariantName, Version};
    use edgerec_registry_api::records::{PlanRequest, Variant};
    let current = client.plan(surface).expect("reads the plan");
    let request = PlanRequest {
        variants: variants
            .iter()
            .map(|(name, version, weight)| Variant {
                name: VariantName::parse(*name).expect("a name"),
                model: ModelName::parse(model).expect("a name"),
                version: Version::parse(*version).expect("a version"),
                weight: *weight,
            })
            .collect(),
        salt: None,
        reason: reason.into(),
    };
    client
        .deploy(surface, &request, current.map(|p| p.revision))
        .expect("deploys")
        .revision
}

/// Publishes the golden model relabelled as each of `versions` (a bundle folder per version under `dir`).
pub fn publish_versions(
    dir: &Path,
    client: &edgerec_registry_api::client::RegistryClient,
    golden_model: &[u8],
    versions: &[&str],
) {
    for version in versions {
        let bundle = dir.join(format!("bundle-{version}"));
        std::fs::create_dir_all(&bundle).expect("bundle dir");
        std::fs::write(
            bundle.join("manifest.json"),
            manifest_for(version, golden_model),
        )
        .expect("manifest");
        std::fs::write(bundle.join(MODEL_FILE), golden_model).expect("model");
        client.publish_bundle(&bundle).expect("publishes");
    }
}
