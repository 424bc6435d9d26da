// Deployment plans as the registry signs them (`Plan::statement` in the registry's crate), checked in the page as
// edge nodes check them: the statement's bytes, the fields it may hold, the floor a page never goes below, and
// which variant serves a visitor when some are revoked (core's assignment, in Wasm). Used by edgerec.js.

import { assignVariant, sha256Digest } from "./edgerec_ranker.js";

export const DIGEST = /^[0-9a-f]{64}$/;
/** Core's rule for names (models, versions, surfaces, variants). */
export const NAME = /^(?!\.)[A-Za-z0-9._-]{1,128}$/;

const isName = (n) => typeof n === "string" && NAME.test(n);
const isDigest = (d) => typeof d === "string" && DIGEST.test(d);

/**
 * What the registry signs for a plan revision, one fact a line: every field is a name, a number or hex, so the
 * bytes are the same in both languages.
 */
export function planStatement(plan, manifestDigests, revoked, servedAt) {
  const salt = sha256Digest(new TextEncoder().encode(String(plan.salt)));
  let text =
    `edgerec plan v2\nsurface ${plan.surface}\nrevision ${plan.revision}\n` +
    `issued_at ${plan.updated_at}\nserved_at ${servedAt}\nsalt_sha256 ${salt}\n`;
  plan.variants.forEach((v, i) => {
    text += `variant ${v.name} ${v.model} ${v.version} ${v.weight} ${manifestDigests[i]}\n`;
  });
  text += `revocations ${revoked.length}\n`;
  for (const r of revoked) {
    text += `revoked ${r.model} ${r.version} ${r.manifest_digest}\n`;
  }
  return text;
}

/**
 * Why `plan` is not a signed plan of `surface` as the registry writes it (`null` when it is). Every field the
 * statement is made of must be a name, an integer or hex, so that no field can carry other lines of the signed
 * statement into this one.
 */
export function malformation(plan, surface) {
  const signed = plan?.signature;
  if (
    !Array.isArray(signed?.manifest_digests) ||
    typeof signed.signature !== "string" ||
    !Number.isSafeInteger(signed.served_at)
  ) {
    return "carries no signature";
  }
  const variants = Array.isArray(plan.variants) ? plan.variants : [];
  const weights = variants.map((v) => v?.weight);
  const wellFormed =
    plan.surface === surface &&
    Number.isSafeInteger(plan.revision) &&
    Number.isSafeInteger(plan.updated_at) &&
    typeof plan.salt === "string" &&
    variants.length > 0 &&
    variants.every((v) => [v?.name, v?.model, v?.version].every(isName)) &&
    weights.every((w) => Number.isInteger(w) && w >= 0 && w <= 100) &&
    weights.reduce((sum, w) => sum + w, 0) === 100;
  if (!wellFormed) {
    return "is not a well-formed plan of this surface";
  }
  const digests = signed.manifest_digests;
  if (digests.length !== variants.length || !digests.every(isDigest)) {
    return "does not sign one well-formed manifest digest per variant";
  }
  const revoked = signed.revoked;
  if (!Array.isArray(revoked) || !revoked.every((r) => isName(r?.model) && isName(r.version) && isDigest(r.manifest_digest))) {
    return "does not list its revocations as the registry writes them";
  }
  return null;
}

/** A plan's tag as a page keeps it: `revision.revocations`. */
export function planTag(plan) {
  return `${plan.revision}.${plan.signature.revoked.length}`;
}

/**
 * Whether `plan` is older than the tag `floor` (as kept; a bare revision from older pages counts no revocations):
 * a lower revision, or the same with fewer revocations (an answer from before a revocation, replayed).
 */
export function olderThan(plan, floor) {
  const [revision, revocations] = String(floor ?? "0").split(".");
  const [highest, listed] = [Number(revision) || 0, Number(revocations ?? 0) || 0];
  return plan.revision < highest || (plan.revision === highest && plan.signature.revoked.length < listed);
}

/** Whether a signed plan's revocations cover `variant` (by name and version, or by its manifest digest). */
function isRevoked(revoked, variant, manifestDigest) {
  return revoked.some(
    (r) => r.manifest_digest === manifestDigest || (r.model === variant.model && r.version === variant.version),
  );
}

/**
 * Which variant of a checked plan serves `userId`, as edge nodes pick it: `{ own, serving }` (indexes), `serving`
 * another variant by weight when the visitor's own is revoked, `undefined` when every variant is.
 */
export function assignment(plan, manifestDigests, userId) {
  const weights = new Uint32Array(plan.variants.map((v) => v.weight));
  const serving = Uint8Array.from(plan.variants, (v, i) =>
    isRevoked(plan.signature.revoked, v, manifestDigests[i]) ? 0 : 1,
  );
  const own = assignVariant(plan.salt, userId, weights, new Uint8Array(weights.length).fill(1)) ?? 0;
  return { own, serving: assignVariant(plan.salt, userId, weights, serving) };
}

const KEY = /^[0-9a-f]{64}$/;

/** The id of an ed25519 public key (hex): the first 16 hex characters of the sha256 of its 32 bytes. */
export function keyId(publicKeyHex) {
  const key = String(publicKeyHex ?? "").trim();
  if (!KEY.test(key)) return "";
  return sha256Digest(Uint8Array.from(key.match(/../g), (h) => parseInt(h, 16))).slice(0, 16);
}

/**
 * What a retiring key signs for a rotation (`KeyRotation::statement` in the registry's crate), if the rotation's
 * fields are what the registry writes; `null` otherwise.
 */
export function rotationStatement(r) {
  const wellFormed =
    KEY.test(r?.from_key) &&
    KEY.test(r.to_key) &&
    Number.isSafeInteger(r.old_valid_until) &&
    Number.isSafeInteger(r.issued_at) &&
    typeof r.signature === "string";
  if (!wellFormed) return null;
  return (
    `edgerec key rotation v1\nfrom ${keyId(r.from_key)} ${r.from_key}\nto ${keyId(r.to_key)} ${r.to_key}\n` +
    `old_valid_until ${r.old_valid_until}\nissued_at ${r.issued_at}\n`
  );
}

