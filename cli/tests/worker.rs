//! The wasi:http worker against an edge node: built by `edgerec worker build` from the registry's signed plan
//! (two variants, 50/50) and served by `wasmtime serve`, it answers 50 visitors' histories as the node does (same
//! variant, same items, scores within 1e-5), refuses bad requests with the node's statuses and kinds, and
//! forwards events to the node.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use edgerec_registry_api::client::RegistryClient;
use serde_json::{Value, json};
use support::nodes::{
    Answer, Node, Process, Registry, admin_token, deploy, publish_versions, wait_for,
};

use crate::support;

const SURFACE: &str = "home";
const MODEL: &str = "golden-sasrec";
const TOLERANCE: f64 = 1e-5;

/// `wasmtime serve` of the built worker on a free loopback port, once it answers `/healthz`.
fn serve_worker(component: &Path, log: &Path) -> (Process, String) {
    let port = support::free_port();
    let child = Command::new("wasmtime")
        .args([
            "serve",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "-S",
            "cli=y",
        ])
        .arg(component)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("wasmtime runs (scripts/setup.sh installs wasmtime-cli into the tools cache)");
    let process = Process {
        child,
        name: "wasmtime serve".into(),
    };
    let url = format!("http://127.0.0.1:{port}");
    // wasmtime compiles the component before it listens.
    wait_for(Duration::from_secs(180), "the worker to answer", || {
        ureq::get(format!("{url}/healthz")).call().is_ok()
    });
    (process, url)
}

fn post(agent: &ureq::Agent, url: &str, path: &str, body: String) -> Answer {
    let mut response = agent
        .post(format!("{url}{path}"))
        .header("Content-Type", "application/json")
        .send(body)
        .expect("answers");
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Answer {
        status: response.status().as_u16(),
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        retry_after: None,
    }
}

/// 50 visitors: histories of 0 to 79 catalogue items (past the model's 50, so older ones are excluded rather than
/// fed), some with an item the model does not know, exclusions and an hour of the day.
fn histories() -> Vec<Value> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: u64| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
        (state >> 33) % n
    };
    (0..50)
        .map(|visitor| {
            let length = next(80);
            let mut recent: Vec<String> = (0..length)
                .map(|_| format!("m{}", 1 + next(3706)))
                .collect();
            if visitor % 7 == 3 {
                recent.push("an-item-added-today".into());
            }
            let exclude: Vec<String> = (0..next(4))
                .map(|_| format!("m{}", 1 + next(3706)))
                .collect();
            let mut body = json!({
                "surface": SURFACE, "user_id": format!("visitor-{visitor}"), "k": 1 + next(20),
                "recent_items": recent, "exclude": exclude,
            });
            if visitor % 3 == 0 {
                body["context"] = json!({ "hour": next(24) });
            }
            body
        })
        .collect()
}

fn same_answer(request: &Value, node: &Value, worker: &Value) {
    for field in [
        "variant",
        "model",
        "model_version",
        "plan_revision",
        "unknown_items",
        "degraded",
    ] {
        assert_eq!(node[field], worker[field], "{field} of {request}");
    }
    let items = |answer: &Value| -> Vec<(String, f64)> {
        answer["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| {
                (
                    i["item"].as_str().expect("id").to_string(),
                    i["score"].as_f64().expect("score"),
                )
            })
            .collect()
    };
    let (node_items, worker_items) = (items(node), items(worker));
    let ids = |items: &[(String, f64)]| items.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&node_items), ids(&worker_items), "top-k of {request}");
    for ((id, a), (_, b)) in node_items.iter().zip(&worker_items) {
        assert!(
            (a - b).abs() <= TOLERANCE,
            "{id}: node {a}, worker {b} ({request})"
        );
    }
}

#[test]
fn the_worker_answers_as_the_edge_node_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let registry_root = dir.path().join("registry");
    let token = admin_token(&registry_root);
    let registry = Registry::start(&registry_root);
    let client = RegistryClient::new(&registry.url, Some(&token));
    let golden_model = edgerec_conformance::golden_bundle().1;
    publish_versions(dir.path(), &client, &golden_model, &["1.0.0", "2.0.0"]);
    let revision = deploy(
        &client,
        SURFACE,
        MODEL,
        &[("a", "1.0.0", 50), ("b", "2.0.0", 50)],
        "worker test",
    );
    let public_key = client.signing_key().expect("the key document").public_key;

    let node = Node::start(
        "node",
        dir.path(),
        json!({
            "listen": "127.0.0.1:0", "insecure_no_auth": true, "workers": 2, "surfaces": [SURFACE],
            "rate_limits": { "per_address": { "per_second": 0, "burst": 0 } },
            "registry": { "url": registry.url, "token": token, "public_key": public_key, "poll_interval_ms": 200 },
            "ship_interval_ms": 3_600_000,
            "features": { "data_dir": dir.path().join("node"), "ingest": { "node_id": "node" } },
        }),
        None,
    );
    wait_for(
        Duration::from_secs(60),
        "the node to serve the plan",
        || node.revision(SURFACE) == Some(revision),
    );

    let out = dir.path().join("worker");
    let built = support::succeeds(
        support::nodes::edgerec()
            .args([
                "worker",
                "build",
                "--surface",
                SURFACE,
                "--registry",
                &registry.url,
                "--token",
                &token,
            ])
            .args([
                "--public-key",
                &public_key,
                "--events-to",
                &node.url,
                "--out",
            ])
            .arg(&out),
        "edgerec worker build",
    );
    let printed = String::from_utf8_lossy(&built.stdout);
    assert!(
        printed.contains("Cloudflare Workers, paid plan"),
        "sizes against limits: {printed}"
    );
    refuses_what_it_cannot_verify_or_build(&registry.url, &token, &public_key, dir.path());
    let (_worker, worker_url) = serve_worker(
        &out.join("edgerec-worker.wasm"),
        &dir.path().join("worker.log"),
    );

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    answers_alike(&agent, &node.url, &worker_url, revision);
    refuses_alike(&agent, &node.url, &worker_url);
    forwards_events(&agent, &node.url, &worker_url);
}

/// The 50 histories get the same answers from the node and the worker, from both variants.
fn answers_alike(agent: &ureq::Agent, node: &str, worker: &str, revision: u64) {
    let mut variants = std::collections::BTreeSet::new();
    for request in histories() {
        let from_node = post(agent, node, "/v1/recommend", request.to_string());
        let from_worker = post(agent, worker, "/v1/recommend", request.to_string());
        assert_eq!(
            (from_node.status, from_worker.status),
            (200, 200),
            "{request}: {} / {}",
            from_node.body,
            from_worker.body
        );
        same_answer(&request, &from_node.body, &from_worker.body);
        assert_eq!(from_worker.body["plan_revision"], json!(revision));
        variants.insert(from_worker.body["variant"].to_string());
    }
    assert_eq!(variants.len(), 2, "visitors of both variants were compared");
}

/// Bad requests get the same status and kind from both.
fn refuses_alike(agent: &ureq::Agent, node: &str, worker: &str) {
    let oversized =
        json!({ "surface": SURFACE, "k": 5, "exclude": vec!["m1"; 60_000] }).to_string();
    for (what, body, status, kind) in [
        (
            "bad JSON",
            "{\"surface\": ".to_string(),
            400,
            "invalid_json",
        ),
        (
            "k = 0",
            json!({ "surface": SURFACE, "k": 0 }).to_string(),
            400,
            "invalid_k",
        ),
        (
            "k too large",
            json!({ "surface": SURFACE, "k": 100_000 }).to_string(),
            400,
            "invalid_k",
        ),
        (
            "unknown surface",
            json!({ "surface": "elsewhere", "k": 5 }).to_string(),
            404,
            "unknown_surface",
        ),
        (
            "bad id",
            json!({ "surface": SURFACE, "k": 5, "recent_items": [""] }).to_string(),
            400,
            "invalid_id",
        ),
        (
            "hour out of range",
            json!({ "surface": SURFACE, "k": 5, "context": { "hour": 99 } }).to_string(),
            400,
            "invalid_features",
        ),
        ("oversized body", oversized, 413, "too_large"),
    ] {
        for (runtime, url) in [("node", node), ("worker", worker)] {
            let answer = post(agent, url, "/v1/recommend", body.clone());
            assert_eq!(
                (answer.status, answer.kind()),
                (status, Some(kind)),
                "{what} on the {runtime}: {}",
                answer.body
            );
        }
    }
}

/// An event sent to the worker reaches the node, which then holds it (a resend is a duplicate there); a batch past
/// the events limit is refused by both before it is forwarded; the worker has no other routes.
fn forwards_events(agent: &ureq::Agent, node: &str, worker: &str) {
    let oversized = json!({ "events": [{
        "id": "big", "user": "someone-else", "item": "x".repeat(3 << 20), "kind": "click", "time_ms": 0,
    }] })
    .to_string();
    for (runtime, url) in [("node", node), ("worker", worker)] {
        let answer = post(agent, url, "/v1/events", oversized.clone());
        assert_eq!(
            (answer.status, answer.kind()),
            (413, Some("too_large")),
            "an oversized batch on the {runtime}: {}",
            answer.body
        );
    }
    let unknown = post(agent, worker, "/v1/elsewhere", "{}".into());
    assert_eq!((unknown.status, unknown.kind()), (404, Some("not_found")));
    let mut wrong_method = agent
        .get(format!("{worker}/v1/recommend"))
        .call()
        .expect("answers");
    let text = wrong_method.body_mut().read_to_string().unwrap_or_default();
    assert_eq!(wrong_method.status().as_u16(), 405, "{text}");

    let events = json!({ "events": [{
        "id": "worker-event-1", "user": "someone-else", "item": "m1", "kind": "click",
        "time_ms": edgerec_features::now_ms(),
    }] });
    let forwarded = post(agent, worker, "/v1/events", events.to_string());
    assert_eq!(forwarded.status, 200, "{}", forwarded.body);
    assert_eq!(forwarded.body["accepted"], json!(1), "{}", forwarded.body);
    let again = post(agent, node, "/v1/events", events.to_string());
    assert_eq!(
        again.body["duplicates"],
        json!(1),
        "the node took the forwarded event: {}",
        again.body
    );
}

/// `edgerec worker build` writes nothing and says why for a key that did not sign the plan, a surface without a
/// plan, an events target that is not a URL and a component that is not the worker.
fn refuses_what_it_cannot_verify_or_build(registry: &str, token: &str, key: &str, dir: &Path) {
    let other_key = hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&[9; 32])
            .verifying_key()
            .to_bytes(),
    );
    let not_the_worker = support::nodes::wasm();
    for (what, surface, key, extra, expected) in [
        (
            "another key",
            SURFACE,
            other_key.as_str(),
            vec![],
            "signature",
        ),
        ("no plan", "nowhere", key, vec![], "has no plan"),
        (
            "events target",
            SURFACE,
            key,
            vec!["--events-to", "node.example:8081"],
            "http:// or https:// URL",
        ),
        (
            "not the worker",
            SURFACE,
            key,
            vec!["--worker", not_the_worker.to_str().expect("a UTF-8 path")],
            "wizer-initialize",
        ),
    ] {
        let out = dir.join(format!("refused-{}", what.replace(' ', "-")));
        let output = support::nodes::edgerec()
            .args(["worker", "build", "--registry", registry, "--token", token])
            .args(["--surface", surface, "--public-key", key])
            .args(&extra)
            .arg("--out")
            .arg(&out)
            .output()
            .expect("runs edgerec worker build");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{what}: built anyway");
        assert!(stderr.contains(expected), "{what}: {stderr}");
        assert!(
            !out.join("edgerec-worker.wasm").exists(),
            "{what}: wrote a worker"
        );
    }
}
