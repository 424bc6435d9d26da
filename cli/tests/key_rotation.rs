//! Rotating the registry's signing key under constant traffic: an edge node configured with the first key follows
//! two rotations (the second with no grace, so the middle key is out at once) without a failed request, re-signs
//! what it relays (plans, records, its key document), and a restart with the chain still works; the browser
//! package, given the first key, follows the same chain and refuses a tampered one.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use edgerec_core::MODEL_FILE;
use edgerec_registry_api::client::RegistryClient;
use edgerec_registry_api::keys::{TrustedKeys, key_id};
use edgerec_registry_api::signature::verify_manifest_signature;
use serde_json::{Value, json};
use support::nodes::{Node, Registry, Site, admin_token, edgerec, manifest_for, wait_for};

use crate::support;

const SURFACE: &str = "home";

/// Requests that keep coming while the keys rotate, and how many did not get a 200.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Traffic {
    fn start(node: &Node, site: &Site) -> Self {
        let stop: Arc<AtomicBool> = Arc::default();
        let (sent, failed): (Arc<AtomicU64>, Arc<AtomicU64>) = (Arc::default(), Arc::default());
        let tokens: Vec<(String, String)> = (0..8)
            .map(|n| {
                let user = format!("user-{n}");
                (site.token(&user), user)
            })
            .collect();
        let (url, agent) = (node.url.clone(), node.agent.clone());
        let thread = {
            let (stop, sent, failed) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&failed));
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for (token, user) in &tokens {
                        // About 40 requests a second, under the node's limit for one address (50).
                        std::thread::sleep(Duration::from_millis(25));
                        let answer = agent
                            .post(format!("{url}/v1/recommend"))
                            .header("Authorization", format!("Bearer {token}"))
                            .header("Content-Type", "application/json")
                            .send(
                                json!({"user_id": user, "recent_items": ["m1"], "k": 3, "surface": SURFACE})
                                    .to_string(),
                            );
                        sent.fetch_add(1, Ordering::Relaxed);
                        match answer {
                            Ok(mut reply) if reply.status() == 200 => {
                                let body = reply.body_mut().read_to_string().unwrap_or_default();
                                if body.contains("\"degraded\"") {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    errors.push(body);
                                }
                            }
                            other => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(format!("{:?}", other.map(|r| r.status())));
                            }
                        }
                    }
                }
                errors
            })
        };
        Self {
            stop,
            sent,
            failed,
            thread,
        }
    }

    /// Stops the traffic: requests sent, and the failures (a status other than 200, or a degraded answer).
    fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.thread.join().expect("the traffic thread");
        assert_eq!(self.failed.load(Ordering::Relaxed), errors.len() as u64);
        (self.sent.load(Ordering::Relaxed), errors)
    }
}

/// `edgerec registry key rotate` with `grace_hours`: the new key.
fn rotate(registry: &Registry, token: &str, grace_hours: &str) -> String {
    let output = edgerec()
        .args(["registry", "key", "rotate", "--grace-hours", grace_hours])
        .args(["--registry", &registry.url, "--token", token])
        .output()
        .expect("runs edgerec");
    let said = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success() && said.starts_with("rotated to key "),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    said.split(['(', ')'])
        .nth(1)
        .expect("the new key")
        .to_string()
}

/// The node serves `key`: its key document names it, and the plan and record it relays are signed with it.
fn relays_signatures_of(node: &Node, key: &str) -> bool {
    let get =
        |path: &str| -> Value { serde_json::from_str(&node.get(path).1).unwrap_or(Value::Null) };
    let plan = get(&format!("/v1/plans/{SURFACE}"));
    let record = get("/v1/models/golden-sasrec/versions/1.0.0");
    let digest = record["manifest_digest"]
        .as_str()
        .and_then(|d| d.parse().ok());
    get("/v1/signing-key")["public_key"] == key
        && plan["signature"]["key_id"].as_str() == key_id(key).as_deref()
        && digest.is_some_and(|digest| {
            verify_manifest_signature(key, &digest, record["signature"].as_str().unwrap_or(""))
                .is_ok()
        })
}

fn publish(dir: &Path, client: &RegistryClient) {
    let (_, model) = edgerec_conformance::golden_bundle();
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).expect("bundle dir");
    std::fs::write(bundle.join("manifest.json"), manifest_for("1.0.0", &model)).expect("manifest");
    std::fs::write(bundle.join(MODEL_FILE), &model).expect("model");
    client.publish_bundle(&bundle).expect("publishes");
}

#[test]
fn a_node_and_a_page_follow_key_rotations_without_a_failed_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let registry_root = dir.path().join("registry");
    let token = admin_token(&registry_root);
    let mut registry = Registry::start(&registry_root);
    let client = RegistryClient::new(&registry.url, Some(&token));
    publish(dir.path(), &client);
    support::nodes::deploy(
        &client,
        SURFACE,
        "golden-sasrec",
        &[("control", "1.0.0", 100)],
        "launch",
    );
    let first = client.signing_key().expect("the key").public_key;

    let site = Site::new(dir.path(), "site-1");
    let config = json!({
        "listen": "127.0.0.1:0",
        "workers": 2,
        "surfaces": [SURFACE],
        "registry": { "url": registry.url, "token": token, "poll_interval_ms": 200, "public_key": first },
        "auth": site.auth_config(),
        "ship_interval_ms": 3_600_000,
        "features": { "data_dir": dir.path().join("node"), "ingest": { "node_id": "node" } },
    });
    let node = Node::start(
        "node",
        dir.path(),
        config.clone(),
        Some(Site::new(dir.path(), "site-1")),
    );
    wait_for(Duration::from_secs(60), "the node to serve", || {
        node.revision(SURFACE) == Some(1)
    });
    assert!(relays_signatures_of(&node, &first));

    let traffic = Traffic::start(&node, &site);
    // A week's grace for the first key, then none for the second: the node must follow the chain from the first.
    let second = rotate(&registry, &token, "168");
    wait_for(
        Duration::from_secs(60),
        "the node to follow the rotation",
        || relays_signatures_of(&node, &second),
    );
    let third = rotate(&registry, &token, "0");
    wait_for(
        Duration::from_secs(60),
        "the node to follow the second rotation",
        || relays_signatures_of(&node, &third),
    );
    std::thread::sleep(Duration::from_millis(500));
    let (sent, failures) = traffic.stop();
    assert!(sent > 40, "only {sent} requests were sent");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed, the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(
        node.revision(SURFACE),
        Some(1),
        "a rotation makes no new plan revision"
    );
    let chain = client.signing_key().expect("the key document").rotations;
    let trusted = TrustedKeys::from_chain(&first, &chain).expect("the chain");
    assert_eq!(trusted.current().public_key, third);

    // Restarted while the registry is down, the node serves its saved plan at once, checked with the chain it
    // kept; then the registry restarts from its rotated key file.
    registry.stop();
    let mut node = node;
    node.process.stop();
    let node = Node::start("node", dir.path(), config, Some(site));
    wait_for(
        Duration::from_secs(60),
        "the restarted node to serve without the registry",
        || node.revision(SURFACE) == Some(1),
    );
    assert_eq!(
        node.recommend(json!({"user_id": "user-2", "k": 3, "surface": SURFACE}))["model_version"],
        "1.0.0"
    );
    registry.restart();
    wait_for(
        Duration::from_secs(60),
        "the restarted node to serve",
        || relays_signatures_of(&node, &third),
    );
    assert_eq!(
        node.recommend(json!({"user_id": "user-1", "k": 3, "surface": SURFACE}))["model_version"],
        "1.0.0"
    );

    // The browser package, given the first key, follows the same chain; a tampered chain is refused.
    support::nodes::browser_package_script(
        "keys.mjs",
        &[node.url.as_ref(), first.as_ref()],
        "the browser package's key checks",
    );
}
