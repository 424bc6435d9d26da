// EdgeRec in the browser: ranks on the visitor's device with the model an edge node (or the registry) serves.
//
// The bundle is fetched by digest, checked against its version record (sha256 of both files) and the record's
// ed25519 signature before the Wasm ranker loads it; the ranker checks the model against the manifest once more.
// The visitor's history stays in this page's storage; `track()` sends events to the edge node in batches unless
// the page chose the local privacy mode. Requests that name the visitor carry a visitor token: the site's own
// (`visitorToken`), or an anonymous one the node issues (`POST /v1/session`), renewed before it expires.
// Types: edgerec.d.ts.

import initRanker, { Ranker, rememberItem, sha256Digest } from "./edgerec_ranker.js";
import {
  DIGEST,
  assignment,
  keyId,
  malformation,
  olderThan,
  planStatement,
  planTag,
  rotationStatement,
} from "./plan.js";

const MODEL_FILE = "model.onnx";
const DEFAULTS = {
  surface: "home",
  privacy: "share",
  maxHistory: 200,
  batchSize: 20,
  flushIntervalMs: 2000,
  storagePrefix: "edgerec:",
  cacheName: "edgerec-bundles",
};
// Edge nodes take at most 500 recent items per request (limits.max_recent_items).
const MAX_HISTORY = 500;
const TRACKED_KINDS = new Set(["view", "click", "purchase", "rating"]);
// What edge nodes accept (features/src/event.rs): events at most 7 days old and 5 minutes ahead of their clock.
const MAX_EVENT_AGE_MS = 7 * 24 * 3600 * 1000;
// Chromium refuses keepalive requests whose bodies together pass 64 KiB.
const KEEPALIVE_BYTES = 60_000;
// A visitor token is renewed when it has less than this left (seconds).
const TOKEN_MARGIN_S = 60;

/** An error with a stable `kind`, so a page can tell a refused bundle from a network failure. */
export class EdgeRecError extends Error {
  constructor(kind, message, options) {
    super(message, options);
    this.name = "EdgeRecError";
    this.kind = kind;
    this.status = options?.status;
  }
}

let rankerReady = null;

/** Loads the Wasm ranker once per page; `wasm` overrides where its `.wasm` file is fetched from. */
function loadRankerModule(wasm) {
  rankerReady ??= initRanker(wasm === undefined ? undefined : { module_or_path: wasm });
  return rankerReady;
}

function memoryStorage() {
  const values = new Map();
  return {
    getItem: (key) => (values.has(key) ? values.get(key) : null),
    setItem: (key, value) => values.set(key, String(value)),
    removeItem: (key) => values.delete(key),
  };
}

function defaultStorage() {
  try {
    if (typeof localStorage !== "undefined") {
      return localStorage;
    }
  } catch {
    // Storage blocked by the browser's settings: keep everything in memory for this page's life.
  }
  return memoryStorage();
}

function hexToBytes(hex, what) {
  const clean = String(hex).trim();
  if (!/^([0-9a-fA-F]{2})+$/.test(clean)) {
    throw new EdgeRecError("invalid_key", `${what} is not hex`);
  }
  const bytes = new Uint8Array(clean.length / 2);
  for (let i = 0; i < bytes.length; i += 1) {
    bytes[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  }
  return bytes;
}

/** The `sub` and `exp` of a JWT (read, not verified: the node verifies it). */
function tokenClaims(token) {
  const parts = typeof token === "string" ? token.split(".") : [];
  let claims = null;
  try {
    const json = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/"));
    claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(json, (c) => c.charCodeAt(0))));
  } catch {
    // Not a JWT; refused below.
  }
  if (parts.length !== 3 || typeof claims?.sub !== "string" || !Number.isFinite(claims?.exp)) {
    throw new EdgeRecError("invalid_token", "a visitor token must be a JWT with `sub` and `exp`");
  }
  return { sub: claims.sub, exp: claims.exp };
}

function randomId() {
  if (globalThis.crypto?.randomUUID) {
    return crypto.randomUUID();
  }
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Checks the ed25519 signature of a manifest digest with the browser's own Web Crypto. */
function verifySignature(publicKeyHex, digestHex, signatureHex) {
  return verifyEd25519(publicKeyHex, hexToBytes(digestHex, "the digest"), signatureHex);
}

/** Checks an ed25519 signature of `message` (bytes) with the browser's own Web Crypto. */
async function verifyEd25519(publicKeyHex, message, signatureHex) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) {
    throw new EdgeRecError(
      "no_webcrypto",
      "this page has no Web Crypto (it needs a secure context: https or localhost), so the bundle's signature cannot be checked",
    );
  }
  let key;
  try {
    key = await subtle.importKey("raw", hexToBytes(publicKeyHex, "the public key"), { name: "Ed25519" }, false, [
      "verify",
    ]);
  } catch (error) {
    if (error instanceof EdgeRecError) throw error;
    throw new EdgeRecError("no_webcrypto", `this browser cannot check ed25519 signatures: ${error.message}`, {
      cause: error,
    });
  }
  let signature;
  try {
    signature = hexToBytes(signatureHex, "the signature");
  } catch {
    return false;
  }
  return subtle.verify({ name: "Ed25519" }, key, signature, message);
}

/**
 * A model bundle ranking on this device, the visitor's local history, and an event queue to the edge node.
 * Create it with `EdgeRec.connect(...)`.
 */
export class EdgeRec {
  /** Fetches, verifies and loads the bundle the plan of `options.surface` assigns to this visitor. */
  static async connect(options) {
    if (!options || typeof options !== "object") {
      throw new EdgeRecError("invalid_options", "EdgeRec.connect() takes an options object");
    }
    const settings = { ...DEFAULTS, ...options };
    if (!settings.node && !settings.registry?.url) {
      throw new EdgeRecError(
        "invalid_options",
        "name an edge node (`node`) or a registry (`registry: { url, token }`) to load from",
      );
    }
    if (!(settings.maxHistory >= 1 && settings.maxHistory <= MAX_HISTORY)) {
      throw new EdgeRecError("invalid_options", `maxHistory is 1 to ${MAX_HISTORY}`);
    }
    if (!["share", "local"].includes(settings.privacy)) {
      throw new EdgeRecError("invalid_options", `privacy is "share" or "local", not ${JSON.stringify(settings.privacy)}`);
    }
    if (!settings.publicKey && settings.trustOnFirstUse !== true) {
      throw new EdgeRecError(
        "invalid_options",
        "pass the registry's signing key (`publicKey`), or `trustOnFirstUse: true` to pin whatever key the source answers first",
      );
    }
    if (settings.visitorToken !== undefined && typeof settings.visitorToken !== "function") {
      throw new EdgeRecError("invalid_options", "visitorToken is an async function returning the visitor's JWT");
    }
    const edge = new EdgeRec(EdgeRec.#token, settings);
    await loadRankerModule(settings.wasm);
    await edge.#identify();
    await edge.#load();
    edge.#scheduleFlush();
    return edge;
  }

  static #token = Symbol("EdgeRec.connect");
  #settings;
  #source;
  #headers;
  #fetch;
  #storage;
  #ranker = null;
  /** Why no model serves (every variant revoked), once the plan said so. */
  #withdrawn = null;
  #deployment = null;
  #queue;
  #timer = null;
  #flushing = null;
  #inFlight = new Set();
  #listeners = new Set();
  // The visitor token in use ({ value, sub, exp }) and the request for a new one, if under way.
  #visitor = null;
  #renewing = null;

  constructor(token, settings) {
    if (token !== EdgeRec.#token) {
      throw new EdgeRecError("invalid_options", "use `await EdgeRec.connect(options)`");
    }
    this.#settings = settings;
    // The bundle comes from the registry when one is named (its token goes there only), else from the node.
    const base = settings.registry?.url ?? settings.node;
    this.#source = String(base).replace(/\/+$/, "");
    this.#headers = settings.registry?.token ? { Authorization: `Bearer ${settings.registry.token}` } : {};
    this.#fetch = settings.fetch ?? globalThis.fetch.bind(globalThis);
    this.#storage = settings.storage === null ? memoryStorage() : (settings.storage ?? defaultStorage());
    // With a session, the node chose the id; with the site's tokens, their subject is the id.
    this.userId = settings.userId ?? this.#readJson("session")?.visitor ?? this.#read("user") ?? randomId();
    this.#write("user", this.userId);
    this.#queue = this.#readJson("queue") ?? [];
    if (typeof addEventListener === "function") {
      // Events still queued when the visitor leaves are sent with keepalive; they stay stored until acknowledged.
      addEventListener("pagehide", () => this.flush({ keepalive: true }).catch(() => {}));
      addEventListener("online", () => this.flush().catch(() => {}));
    }
  }

  /** The loaded model: name, version, A/B variant, plan revision, where it came from and item count. */
  get model() {
    const { model, modelVersion, variant, planRevision } = this.#answerModel();
    const d = this.#deployment;
    return {
      name: model,
      version: modelVersion,
      variant,
      planRevision,
      revokedVariant: d.revokedVariant,
      manifestDigest: d.record.manifest_digest,
      items: this.#current().itemCount,
      offline: d.offline,
      keyPinnedOnFirstUse: d.keyPinnedOnFirstUse,
    };
  }

  /** "share" (events go to the edge node) or "local" (nothing about the visitor leaves the device). */
  get privacy() {
    return this.#settings.privacy;
  }

  /**
   * The visitor's recent items, oldest first, each once at its latest position. The local privacy mode keeps its
   * own, so picks made in it are never sent later from the sharing mode.
   */
  get history() {
    return this.#readJson(this.#historyKey()) ?? [];
  }

  #historyKey() {
    return this.privacy === "local" ? "history:local" : "history";
  }

  /** Every item id the model can recommend. */
  items() {
    return this.#current().items();
  }

  /** Events waiting to be sent to the edge node. */
  get pendingEvents() {
    return this.#queue.length;
  }

  /** Ranks on this device from the local history; synchronous, no network. */
  recommend(options = {}) {
    const started = performance.now();
    const items = this.#current().recommend({
      recentItems: this.history,
      k: options.k ?? 10,
      exclude: options.exclude,
      candidates: options.candidates,
      context: options.context,
    });
    const rankMs = performance.now() - started;
    return { items, rankMs, where: "device", ...this.#answerModel() };
  }

  /**
   * Asks the edge node to rank the same local history (with the visitor's id, so it picks the same variant).
   * Refused in the local privacy mode, as it sends the history.
   */
  async recommendOnNode(options = {}) {
    if (this.privacy === "local") {
      throw new EdgeRecError("privacy", "the local privacy mode never sends the history to a server");
    }
    const node = this.#nodeUrl();
    const started = performance.now();
    const answer = await this.#asVisitor(`${node}/v1/recommend`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: () => JSON.stringify({
        user_id: this.userId,
        recent_items: this.history,
        k: options.k ?? 10,
        exclude: options.exclude,
        context: options.context,
        surface: this.#settings.surface,
      }),
    });
    return {
      items: answer.items,
      rankMs: performance.now() - started,
      where: "node",
      model: answer.model,
      modelVersion: answer.model_version,
      variant: answer.variant,
      planRevision: answer.plan_revision,
      requestId: answer.request_id,
      degraded: answer.degraded,
    };
  }

  /**
   * Records an interaction: it joins the local history at once, and (unless the privacy mode is local) is queued
   * for the edge node, sent when `batchSize` events wait or after `flushIntervalMs`.
   */
  track(event) {
    const kind = event?.kind ?? "click";
    if (!event || typeof event.item !== "string" || event.item === "") {
      throw new EdgeRecError("invalid_event", "track() takes { item, kind?, requestId?, value? } with an item id");
    }
    if (!TRACKED_KINDS.has(kind)) {
      throw new EdgeRecError("invalid_event", `unknown event kind ${JSON.stringify(kind)}`);
    }
    if ((kind === "rating") !== Number.isFinite(event.value)) {
      throw new EdgeRecError("invalid_event", "a rating needs a finite `value`, and only a rating has one");
    }
    try {
      this.#remember(event.item);
    } catch (e) {
      // The ranker holds ids to core's one rule (1 to 256 bytes of UTF-8, no control characters), as nodes do.
      if (e?.kind === "invalid_request") throw new EdgeRecError("invalid_event", e.message);
      throw e;
    }
    // Nothing leaves the device in the local mode, and without a node there is nowhere to send events.
    if (this.privacy === "local" || !this.#settings.node) {
      return;
    }
    // The user is filled in when the batch is sent: the visitor id is the token's, which a new session sets.
    const record = {
      id: randomId(),
      item: event.item,
      kind,
      time_ms: event.timeMs ?? Date.now(),
    };
    if (event.requestId) record.request_id = event.requestId;
    if (event.value !== undefined) record.value = event.value;
    this.#setQueue([...this.#queue, record]);
    if (this.#queue.length >= this.#settings.batchSize) {
      this.flush().catch(() => {});
    } else {
      this.#scheduleFlush();
    }
  }

  #scheduleFlush() {
    if (this.#queue.length > 0) {
      this.#timer ??= setTimeout(() => {
        this.#timer = null;
        this.flush().catch(() => {});
      }, this.#settings.flushIntervalMs);
    }
  }

  /**
   * Sends the queued events now. Events stay queued (and stored) until the node acknowledges them; a batch the
   * node refuses as invalid (4xx) is dropped, with a "dropped" event, so one bad event cannot block the rest.
   */
  async flush({ keepalive = false } = {}) {
    // One send at a time (a caller that waited sees the queue the previous send left), except when the page is
    // going away: then what is not already on its way goes at once, within the keepalive size limit.
    while (this.#flushing && !keepalive) {
      await this.#flushing;
    }
    const oldest = Date.now() - MAX_EVENT_AGE_MS;
    const fresh = this.#queue.filter((e) => e.time_ms >= oldest);
    if (fresh.length < this.#queue.length) {
      this.#emit({ type: "dropped", count: this.#queue.length - fresh.length, reason: "older than the node accepts" });
      this.#setQueue(fresh);
    }
    const waiting = this.#queue.filter((e) => !this.#inFlight.has(e.id));
    if (waiting.length === 0 || this.privacy === "local" || !this.#settings.node) {
      return { sent: 0 };
    }
    let batch = waiting.slice(0, 500);
    if (keepalive) {
      while (batch.length > 1 && JSON.stringify({ events: batch }).length > KEEPALIVE_BYTES) {
        batch = batch.slice(0, batch.length >> 1);
      }
    }
    const ids = new Set(batch.map((e) => e.id));
    const forget = () => this.#setQueue(this.#queue.filter((e) => !ids.has(e.id)));
    for (const id of ids) this.#inFlight.add(id);
    const sending = (async () => {
      try {
        await this.#asVisitor(`${this.#nodeUrl()}/v1/events`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: () => JSON.stringify({ events: batch.map((e) => ({ ...e, user: e.user ?? this.userId })) }),
          keepalive,
        });
        forget();
        this.#emit({ type: "sent", count: batch.length });
        return { sent: batch.length };
      } catch (error) {
        // A credential the node refuses (401) is not the events' fault: they wait for a valid token.
        const refused =
          error.status >= 400 && error.status < 500 && ![401, 408, 429].includes(error.status);
        if (refused) {
          forget();
          this.#emit({ type: "dropped", count: batch.length, reason: error.message });
        } else {
          this.#emit({ type: "send-failed", error });
          this.#scheduleFlush();
        }
        throw error;
      } finally {
        for (const id of ids) this.#inFlight.delete(id);
      }
    })();
    if (!keepalive) {
      // Waiters only need to know it ended; the caller gets the outcome from `sending`.
      this.#flushing = sending
        .catch(() => {})
        .finally(() => {
          this.#flushing = null;
        });
    }
    return sending;
  }

  /**
   * Forgets the local history and any unsent events. A generated visitor id is replaced too (the node's stored
   * history belongs to the old one); the new id may fall in another A/B variant, so call `reload()` after.
   */
  clearHistory() {
    this.#storage.removeItem(this.#key("history"));
    this.#storage.removeItem(this.#key("history:local"));
    this.#setQueue([]);
    if (!this.#settings.userId && !this.#settings.visitorToken) {
      // A new anonymous visitor: the next session is not a renewal of the old one.
      this.#storage.removeItem(this.#key("session"));
      this.#visitor = null;
      this.userId = randomId();
      this.#write("user", this.userId);
    }
  }

  /** Reloads the plan and bundle (for example after a deployment); keeps the current model if that fails. */
  async reload() {
    await this.#load();
  }

  /** Calls `listener({type, ...})` on "sent", "send-failed" and "dropped"; returns a function that removes it. */
  on(listener) {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The event queue, stored so that it outlives the page. */
  #setQueue(queue) {
    this.#queue = queue;
    this.#writeJson("queue", queue);
  }

  #emit(event) {
    for (const listener of this.#listeners) listener(event);
  }

  /**
   * Name and version from the signed manifest (the ranker's), variant and revision from the plan; flagged when the
   * visitor's own variant is revoked and another one answers.
   */
  #answerModel() {
    const d = this.#deployment;
    const ranker = this.#current();
    const answer = {
      model: ranker.modelName,
      modelVersion: ranker.modelVersion,
      variant: d.variant,
      planRevision: d.planRevision,
    };
    if (d.revokedVariant) {
      answer.degraded = {
        reason: "revoked",
        fallback: "other_variant",
        message: `variant ${d.revokedVariant} serves a version the registry revoked; variant ${d.variant} answered`,
      };
    }
    return answer;
  }

  /** The ranker, or why there is none: every variant of the plan is revoked. */
  #current() {
    if (!this.#ranker) {
      throw this.#withdrawn ?? new EdgeRecError("not_loaded", "no model is loaded");
    }
    return this.#ranker;
  }

  /** Drops the model when the plan leaves nothing to serve, so a revoked bundle never ranks again. */
  #withdraw(surface, error) {
    this.#ranker?.free();
    this.#ranker = null;
    this.#deployment = null;
    this.#withdrawn = error;
    this.#storage.removeItem(this.#key(`deployment:${surface}`));
    return error;
  }

  #remember(item) {
    // Core's recent-items rule, the one the feature store and edge nodes apply.
    this.#writeJson(this.#historyKey(), rememberItem(this.history, item, this.#settings.maxHistory));
  }

  /**
   * Settles who the visitor is before the plan is read (the A/B variant depends on it): the site's token, or the
   * node's anonymous session. Offline, the stored id serves until the node can be reached.
   */
  async #identify() {
    if (this.privacy === "local" || !this.#settings.node) return;
    try {
      await this.#visitorToken();
    } catch (error) {
      if (!(error instanceof EdgeRecError) || error.kind !== "network") throw error;
    }
  }

  /** A visitor token with at least a minute left: the one in use, or a new one (one request at a time). */
  async #visitorToken({ renew = false } = {}) {
    const now = Date.now() / 1000;
    if (!renew && this.#visitor && this.#visitor.exp - TOKEN_MARGIN_S > now) return this.#visitor.value;
    this.#renewing ??= this.#newToken().finally(() => {
      this.#renewing = null;
    });
    return this.#renewing;
  }

  async #newToken() {
    let value;
    if (this.#settings.visitorToken) {
      value = await this.#settings.visitorToken();
    } else {
      const url = `${this.#nodeUrl()}/v1/session`;
      const ask = (previous) =>
        this.#json(url, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(previous ? { previous } : {}),
        });
      const stored = this.#readJson("session");
      let session;
      try {
        session = await ask(stored?.token);
      } catch (error) {
        // A session the node no longer renews (expired long ago, another node's secret): a new visitor.
        if (!stored || error.status !== 401) throw error;
        session = await ask(null);
      }
      this.#writeJson("session", session);
      value = session.token;
    }
    const { sub, exp } = tokenClaims(value);
    if (this.#settings.userId && this.#settings.userId !== sub) {
      throw new EdgeRecError("invalid_token", `the visitor token is for ${JSON.stringify(sub)}, not userId`);
    }
    this.#visitor = { value, sub, exp };
    if (this.userId !== sub) {
      this.userId = sub;
      this.#write("user", sub);
    }
    return value;
  }

  /** A request naming the visitor, with their token; refused as unauthenticated once, it retries with a new one. */
  async #asVisitor(url, { body, headers, ...init }) {
    const send = async (renew) => {
      const token = await this.#visitorToken({ renew });
      return this.#json(url, { ...init, headers: { ...headers, Authorization: `Bearer ${token}` }, body: body() });
    };
    try {
      return await send(false);
    } catch (error) {
      if (!(error instanceof EdgeRecError) || error.status !== 401) throw error;
      return send(true);
    }
  }

  #nodeUrl() {
    const node = this.#settings.node;
    if (!node) {
      throw new EdgeRecError("no_node", "no edge node was named (`node`), so there is nowhere to send this");
    }
    return String(node).replace(/\/+$/, "");
  }

  async #load() {
    try {
      await this.#loadOnce();
    } catch (error) {
      // A deployment that changed between the plan and the files: the next plan names files that exist.
      if (!(error instanceof EdgeRecError) || error.kind !== "not_found") throw error;
      await this.#loadOnce();
    }
  }

  async #loadOnce() {
    const surface = this.#settings.surface;
    let deployment;
    // The key everything below is checked with, asked for once (pinned only once the bundle checks out).
    let trusted;
    try {
      const plan = await this.#json(`${this.#source}/v1/plans/${encodeURIComponent(surface)}`, {
        headers: this.#headers,
      });
      trusted = await this.#publicKey(false);
      const keys = await this.#acceptedKeys(trusted.key, trusted.document);
      const manifestDigests = await this.#checkPlan(plan, surface, keys);
      // Core's assignment, as nodes make it: a visitor whose variant is revoked goes to another by weight.
      const { own, serving: index } = assignment(plan, manifestDigests, this.userId);
      if (index === undefined) {
        throw this.#withdraw(
          surface,
          new EdgeRecError(
            "revoked",
            `every variant of the plan of ${surface} serves a version the registry revoked: nothing ranks on this ` +
              "device (the edge node answers by popularity: recommendOnNode)",
          ),
        );
      }
      const variant = plan.variants[index];
      const path = `${encodeURIComponent(variant.model)}/versions/${encodeURIComponent(variant.version)}`;
      const record = await this.#json(`${this.#source}/v1/models/${path}`, { headers: this.#headers });
      deployment = {
        record,
        variant: variant.name,
        model: variant.model,
        version: variant.version,
        planRevision: plan.revision,
        revokedVariant: index === own ? undefined : plan.variants[own].name,
        signedDigest: manifestDigests[index],
        keys,
        offline: false,
      };
    } catch (error) {
      if (error instanceof EdgeRecError && error.kind === "revoked") throw error;
      // Offline (or the source is down): the last verified deployment, if its files are still cached.
      const saved = this.#readJson(`deployment:${surface}`);
      const unreachable = error instanceof EdgeRecError && (error.kind === "network" || error.status >= 500);
      if (!saved || !unreachable) {
        throw error;
      }
      deployment = { ...saved, offline: true };
    }
    const record = deployment.record;
    const modelDigest = record.files?.[MODEL_FILE];
    const named = `${record.model}@${record.version}`;
    if (!DIGEST.test(modelDigest) || !DIGEST.test(record.manifest_digest) || typeof record.signature !== "string") {
      throw new EdgeRecError("invalid_record", `the version record of ${named} is incomplete or malformed`);
    }
    if (
      record.manifest_digest !== deployment.signedDigest ||
      (deployment.model && (record.model !== deployment.model || record.version !== deployment.version))
    ) {
      throw new EdgeRecError(
        "record_mismatch",
        `the record of ${named} is not of the manifest the signed plan names: the bundle was refused`,
      );
    }
    const { key, pinnedOnFirstUse, pin } = trusted ?? (await this.#publicKey(deployment.offline));
    // The keys the plan was checked with; offline, only the page's own (what the page's storage holds is not
    // trusted to name keys).
    const keys = deployment.offline ? [{ key, id: keyId(key), until: null }] : deployment.keys;
    let signedByTrusted = false;
    for (const k of keys) {
      signedByTrusted ||= await verifySignature(k.key, record.manifest_digest, record.signature);
    }
    if (!signedByTrusted) {
      throw new EdgeRecError(
        "bad_signature",
        `the signature of ${named} does not match the registry's key: the bundle was refused`,
      );
    }
    pin?.();
    const files = [
      [record.manifest_digest, "manifest.json"],
      [modelDigest, MODEL_FILE],
    ];
    const [manifest, model] = await Promise.all(files.map(([digest, file]) => this.#blob(digest, file, deployment.offline)));
    let ranker;
    try {
      ranker = Ranker.load(manifest, model);
    } catch (error) {
      await this.#uncache(files.map(([digest]) => digest));
      throw new EdgeRecError(error.kind ?? "invalid_bundle", `the bundle was refused: ${error.message}`, {
        cause: error,
      });
    }
    // The record's name and version are not signed; the manifest's are.
    const signed = `${ranker.modelName}@${ranker.modelVersion}`;
    if (ranker.modelName !== record.model || ranker.modelVersion !== record.version) {
      ranker.free();
      throw new EdgeRecError(
        "record_mismatch",
        `the record says ${named} but the signed manifest is ${signed}: the bundle was refused`,
      );
    }
    deployment.keyPinnedOnFirstUse = pinnedOnFirstUse;
    this.#ranker?.free();
    this.#ranker = ranker;
    this.#deployment = deployment;
    this.#withdrawn = null;
    if (!deployment.offline) {
      const { offline, keys: _keys, ...kept } = deployment;
      this.#writeJson(`deployment:${surface}`, kept);
    }
  }

  /**
   * The manifest digest the registry signed for each variant of `plan`, if the plan carries the registry's
   * signature under the trusted key and is not older than a plan of this source already verified here (a lower
   * revision, or the same with fewer revocations; a rollback is a new, higher revision); throws
   * `bad_plan_signature` or `replayed_plan` otherwise.
   */
  async #checkPlan(plan, surface, keys) {
    const refused = (kind, why) => new EdgeRecError(kind, `the plan of ${surface} ${why}: it was refused`);
    const problem = malformation(plan, surface);
    if (problem) {
      throw refused("bad_plan_signature", problem);
    }
    const { manifest_digests: digests, revoked, signature, key_id: signedBy, served_at: servedAt } = plan.signature;
    const key = signedBy ? keys.find((k) => k.id === signedBy)?.key : keys[0].key;
    if (!key) {
      throw refused(
        "bad_plan_signature",
        `is signed by key ${signedBy}, which this page's key does not lead to (or whose grace has ended)`,
      );
    }
    const statement = new TextEncoder().encode(planStatement(plan, digests, revoked, servedAt));
    if (!(await verifyEd25519(key, statement, signature))) {
      throw refused("bad_plan_signature", `(revision ${plan.revision}) is not what the registry signed`);
    }
    const floor = `revision:${this.#source}:${surface}`;
    if (olderThan(plan, this.#read(floor))) {
      throw refused(
        "replayed_plan",
        `at revision.revocations ${planTag(plan)} is older than ${this.#read(floor)}, already verified here`,
      );
    }
    this.#write(floor, planTag(plan));
    return digests;
  }

  /**
   * The key signatures are checked with: the page's own (`publicKey`: the only real protection against a source
   * that serves a bundle and a key of its own), else the source's, pinned after its first successful check.
   */
  /**
   * The keys a plan may be signed with: `root` (the page's key) and the keys the source's signed rotations chain
   * to from it (`/v1/signing-key`, or `fetched`, the document already read), each retired key until its grace
   * ends. A rotation from an accepted key that it did not sign is refused (`bad_plan_signature`).
   */
  async #acceptedKeys(root, fetched) {
    const keys = [{ key: root, id: keyId(root), until: null }];
    // Read even when the plan names the page's own key: a rotation away from it ends its grace (once a load: the
    // document read to pin a key on first use serves here too).
    const document = fetched ?? (await this.#json(`${this.#source}/v1/signing-key`, { headers: this.#headers }));
    for (const rotation of Array.isArray(document?.rotations) ? document.rotations : []) {
      const current = keys[keys.length - 1];
      if (rotation?.from_key !== current.key) continue;
      const statement = rotationStatement(rotation);
      if (!statement || !(await verifyEd25519(current.key, new TextEncoder().encode(statement), rotation.signature))) {
        throw new EdgeRecError(
          "bad_plan_signature",
          `the rotation from key ${current.id} is not signed by that key: the key chain is not the registry's`,
        );
      }
      current.until = rotation.old_valid_until;
      keys.push({ key: rotation.to_key, id: keyId(rotation.to_key), until: null });
    }
    return keys.filter((k) => k.until === null || Date.now() <= k.until);
  }

  async #publicKey(offline) {
    if (this.#settings.publicKey) {
      return { key: this.#settings.publicKey, pinnedOnFirstUse: false };
    }
    const pinned = this.#read(`key:${this.#source}`);
    if (pinned || offline) {
      if (!pinned) throw new EdgeRecError("network", "offline, and no signing key was pinned yet");
      return { key: pinned, pinnedOnFirstUse: true };
    }
    const answer = await this.#json(`${this.#source}/v1/signing-key`, { headers: this.#headers });
    const key = String(answer.public_key ?? "");
    return { key, pinnedOnFirstUse: true, pin: () => this.#write(`key:${this.#source}`, key), document: answer };
  }

  /** The Cache API cache of bundle files (absent outside secure contexts and in Node). */
  async #cache() {
    return (await globalThis.caches?.open(this.#settings.cacheName).catch(() => null)) ?? null;
  }

  #blobUrl(digest) {
    return `${this.#source}/v1/blobs/${digest}`;
  }

  async #uncache(digests) {
    const cache = await this.#cache();
    await Promise.all(digests.map((digest) => cache?.delete(this.#blobUrl(digest))));
  }

  /** A bundle file by digest: from the page's cache when there, else fetched; checked against its digest. */
  async #blob(digest, file, offline) {
    const url = this.#blobUrl(digest);
    const cache = await this.#cache();
    let bytes = null;
    const cached = await cache?.match(url);
    if (cached) {
      bytes = new Uint8Array(await cached.arrayBuffer());
    } else if (offline) {
      throw new EdgeRecError("network", `offline, and ${file} (${digest}) is not in this page's cache`);
    } else {
      const response = await this.#request(url, { headers: this.#headers });
      bytes = new Uint8Array(await response.arrayBuffer());
    }
    const actual = sha256Digest(bytes);
    if (actual !== digest) {
      await cache?.delete(url);
      throw new EdgeRecError(
        "digest_mismatch",
        `${file} does not match its version record (expected sha256 ${digest}, got ${actual}): the bundle was refused`,
      );
    }
    if (!cached) {
      await cache?.put(url, new Response(bytes)).catch(() => {});
    }
    return bytes;
  }

  async #request(url, init) {
    let response;
    try {
      response = await this.#fetch(url, init);
    } catch (error) {
      throw new EdgeRecError("network", `cannot reach ${url}: ${error.message}`, { cause: error });
    }
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      let kind = "http";
      try {
        const body = await response.json();
        if (body?.error?.message) message = `${response.status}: ${body.error.message}`;
        if (body?.error?.kind) kind = body.error.kind;
      } catch {
        // Not a JSON error body; the status says enough.
      }
      throw new EdgeRecError(kind, `${url} answered ${message}`, { status: response.status });
    }
    return response;
  }

  async #json(url, init) {
    return (await this.#request(url, init)).json();
  }

  #key(name) {
    return `${this.#settings.storagePrefix}${name}`;
  }

  #read(name) {
    return this.#storage.getItem(this.#key(name));
  }

  #write(name, value) {
    try {
      this.#storage.setItem(this.#key(name), value);
    } catch {
      // Storage full or blocked: the value lives for this page only.
    }
  }

  #readJson(name) {
    try {
      return JSON.parse(this.#read(name) ?? "null");
    } catch {
      return null;
    }
  }

  #writeJson(name, value) {
    this.#write(name, JSON.stringify(value));
  }
}
