//! The public edge attacked black-box, as a stranger with curl would: a registry and edge nodes as real processes
//! on 127.0.0.1, requests naming other visitors, forged and expired tokens, revoked keys, a flood, maximal
//! histories, oversized bodies, and the operator's routes. The test plays a trusted proxy (`X-Forwarded-For`) to be
//! many clients from one machine.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use edgerec_core::{VariantName, Version};
use edgerec_registry_api::client::RegistryClient;
use edgerec_registry_api::records::{PlanRequest, Variant, VersionRecord};
use prost::Message;
use serde_json::{Value, json};
use support::nodes::{
    Answer, Node, Registry, Site, admin_token, edgerec, manifest_for, plant_version, wait_for,
};
use support::succeeds;

use crate::support;

const SURFACE: &str = "home";

/// POSTs `body` to `node` with `credential`, as a client of its own (an address no other request used), so only
/// the flood meets the per-address limit.
fn send(node: &Node, path: &str, body: &Value, credential: Option<&str>) -> Answer {
    static CLIENTS: AtomicU32 = AtomicU32::new(1);
    let n = CLIENTS.fetch_add(1, Ordering::Relaxed);
    let address = format!("198.18.{}.{}", n / 250, n % 250);
    send_from(node, path, body, credential, &address)
}

/// POSTs `body` to `node` as client `address` (through the node's trusted proxy) with `credential`.
fn send_from(
    node: &Node,
    path: &str,
    body: &Value,
    credential: Option<&str>,
    address: &str,
) -> Answer {
    node.send_with(path, body, credential, &[("X-Forwarded-For", address)])
        .expect("the node answers")
}

fn expect(answer: &Answer, status: u16, kind: Option<&str>, what: &str) {
    assert_eq!(
        (answer.status, answer.kind()),
        (status, kind),
        "{what}: {}",
        answer.body
    );
}

/// A recommendation request for `user`.
fn ask(user: &str) -> Value {
    json!({ "user_id": user, "k": 3, "surface": SURFACE })
}

fn event(id: &str, user: &str, item: &str) -> Value {
    json!({ "id": id, "user": user, "item": item, "kind": "purchase", "time_ms": edgerec_features::now_ms() })
}

/// An Ed25519 key of the site's, published to nodes as a JWKS file.
fn eddsa_site(dir: &Path) -> (PathBuf, jsonwebtoken::EncodingKey) {
    use base64::Engine as _;
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let signing = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let der = signing.to_pkcs8_der().expect("PKCS#8");
    let x =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
    let jwk = json!({ "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "ed-1", "x": x });
    let path = dir.join("site.jwks");
    std::fs::write(&path, json!({ "keys": [jwk] }).to_string()).expect("writes the JWKS");
    (path, jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()))
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// One guarded node, attacked step by step; each step is a function named for what it shows.
#[test]
fn the_public_edge_refuses_strangers_and_bounds_what_a_client_costs() {
    let mut edge = GuardedEdge::start();
    who_may_name_a_user(&edge);
    anonymous_sessions_are_good_for_their_own_id(&edge);
    an_api_key_posts_for_any_user_until_revoked(&edge);
    the_canary_never_leaks(&edge);
    a_flood_is_limited_while_a_neighbour_is_served(&edge);
    maximal_histories_grow_the_serving_log_by_the_cap(&edge);
    a_memory_hog_is_refused_and_the_previous_model_serves(&mut edge);
    operator_routes_and_an_open_node_are_refused(&edge);
}

/// A registry serving the golden bundle on one surface, and a node guarding it: site tokens (HS256 and an EdDSA
/// JWKS), per-address and per-visitor rates behind a trusted proxy, a cap on each served record.
struct GuardedEdge {
    node: Node,
    registry: Registry,
    client: RegistryClient,
    record: VersionRecord,
    site: Site,
    ed_key: jsonwebtoken::EncodingKey,
    items: Vec<String>,
    golden: PathBuf,
    registry_root: PathBuf,
    data: PathBuf,
    // Last: the processes above stop before their folders go.
    dir: tempfile::TempDir,
}

impl GuardedEdge {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let registry_root = dir.path().join("registry");
        let token = admin_token(&registry_root);
        let registry = Registry::start(&registry_root);
        let client = RegistryClient::new(&registry.url, Some(&token));
        let golden = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
            .join("../testdata/golden/bundle");
        let (record, _) = client
            .publish_bundle(&golden)
            .expect("publishes the golden bundle");
        let variant = Variant {
            name: VariantName::parse("control").expect("a name"),
            model: record.model.clone(),
            version: record.version.clone(),
            weight: 100,
        };
        let request = PlanRequest {
            variants: vec![variant],
            salt: None,
            reason: "security test".into(),
        };
        client.deploy(SURFACE, &request, None).expect("deploys");

        let site = Site::new(dir.path(), "site-1");
        let (jwks, ed_key) = eddsa_site(dir.path());
        let data = dir.path().join("guarded");
        let mut auth = site.auth_config();
        auth["visitor_tokens"]["jwks_file"] = json!(jwks);
        let config = json!({
            "listen": "127.0.0.1:0",
            "workers": 2,
            "surfaces": [SURFACE],
            "registry": {
                "url": registry.url, "token": token, "poll_interval_ms": 300,
                "public_key": client.signing_key().expect("the registry's key").public_key,
            },
            "auth": auth,
            "rate_limits": {
                "per_address": { "per_second": 20, "burst": 40 },
                "per_visitor": { "per_second": 50, "burst": 100 },
                "trusted_proxies": ["127.0.0.1"],
            },
            "limits": { "max_served_record_bytes": 4096 },
            "ship_interval_ms": 3_600_000,
            "features": { "data_dir": data, "ingest": { "node_id": "guarded" } },
        });
        let node = Node::start("guarded", dir.path(), config, None);
        wait_for(
            Duration::from_secs(60),
            "the node to load the model",
            || node.get("/readyz").0 == 200,
        );
        let items = golden_items(&golden);

        Self {
            node,
            registry,
            client,
            record,
            site,
            ed_key,
            items,
            golden,
            registry_root,
            data,
            dir,
        }
    }

    /// A batch of one event of `user`'s (on a known item) with id `id`.
    fn post(&self, user: &str, id: &str) -> Value {
        json!({ "events": [event(id, user, &self.items[1])] })
    }

    /// A request that names nobody and brings its own history.
    fn own(&self) -> Value {
        json!({ "recent_items": [self.items[3]], "k": 3, "surface": SURFACE })
    }
}

/// Who may name a user: the matrix, on both routes.
fn who_may_name_a_user(edge: &GuardedEdge) {
    let (node, site) = (&edge.node, &edge.site);
    let ed_key = &edge.ed_key;
    let alice = site.token("alice");
    let now = jsonwebtoken::get_current_timestamp();
    let expired = site.sign(
        &json!({ "sub": "alice", "iat": now - 7200, "exp": now - 3600 }),
        None,
    );
    let forged = site.sign(
        &json!({ "sub": "alice", "iat": now, "exp": now + 600 }),
        Some("not-the-site-secret-but-long-enough-to-sign"),
    );
    let unknown_kid = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("site-9".into());
        jsonwebtoken::encode(
            &header,
            &json!({ "sub": "alice", "iat": now, "exp": now + 600 }),
            &jsonwebtoken::EncodingKey::from_secret(b"whatever-secret-of-32-bytes-or-more")
                .expect("key"),
        )
        .expect("signs")
    };
    let reader = site.sign(
        &json!({ "sub": "alice", "iat": now, "exp": now + 600, "scope": "recommend" }),
        None,
    );
    let ed_token = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("ed-1".into());
        jsonwebtoken::encode(
            &header,
            &json!({ "sub": "bob", "iat": now, "exp": now + 600 }),
            ed_key,
        )
        .expect("signs")
    };
    for (path, body) in [
        ("/v1/recommend", ask("alice")),
        ("/v1/events", edge.post("alice", "ev-matrix")),
    ] {
        let no_token = send(node, path, &body, None);
        expect(
            &no_token,
            401,
            Some("unauthenticated"),
            &format!("{path} without a token"),
        );
        for (credential, status, kind, what) in [
            (
                site.token("mallory"),
                403,
                "forbidden",
                "another user's token",
            ),
            (expired.clone(), 401, "unauthenticated", "an expired token"),
            (
                forged.clone(),
                401,
                "unauthenticated",
                "a wrongly signed token",
            ),
            (
                unknown_kid.clone(),
                401,
                "unauthenticated",
                "an unknown kid",
            ),
            (
                "edk_not-a-key".into(),
                401,
                "unauthenticated",
                "an unknown API key",
            ),
            ("garbage".into(), 401, "unauthenticated", "not a JWT"),
        ] {
            let answer = send(node, path, &body, Some(&credential));
            expect(&answer, status, Some(kind), &format!("{path} with {what}"));
        }
        expect(
            &send(node, path, &body, Some(&alice)),
            200,
            None,
            &format!("{path} as alice"),
        );
    }
    expect(
        &send(node, "/v1/recommend", &ask("alice"), Some(&reader)),
        200,
        None,
        "read scope",
    );
    expect(
        &send(
            node,
            "/v1/events",
            &edge.post("alice", "ev-scope"),
            Some(&reader),
        ),
        403,
        Some("forbidden"),
        "a recommend-only token posting events",
    );
    expect(
        &send(node, "/v1/recommend", &ask("bob"), Some(&ed_token)),
        200,
        None,
        "an EdDSA token",
    );
    // A malformed header is refused too, and before the body is read: a body far past the limit still gets 401.
    let huge = json!({ "user_id": "alice", "k": 3, "surface": SURFACE, "exclude": vec!["x".repeat(200); 1500] });
    expect(
        &send(node, "/v1/recommend", &huge, Some("garbage")),
        401,
        Some("unauthenticated"),
        "huge body",
    );
    expect(
        &send(node, "/v1/recommend", &huge, Some(&alice)),
        413,
        Some("too_large"),
        "huge body, valid",
    );
    let basic = node
        .agent
        .post(format!("{}/v1/recommend", node.url))
        .header("Authorization", "Basic YWxpY2U6cHc=")
        .send(ask("alice").to_string())
        .expect("answers");
    assert_eq!(basic.status().as_u16(), 401);
    assert_eq!(
        basic
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    // Naming nobody needs nothing.
    let own = edge.own();
    expect(
        &send(node, "/v1/recommend", &own, None),
        200,
        None,
        "no user, no token",
    );
}

/// Anonymous sessions: a token for a fresh id, good for that id only, renewed with the same id.
fn anonymous_sessions_are_good_for_their_own_id(edge: &GuardedEdge) {
    let (node, site) = (&edge.node, &edge.site);
    let alice = site.token("alice");
    let session = send(node, "/v1/session", &json!({}), None);
    assert_eq!(session.status, 200, "{}", session.body);
    let (visitor, visitor_token) = (
        session.body["visitor"]
            .as_str()
            .expect("visitor")
            .to_string(),
        session.body["token"].as_str().expect("token").to_string(),
    );
    expect(
        &send(node, "/v1/recommend", &ask(&visitor), Some(&visitor_token)),
        200,
        None,
        "own session",
    );
    expect(
        &send(
            node,
            "/v1/events",
            &edge.post(&visitor, "ev-anon"),
            Some(&visitor_token),
        ),
        200,
        None,
        "own events",
    );
    expect(
        &send(node, "/v1/recommend", &ask("alice"), Some(&visitor_token)),
        403,
        Some("forbidden"),
        "session for alice",
    );
    let renewed = send(
        node,
        "/v1/session",
        &json!({ "previous": visitor_token }),
        None,
    );
    assert_eq!(
        renewed.body["visitor"].as_str(),
        Some(visitor.as_str()),
        "{}",
        renewed.body
    );
    let other = send(node, "/v1/session", &json!({}), None);
    assert_ne!(other.body["visitor"].as_str(), Some(visitor.as_str()));
    let foreign = send(node, "/v1/session", &json!({ "previous": alice }), None);
    expect(
        &foreign,
        401,
        Some("unauthenticated"),
        "renewing a site token as a session",
    );
    // What a session request may carry and cost: a JSON object of at most 8 KiB, and the per-address rate.
    for (body, status, kind) in [
        (json!({ "previous": 5 }), 400, "invalid_json"),
        (json!({ "visitor": "alice" }), 400, "invalid_json"),
        (json!({ "previous": "x".repeat(10_000) }), 413, "too_large"),
    ] {
        expect(
            &send(node, "/v1/session", &body, None),
            status,
            Some(kind),
            &format!("session {body:.40}"),
        );
    }
    let minted: Vec<Answer> = (0..80)
        .map(|_| send_from(node, "/v1/session", &json!({}), None, "203.0.113.70"))
        .collect();
    let sessions_limited = minted.iter().filter(|a| a.status == 429).count();
    assert!(
        sessions_limited >= 30,
        "only {sessions_limited} of 80 session requests were limited"
    );
    assert!(minted.iter().all(|a| a.status == 200 || a.status == 429));
}

/// An API key posts for any user; revoked, it is refused from the next request on.
fn an_api_key_posts_for_any_user_until_revoked(edge: &GuardedEdge) {
    let node = &edge.node;
    let item = |i: usize| edge.items[i].clone();
    let data = &edge.data;
    let created = succeeds(
        edgerec()
            .args([
                "edge", "key", "create", "--name", "importer", "--scope", "events", "--data",
            ])
            .arg(data),
        "creating an API key",
    );
    let key = String::from_utf8_lossy(&created.stdout).trim().to_string();
    assert!(key.starts_with("edk_"), "{key}");
    let listed = succeeds(
        edgerec().args(["edge", "key", "list", "--data"]).arg(data),
        "listing keys",
    );
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.contains("importer") && !listed.contains(&key),
        "{listed}"
    );
    let key_id = listed.split_whitespace().next().expect("an id").to_string();
    let import =
        json!({ "events": [event("imp-1", "carol", &item(4)), event("imp-2", "dave", &item(5))] });
    expect(
        &send(node, "/v1/events", &import, Some(&key)),
        200,
        None,
        "an API key, any users",
    );
    expect(
        &send(node, "/v1/recommend", &ask("carol"), Some(&key)),
        403,
        Some("forbidden"),
        "events-only key",
    );
    succeeds(
        edgerec()
            .args(["edge", "key", "revoke", &key_id, "--data"])
            .arg(data),
        "revoking",
    );
    let import_again = json!({ "events": [event("imp-3", "carol", &item(6))] });
    expect(
        &send(node, "/v1/events", &import_again, Some(&key)),
        401,
        Some("unauthenticated"),
        "revoked",
    );
}

/// The canary: an item posted for alice never comes back to a request that did not send it, not even her own.
fn the_canary_never_leaks(edge: &GuardedEdge) {
    let (node, site) = (&edge.node, &edge.site);
    let item = |i: usize| edge.items[i].clone();
    let alice = site.token("alice");
    let canary = "canary-item-7f3a";
    let planted = json!({ "events": [event("canary-1", "alice", canary), event("canary-2", "alice", &item(7))] });
    expect(
        &send(node, "/v1/events", &planted, Some(&alice)),
        200,
        None,
        "planting the canary",
    );
    wait_for(Duration::from_secs(10), "the event to be applied", || {
        node.metric("edgerec_node_ingest_backlog_records", &[]) == 0.0
    });
    let probes = [
        (ask("alice"), Some(alice.clone())),
        (
            json!({ "user_id": "alice", "k": 500, "surface": SURFACE, "recent_items": [item(8)] }),
            Some(alice.clone()),
        ),
        (
            json!({ "recent_items": [item(7)], "k": 50, "surface": SURFACE }),
            None,
        ),
        (ask("alice"), None),
        (ask("alice"), Some(site.token("mallory"))),
    ];
    for (probe, credential) in &probes {
        let answer = send(node, "/v1/recommend", probe, credential.as_deref());
        assert!(
            !answer.body.to_string().contains(canary),
            "{probe} leaked the canary: {}",
            answer.body
        );
        if answer.status == 200 {
            assert!(
                answer.body.get("unknown_items").is_none(),
                "{}",
                answer.body
            );
        }
    }
    let sent_back = send(
        node,
        "/v1/recommend",
        &json!({ "user_id": "alice", "k": 3, "surface": SURFACE, "recent_items": ["mine-only"] }),
        Some(&alice),
    );
    assert_eq!(
        sent_back.body["unknown_items"],
        json!(["mine-only"]),
        "{}",
        sent_back.body
    );
}

/// A flood from one client gets 429s with Retry-After while another client is served normally.
fn a_flood_is_limited_while_a_neighbour_is_served(edge: &GuardedEdge) {
    let node = &edge.node;
    let own = edge.own();
    let flood: Vec<Answer> = (0..120)
        .map(|_| send_from(node, "/v1/recommend", &own, None, "203.0.113.66"))
        .collect();
    let limited: Vec<&Answer> = flood.iter().filter(|a| a.status == 429).collect();
    assert!(
        limited.len() >= 60,
        "only {} of 120 were limited",
        limited.len()
    );
    assert!(flood.iter().all(|a| a.status == 200 || a.status == 429));
    expect(limited[0], 429, Some("rate_limited"), "flood");
    let wait: u64 = limited[0]
        .retry_after
        .as_deref()
        .and_then(|s| s.parse().ok())
        .expect("Retry-After");
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    expect(
        &send_from(node, "/v1/recommend", &own, None, "203.0.113.67"),
        200,
        None,
        "a neighbour during the flood",
    );
    assert!(node.metric("edgerec_node_refusals_total", &[("kind", "rate_limited")]) >= 60.0);
}

/// 1,000 requests carrying maximal histories (500 ids of 256 bytes) grow the serving log by no more than the
/// cap each; a request that could pass the cap is refused before it is ranked.
fn maximal_histories_grow_the_serving_log_by_the_cap(edge: &GuardedEdge) {
    let (node, site) = (&edge.node, &edge.site);
    let item = |i: usize| edge.items[i].clone();
    let alice = site.token("alice");
    let data = &edge.data;
    let wal = data.join("wal");
    let before = dir_bytes(&wal);
    let history: Vec<String> = (0..500)
        .map(|i| {
            if i % 10 == 0 {
                item(i)
            } else {
                format!("{i:0>256}")
            }
        })
        .collect();
    let mut body_bytes = 0;
    for n in 0..1000 {
        let user = format!("heavy-{n}");
        let heavy =
            json!({ "user_id": user, "recent_items": history, "k": 10, "surface": SURFACE });
        body_bytes = heavy.to_string().len();
        let answer = send(node, "/v1/recommend", &heavy, Some(&site.token(&user)));
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    wait_for(
        Duration::from_secs(10),
        "the serving log to be written",
        || dir_bytes(&wal) > before,
    );
    std::thread::sleep(Duration::from_millis(500));
    let grown = dir_bytes(&wal) - before;
    eprintln!("1,000 requests of {body_bytes} bytes grew the serving log by {grown} bytes");
    assert!(
        grown <= 1000 * 4096,
        "the serving log grew by {grown} bytes"
    );
    let greedy = json!({ "user_id": "alice", "k": 500, "surface": SURFACE });
    expect(
        &send(node, "/v1/recommend", &greedy, Some(&alice)),
        413,
        Some("request_too_large"),
        "k 500",
    );
}

/// A model that allocates far past the instance memory limit (an 800 MB constant from a 1 MB file): the
/// registry's probe, run in the WASI ranker with the nodes' limits, refuses to publish it; planted straight into
/// the registry's store, the node fails its load cleanly and the previous model keeps serving.
fn a_memory_hog_is_refused_and_the_previous_model_serves(edge: &mut GuardedEdge) {
    let node = &edge.node;
    let own = edge.own();
    let (dir, golden, record) = (&edge.dir, &edge.golden, edge.record.clone());
    let (client, registry_root) = (&edge.client, &edge.registry_root);
    let hog = hog_model(&std::fs::read(golden.join("model.onnx")).expect("the golden model"));
    let hog_dir = dir.path().join("hog");
    std::fs::create_dir_all(&hog_dir).expect("creates");
    std::fs::write(hog_dir.join("manifest.json"), manifest_for("6.6.6", &hog)).expect("writes");
    std::fs::write(hog_dir.join("model.onnx"), &hog).expect("writes");
    let refused = client
        .publish_bundle(&hog_dir)
        .expect_err("the probe refuses it");
    assert!(refused.to_string().contains("not servable"), "{refused}");
    edge.registry.stop();
    plant_version(registry_root, &record, "6.6.6", &hog, true);
    edge.registry.restart();
    let serving = node.revision(SURFACE).expect("a revision");
    let hog_plan = PlanRequest {
        variants: vec![Variant {
            name: VariantName::parse("control").expect("a name"),
            model: record.model.clone(),
            version: Version::parse("6.6.6").expect("a version"),
            weight: 100,
        }],
        salt: None,
        reason: "a model past the memory limit".into(),
    };
    client
        .deploy(SURFACE, &hog_plan, Some(serving))
        .expect("deploys");
    wait_for(
        Duration::from_secs(60),
        "the node to refuse the model",
        || {
            node.metric("edgerec_node_rollout_failures_total", &[("reason", "load")])
                + node.metric(
                    "edgerec_node_rollout_failures_total",
                    &[("reason", "warm_up")],
                )
                >= 1.0
        },
    );
    assert_eq!(
        node.revision(SURFACE),
        Some(serving),
        "the previous plan keeps serving"
    );
    let still = send(node, "/v1/recommend", &own, None);
    assert_eq!(
        (still.status, still.body["model_version"].as_str()),
        (200, Some(record.version.as_str()))
    );
}

/// The operator's routes are not on the public address, and a node without auth (or open beyond loopback) does
/// not start.
fn operator_routes_and_an_open_node_are_refused(edge: &GuardedEdge) {
    let node = &edge.node;
    let dir = &edge.dir;
    for path in ["/metrics", "/v1/deployments"] {
        assert_eq!(node.get(path).0, 404, "{path} on the public address");
        assert_eq!(node.admin_get(path).0, 200, "{path} on the admin address");
    }

    // Without the registry's key (or being told to trust the first one) the node does not start.
    let keyless = edgerec()
        .args([
            "edge",
            "serve",
            "--insecure-no-auth",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(dir.path().join("keyless"))
        .output()
        .expect("runs");
    assert!(!keyless.status.success());
    let said = String::from_utf8_lossy(&keyless.stderr);
    assert!(
        said.contains("--public-key") && said.contains("--trust-on-first-use"),
        "{said}"
    );
    // Without an auth configuration the node does not start; --insecure-no-auth only on loopback.
    let refused = edgerec()
        .args([
            "edge",
            "serve",
            "--trust-on-first-use",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(dir.path().join("open"))
        .output()
        .expect("runs");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--insecure-no-auth"));
    let open = edgerec()
        .args([
            "edge",
            "serve",
            "--trust-on-first-use",
            "--insecure-no-auth",
            "--listen",
            "0.0.0.0:0",
            "--data",
        ])
        .arg(dir.path().join("open"))
        .output()
        .expect("runs");
    assert!(!open.status.success());
    assert!(
        String::from_utf8_lossy(&open.stderr).contains("loopback"),
        "{}",
        String::from_utf8_lossy(&open.stderr)
    );
}

/// The golden model adding to every score the sum of a 200,000,000-float constant of zeros: the same scores, but
/// 800 MB to build the constant.
fn hog_model(golden: &[u8]) -> Vec<u8> {
    use tract_onnx::pb::{AttributeProto, NodeProto, TensorProto, attribute_proto, tensor_proto};
    let mut model = tract_onnx::pb::ModelProto::decode(golden).expect("decodes");
    let graph = model.graph.as_mut().expect("a graph");
    let output = graph.output[0].name.clone();
    let producer = graph
        .node
        .iter_mut()
        .find(|n| n.output.contains(&output))
        .expect("the output's node");
    for name in &mut producer.output {
        if *name == output {
            *name = "scores_before_hog".into();
        }
    }
    graph.initializer.push(TensorProto {
        name: "hog_shape".into(),
        dims: vec![1],
        data_type: tensor_proto::DataType::Int64 as i32,
        int64_data: vec![200_000_000],
        ..Default::default()
    });
    let node =
        |op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>| NodeProto {
            op_type: op.into(),
            name: format!("hog_{op}"),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        };
    let keepdims = AttributeProto {
        name: "keepdims".into(),
        r#type: attribute_proto::AttributeType::Int as i32,
        i: 0,
        ..Default::default()
    };
    graph
        .node
        .push(node("ConstantOfShape", &["hog_shape"], "hog", vec![]));
    graph
        .node
        .push(node("ReduceSum", &["hog"], "hog_sum", vec![keepdims]));
    graph.node.push(node(
        "Add",
        &["scores_before_hog", "hog_sum"],
        &output,
        vec![],
    ));
    model.encode_to_vec()
}

/// The item ids of the bundle in `dir`.
fn golden_items(dir: &Path) -> Vec<String> {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("reads"))
            .expect("JSON");
    serde_json::from_value(manifest["items"].clone()).expect("item ids")
}
