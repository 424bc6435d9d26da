//! The real registry server on port 0 (embedded backend, and S3 + DynamoDB for the plan tests), driven over HTTP:
//! the API, auth, signing, conditional plan updates, rollback, metrics, the bad-input paths and a full disk.

use crate::support;

use support::{aws_config, aws_registry, embedded_registry, golden, golden_as, run};

use edgerec_core::{Digest, ModelName, VariantName};
use edgerec_registry::server::RunningServer;
use edgerec_registry::service::Registry;
use edgerec_registry::store::Store;
use edgerec_registry_api::records::Scope;
use edgerec_registry_api::signature::verify_manifest_signature;
use serde_json::{Value, json};

struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

struct Reply {
    status: u16,
    etag: Option<String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn kind(&self) -> String {
        self.json()["error"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Client {
    fn new(base: &str, token: Option<&str>) -> Self {
        Self {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
            base: base.to_string(),
            token: token.map(str::to_string),
        }
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let url = format!("{}{path}", self.base);
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(body.map(<[u8]>::to_vec).unwrap_or_default())
            .expect("request");
        let mut response = self.agent.run(request).expect("the registry answers");
        Reply {
            status: response.status().as_u16(),
            etag: response
                .headers()
                .get("etag")
                .map(|v| v.to_str().expect("ascii").to_string()),
            body: response.body_mut().read_to_vec().expect("body"),
        }
    }

    fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None, &[])
    }

    fn json(&self, method: &str, path: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
        let mut headers = headers.to_vec();
        headers.push(("Content-Type", "application/json"));
        self.send(
            method,
            path,
            Some(&serde_json::to_vec(body).expect("json")),
            &headers,
        )
    }
}

struct Fixture {
    server: RunningServer,
    admin: String,
    _dir: tempfile::TempDir,
}

fn start(max_upload_bytes: u64) -> Fixture {
    let dir = tempfile::tempdir().expect("temporary folder");
    serve(embedded_registry(dir.path(), max_upload_bytes), dir)
}

/// The same server on S3 + DynamoDB (the test servers `scripts/aws-local.sh` starts).
fn start_on_aws(test: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("temporary folder");
    let registry = aws_registry(&aws_config(&format!("http-{test}")), dir.path(), 64 << 20);
    serve(registry, dir)
}

/// Serves `registry` on port 0 with an admin token.
fn serve<S: Store + Send + Sync + 'static>(
    registry: Registry<S>,
    dir: tempfile::TempDir,
) -> Fixture {
    let (server, admin) = serve_with_admin(registry);
    Fixture {
        server,
        admin,
        _dir: dir,
    }
}

/// Serves `registry` on port 0; the secret of its admin token.
fn serve_with_admin<S: Store + Send + Sync + 'static>(
    registry: Registry<S>,
) -> (RunningServer, String) {
    let admin = run(registry.create_token("root", vec![Scope::Admin], "setup"))
        .expect("admin token")
        .secret;
    let server = RunningServer::start(registry, "127.0.0.1:0").expect("serves on port 0");
    (server, admin)
}

fn token(admin: &Client, name: &str, scopes: &[&str]) -> String {
    let reply = admin.json(
        "POST",
        "/v1/tokens",
        &json!({"name": name, "scopes": scopes}),
        &[],
    );
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()["secret"].as_str().expect("secret").to_string()
}

fn publish(client: &Client, version: &str) -> Reply {
    let (_, model) = golden();
    let digest = Digest::of(&model);
    let upload = client.send(
        "PUT",
        &format!("/v1/blobs/sha256:{digest}"),
        Some(&model),
        &[],
    );
    assert_eq!(
        upload.status,
        201,
        "{}",
        String::from_utf8_lossy(&upload.body)
    );
    client.send(
        "POST",
        "/v1/models/golden-sasrec/versions",
        Some(&golden_as(version)),
        &[],
    )
}

#[test]
fn public_endpoints_and_auth() {
    let fixture = start(64 << 20);
    let anonymous = Client::new(&fixture.server.url(), None);
    assert_eq!(anonymous.get("/healthz").json()["status"], "ok");
    let openapi = anonymous.get("/openapi.json").json();
    for (method, path) in [
        ("put", "/v1/blobs/{digest}"),
        ("get", "/v1/blobs/{digest}"),
        ("get", "/v1/models"),
        ("post", "/v1/models/{model}/versions"),
        ("get", "/v1/models/{model}/versions/{version}"),
        ("delete", "/v1/models/{model}/versions/{version}"),
        ("post", "/v1/models/{model}/versions/{version}/revoke"),
        ("get", "/v1/revocations"),
        ("get", "/v1/plans/{surface}"),
        ("put", "/v1/plans/{surface}"),
        ("post", "/v1/plans/{surface}/rollback"),
        ("get", "/v1/plans/{surface}/history"),
        ("get", "/v1/audit"),
        ("post", "/v1/tokens"),
        ("delete", "/v1/tokens/{id}"),
        ("get", "/v1/signing-key"),
        ("post", "/v1/signing-key/rotate"),
    ] {
        assert!(
            openapi["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
    assert_eq!(
        anonymous.get("/v1/signing-key").json()["algorithm"],
        "ed25519"
    );

    let reply = anonymous.get("/v1/models");
    assert_eq!(
        (reply.status, reply.kind().as_str()),
        (401, "unauthenticated")
    );
    let stranger = Client::new(&fixture.server.url(), Some("erk_not_a_token"));
    assert_eq!(stranger.get("/v1/models").status, 401);
    let admin = Client::new(&fixture.server.url(), Some(&fixture.admin));
    let reader = Client::new(
        &fixture.server.url(),
        Some(&token(&admin, "dashboards", &["read"])),
    );
    assert_eq!(reader.get("/v1/models").status, 200);
    let reply = publish_attempt(&reader);
    assert_eq!((reply.status, reply.kind().as_str()), (403, "forbidden"));

    // Key rotation: admin only; the key document then names the new key and the rotation to it, which the old
    // key signed.
    let rotate = |client: &Client| {
        client.json(
            "POST",
            "/v1/signing-key/rotate",
            &json!({"grace_hours": 1}),
            &[],
        )
    };
    let before = anonymous.get("/v1/signing-key").json();
    assert_eq!(rotate(&anonymous).status, 401);
    assert_eq!(rotate(&reader).status, 403);
    let bad = admin.json("POST", "/v1/signing-key/rotate", &json!({"grace": 1}), &[]);
    assert_eq!(bad.status, 400);
    let rotated = rotate(&admin);
    assert_eq!(rotated.status, 200);
    let after: edgerec_registry_api::signature::SigningKeyDocument =
        serde_json::from_value(anonymous.get("/v1/signing-key").json()).expect("a key document");
    assert_ne!(json!(after.public_key), before["public_key"]);
    assert_eq!(json!(after.rotations), json!([rotated.json()]));
    let old = before["public_key"].as_str().expect("a key");
    let trusted = edgerec_registry_api::keys::TrustedKeys::from_chain(old, &after.rotations)
        .expect("the chain verifies from the old key");
    assert_eq!(
        (
            trusted.current().public_key.as_str(),
            trusted.current().id.as_str()
        ),
        (after.public_key.as_str(), after.key_id.as_str())
    );
    assert_eq!(reader.get("/v1/audit").status, 403);

    let listed = admin.get("/v1/tokens").json();
    assert_eq!(listed.as_array().expect("tokens").len(), 2);
    let id = listed
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["name"] == "dashboards")
        .and_then(|t| t["id"].as_str())
        .expect("the reader's token is listed")
        .to_string();
    assert!(
        listed.to_string().find("erk_").is_none(),
        "secrets are never listed"
    );
    assert_eq!(
        admin
            .send("DELETE", &format!("/v1/tokens/{id}"), None, &[])
            .status,
        204
    );
    assert_eq!(
        reader.get("/v1/models").status,
        401,
        "a revoked token still works"
    );

    let metrics = String::from_utf8(anonymous.get("/metrics").body).expect("text");
    assert!(
        metrics.contains(
            r#"edgerec_registry_requests_total{method="GET",route="/v1/models",status="401"} 3"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("edgerec_registry_request_seconds_bucket"));
}

fn publish_attempt(client: &Client) -> Reply {
    let (_, model) = golden();
    client.send(
        "PUT",
        &format!("/v1/blobs/sha256:{}", Digest::of(&model)),
        Some(&model),
        &[],
    )
}

#[test]
fn publish_download_and_bad_uploads() {
    let fixture = start(2 << 20);
    let admin = Client::new(&fixture.server.url(), Some(&fixture.admin));
    let publisher = Client::new(
        &fixture.server.url(),
        Some(&token(&admin, "trainer", &["publish", "read"])),
    );
    let (manifest, model) = golden();
    let digest = Digest::of(&model);

    // Truncated: the body does not hash to the digest in the path.
    let reply = publisher.send(
        "PUT",
        &format!("/v1/blobs/sha256:{digest}"),
        Some(&model[..4096]),
        &[],
    );
    assert_eq!(
        (reply.status, reply.kind().as_str()),
        (400, "digest_mismatch")
    );
    // Not a digest at all.
    assert_eq!(
        publisher
            .send("PUT", "/v1/blobs/model.onnx", Some(b"x"), &[])
            .status,
        400
    );
    // Larger than the configured 2 MiB.
    let big = vec![7u8; 3 << 20];
    let reply = publisher.send(
        "PUT",
        &format!("/v1/blobs/sha256:{}", Digest::of(&big)),
        Some(&big),
        &[],
    );
    assert_eq!((reply.status, reply.kind().as_str()), (413, "too_large"));
    // A manifest whose model was never uploaded.
    let reply = publisher.send(
        "POST",
        "/v1/models/golden-sasrec/versions",
        Some(&manifest),
        &[],
    );
    assert_eq!(
        reply.status,
        422,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(publisher.get("/v1/models").json(), json!([]));

    let reply = publish(&publisher, "1.0.0");
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let version = reply.json();
    assert_eq!(
        publish(&publisher, "1.0.0").status,
        200,
        "re-publishing the same manifest"
    );
    let key = publisher.get("/v1/signing-key").json();
    let manifest_digest: Digest = version["manifest_digest"]
        .as_str()
        .expect("digest")
        .parse()
        .expect("hex");
    verify_manifest_signature(
        key["public_key"].as_str().expect("key"),
        &manifest_digest,
        version["signature"].as_str().expect("signature"),
    )
    .expect("the served signature verifies with the served key");

    let fetched = publisher.get(&format!("/v1/blobs/sha256:{manifest_digest}"));
    assert_eq!((fetched.status, fetched.body), (200, golden_as("1.0.0")));
    assert_eq!(
        publisher.get(&format!("/v1/blobs/sha256:{digest}")).body,
        model
    );
    let shown = publisher
        .get("/v1/models/golden-sasrec/versions/1.0.0")
        .json();
    assert_eq!(
        (shown["items"].as_u64(), shown["published_by"].as_str()),
        (Some(3706), Some("trainer"))
    );
    assert_eq!(
        publisher
            .get("/v1/models/golden-sasrec/versions/9.9.9")
            .status,
        404
    );
    assert_eq!(
        publisher.get("/v1/models").json()[0]["versions"],
        json!(["1.0.0"])
    );
}

#[test]
fn plans_are_conditional_cached_and_roll_back() {
    plans_on(start(64 << 20));
}

#[test]
fn plans_are_conditional_cached_and_roll_back_on_s3_and_dynamodb() {
    plans_on(start_on_aws("plans"));
}

fn plans_on(fixture: Fixture) {
    let admin = Client::new(&fixture.server.url(), Some(&fixture.admin));
    let deployer = Client::new(
        &fixture.server.url(),
        Some(&token(&admin, "ml-team", &["publish", "deploy", "read"])),
    );
    assert_eq!(publish(&deployer, "1.0.0").status, 201);
    assert_eq!(publish(&deployer, "1.1.0").status, 201);
    let plan = |variants: Value, reason: &str| json!({"variants": variants, "reason": reason});
    let single = plan(
        json!([{"name": "control", "model": "golden-sasrec", "version": "1.0.0", "weight": 100}]),
        "launch",
    );
    let split = plan(
        json!([
            {"name": "control", "model": "golden-sasrec", "version": "1.0.0", "weight": 80},
            {"name": "candidate", "model": "golden-sasrec", "version": "1.1.0", "weight": 20}
        ]),
        "try 1.1.0 on 20%",
    );

    let bad = plan(
        json!([{"name": "a", "model": "golden-sasrec", "version": "1.0.0", "weight": 60}]),
        "x",
    );
    let reply = deployer.json("PUT", "/v1/plans/home", &bad, &[]);
    assert_eq!(
        (reply.status, reply.kind().as_str()),
        (422, "invalid_bundle_or_plan")
    );
    let unknown = plan(
        json!([{"name": "a", "model": "golden-sasrec", "version": "7.0.0", "weight": 100}]),
        "x",
    );
    assert_eq!(
        deployer.json("PUT", "/v1/plans/home", &unknown, &[]).status,
        422
    );
    assert_eq!(
        deployer
            .send(
                "PUT",
                "/v1/plans/home",
                Some(b"{not json"),
                &[("Content-Type", "application/json")]
            )
            .status,
        400
    );

    let key = deployer.get("/v1/signing-key").json()["public_key"]
        .as_str()
        .expect("a key")
        .to_string();
    // ETags: the revision, the revocations and the id of the key that signed.
    let id = edgerec_registry_api::keys::key_id(&key).expect("a key id");
    let etag = |tag: &str| format!("\"{tag}.{id}\"");
    let first = deployer.json("PUT", "/v1/plans/home", &single, &[]);
    assert_eq!((first.status, first.etag), (200, Some(etag("1.0"))));
    let read = deployer.get("/v1/plans/home");
    assert_eq!(read.etag, Some(etag("1.0")));
    // Every plan revision served is signed: its surface, revision, salt and variants with their manifest digests,
    // under the registry's key.
    let served: edgerec_registry_api::records::Plan =
        serde_json::from_value(read.json()).expect("a plan");
    let keys = edgerec_registry_api::keys::TrustedKeys::single(&key).expect("a key");
    edgerec_registry_api::signature::verify_plan_signature(&keys, &served, 0)
        .expect("signed with the registry's key");
    let version = deployer
        .get("/v1/models/golden-sasrec/versions/1.0.0")
        .json();
    let signed = served.signature.as_ref().expect("a signature");
    assert_eq!(
        json!(signed.manifest_digests),
        json!([version["manifest_digest"]])
    );
    assert_eq!(
        deployer
            .send("GET", "/v1/plans/home", None, &[("If-None-Match", "\"1\"")])
            .status,
        304
    );

    assert_eq!(
        deployer.json("PUT", "/v1/plans/home", &split, &[]).status,
        428
    );
    assert_eq!(
        deployer
            .json("PUT", "/v1/plans/home", &split, &[("If-Match", "\"5\"")])
            .status,
        412
    );

    // Two deployers who both read revision 1 update at once: exactly one wins.
    let url = fixture.server.url();
    let secret = deployer.token.clone().expect("token");
    let racers: Vec<_> = (0..2)
        .map(|i| {
            let (url, secret, body) = (
                url.clone(),
                secret.clone(),
                if i == 0 {
                    split.clone()
                } else {
                    single.clone()
                },
            );
            std::thread::spawn(move || {
                Client::new(&url, Some(&secret))
                    .json("PUT", "/v1/plans/home", &body, &[("If-Match", "\"1\"")])
                    .status
            })
        })
        .collect();
    let mut statuses: Vec<u16> = racers
        .into_iter()
        .map(|t| t.join().expect("racer"))
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 412]);
    assert_eq!(
        deployer
            .send("GET", "/v1/plans/home", None, &[("If-None-Match", "\"1\"")])
            .status,
        200
    );

    let reply = deployer.send(
        "DELETE",
        "/v1/models/golden-sasrec/versions/1.0.0",
        None,
        &[],
    );
    assert_eq!(reply.status, 403, "deleting needs admin");
    let reply = admin.send(
        "DELETE",
        "/v1/models/golden-sasrec/versions/1.0.0?reason=cleanup",
        None,
        &[],
    );
    assert_eq!((reply.status, reply.kind().as_str()), (409, "conflict"));

    let rolled = deployer.json(
        "POST",
        "/v1/plans/home/rollback",
        &json!({"reason": "regressed"}),
        &[],
    );
    assert_eq!((rolled.status, rolled.etag), (200, Some(etag("3.0"))));
    let history = deployer.get("/v1/plans/home/history").json();
    assert_eq!(history.as_array().expect("history").len(), 3);
    assert_eq!(history[2]["variants"], history[0]["variants"]);
    assert_eq!(history[2]["reason"], "regressed");
    let current = deployer.get("/v1/plans").json();
    assert_eq!(current.as_array().map(Vec::len), Some(1));
    assert_eq!(
        (
            current[0]["surface"].as_str(),
            current[0]["revision"].as_u64()
        ),
        (Some("home"), Some(3))
    );
    let audit = admin.get("/v1/audit?limit=3").json();
    assert_eq!(audit[0]["action"], "plan.rollback");
    assert_eq!(audit[0]["actor"], "ml-team");
    revocations_on(&admin, &deployer, &key);
}

/// Revoking and deleting versions, with revision 3 of `home` naming 1.0.0 alone: each revocation is listed, signed,
/// in every plan of its model, changes the plan's tag without a new revision, and keeps the version out of plans.
fn revocations_on(admin: &Client, deployer: &Client, key: &str) {
    let signed_plan = |reply: &Reply| {
        let plan: edgerec_registry_api::records::Plan =
            serde_json::from_value(reply.json()).expect("a plan");
        let keys = edgerec_registry_api::keys::TrustedKeys::single(key).expect("a key");
        edgerec_registry_api::signature::verify_plan_signature(&keys, &plan, 0).expect("signed");
        plan.signature.expect("signed").revoked
    };
    let revoke = |client: &Client, version: &str| {
        client.json(
            "POST",
            &format!("/v1/models/golden-sasrec/versions/{version}/revoke"),
            &json!({"reason": "leaked"}),
            &[],
        )
    };
    let reader = Client::new(&admin.base, Some(&token(admin, "reader", &["read"])));
    assert_eq!(
        revoke(&reader, "1.1.0").status,
        403,
        "revoking needs deploy"
    );
    assert_eq!(revoke(deployer, "9.9.9").status, 404);
    let revoked = revoke(deployer, "1.1.0");
    assert_eq!(revoked.status, 200);
    assert_eq!(revoked.json()["still_named_by"], json!([]));
    let twice = revoke(deployer, "1.1.0");
    assert_eq!((twice.status, twice.kind().as_str()), (409, "conflict"));
    let read = deployer.get("/v1/plans/home");
    let id = edgerec_registry_api::keys::key_id(key).expect("a key id");
    assert_eq!(read.etag, Some(format!("\"3.1.{id}\"")));
    let digest_of = |version: &str| {
        deployer
            .get(&format!("/v1/models/golden-sasrec/versions/{version}"))
            .json()["manifest_digest"]
            .clone()
    };
    let listed = signed_plan(&read);
    assert_eq!(
        json!(listed),
        json!([{"model": "golden-sasrec", "version": "1.1.0", "manifest_digest": digest_of("1.1.0")}])
    );
    // Polls with the tag from before the revocation get the new list; with the new tag, 304.
    let before = format!("\"3.0.{id}\"");
    let now = read.etag.clone().expect("an ETag");
    let tags = [
        ("\"3\"", 200),
        (before.as_str(), 200),
        ("\"3.1\"", 304),
        (now.as_str(), 304),
    ];
    for (tag, status) in tags {
        let reply = deployer.send("GET", "/v1/plans/home", None, &[("If-None-Match", tag)]);
        assert_eq!(reply.status, status, "{tag}");
    }
    // No plan may name a revoked version again.
    let again = json!({
        "variants": [{"name": "control", "model": "golden-sasrec", "version": "1.1.0", "weight": 100}],
        "reason": "x",
    });
    // If-Match takes the ETag as it came.
    let refused = deployer.json(
        "PUT",
        "/v1/plans/home",
        &again,
        &[("If-Match", now.as_str())],
    );
    assert_eq!(
        (refused.status, refused.kind().as_str()),
        (422, "invalid_bundle_or_plan")
    );
    assert!(
        refused.message().contains("revoked"),
        "{}",
        refused.message()
    );
    // A version the current plan names can be revoked (its traffic moves at the nodes); the answer says so.
    let named = revoke(deployer, "1.0.0");
    assert_eq!(named.status, 200);
    assert_eq!(
        named.json()["still_named_by"],
        json!([{"surface": "home", "revision": 3, "variant": "control", "weight": 100}])
    );
    // Deleting a revoked version keeps its one entry; deleting another adds one, as `deleted`.
    assert_eq!(publish(deployer, "1.2.0").status, 201);
    let delete = |version: &str| {
        admin.send(
            "DELETE",
            &format!("/v1/models/golden-sasrec/versions/{version}?reason=cleanup"),
            None,
            &[],
        )
    };
    assert_eq!(delete("1.1.0").status, 204);
    assert_eq!(delete("1.2.0").status, 204);
    assert_eq!(delete("1.2.0").status, 404);
    let all = reader.get("/v1/revocations").json();
    let causes: Vec<(&str, &str)> = all
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| {
            (
                r["version"].as_str().unwrap_or(""),
                r["cause"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        causes,
        [
            ("1.0.0", "revoked"),
            ("1.1.0", "revoked"),
            ("1.2.0", "deleted")
        ]
    );
    let read = deployer.get("/v1/plans/home");
    assert_eq!(read.etag, Some(format!("\"3.3.{id}\"")));
    assert_eq!(signed_plan(&read).len(), 3);
    let audit = admin.get("/v1/audit?limit=2").json();
    assert_eq!(
        (audit[0]["action"].as_str(), audit[1]["action"].as_str()),
        (Some("version.delete"), Some("version.delete"))
    );
}

#[test]
fn the_client_publishes_a_bundle_folder_and_follows_plans() {
    use edgerec_registry_api::client::{PlanRead, RegistryClient};
    use edgerec_registry_api::records::PlanRequest;
    use edgerec_registry_api::records::Variant;

    let fixture = start(64 << 20);
    let client = RegistryClient::new(&fixture.server.url(), Some(&fixture.admin));
    let bundle = support::golden_dir();
    let (version, created) = client
        .publish_bundle(&bundle)
        .expect("publishes the folder");
    assert!(created);
    assert!(!client.publish_bundle(&bundle).expect("again").1);
    assert_eq!(client.versions("golden-sasrec").expect("lists")[0], version);
    verify_manifest_signature(
        &client.signing_key().expect("key").public_key,
        &version.manifest_digest,
        &version.signature,
    )
    .expect("verifies");
    assert_eq!(
        client.blob(&version.manifest_digest).expect("manifest"),
        golden().0
    );

    assert_eq!(client.plan("home").expect("reads"), None);
    let request = PlanRequest {
        variants: vec![Variant {
            name: VariantName::parse("control").expect("a name"),
            model: ModelName::parse("golden-sasrec").expect("a name"),
            version: version.version.clone(),
            weight: 100,
        }],
        salt: Some("s1".into()),
        reason: "launch".into(),
    };
    let plan = client.deploy("home", &request, None).expect("deploys");
    assert_eq!(
        client.plan_if_changed("home", &plan.etag()).expect("reads"),
        PlanRead::Unchanged
    );
    let error = client.deploy("home", &request, Some(9)).expect_err("stale");
    assert_eq!(error.status(), Some(412));
    let second = client
        .deploy("home", &request, Some(plan.revision))
        .expect("updates");
    // The same revision as the deploy answered, signed again when read (its `served_at` is the read's).
    let PlanRead::Changed(read) = client.plan_if_changed("home", &plan.etag()).expect("reads")
    else {
        panic!("the plan changed, but the registry answered 304");
    };
    let unsigned = |mut plan: edgerec_registry_api::records::Plan| {
        plan.signature = None;
        plan
    };
    assert_eq!(read.etag(), second.etag());
    assert_eq!(unsigned(*read), unsigned(second));
    assert_eq!(
        client
            .rollback("home", "undo")
            .expect("rolls back")
            .revision,
        3
    );
    assert_eq!(client.history("home").expect("history").len(), 3);
    assert_eq!(client.audit(1).expect("audit")[0].action, "plan.rollback");

    let issued = client
        .create_token("ci", &[Scope::Publish])
        .expect("issues");
    let ci = RegistryClient::new(&fixture.server.url(), Some(&issued.secret));
    assert_eq!(ci.models().expect_err("no read scope").status(), Some(403));
    client.revoke_token(&issued.token.id).expect("revokes");
    assert_eq!(
        ci.upload_blob(b"x").expect_err("revoked").status(),
        Some(401)
    );
    let nowhere = RegistryClient::new("http://127.0.0.1:9", None);
    assert!(matches!(
        nowhere.models(),
        Err(edgerec_registry_api::client::ClientError::Transport { .. })
    ));
}

/// A tmpfs of a fixed size mounted on a fresh folder, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(output) if output.status.success() => Self { dir },
            Ok(output) => panic!(
                "this test needs root to mount a tmpfs (mount -t tmpfs -o size={size} tmpfs {}): {}",
                dir.path().display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(e) => panic!("this test needs root to mount a tmpfs, and `mount` did not run: {e}"),
        }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// `size` bytes no other call returns.
fn distinct(seed: usize, size: usize) -> Vec<u8> {
    let mut bytes = vec![(seed % 251) as u8; size];
    bytes[..8].copy_from_slice(&(seed as u64).to_le_bytes());
    bytes
}

fn put_blob(client: &Client, bytes: &[u8]) -> Reply {
    client.send(
        "PUT",
        &format!("/v1/blobs/sha256:{}", Digest::of(bytes)),
        Some(bytes),
        &[],
    )
}

/// `reply` is a success with `status`, or a refusal for want of space; never anything else (a 500 above all).
fn stored_or_full(reply: &Reply, status: u16) -> bool {
    let body = String::from_utf8_lossy(&reply.body);
    if reply.status == status {
        return true;
    }
    assert_eq!(
        (reply.status, reply.kind().as_str()),
        (507, "insufficient_storage"),
        "{body}"
    );
    false
}

/// Files under `dir` that a write left aside (temporary names start with a dot) or half created.
fn leftovers(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("lists") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("a name").to_string_lossy();
        if path.is_dir() {
            found.extend(leftovers(&path));
        } else if name.starts_with('.') || name.contains("partial") {
            found.push(path);
        }
    }
    found
}

/// The embedded registry on a disk that fills up: blob uploads, publishes and token creation are refused with 507
/// `insufficient_storage` (never a 500), no partial file is left, everything acknowledged before reads back
/// intact, reads go on while the disk is full, and once space is freed the refused requests succeed without a
/// restart.
#[test]
fn a_full_disk_refuses_writes_with_507_and_recovers_without_a_restart() {
    // 4 MiB: the golden model alone is 1.2 MiB.
    let disk = Tmpfs::mount("4m");
    // Space the test frees later without touching the registry's own files.
    let ballast = disk.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 768 << 10]).expect("writes the ballast");
    let root = disk.path().join("registry");
    let (server, admin) = serve_with_admin(embedded_registry(&root, 64 << 20));
    let client = Client::new(&server.url(), Some(&admin));

    // A version published while there is room.
    assert_eq!(publish(&client, "1.0.0").status, 201);
    let (_, model) = golden();

    // Blobs of 64 KiB, then of 4 KiB, until the disk refuses one of each: then not a page is free.
    let mut stored: Vec<Vec<u8>> = Vec::new();
    let mut refused = Vec::new();
    for size in [64 << 10, 4 << 10] {
        let blob = loop {
            let blob = distinct(stored.len(), size);
            if !stored_or_full(&put_blob(&client, &blob), 201) {
                break blob;
            }
            stored.push(blob);
            assert!(stored.len() < 2000, "the disk never filled up");
        };
        assert_eq!(
            client
                .get(&format!("/v1/blobs/sha256:{}", Digest::of(&blob)))
                .status,
            404,
            "a refused blob is not stored"
        );
        refused.push(blob);
    }
    assert!(stored.len() > 1, "blobs were stored before the disk filled");
    assert_eq!(leftovers(&root), Vec::<std::path::PathBuf>::new());

    // Metadata on the full disk: a publish (whose signed manifest is stored as a blob) and new tokens (the
    // database alone) are refused the same way, once a database write no longer fits.
    assert!(!stored_or_full(&publish_manifest(&client, "1.1.0"), 201));
    let mut tokens = 0;
    while stored_or_full(
        &client.json(
            "POST",
            "/v1/tokens",
            &json!({"name": format!("t{tokens}"), "scopes": ["read"]}),
            &[],
        ),
        201,
    ) {
        tokens += 1;
        assert!(tokens < 2000, "no database write was refused");
    }

    // Reads go on: every blob acknowledged, the published version, the token lookups of every request.
    for blob in &stored {
        let reply = client.get(&format!("/v1/blobs/sha256:{}", Digest::of(blob)));
        assert_eq!(reply.status, 200);
        assert_eq!(Digest::of(&reply.body), Digest::of(blob));
    }
    assert_eq!(
        Digest::of(
            &client
                .get(&format!("/v1/blobs/sha256:{}", Digest::of(&model)))
                .body
        ),
        Digest::of(&model)
    );
    assert_eq!(
        client.get("/v1/models").json()[0]["versions"],
        json!(["1.0.0"])
    );
    assert_eq!(
        client.get("/v1/models/golden-sasrec/versions/1.0.0").status,
        200
    );
    assert_eq!(
        client.get("/v1/tokens").json().as_array().map(Vec::len),
        Some(1 + tokens)
    );
    assert_eq!(leftovers(&root), Vec::<std::path::PathBuf>::new());

    // Space returns: the refused requests succeed, on the same server.
    std::fs::remove_file(&ballast).expect("frees the ballast");
    for blob in &refused {
        assert_eq!(put_blob(&client, blob).status, 201);
        assert_eq!(
            client
                .get(&format!("/v1/blobs/sha256:{}", Digest::of(blob)))
                .body,
            *blob
        );
    }
    let reply = publish_manifest(&client, "1.1.0");
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let reply = client.json(
        "POST",
        "/v1/tokens",
        &json!({"name": "after", "scopes": ["read"]}),
        &[],
    );
    assert_eq!(reply.status, 201);
    assert_eq!(leftovers(&root), Vec::<std::path::PathBuf>::new());

    // What the registry acknowledged is on disk, read by a fresh process's view of it.
    server.stop();
    let reopened = edgerec_registry::embedded::EmbeddedStore::open(&root).expect("opens");
    let versions: Vec<String> = run(reopened.list_versions(None))
        .expect("lists")
        .into_iter()
        .map(|v| v.version.into_string())
        .collect();
    assert_eq!(versions, ["1.0.0", "1.1.0"]);
    assert_eq!(
        run(reopened.list_tokens()).expect("lists").len(),
        tokens + 2
    );
    for blob in stored.iter().chain(&refused) {
        assert_eq!(
            run(reopened.get_blob(&Digest::of(blob))).expect("reads"),
            Some(blob.clone())
        );
    }
}

/// Posts the golden manifest as `version` (its model already uploaded).
fn publish_manifest(client: &Client, version: &str) -> Reply {
    client.send(
        "POST",
        "/v1/models/golden-sasrec/versions",
        Some(&golden_as(version)),
        &[],
    )
}
