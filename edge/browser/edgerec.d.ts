// Types of edgerec.js, EdgeRec's browser package.

/** One recommended item. */
export interface ScoredItem {
  item: string;
  score: number;
}

export interface ConnectOptions {
  /** Base URL of an edge node: the bundle, ranking on the node and events all go there. */
  node?: string;
  /**
   * Or load the bundle from the registry itself, with a `read` token (sent to the registry only; the registry must
   * allow the page's origin, `registry serve --allow-origin`). Events and `recommendOnNode()` still need `node`.
   */
  registry?: { url: string; token?: string };
  /** Plan name in the registry (default "home"). */
  surface?: string;
  /**
   * The registry's ed25519 public key (hex, from `GET /v1/signing-key`): every plan and bundle must be signed with
   * it. It is the only protection against a source that serves a bundle and a key of its own. Required unless
   * `trustOnFirstUse`.
   */
  publicKey?: string;
  /**
   * Without `publicKey`: pin the source's key in storage after its first successful check (a later different key
   * is refused). Whoever answers first decides what the page trusts, so it must be asked for.
   */
  trustOnFirstUse?: boolean;
  /**
   * The site's visitor token for this visitor: a JWT its backend signs (`sub`: the visitor's id, `exp`; a key the
   * node is configured with). Called again shortly before the token expires and when the node refuses it. Without
   * it the package asks the node for an anonymous session (`POST /v1/session`, kept in storage and renewed), so
   * the visitor's id is the node's.
   */
  visitorToken?: () => Promise<string>;
  /**
   * The visitor's id, with `visitorToken` (it must be the token's `sub`; default: the token's `sub`, or the
   * anonymous session's id). It picks the A/B variant, as on the edge node.
   */
  userId?: string;
  /**
   * "share" (default): `track()` sends events to the edge node and `recommendOnNode()` is allowed.
   * "local": nothing about the visitor leaves the device; the history stays in storage only.
   */
  privacy?: "share" | "local";
  /** Where history, the event queue and pinned keys are kept (default localStorage; `null`: memory only). */
  storage?: Pick<Storage, "getItem" | "setItem" | "removeItem"> | null;
  /** Items of history kept, 1 to 500 (default 200; the model reads its own last few; nodes take up to 500). */
  maxHistory?: number;
  /** Events sent together (default 20) and the longest an event waits (default 2000 ms). */
  batchSize?: number;
  flushIntervalMs?: number;
  /** Where the Wasm ranker is fetched from (URL, Response, bytes or a compiled module); default next to edgerec.js. */
  wasm?: string | URL | Response | BufferSource | WebAssembly.Module;
  /** A fetch to use instead of the global one. */
  fetch?: typeof fetch;
  /** Prefix of the storage keys (default "edgerec:"). */
  storagePrefix?: string;
  /** Cache API cache holding bundle files by digest (default "edgerec-bundles"). */
  cacheName?: string;
}

export interface RecommendOptions {
  /** How many items (default 10). */
  k?: number;
  /** Item ids never to return. */
  exclude?: string[];
  /** Rank only these item ids (on the device only). */
  candidates?: string[];
  /** Context feature values by name, for models that take them. */
  context?: Record<string, number>;
}

export interface Recommendation {
  items: ScoredItem[];
  /** Time to rank on the device, or the round trip to the node, in milliseconds. */
  rankMs: number;
  where: "device" | "node";
  model: string;
  modelVersion: string;
  variant: string;
  planRevision: number;
  /** Node answers: the id to quote in `track({ requestId })`. */
  requestId?: string;
  /**
   * Answers made without the model or the stored features say why (node answers), as do answers of another
   * variant than the visitor's own, whose version is revoked (`reason: "revoked"`, on the device too).
   */
  degraded?: { reason: string; fallback: string; message: string };
}

export interface TrackedEvent {
  item: string;
  /** Default "click". */
  kind?: "view" | "click" | "purchase" | "rating";
  /** The node answer this event responds to. */
  requestId?: string;
  /** A rating's value. */
  value?: number;
  /** When it happened (default now), milliseconds since the Unix epoch. */
  timeMs?: number;
}

export interface LoadedModel {
  name: string;
  version: string;
  variant: string;
  planRevision: number;
  /** The visitor's own variant, when the registry revoked its version and `variant` serves instead. */
  revokedVariant?: string;
  manifestDigest: string;
  items: number;
  /** Loaded from this page's cache because the source could not be reached. */
  offline: boolean;
  /** The signature was checked with the source's own key, pinned on first use (no `publicKey` was given). */
  keyPinnedOnFirstUse: boolean;
}

/**
 * Errors carry a stable `kind`: "bad_signature", "bad_plan_signature", "replayed_plan", "revoked" (every variant
 * of the plan serves a revoked version: nothing ranks on the device), "digest_mismatch",
 * "record_mismatch", "invalid_bundle", "invalid_record", "network", "privacy", "invalid_options", "invalid_event",
 * or the server's error kind.
 */
export class EdgeRecError extends Error {
  constructor(kind: string, message: string, options?: { cause?: unknown; status?: number });
  kind: string;
  /** The HTTP status, when a server answered with an error. */
  status?: number;
}

export class EdgeRec {
  /** Fetches the plan, picks the visitor's variant, verifies and loads its bundle. */
  static connect(options: ConnectOptions): Promise<EdgeRec>;
  /** The visitor's id: the visitor token's subject (the session's, or the site's). */
  readonly userId: string;
  readonly model: LoadedModel;
  readonly privacy: "share" | "local";
  /** Recent items, oldest first. */
  readonly history: string[];
  readonly pendingEvents: number;
  items(): string[];
  /** Ranks on the device; synchronous. */
  recommend(options?: RecommendOptions): Recommendation;
  /** The same history ranked by the edge node (refused in the local privacy mode). */
  recommendOnNode(options?: RecommendOptions): Promise<Recommendation>;
  /** Adds the item to the history and queues the event for the node (unless privacy is "local" or no node). */
  track(event: TrackedEvent): void;
  flush(options?: { keepalive?: boolean }): Promise<{ sent: number }>;
  clearHistory(): void;
  reload(): Promise<void>;
  on(
    listener: (
      event:
        | { type: "sent"; count: number }
        | { type: "send-failed"; error: EdgeRecError }
        | { type: "dropped"; count: number; reason: string },
    ) => void,
  ): () => void;
}
