//! A registry and two edge nodes as real processes on 127.0.0.1, with a client sending requests the whole time:
//! deploy, A/B split, tampered and broken bundles, a registry outage, rollback, and a feature store outage. Every
//! request must be answered; no unverified or broken model may ever serve.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use edgerec_core::Digest;
use edgerec_registry_api::client::RegistryClient;
use edgerec_registry_api::records::VersionRecord;
use prost::Message;
use serde_json::{Value, json};
use support::nodes::{
    Node, Registry, Site, admin_token, edgerec, plant_version, publish_versions, run, wait_for,
};
use support::succeeds;

use crate::support;

const POLL_MS: u64 = 300;
const SURFACE: &str = "home";
const MODEL: &str = "golden-sasrec";
/// The one other site allowed to call the nodes from its pages.
const SHOP: &str = "https://shop.example";

/// Waits until every node serves `revision`; returns how long it took.
fn converge(nodes: &[&Node], revision: u64) -> Duration {
    wait_for(
        Duration::from_secs(60),
        &format!("every node to serve revision {revision}"),
        || nodes.iter().all(|n| n.revision(SURFACE) == Some(revision)),
    )
}

/// A TCP forwarder in front of the feature store that can be cut, as a network failure would.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        let port = listener.local_addr().expect("address").port();
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        {
            let (up, connections) = (up.clone(), connections.clone());
            std::thread::spawn(move || {
                for client in listener.incoming().flatten() {
                    let server = match up.load(Ordering::SeqCst) {
                        true => TcpStream::connect(&upstream).ok(),
                        false => None,
                    };
                    let Some(server) = server else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    let mut open = connections.lock().expect("lock");
                    for (from, to) in [(&client, &server), (&server, &client)] {
                        let (mut from, mut to) = (
                            from.try_clone().expect("clone"),
                            to.try_clone().expect("clone"),
                        );
                        std::thread::spawn(move || {
                            let mut buffer = [0u8; 16 << 10];
                            while let Ok(n) = from.read(&mut buffer) {
                                if n == 0 || to.write_all(&buffer[..n]).is_err() {
                                    break;
                                }
                            }
                            let _ = to.shutdown(Shutdown::Both);
                        });
                    }
                    open.push(client);
                    open.push(server);
                }
            });
        }
        Self {
            port,
            up,
            connections,
        }
    }

    /// Refuses new connections and cuts the open ones.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for stream in self.connections.lock().expect("lock").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// The golden model with every float constant replaced by NaN: it parses, and every score it gives is NaN, so the
/// ranker's load-time probe refuses it.
fn nan_model() -> Vec<u8> {
    let (_, bytes) = edgerec_conformance::golden_bundle();
    let mut model = tract_onnx::pb::ModelProto::decode(&bytes[..]).expect("decodes");
    let graph = model.graph.as_mut().expect("a graph");
    let mut replaced = 0;
    for tensor in &mut graph.initializer {
        if tensor.data_type == tract_onnx::pb::tensor_proto::DataType::Float as i32 {
            for chunk in tensor.raw_data.chunks_exact_mut(4) {
                chunk.copy_from_slice(&f32::NAN.to_le_bytes());
            }
            tensor.float_data.iter_mut().for_each(|v| *v = f32::NAN);
            replaced += 1;
        }
    }
    assert!(replaced > 0, "the golden model has float constants");
    model.encode_to_vec()
}

fn deploy(client: &RegistryClient, variants: &[(&str, &str, u32)], reason: &str) -> u64 {
    support::nodes::deploy(client, SURFACE, MODEL, variants, reason)
}

/// Every kind of bad request gets a precise JSON error, and the node keeps answering good ones.
fn refuses_bad_requests(node: &Node) {
    let refused = |body: Value, status: u16, kind: &str| {
        let (got, answer) = node.post("/v1/recommend", &body).expect("answers");
        assert_eq!(
            (got, answer["error"]["kind"].as_str()),
            (status, Some(kind)),
            "{body}: {answer}"
        );
    };
    refused(
        json!({"k": 3, "surface": "checkout"}),
        404,
        "unknown_surface",
    );
    refused(json!({"k": 0, "surface": SURFACE}), 400, "invalid_k");
    refused(json!({"k": 100000, "surface": SURFACE}), 400, "invalid_k");
    refused(json!({"k": 3}), 400, "invalid_json");
    refused(
        json!({"k": 3, "surface": SURFACE, "colour": "red"}),
        400,
        "invalid_json",
    );
    // No visitor token can name an empty id; an API key that may name anyone gets the precise error.
    refused(
        json!({"k": 3, "surface": SURFACE, "user_id": ""}),
        401,
        "unauthenticated",
    );
    let key = node.api_key(&["recommend"]);
    let answer = node
        .send(
            "/v1/recommend",
            &json!({"k": 3, "surface": SURFACE, "user_id": ""}),
            Some(&key),
        )
        .expect("answers");
    assert_eq!(
        (answer.status, answer.kind()),
        (400, Some("invalid_id")),
        "{}",
        answer.body
    );
    refused(
        json!({"k": 3, "surface": SURFACE, "recent_items": vec!["m1"; 501]}),
        413,
        "request_too_large",
    );
    refused(
        json!({"k": 3, "surface": SURFACE, "exclude": vec!["x".repeat(100); 3000]}),
        413,
        "too_large",
    );
    let (status, answer) = node
        .post("/v1/events", &json!({"events": [{"id": "e", "user": "u", "item": "i", "kind": "view", "time_ms": 0}]}))
        .expect("answers");
    assert_eq!(
        (status, answer["error"]["kind"].as_str()),
        (400, Some("invalid_events")),
        "{answer}"
    );
    // One rule for ids at both endpoints: the item id `/v1/recommend` refuses, `/v1/events` refuses too, by the
    // same words, and only once the id is parsed (the caller was checked before).
    refused(
        json!({"k": 3, "surface": SURFACE, "recent_items": ["m1", "a\u{7}b"]}),
        400,
        "invalid_id",
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    let (status, answer) = node
        .post(
            "/v1/events",
            &json!({"events": [{"id": "e2", "user": "u", "item": "a\u{7}b", "kind": "view", "time_ms": now_ms}]}),
        )
        .expect("answers");
    assert_eq!(
        (status, answer["error"]["kind"].as_str()),
        (400, Some("invalid_events")),
        "{answer}"
    );
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("item id holds a control character"),
        "{message}"
    );
    // Items the model does not know are skipped and reported, not an error.
    let answer =
        node.recommend(json!({"k": 3, "surface": SURFACE, "recent_items": ["m1", "no-such-item"]}));
    assert_eq!(answer["unknown_items"], json!(["no-such-item"]));
    assert_eq!(answer["items"].as_array().map(Vec::len), Some(3));
}

/// A node given the id of a live node on the same DynamoDB table does not start, and says which node holds it.
fn refuses_a_second_node_with_the_same_id(dir: &Path, mut config: Value) {
    config["features"]["data_dir"] = json!(dir.join("node-b-twin"));
    let config_path = dir.join("node-b-twin.json");
    std::fs::write(&config_path, config.to_string()).expect("writes the config");
    let output = edgerec()
        .args(["edge", "serve", "--config"])
        .arg(&config_path)
        .arg("--wasm")
        .arg(support::nodes::wasm())
        .output()
        .expect("runs the node");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the twin started: {stderr}");
    assert!(
        stderr.contains("node id `node-b` is in use by another live node"),
        "{stderr}"
    );
}

/// Past its backlog limit a node refuses events before writing anything: 503, `backlog_full`, `Retry-After`.
fn refuses_events_past_the_backlog(dir: &Path, mut config: Value, site: &Site) {
    config["features"]["ingest"]["max_backlog_events"] = json!(0);
    let node = Node::start("node-full", dir, config, Some(site.clone()));
    let event = json!({"events": [{"id": "full-1", "user": "v1", "item": "m1", "kind": "view", "time_ms": edgerec_features::now_ms()}]});
    let answer = node
        .send("/v1/events", &event, Some(&site.token("v1")))
        .expect("answers");
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(
        answer.body["error"]["kind"], "backlog_full",
        "{}",
        answer.body
    );
    assert_eq!(answer.retry_after.as_deref(), Some("5"));
}

/// What a page needs to rank on the device comes from the node at the registry's read paths, without a token:
/// the plan, the record, the files by digest and the key, all as the registry has them; anything else is refused.
fn serves_browsers(node: &Node, record: &VersionRecord, registry_key: &str) {
    let (status, plan) = node.get(&format!("/v1/plans/{SURFACE}"));
    assert_eq!(status, 200, "{plan}");
    let plan: Value = serde_json::from_str(&plan).expect("JSON");
    assert_eq!(plan["variants"][0]["version"], "1.0.0", "{plan}");
    let (status, served) = node.get(&format!("/v1/models/{MODEL}/versions/1.0.0"));
    assert_eq!(status, 200, "{served}");
    let served: VersionRecord = serde_json::from_str(&served).expect("a version record");
    assert_eq!(&served, record);
    let (status, manifest) = node.get(&format!("/v1/blobs/{}", record.manifest_digest));
    assert_eq!(status, 200);
    assert_eq!(Digest::of(manifest.as_bytes()), record.manifest_digest);
    let (status, key) = node.get("/v1/signing-key");
    assert_eq!(status, 200, "{key}");
    let key: Value = serde_json::from_str(&key).expect("JSON");
    assert_eq!(key["public_key"], registry_key);

    for (path, status, kind) in [
        ("/v1/plans/checkout".to_string(), 404, "unknown_surface"),
        (
            format!("/v1/models/{MODEL}/versions/9.9.9"),
            404,
            "not_found",
        ),
        ("/v1/blobs/not-a-digest".to_string(), 400, "invalid_digest"),
        (format!("/v1/blobs/{}", "0".repeat(64)), 404, "not_found"),
        ("/v1/catalogue/checkout".to_string(), 404, "unknown_surface"),
    ] {
        let (got, body) = node.get(&path);
        let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            (got, body["error"]["kind"].as_str()),
            (status, Some(kind)),
            "{path}: {body}"
        );
    }
    // Another site's page may call the node only when its origin is allowed (the browser asks first).
    for (origin, allowed) in [(SHOP, true), ("https://elsewhere.example", false)] {
        let response = node
            .agent
            .options(format!("{}/v1/recommend", node.url))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type")
            .call()
            .expect("answers");
        let allows = response
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok())
            == Some(origin);
        assert_eq!(allows, allowed, "{origin}: {:?}", response.headers());
    }

    // The catalogue lists every item the served model knows (the golden model has no catalogue titles), in pages,
    // from one read of the store however many pages are loaded.
    let builds = node.metric("edgerec_node_catalogue_builds_total", &[]);
    let mut listed = BTreeSet::new();
    let mut offset = Some(0);
    while let Some(at) = offset {
        let (status, page) = node.get(&format!("/v1/catalogue/{SURFACE}?limit=1000&offset={at}"));
        assert_eq!(status, 200, "{page}");
        let page: Value = serde_json::from_str(&page).expect("JSON");
        assert_eq!(page["total"].as_u64(), Some(record.items as u64), "{page}");
        for item in page["items"].as_array().expect("items") {
            listed.insert(item["id"].as_str().expect("an id").to_string());
        }
        offset = page["next_offset"].as_u64();
    }
    assert_eq!(listed.len(), record.items);
    let (_, first) = node.get(&format!("/v1/catalogue/{SURFACE}"));
    let first: Value = serde_json::from_str(&first).expect("JSON");
    assert_eq!(
        first["items"].as_array().map(Vec::len),
        Some(100),
        "the default page"
    );
    assert!(node.metric("edgerec_node_catalogue_builds_total", &[]) <= builds + 1.0);
    for bad in ["limit=0", "limit=5000", "limit=x", "color=red"] {
        let (status, body) = node.get(&format!("/v1/catalogue/{SURFACE}?{bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

/// What the background client saw.
#[derive(Default)]
struct Traffic {
    answered: AtomicU64,
    failures: Mutex<Vec<String>>,
    versions: Mutex<BTreeSet<String>>,
}

/// What every node of the test shares: its folder, the site whose visitor tokens it trusts, and the registry.
struct Cluster<'a> {
    dir: &'a Path,
    site: Site,
    registry_url: String,
    token: String,
    /// The registry's signing key, which nodes are given.
    public_key: String,
}

impl Cluster<'_> {
    /// A node's configuration: embedded features, or DynamoDB at `aws`. The client sends as fast as the nodes
    /// answer, so no per-address limit (the security test covers limits).
    fn node_config(&self, name: &str, aws: Option<&edgerec_aws::AwsConfig>) -> Value {
        let mut config = json!({
            "listen": "127.0.0.1:0",
            "auth": self.site.auth_config(),
            "rate_limits": { "per_address": { "per_second": 0, "burst": 0 }, "per_visitor": { "per_second": 0, "burst": 0 } },
            "workers": 2,
            "surfaces": [SURFACE],
            "registry": {
                "url": self.registry_url, "token": self.token, "public_key": self.public_key,
                "poll_interval_ms": POLL_MS,
            },
            "deadlines": { "features_ms": 2000 },
            "ship_interval_ms": 3_600_000,
            "allowed_origins": [SHOP],
            "features": {
                "data_dir": self.dir.join(name),
                "ingest": { "node_id": name },
            },
        });
        if let Some(aws) = aws {
            config["features"]["aws"] = serde_json::to_value(aws).expect("serialises");
        }
        config
    }

    fn start(&self, name: &str, config: Value) -> Node {
        Node::start(name, self.dir, config, Some(self.site.clone()))
    }
}

/// Versions 1.0.0 and 2.0.0 of the golden model.
/// A node with a wrong registry token never becomes ready, says why, and refuses to guess an answer.
fn a_node_locked_out_of_the_registry_is_not_ready(cluster: &Cluster) {
    let mut bad_token = cluster.node_config("node-bad-token", None);
    bad_token["registry"]["token"] = json!("erk_not-a-real-token");
    let locked_out = cluster.start("node-bad-token", bad_token);
    let log = cluster.dir.join("node-bad-token.log");
    wait_for(
        Duration::from_secs(30),
        "the node to log the refusal",
        || {
            std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("answered 401 (unauthenticated)"))
        },
    );
    assert_eq!(locked_out.get("/readyz").0, 503);
    let (status, answer) = locked_out
        .post("/v1/recommend", &json!({"k": 3, "surface": SURFACE}))
        .expect("answers");
    assert_eq!(
        (status, answer["error"]["kind"].as_str()),
        (503, Some("not_ready"))
    );
}

/// A client that sends requests to both nodes, alternating, until `stop` is set.
fn send_in_the_background(
    nodes: [&Node; 2],
    site: &Site,
    traffic: Arc<Traffic>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let urls = nodes.map(|node| node.url.clone());
    let site = site.clone();
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let user = format!("user-{}", n % 40);
            let body = json!({
                "user_id": user,
                "recent_items": ["m1", "m7"],
                "k": 5,
                "surface": SURFACE,
            });
            let result = agent
                .post(format!("{}/v1/recommend", urls[(n % 2) as usize]))
                .header("Content-Type", "application/json")
                .header("Authorization", format!("Bearer {}", site.token(&user)))
                .send(body.to_string());
            match result {
                Ok(mut response) if response.status() == 200 => {
                    let answer: Value = serde_json::from_str(
                        &response.body_mut().read_to_string().unwrap_or_default(),
                    )
                    .unwrap_or_default();
                    traffic.answered.fetch_add(1, Ordering::SeqCst);
                    if answer["items"].as_array().is_none_or(|i| i.len() != 5) {
                        traffic
                            .failures
                            .lock()
                            .expect("lock")
                            .push(answer.to_string());
                    }
                    traffic
                        .versions
                        .lock()
                        .expect("lock")
                        .insert(answer["model_version"].as_str().unwrap_or("?").to_string());
                }
                Ok(mut response) => traffic.failures.lock().expect("lock").push(format!(
                    "{}: {}",
                    response.status(),
                    response.body_mut().read_to_string().unwrap_or_default()
                )),
                Err(e) => traffic.failures.lock().expect("lock").push(e.to_string()),
            }
            n += 1;
        }
    })
}

/// A 50/50 split: both nodes converge and put each user in the same variant. Candidate users click what node A
/// showed them; control users do not. Returns the users per variant.
fn a_split_puts_each_user_in_one_variant_on_every_node(
    client: &RegistryClient,
    nodes: [&Node; 2],
) -> BTreeMap<String, usize> {
    let split = deploy(
        client,
        &[("control", "1.0.0", 50), ("candidate", "2.0.0", 50)],
        "A/B test",
    );
    let took = converge(&nodes, split);
    eprintln!(
        "50/50 plan served by both nodes {took:?} after the deployment (poll interval {POLL_MS} ms)"
    );
    let [node_a, node_b] = nodes;
    let mut by_variant: BTreeMap<String, usize> = BTreeMap::new();
    for user in 0..60 {
        let request = json!({"user_id": format!("ab-{user}"), "k": 3, "surface": SURFACE});
        let a = node_a.recommend(request.clone());
        let b = node_b.recommend(request);
        assert_eq!(
            a["variant"], b["variant"],
            "user ab-{user} differs across nodes"
        );
        assert_eq!(a["plan_revision"], split);
        let expected_version = if a["variant"] == "control" {
            "1.0.0"
        } else {
            "2.0.0"
        };
        assert_eq!(a["model_version"], expected_version);
        *by_variant
            .entry(a["variant"].as_str().unwrap_or("?").into())
            .or_default() += 1;
        if a["variant"] == "candidate" {
            let click = json!({"events": [{
                "id": format!("click-{user}"), "user": format!("ab-{user}"), "item": a["items"][0]["item"],
                "kind": "click", "time_ms": edgerec_features::now_ms(), "request_id": a["request_id"],
            }]});
            let (status, ack) = node_a.post("/v1/events", &click).expect("answers");
            assert_eq!((status, ack["accepted"].as_u64()), (200, Some(1)), "{ack}");
        }
    }
    assert_eq!(
        by_variant.len(),
        2,
        "both variants get users: {by_variant:?}"
    );
    by_variant
}

/// The registry goes away (and stays stopped); a node restarted meanwhile serves the last plan it verified, from its own disk, and
/// the running nodes count the registry errors and keep their plan.
fn nodes_serve_their_last_plan_without_the_registry(
    cluster: &Cluster,
    registry: &mut Registry,
    nodes: [&Node; 2],
    revision: u64,
) {
    let node_c = cluster.start("node-c", cluster.node_config("node-c", None));
    converge(&[&node_c], revision);
    registry.stop();
    std::thread::sleep(Duration::from_millis(3 * POLL_MS));
    let Node { mut process, .. } = node_c;
    process.stop();
    let node_c = cluster.start("node-c", cluster.node_config("node-c", None));
    wait_for(
        Duration::from_secs(60),
        "the restarted node to be ready",
        || node_c.get("/readyz").0 == 200,
    );
    assert_eq!(node_c.revision(SURFACE), Some(revision));
    assert_eq!(
        node_c.recommend(json!({"user_id": "restarted", "k": 3, "surface": SURFACE}))["model_version"],
        "1.0.0"
    );
    for node in nodes {
        assert_eq!(node.revision(SURFACE), Some(revision));
        assert!(node.metric("edgerec_node_errors_total", &[("kind", "registry")]) >= 1.0);
    }
}

/// While the registry is stopped, its storage is tampered with (a bundle with a forged signature, and a correctly
/// signed bundle whose model scores NaN, both made from `template`); restarted, it deploys both: no node puts
/// either into service.
fn nodes_refuse_tampered_and_broken_bundles(
    client: &RegistryClient,
    registry: &mut Registry,
    template: &VersionRecord,
    nodes: [&Node; 2],
    revision: u64,
) {
    let golden_model = edgerec_conformance::golden_bundle().1;
    plant_version(&registry.root, template, "3.0.0", &golden_model, false);
    plant_version(&registry.root, template, "4.0.0", &nan_model(), true);
    registry.restart();
    for (version, reason) in [("3.0.0", "signature"), ("4.0.0", "load")] {
        let bad = deploy(client, &[("control", version, 100)], "bad bundle");
        wait_for(
            Duration::from_secs(60),
            &format!("both nodes to refuse {version}"),
            || {
                nodes.iter().all(|n| {
                    n.metric("edgerec_node_rollout_failures_total", &[("reason", reason)]) >= 1.0
                })
            },
        );
        std::thread::sleep(Duration::from_millis(2 * POLL_MS));
        for node in nodes {
            assert_ne!(
                node.revision(SURFACE),
                Some(bad),
                "a node put {version} into service"
            );
            assert_eq!(node.revision(SURFACE), Some(revision));
        }
    }
}

/// The feature store goes away under node B: answers continue, flagged degraded, and events are still taken (the
/// write-ahead log holds them until the store is back); node A, on its own store, is untouched.
fn answers_degrade_when_the_feature_store_goes_away(node_a: &Node, node_b: &Node, proxy: &Proxy) {
    let fresh = node_b
        .recommend(json!({"user_id": "fs-0", "recent_items": ["m1"], "k": 3, "surface": SURFACE}));
    assert!(fresh.get("degraded").is_none(), "{fresh}");
    proxy.cut();
    for user in 1..20 {
        let answer = node_b.recommend(json!({"user_id": format!("fs-{user}"), "recent_items": ["m1"], "k": 3, "surface": SURFACE}));
        assert_eq!(
            answer["degraded"]["reason"], "feature_store_unavailable",
            "{answer}"
        );
        assert_eq!(answer["degraded"]["fallback"], "recent_items");
        assert_eq!(answer["items"].as_array().map(Vec::len), Some(3));
    }
    let popular = node_b.recommend(json!({"user_id": "fs-new", "k": 4, "surface": SURFACE}));
    assert_eq!(popular["degraded"]["fallback"], "popularity", "{popular}");
    assert_eq!(popular["items"].as_array().map(Vec::len), Some(4));
    let (status, ack) = node_b
        .post(
            "/v1/events",
            &json!({"events": [{"id": "outage-1", "user": "fs-1", "item": "m5", "kind": "click", "time_ms": edgerec_features::now_ms()}]}),
        )
        .expect("answers");
    assert_eq!((status, ack["accepted"].as_u64()), (200, Some(1)), "{ack}");
    assert!(
        node_b.metric(
            "edgerec_node_fallbacks_total",
            &[("reason", "feature_store_unavailable")]
        ) >= 19.0
    );
    let untouched = node_a
        .recommend(json!({"user_id": "fs-0", "recent_items": ["m1"], "k": 3, "surface": SURFACE}));
    assert!(untouched.get("degraded").is_none());
}

/// Every answer node A gave is in its serving log once it has shipped (it ships everything when stopped), and the
/// A/B report reading that log attributes every candidate click, none to control.
fn the_serving_log_and_the_ab_report_count_every_answer(
    dir: &Path,
    node_a: Node,
    by_variant: &BTreeMap<String, usize>,
) {
    let answered_by_a = node_a.metric("edgerec_node_recommendations_total", &[]);
    let Node { mut process, .. } = node_a;
    process.stop();
    let log = edgerec_features::log::EventLog::Folder(dir.join("node-a/log"));
    let served = run(log.read(0, i64::MAX))
        .expect("reads node A's log")
        .served;
    assert_eq!(served.len() as f64, answered_by_a);
    assert!(
        served
            .iter()
            .any(|s| s.variant == "candidate" && s.model_version == "2.0.0")
    );
    let report = succeeds(
        edgerec()
            .args(["ab", "report", "--surface", SURFACE, "--json", "--data"])
            .arg(dir.join("node-a")),
        "the A/B report",
    );
    let report: Value = serde_json::from_slice(&report.stdout).expect("JSON report");
    let outcome = |variant: &str| {
        report["variants"]
            .as_array()
            .and_then(|v| v.iter().find(|o| o["variant"] == variant))
            .cloned()
            .unwrap_or_else(|| panic!("no {variant} in {report}"))
    };
    assert_eq!(
        report["variants"][0]["variant"], "control",
        "the control comes first"
    );
    assert_eq!(outcome("control")["click_through"]["successes"], 0);
    assert_eq!(
        outcome("candidate")["click_through"]["successes"].as_u64(),
        Some(by_variant["candidate"] as u64)
    );
    let requests: u64 = report["variants"]
        .as_array()
        .map(|v| v.iter().filter_map(|o| o["requests"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(requests as usize, served.len());
}

/// The background client got an answer to every request, from a verified version only.
fn every_background_request_was_answered(traffic: &Traffic) {
    let failures = traffic.failures.lock().expect("lock").clone();
    let answered = traffic.answered.load(Ordering::SeqCst);
    eprintln!(
        "background client: {answered} answers, {} failures",
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        answered > 100,
        "the client kept sending ({answered} answers)"
    );
    let versions = traffic.versions.lock().expect("lock").clone();
    assert!(
        versions.iter().all(|v| v == "1.0.0" || v == "2.0.0"),
        "served versions: {versions:?}"
    );
}

#[test]
fn nodes_follow_the_registry_refuse_bad_models_and_keep_answering() {
    let dir = tempfile::tempdir().expect("temp dir");
    let registry_root = dir.path().join("registry");
    let token = admin_token(&registry_root);
    let mut registry = Registry::start(&registry_root);
    let client = RegistryClient::new(&registry.url, Some(&token));
    let (_, golden_model) = edgerec_conformance::golden_bundle();
    publish_versions(dir.path(), &client, &golden_model, &["1.0.0", "2.0.0"]);
    let revision = deploy(&client, &[("control", "1.0.0", 100)], "first deployment");

    // Node A: embedded features. Node B: DynamoDB (the local test server) behind a proxy that can be cut.
    let aws =
        edgerec_aws::AwsConfig::for_test_servers("edge-nodes").unwrap_or_else(|e| panic!("{e}"));
    let proxy = Proxy::start(
        aws.dynamodb_endpoint
            .clone()
            .expect("an endpoint")
            .trim_start_matches("http://")
            .to_string(),
    );
    let mut proxied = aws.clone();
    proxied.dynamodb_endpoint = Some(format!("http://127.0.0.1:{}", proxy.port));
    let cluster = Cluster {
        dir: dir.path(),
        site: Site::new(dir.path(), "shop-site"),
        registry_url: registry.url.clone(),
        token,
        public_key: client.signing_key().expect("the key").public_key,
    };
    let node_a = cluster.start("node-a", cluster.node_config("node-a", None));
    // Node B pins the key the registry answers first, as it is asked to.
    let mut config_b = cluster.node_config("node-b", Some(&proxied));
    config_b["registry"]["public_key"] = Value::Null;
    config_b["registry"]["trust_on_first_use"] = json!(true);
    let node_b = cluster.start("node-b", config_b);
    let nodes = [&node_a, &node_b];
    converge(&nodes, revision);
    for node in nodes {
        assert_eq!(node.get("/readyz").0, 200);
    }
    refuses_bad_requests(&node_a);
    refuses_a_second_node_with_the_same_id(
        dir.path(),
        cluster.node_config("node-b", Some(&proxied)),
    );
    refuses_events_past_the_backlog(
        dir.path(),
        cluster.node_config("node-full", None),
        &cluster.site,
    );
    serves_browsers(
        &node_a,
        &client.version(MODEL, "1.0.0").expect("the record"),
        &client.signing_key().expect("the key").public_key,
    );
    a_node_locked_out_of_the_registry_is_not_ready(&cluster);

    // From here on a client sends requests to both nodes; every one must be answered.
    let traffic = Arc::new(Traffic::default());
    let stop = Arc::new(AtomicBool::new(false));
    let sender = send_in_the_background(nodes, &cluster.site, traffic.clone(), stop.clone());
    let by_variant = a_split_puts_each_user_in_one_variant_on_every_node(&client, nodes);

    // Rollback: every node returns to v1.
    let rolled_back = client
        .rollback(SURFACE, "candidate regressed")
        .expect("rolls back")
        .revision;
    converge(&nodes, rolled_back);
    for user in 0..20 {
        let answer =
            node_b.recommend(json!({"user_id": format!("rb-{user}"), "k": 3, "surface": SURFACE}));
        assert_eq!(answer["model_version"], "1.0.0");
    }
    let template = client.version(MODEL, "1.0.0").expect("v1's record");
    nodes_serve_their_last_plan_without_the_registry(&cluster, &mut registry, nodes, rolled_back);
    nodes_refuse_tampered_and_broken_bundles(&client, &mut registry, &template, nodes, rolled_back);

    // A good plan after the refused ones is followed again.
    let recovered = deploy(&client, &[("control", "2.0.0", 100)], "recover");
    converge(&nodes, recovered);
    answers_degrade_when_the_feature_store_goes_away(&node_a, &node_b, &proxy);

    stop.store(true, Ordering::SeqCst);
    sender.join().expect("the client thread");
    the_serving_log_and_the_ab_report_count_every_answer(dir.path(), node_a, &by_variant);
    every_background_request_was_answered(&traffic);
}
