//! A man in the middle of the plain-HTTP link between an edge node and the registry, as an attacker on that link
//! would be: it reweights plans, strips or swaps their signatures, replays an old plan and relabels a version's
//! record. The node refuses every altered answer (its log and `edgerec_node_rollout_failures_total` say why), the
//! plan it served keeps serving, and with the link clean again it follows the registry. Cut, the link leaves the
//! node serving and saying so (`/readyz`, the plan's age).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgerec_core::MODEL_FILE;
use edgerec_registry_api::client::RegistryClient;
use edgerec_registry_api::keys::{KeyRotation, key_id};
use edgerec_registry_api::records::Plan;
use edgerec_registry_api::signature::SigningKeyDocument;
use serde_json::{Value, json};
use support::nodes::{Node, Registry, Site, admin_token, manifest_for, wait_for};

use crate::support;

const SURFACE: &str = "home";
const MODEL: &str = "golden-sasrec";

/// What the man in the middle does to the registry's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tamper {
    Nothing,
    /// Swaps the weights of a plan's first two variants, keeping its signature.
    Reweight,
    /// Removes a plan's signature.
    Strip,
    /// Puts the signature of the first plan it saw on the plan it forwards.
    ForeignSignature,
    /// Answers the first plan it saw, whatever the registry answered.
    Replay,
    /// Answers the record of version 1.0.0, relabelled, when 3.0.0 is asked for (digests and signature intact).
    RelabelRecord,
    /// Answers every plan request with 503, as a registry that cannot be reached.
    Down,
    /// Answers every plan request with the plan it was given to hold (a signed answer from before a revocation,
    /// replayed at the same revision).
    Stale,
    /// Answers every plan request with `304 Not Modified`.
    NotModified,
    /// Swaps the registry's key for one of its own: the key document gets a forged rotation to it, and plans are
    /// re-signed with it.
    SwapKey,
}

/// The key of whoever sits on the link.
fn attacker_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[66; 32])
}

/// `plan` re-signed with the attacker's key, naming it.
fn signed_by_attacker(plan: Value) -> Value {
    use ed25519_dalek::Signer;
    let mut plan: Plan = serde_json::from_value(plan).expect("a plan");
    let key = attacker_key();
    if let Some(mut signed) = plan.signature.take() {
        let statement = plan.statement(&signed.manifest_digests, &signed.revoked, signed.served_at);
        signed.key_id = key_id(&hex::encode(key.verifying_key().to_bytes())).expect("an id");
        signed.signature = hex::encode(key.sign(statement.as_bytes()).to_bytes());
        plan.signature = Some(signed);
    }
    serde_json::to_value(plan).expect("JSON")
}

/// The registry's key document with a rotation from its current key to the attacker's, signed by the attacker.
fn forged_key_document(document: Value) -> Value {
    use ed25519_dalek::Signer;
    let mut document: SigningKeyDocument =
        serde_json::from_value(document).expect("a key document");
    let key = attacker_key();
    let mut rotation = KeyRotation {
        from_key: document.public_key.clone(),
        to_key: hex::encode(key.verifying_key().to_bytes()),
        old_valid_until: 0,
        issued_at: 0,
        signature: String::new(),
    };
    rotation.signature = hex::encode(key.sign(rotation.statement().as_bytes()).to_bytes());
    document.public_key = rotation.to_key.clone();
    document.rotations.push(rotation);
    serde_json::to_value(document).expect("JSON")
}

/// The plans the man in the middle keeps: the first it saw, and one it was given to replay.
#[derive(Debug, Default)]
struct Seen {
    first: Mutex<Option<Value>>,
    held: Mutex<Option<Value>>,
}

struct ManInTheMiddle {
    url: String,
    tamper: Arc<Mutex<Tamper>>,
    seen: Arc<Seen>,
}

impl ManInTheMiddle {
    /// Forwards GET requests to `upstream` (one request a connection), altering answers as [`Tamper`] says.
    fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let tamper = Arc::new(Mutex::new(Tamper::Nothing));
        let seen: Arc<Seen> = Arc::default();
        {
            let seen = seen.clone();
            let tamper = tamper.clone();
            std::thread::spawn(move || {
                for client in listener.incoming().flatten() {
                    let (upstream, tamper, seen) = (upstream.clone(), tamper.clone(), seen.clone());
                    std::thread::spawn(move || {
                        let mode = *tamper.lock().expect("lock");
                        forward(client, &upstream, mode, &seen);
                    });
                }
            });
        }
        Self { url, tamper, seen }
    }

    fn set(&self, tamper: Tamper) {
        *self.tamper.lock().expect("lock") = tamper;
    }

    /// The plan [`Tamper::Stale`] answers.
    fn hold(&self, plan: Value) {
        *self.seen.held.lock().expect("lock") = Some(plan);
    }
}

/// Reads one request head from `client`, asks `upstream` the same, and answers it, altered by `mode`.
fn forward(mut client: TcpStream, upstream: &str, mode: Tamper, seen: &Seen) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .unwrap_or("/")
        .to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_string()))
        .filter(|(name, _)| name == "authorization" || name == "if-none-match")
        .collect();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |path: &str| {
        let mut request = agent.get(format!("{upstream}{path}"));
        for (name, value) in &headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let mut response = request.call().expect("the registry answers");
        let etag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let body = response.body_mut().read_to_vec().unwrap_or_default();
        (response.status().as_u16(), etag, body)
    };
    let relabelled = mode == Tamper::RelabelRecord && path.ends_with("/versions/3.0.0");
    let (status, etag, mut body) = if mode == Tamper::NotModified && path.starts_with("/v1/plans/")
    {
        (304, None, Vec::new())
    } else if mode == Tamper::Down && path.starts_with("/v1/plans/") {
        (
            503,
            None,
            br#"{"error":{"kind":"unavailable","message":"down"}}"#.to_vec(),
        )
    } else if mode == Tamper::Stale && path.starts_with("/v1/plans/") {
        let held = seen.held.lock().expect("lock").clone();
        (
            200,
            None,
            held.expect("a plan to hold").to_string().into_bytes(),
        )
    } else if relabelled {
        get(&path.replace("/versions/3.0.0", "/versions/1.0.0"))
    } else {
        get(&path)
    };
    if mode == Tamper::SwapKey && path == "/v1/signing-key" {
        let document = serde_json::from_slice(&body).expect("a key document");
        body = forged_key_document(document).to_string().into_bytes();
    }
    if relabelled {
        let mut record: Value = serde_json::from_slice(&body).expect("a record");
        record["version"] = json!("3.0.0");
        body = record.to_string().into_bytes();
    }
    if status == 200 && path.starts_with("/v1/plans/") {
        let mut plan: Value = serde_json::from_slice(&body).expect("a plan");
        let first = seen
            .first
            .lock()
            .expect("lock")
            .get_or_insert(plan.clone())
            .clone();
        match mode {
            Tamper::Reweight => {
                let variants = plan["variants"].as_array_mut().expect("variants");
                let (a, b) = (variants[0]["weight"].clone(), variants[1]["weight"].clone());
                variants[0]["weight"] = b;
                variants[1]["weight"] = a;
            }
            Tamper::Strip => {
                plan.as_object_mut().expect("an object").remove("signature");
            }
            Tamper::ForeignSignature => plan["signature"] = first["signature"].clone(),
            Tamper::Replay => plan = first,
            Tamper::SwapKey => plan = signed_by_attacker(plan),
            Tamper::Nothing
            | Tamper::RelabelRecord
            | Tamper::Down
            | Tamper::Stale
            | Tamper::NotModified => {}
        }
        body = plan.to_string().into_bytes();
    }
    let mut answer = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(etag) = etag {
        answer.push_str(&format!("ETag: {etag}\r\n"));
    }
    answer.push_str("\r\n");
    let _ = client.write_all(answer.as_bytes());
    let _ = client.write_all(&body);
}

fn deploy(client: &RegistryClient, variants: &[(&str, &str, u32)]) -> u64 {
    support::nodes::deploy(client, SURFACE, MODEL, variants, "link test")
}

fn publish(dir: &Path, client: &RegistryClient, version: &str) {
    let (_, model) = edgerec_conformance::golden_bundle();
    let bundle = dir.join(format!("bundle-{version}"));
    std::fs::create_dir_all(&bundle).expect("bundle dir");
    std::fs::write(bundle.join("manifest.json"), manifest_for(version, &model)).expect("manifest");
    std::fs::write(bundle.join(MODEL_FILE), &model).expect("model");
    client.publish_bundle(&bundle).expect("publishes");
}

/// The node answers with the plan it served before: revision `serving`, its versions only.
fn still_serves(node: &Node, serving: u64, versions: &[&str]) {
    assert_eq!(node.revision(SURFACE), Some(serving));
    for n in 0..8 {
        let answer = node.recommend(json!({
            "user_id": format!("user-{n}"), "recent_items": ["m1"], "k": 3, "surface": SURFACE,
        }));
        let version = answer["model_version"].as_str().unwrap_or_default();
        assert!(versions.contains(&version), "{answer}");
    }
}

#[test]
fn a_man_in_the_middle_cannot_make_a_node_serve_what_the_registry_did_not_sign() {
    let dir = tempfile::tempdir().expect("temp dir");
    let registry_root = dir.path().join("registry");
    let token = admin_token(&registry_root);
    let registry = Registry::start(&registry_root);
    let client = RegistryClient::new(&registry.url, Some(&token));
    for version in ["1.0.0", "2.0.0", "3.0.0"] {
        publish(dir.path(), &client, version);
    }
    let key = client.signing_key().expect("the registry's key").public_key;
    let middle = ManInTheMiddle::start(registry.url.clone());
    deploy(&client, &[("control", "1.0.0", 100)]);
    // Through the middle, so that revision 1 is the plan it keeps to replay and to take a signature from.
    let first = RegistryClient::new(&middle.url, Some(&token))
        .plan(SURFACE)
        .expect("reads through the middle")
        .expect("a plan");
    assert_eq!(first.revision, 1);

    let site = Site::new(dir.path(), "site-1");
    let config = json!({
        "listen": "127.0.0.1:0",
        "workers": 2,
        "surfaces": [SURFACE],
        "registry": {
            "url": middle.url, "token": token, "poll_interval_ms": 200, "public_key": key,
            "max_plan_age_ms": 1500,
        },
        "auth": site.auth_config(),
        "ship_interval_ms": 3_600_000,
        "features": { "data_dir": dir.path().join("node"), "ingest": { "node_id": "node" } },
    });
    let restart_config = config.clone();
    let node = Node::start("node", dir.path(), config, Some(site));
    let serving = deploy(
        &client,
        &[("control", "1.0.0", 90), ("candidate", "2.0.0", 10)],
    );
    wait_for(Duration::from_secs(60), "the node to follow", || {
        node.revision(SURFACE) == Some(serving)
    });

    // What the man in the middle does while the registry deploys these variants, the reason the node refuses the
    // revision under, and what its log line says.
    type Case<'a> = (Tamper, &'a [(&'a str, &'a str, u32)], &'a str, &'a str);
    let cases: [Case; 5] = [
        (
            Tamper::Reweight,
            &[("control", "1.0.0", 70), ("candidate", "2.0.0", 30)],
            "plan_signature",
            "does not verify",
        ),
        (
            Tamper::Strip,
            &[("control", "1.0.0", 60), ("candidate", "2.0.0", 40)],
            "plan_signature",
            "carries no signature",
        ),
        (
            Tamper::ForeignSignature,
            &[("control", "1.0.0", 50), ("candidate", "2.0.0", 50)],
            "plan_signature",
            "manifest digests for 2 variants",
        ),
        (
            Tamper::Replay,
            &[("control", "1.0.0", 40), ("candidate", "2.0.0", 60)],
            "replayed",
            "a replayed plan is never served",
        ),
        (
            Tamper::RelabelRecord,
            &[("control", "1.0.0", 50), ("candidate", "3.0.0", 50)],
            "relabelled",
            "golden-sasrec@3.0.0: the signed plan of `home` names manifest",
        ),
    ];
    let log = dir.path().join("node.log");
    for (tamper, variants, reason, says) in cases {
        middle.set(tamper);
        let labels = [("surface", SURFACE), ("reason", reason)];
        let before = node.metric("edgerec_node_rollout_failures_total", &labels);
        deploy(&client, variants);
        wait_for(
            Duration::from_secs(30),
            &format!("{tamper:?} refused"),
            || node.metric("edgerec_node_rollout_failures_total", &labels) > before,
        );
        // The counter moves just before the line is written.
        wait_for(
            Duration::from_secs(10),
            &format!("{tamper:?}: a log line saying {says:?}"),
            || {
                let logged = std::fs::read_to_string(&log).unwrap_or_default();
                logged.lines().any(|line| {
                    line.contains(&format!("\"reason\":\"{reason}\"")) && line.contains(says)
                })
            },
        );
        if reason == "plan_signature" {
            // A current plan that does not verify against the node's key: not ready, and it says why.
            let (status, body) = node.get("/readyz");
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("untrusted_plans"), "{body}");
        }
        still_serves(&node, serving, &["1.0.0", "2.0.0"]);
    }

    // The link clean again: the registry's current revision, the one whose record was relabelled on the way, is
    // taken after all (an altered answer is retried, not held against its revision), with the version the
    // relabelled record stood for.
    middle.set(Tamper::Nothing);
    let next = client
        .plan(SURFACE)
        .expect("reads the plan")
        .expect("a plan")
        .revision;
    wait_for(Duration::from_secs(60), "the node to follow again", || {
        node.revision(SURFACE) == Some(next)
    });
    still_serves(&node, next, &["1.0.0", "3.0.0"]);
    wait_for(Duration::from_secs(30), "the node to be ready", || {
        node.get("/readyz").0 == 200
    });

    // A link that stays down: the node serves on, and `/readyz` and the plan's age say it is out of touch.
    middle.set(Tamper::Down);
    wait_for(
        Duration::from_secs(30),
        "/readyz to flag the stale plan",
        || node.get("/readyz").0 == 503,
    );
    let (_, body) = node.get("/readyz");
    assert!(
        body.contains("stale_plans") && body.contains("\"surface\":\"home\""),
        "{body}"
    );
    assert!(node.metric("edgerec_node_plan_age_seconds", &[("surface", SURFACE)]) > 1.5);
    still_serves(&node, next, &["1.0.0", "3.0.0"]);
    middle.set(Tamper::Nothing);
    wait_for(
        Duration::from_secs(30),
        "the node to be ready again",
        || node.get("/readyz").0 == 200,
    );
    // Whoever sits on the link answers `304` to every poll, or replays the registry's own signed answer: neither
    // is a fresh confirmation (only a signature's `served_at` is), so the plan ages all the same.
    let current = client.plan(SURFACE).expect("reads").expect("a plan");
    middle.hold(serde_json::to_value(&current).expect("JSON"));
    for tamper in [Tamper::NotModified, Tamper::Stale] {
        middle.set(tamper);
        wait_for(
            Duration::from_secs(30),
            &format!("/readyz to flag the plan as stale under {tamper:?}"),
            || node.get("/readyz").0 == 503,
        );
        let (_, body) = node.get("/readyz");
        assert!(body.contains("stale_plans"), "{tamper:?}: {body}");
        still_serves(&node, next, &["1.0.0", "3.0.0"]);
        middle.set(Tamper::Nothing);
        wait_for(
            Duration::from_secs(30),
            "the node to be ready once the link is clean",
            || node.get("/readyz").0 == 200,
        );
    }

    // A plan saved unsigned (by a node from before plans were signed) is refused at the restart, and the same
    // revision, signed, is taken from the registry.
    let mut node = node;
    node.process.stop();
    let saved = dir.path().join("node/node/deployments/home.json");
    let mut deployment: Value =
        serde_json::from_slice(&std::fs::read(&saved).expect("the saved plan")).expect("JSON");
    deployment["plan"]
        .as_object_mut()
        .expect("a plan")
        .remove("signature")
        .expect("saved signed");
    std::fs::write(&saved, deployment.to_string()).expect("rewrites the saved plan");
    let site = Site::new(dir.path(), "site-1");
    let node = Node::start("node", dir.path(), restart_config, Some(site));
    wait_for(
        Duration::from_secs(60),
        "the restarted node to follow",
        || node.revision(SURFACE) == Some(next),
    );
    let logged = std::fs::read_to_string(&log).expect("the node's log");
    assert!(
        logged.contains("carries no signature"),
        "the saved plan was not refused"
    );
    let link = Link {
        client: &client,
        middle: &middle,
        node: &node,
        registry: &registry.url,
        token: &token,
        key: &key,
        log: &log,
    };
    revoked_versions_stop_serving(dir.path(), &link, next);
    a_swapped_key_is_refused(&link);
}

/// The man in the middle swaps the registry's key for its own (a forged rotation in the key document, plans
/// re-signed): the node refuses the new plan, says it is not ready and why, and serves on; the link clean again,
/// it takes the registry's plan.
fn a_swapped_key_is_refused(link: &Link) {
    let node = link.node;
    let serving = node.revision(SURFACE).expect("a plan in service");
    link.middle.set(Tamper::SwapKey);
    let refused = [("surface", SURFACE), ("reason", "plan_signature")];
    let before = node.metric("edgerec_node_rollout_failures_total", &refused);
    let next = deploy(link.client, &[("control", "2.0.0", 100)]);
    wait_for(
        Duration::from_secs(30),
        "the re-signed plan refused",
        || node.metric("edgerec_node_rollout_failures_total", &refused) > before,
    );
    let (status, body) = node.get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("untrusted_plans"), "{body}");
    assert_eq!(node.revision(SURFACE), Some(serving));
    let logged = std::fs::read_to_string(link.log).expect("the node's log");
    assert!(
        logged.contains("the key chain is not the registry's"),
        "the forged rotation was not refused"
    );
    link.middle.set(Tamper::Nothing);
    wait_for(Duration::from_secs(60), "the registry's plan taken", || {
        node.revision(SURFACE) == Some(next)
    });
    assert_eq!(answer_for(node, "visitor-0")["model_version"], "2.0.0");
}

/// The registry, the node behind the man in the middle, and what the browser package needs to reach them.
struct Link<'a> {
    client: &'a RegistryClient,
    middle: &'a ManInTheMiddle,
    node: &'a Node,
    registry: &'a str,
    token: &'a str,
    key: &'a str,
    /// The node's log file.
    log: &'a Path,
}

/// The node's answer for `user`, from the plan of `home` (control 1.0.0, candidate 3.0.0, 50/50 at `serving`).
fn answer_for(node: &Node, user: &str) -> Value {
    node.recommend(json!({
        "user_id": user, "recent_items": ["m1"], "k": 3, "surface": SURFACE,
    }))
}

/// The browser package's checks of revocations (`phase` one or all), against the registry: each visitor's variant
/// as the package picked it, by user id.
fn browser_revocation_checks(dir: &Path, link: &Link, phase: &str) -> Value {
    let stale = dir.join("plan-before-revocation.json");
    let stdout = support::nodes::browser_package_script(
        "revocation.mjs",
        &[
            link.registry.as_ref(),
            link.token.as_ref(),
            link.key.as_ref(),
            phase.as_ref(),
            stale.as_os_str(),
        ],
        &format!("the browser package's revocation checks ({phase})"),
    );
    serde_json::from_slice(&stdout).expect("the checks' JSON summary")
}

/// A revoked version stops serving within a poll, at the same plan revision: its users go to the other variant
/// (flagged), in the node and in the browser package alike; the answer from before the revocation, replayed, is
/// refused; with every variant revoked, answers come by popularity, flagged, and the browser package ranks nothing.
fn revoked_versions_stop_serving(dir: &Path, link: &Link, serving: u64) {
    let node = link.node;
    link.middle.set(Tamper::Nothing);
    // The signed answer from before the revocation, as the man in the middle keeps it.
    let before = link.client.plan(SURFACE).expect("reads").expect("a plan");
    link.middle
        .hold(serde_json::to_value(&before).expect("JSON"));
    std::fs::write(
        dir.join("plan-before-revocation.json"),
        serde_json::to_vec(&before).expect("JSON"),
    )
    .expect("writes");
    let revoked = [("surface", SURFACE)];
    // With the command a deployer types; it says which plan still names the version.
    let said = edgerec_says(
        link,
        &[
            "model",
            "revoke",
            MODEL,
            "3.0.0",
            "--reason",
            "trained on leaked data",
        ],
    );
    assert!(
        said.contains("revoked golden-sasrec 3.0.0")
            && said.contains("still named by variant `candidate` (50%) of surface `home`"),
        "{said}"
    );
    wait_for(Duration::from_secs(60), "the revocation followed", || {
        node.metric("edgerec_node_revoked_variants", &revoked) == 1.0
    });
    assert_eq!(node.revision(SURFACE), Some(serving), "no new revision");
    let users: Vec<String> = (0..40).map(|n| format!("visitor-{n}")).collect();
    let mut moved = Vec::new();
    for user in &users {
        let answer = answer_for(node, user);
        assert_eq!(
            (answer["model_version"].as_str(), answer["variant"].as_str()),
            (Some("1.0.0"), Some("control")),
            "{answer}"
        );
        if answer["degraded"]["reason"] == "revoked" {
            assert_eq!(answer["degraded"]["fallback"], "other_variant", "{answer}");
            moved.push(user.clone());
        }
    }
    // About half the users were the candidate's (fewer than 6 of 40 by chance: under 1e-6).
    assert!((6..=34).contains(&moved.len()), "{moved:?}");
    // The browser package sends the same users to the other variant, flagged.
    let browser = browser_revocation_checks(dir, link, "one");
    for user in &users {
        let flagged = browser["revoked_variant"][user.as_str()] == "candidate";
        assert_eq!(flagged, moved.contains(user), "{user}: {browser}");
    }

    // The answer from before the revocation, replayed on the link: refused, and the revoked version stays out.
    link.middle.set(Tamper::Stale);
    let replayed = [("surface", SURFACE), ("reason", "replayed")];
    let refusals = node.metric("edgerec_node_rollout_failures_total", &replayed);
    wait_for(Duration::from_secs(30), "the stale answer refused", || {
        node.metric("edgerec_node_rollout_failures_total", &replayed) > refusals
    });
    for user in &users[..8] {
        assert_eq!(answer_for(node, user)["model_version"], "1.0.0");
    }
    link.middle.set(Tamper::Nothing);

    // Every variant revoked: popularity, flagged, in the user's own variant's name; the browser ranks nothing.
    link.client
        .revoke(MODEL, "1.0.0", "superseded")
        .expect("revokes");
    wait_for(Duration::from_secs(60), "both revocations followed", || {
        node.metric("edgerec_node_revoked_variants", &revoked) == 2.0
    });
    for user in &users[..8] {
        let answer = answer_for(node, user);
        assert_eq!(
            (
                answer["degraded"]["reason"].as_str(),
                answer["degraded"]["fallback"].as_str()
            ),
            (Some("revoked"), Some("popularity")),
            "{answer}"
        );
        let own = if moved.contains(user) {
            "candidate"
        } else {
            "control"
        };
        assert_eq!(answer["variant"], own, "{answer}");
    }
    browser_revocation_checks(dir, link, "all");
    let listed = edgerec_says(link, &["model", "revocations"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(
        listed.contains("superseded") && listed.contains("trained on leaked data"),
        "{listed}"
    );
}

/// What `edgerec ARGS --registry ... --token ...` prints; it must succeed.
fn edgerec_says(link: &Link, args: &[&str]) -> String {
    let output = support::nodes::edgerec()
        .args(args)
        .args(["--registry", link.registry, "--token", link.token])
        .output()
        .expect("runs edgerec");
    assert!(
        output.status.success(),
        "edgerec {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
