#!/usr/bin/env python3
"""Generate the golden conformance fixtures for EdgeRec.

What it writes (all under testdata/golden/):

  bundle/model.onnx     A SASRec-style sequence recommender (ONNX opset 17,
                        ir_version 8, float32, batch 1, fixed shapes) with
                        random but seeded weights.  The graph is the serving
                        form: the last transformer block computes queries,
                        attention output and FFN for the last position only.
  bundle/manifest.json  The bundle manifest (feature spec, item vocabulary,
                        lineage, sha256/size of model.onnx).
  cases.json            Golden ranking cases: request + expected top-k items
                        with scores from an independent float64 numpy
                        reference that does the full (non-optimised)
                        computation for every position in both blocks.

It also checks that
  * onnx.checker.check_model (full_check) accepts the model,
  * a numpy float64 implementation of the last-position-only optimisation
    equals the full reference within 1e-9 (the optimisation is exact),
  * the ONNX graph itself, executed in float32 by onnx's pure-python
    reference evaluator (onnx.reference, not onnxruntime), matches the
    float64 reference, and reports how far apart they are.

Re-run from the repository root with:

    python3 scripts/gen_golden.py

Requires Python 3 with `onnx` and `numpy`.  The output is deterministic:
running it twice produces byte-identical files.
"""

import hashlib
import json
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20261126
N_ITEMS = 3706            # real items, model indices 1..=N_ITEMS
NUM = N_ITEMS + 1         # rows of the item table, index 0 = padding
D = 64                    # model width
L = 50                    # max sequence length
N_BLOCKS = 2
FF = 128                  # FFN hidden width
N_GENRES = 18             # genre cardinality (0 = padding)
N_HOURS = 24              # hour cardinality
LN_EPS = 1e-5
NEG = -1e9                # additive mask value (never -inf)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "testdata", "golden")
BUNDLE_DIR = os.path.join(OUT_DIR, "bundle")

F32 = np.float32


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------

def make_weights():
    """All parameters, drawn in a fixed order from default_rng(SEED).

    Stored as float32 (what goes into the ONNX file); the float64 reference
    upcasts exactly these float32 values.
    """
    rng = np.random.default_rng(SEED)
    genre = np.zeros(NUM, dtype=np.int64)
    genre[1:] = rng.integers(1, N_GENRES, size=N_ITEMS)

    def normal(*shape, std=0.1):
        return rng.normal(0.0, std, size=shape).astype(F32)

    def ln_params():
        scale = (1.0 + rng.normal(0.0, 0.02, size=D)).astype(F32)
        bias = rng.normal(0.0, 0.02, size=D).astype(F32)
        return scale, bias

    w = {
        "E": normal(NUM, D),      # item embedding, tied with the output layer
        "P": normal(L, D),        # positional embedding
        "G": normal(N_GENRES, D),  # genre embedding
        "H": normal(N_HOURS, D),  # hour-of-day embedding
    }
    for b in range(N_BLOCKS):
        p = f"b{b}_"
        w[p + "ln1_s"], w[p + "ln1_b"] = ln_params()
        for n in "qkvo":
            w[p + "W" + n] = normal(D, D)
            w[p + "b" + n] = np.zeros(D, dtype=F32)
        w[p + "ln2_s"], w[p + "ln2_b"] = ln_params()
        w[p + "W1"] = normal(D, FF)
        w[p + "b1"] = np.zeros(FF, dtype=F32)
        w[p + "W2"] = normal(FF, D)
        w[p + "b2"] = np.zeros(D, dtype=F32)
    w["lnf_s"], w["lnf_b"] = ln_params()
    return genre, w


def causal_mask():
    q = np.arange(L)[:, None]
    k = np.arange(L)[None, :]
    return np.where(k <= q, 0.0, NEG)  # float64 [L, L]


# --------------------------------------------------------------------------
# ONNX graph (serving form: last block only for position L-1)
# --------------------------------------------------------------------------

def build_model(w):
    inits = []
    nodes = []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    for k, v in w.items():
        init(k, v)
    init("causal_mask", causal_mask().astype(F32))           # [L, L]
    init("zero_i64", np.array(0, dtype=np.int64))             # scalar
    init("one_f", np.array(1.0, dtype=F32))
    init("neg_big", np.array(NEG, dtype=F32))
    init("sqrt_d", np.array(np.sqrt(D), dtype=F32))           # 8.0, exact
    init("shape_col", np.array([1, L, 1], dtype=np.int64))
    init("shape_row", np.array([1, 1, L], dtype=np.int64))
    init("shape_h", np.array([1, D], dtype=np.int64))
    init("last_start", np.array([L - 1], dtype=np.int64))
    init("last_end", np.array([L], dtype=np.int64))
    init("axis1", np.array([1], dtype=np.int64))

    def last(x, out):
        # x[:, L-1:L, ...]
        return node("Slice", [x, "last_start", "last_end", "axis1"], out)

    def linear(x, W, b, out):
        return node("Add", [node("MatMul", [x, W], out + "_mm"), b], out)

    def layer_norm(x, s, b, out):
        return node("LayerNormalization", [x, s, b], out, axis=-1, epsilon=LN_EPS)

    # Embeddings.
    e = node("Gather", ["E", "item_ids"], "emb_item", axis=0)        # [1,L,D]
    g = node("Gather", ["G", "item_genre"], "emb_genre", axis=0)     # [1,L,D]
    x = node("Add", [e, "P"], "emb_item_pos")
    x = node("Add", [x, g], "emb_sum")

    # Masks, computed from item_ids.
    valid = node("Greater", ["item_ids", "zero_i64"], "valid")       # bool [1,L]
    m = node("Cast", [valid], "valid_f", to=TensorProto.FLOAT)       # [1,L]
    m_col = node("Reshape", [m, "shape_col"], "mask_col")            # [1,L,1]
    m_row = node("Reshape", [m, "shape_row"], "mask_row")            # [1,1,L]
    inv = node("Sub", ["one_f", m_row], "mask_row_inv")
    kpm = node("Mul", [inv, "neg_big"], "key_pad_mask")              # [1,1,L]
    att_mask = node("Add", ["causal_mask", kpm], "att_mask")         # [1,L,L]

    x = node("Mul", [x, m_col], "x0")

    for b in range(N_BLOCKS):
        p = f"b{b}_"
        is_last = b == N_BLOCKS - 1
        a = layer_norm(x, p + "ln1_s", p + "ln1_b", p + "ln1")       # [1,L,D]
        k = linear(a, p + "Wk", p + "bk", p + "K")                  # [1,L,D]
        v = linear(a, p + "Wv", p + "bv", p + "V")                  # [1,L,D]
        if is_last:
            a_q = last(a, p + "ln1_last")                            # [1,1,D]
            x_q = last(x, p + "x_last")                              # [1,1,D]
            mask_q = last(att_mask, p + "att_mask_last")             # [1,1,L]
            m_q = last(m_col, p + "mask_last")                       # [1,1,1]
        else:
            a_q, x_q, mask_q, m_q = a, x, att_mask, m_col
        q = linear(a_q, p + "Wq", p + "bq", p + "Q")
        kt = node("Transpose", [k], p + "Kt", perm=[0, 2, 1])        # [1,D,L]
        logits = node("MatMul", [q, kt], p + "qk")
        logits = node("Div", [logits, "sqrt_d"], p + "qk_scaled")
        logits = node("Add", [logits, mask_q], p + "qk_masked")
        att = node("Softmax", [logits], p + "att", axis=-1)
        ctx = node("MatMul", [att, v], p + "ctx")
        o = linear(ctx, p + "Wo", p + "bo", p + "att_out")
        x_q = node("Add", [x_q, o], p + "res1")
        z = layer_norm(x_q, p + "ln2_s", p + "ln2_b", p + "ln2")
        f = node("Relu", [linear(z, p + "W1", p + "b1", p + "ffn1")], p + "ffn_relu")
        f = linear(f, p + "W2", p + "b2", p + "ffn2")
        x_q = node("Add", [x_q, f], p + "res2")
        x = node("Mul", [x_q, m_q], p + "out")

    xf = layer_norm(x, "lnf_s", "lnf_b", "final_ln")                 # [1,1,D]
    h = node("Reshape", [xf, "shape_h"], "h_seq")                     # [1,D]
    hh = node("Gather", ["H", "hour"], "emb_hour", axis=0)           # [1,D]
    h = node("Add", [h, hh], "h")
    et = node("Transpose", ["E"], "E_t", perm=[1, 0])                # [D,NUM]
    node("MatMul", [h, et], "scores")                                # [1,NUM]

    graph = helper.make_graph(
        nodes,
        "golden_sasrec",
        inputs=[
            helper.make_tensor_value_info("item_ids", TensorProto.INT64, [1, L]),
            helper.make_tensor_value_info("item_genre", TensorProto.INT64, [1, L]),
            helper.make_tensor_value_info("hour", TensorProto.INT64, [1]),
        ],
        outputs=[helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, NUM])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="edgerec-gen-golden",
        producer_version="1",
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    out_shape = [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    assert out_shape == [1, NUM], out_shape
    return model


# --------------------------------------------------------------------------
# float64 numpy references
# --------------------------------------------------------------------------

def to64(w):
    return {k: v.astype(np.float64) for k, v in w.items()}


def ln64(x, s, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LN_EPS) * s + b


def softmax64(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def embed64(w, ids, gen):
    m = (ids > 0).astype(np.float64)[:, None]                        # [L,1]
    x = (w["E"][ids] + w["P"] + w["G"][gen]) * m
    mask = causal_mask() + ((1.0 - m[:, 0]) * NEG)[None, :]          # [L,L]
    return x, m, mask


def block_full64(w, b, x, m, mask):
    p = f"b{b}_"
    a = ln64(x, w[p + "ln1_s"], w[p + "ln1_b"])
    q = a @ w[p + "Wq"] + w[p + "bq"]
    k = a @ w[p + "Wk"] + w[p + "bk"]
    v = a @ w[p + "Wv"] + w[p + "bv"]
    att = softmax64(q @ k.T / np.sqrt(D) + mask)
    x = x + (att @ v) @ w[p + "Wo"] + w[p + "bo"]
    z = ln64(x, w[p + "ln2_s"], w[p + "ln2_b"])
    x = x + np.maximum(z @ w[p + "W1"] + w[p + "b1"], 0.0) @ w[p + "W2"] + w[p + "b2"]
    return x * m


def head64(w, x_last, hour):
    h = ln64(x_last, w["lnf_s"], w["lnf_b"]) + w["H"][hour]
    return w["E"] @ h                                                # [NUM]


def forward_full64(w, ids, gen, hour):
    """Straightforward reference: every position in every block."""
    x, m, mask = embed64(w, ids, gen)
    for b in range(N_BLOCKS):
        x = block_full64(w, b, x, m, mask)
    return head64(w, x[L - 1], hour)


def forward_last_only64(w, ids, gen, hour):
    """Mirror of the ONNX graph: last block only for position L-1."""
    x, m, mask = embed64(w, ids, gen)
    for b in range(N_BLOCKS - 1):
        x = block_full64(w, b, x, m, mask)
    p = f"b{N_BLOCKS - 1}_"
    a = ln64(x, w[p + "ln1_s"], w[p + "ln1_b"])
    k = a @ w[p + "Wk"] + w[p + "bk"]
    v = a @ w[p + "Wv"] + w[p + "bv"]
    q = a[L - 1] @ w[p + "Wq"] + w[p + "bq"]
    att = softmax64(q @ k.T / np.sqrt(D) + mask[L - 1])
    xq = x[L - 1] + (att @ v) @ w[p + "Wo"] + w[p + "bo"]
    z = ln64(xq, w[p + "ln2_s"], w[p + "ln2_b"])
    xq = xq + np.maximum(z @ w[p + "W1"] + w[p + "b1"], 0.0) @ w[p + "W2"] + w[p + "b2"]
    xq = xq * m[L - 1, 0]
    return head64(w, xq, hour)


# --------------------------------------------------------------------------
# Ranking semantics
# --------------------------------------------------------------------------

ITEMS = [f"m{i}" for i in range(1, N_ITEMS + 1)]
INDEX = {ext: i + 1 for i, ext in enumerate(ITEMS)}


def encode(req, genre):
    hist = [INDEX[x] for x in req["recent_items"] if x in INDEX][-L:]
    ids = np.array([0] * (L - len(hist)) + hist, dtype=np.int64)
    gen = genre[ids]
    hour = int((req.get("context") or {}).get("hour", 0))
    return ids, gen, hour


def rank(req, scores):
    if req["candidates"] is None:
        eligible = list(range(1, N_ITEMS + 1))
    else:
        eligible, seen = [], set()
        for c in req["candidates"]:
            i = INDEX[c]  # the cases only use known candidate ids
            if i not in seen:
                seen.add(i)
                eligible.append(i)
    removed = {INDEX[x] for x in req["recent_items"] if x in INDEX}
    removed |= {INDEX[x] for x in req["exclude"] if x in INDEX}
    eligible = [i for i in eligible if i not in removed]
    eligible.sort(key=lambda i: (-scores[i], i))
    return eligible[: req["k"]]


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

def ext(idxs):
    return [f"m{int(i)}" for i in idxs]


def make_requests(top_fn):
    """Requests in a fixed order from default_rng(SEED + 1).

    top_fn(request) -> list of external ids (the reference ranking), used to
    make some cases discriminating.
    """
    rng = np.random.default_rng(SEED + 1)
    all_idx = np.arange(1, N_ITEMS + 1)

    def distinct(n):
        return ext(rng.choice(all_idx, size=n, replace=False))

    def req(recent, k, exclude=(), candidates=None, context=None, omit_context=False):
        r = {"recent_items": list(recent), "k": k, "exclude": list(exclude),
             "candidates": None if candidates is None else list(candidates)}
        if not omit_context:
            r["context"] = {} if context is None else dict(context)
        return r

    cases = []
    cases.append(("cold_start", req([], 10)))

    short = distinct(3)
    cases.append(("short_history_3", req(short, 10, context={"hour": 7})))

    # context key omitted entirely -> hour 0
    cases.append(("full_history_50", req(distinct(50), 10, omit_context=True)))

    # 70 items: only the last 50 feed the model, but all 70 are removed from
    # the result.  The oldest 20 include the top-3 items that the last-50
    # history would otherwise return, so dropping only the last 50 shows up.
    hist70 = distinct(70)
    newest50 = hist70[20:]
    top3 = top_fn(req(newest50, 3, context={"hour": 12}))
    hist70 = [x for x in hist70[:20] if x not in top3][:17] + top3 + newest50
    cases.append(("truncated_history_70", req(hist70, 10, context={"hour": 12})))

    pool = distinct(6)
    repeated = [pool[int(j)] for j in rng.integers(0, len(pool), size=18)]
    repeated += [pool[0], pool[0], pool[1]]  # consecutive repeats at the end
    cases.append(("repeated_items", req(repeated, 10, context={"hour": 9})))

    real = distinct(8)
    unknown = ["nope", "m0", f"m{N_ITEMS + 1}", "unknown-item"]
    mixed = []
    for j, r in enumerate(real):
        mixed.append(r)
        if j % 2 == 0:
            mixed.append(unknown[j // 2])
    cases.append(("unknown_ids_ignored", req(mixed, 10, context={"hour": 15})))

    # exclude: filled in after scoring with the top-5 of short_history_3
    cases.append(("exclude_top5_of_short_history", req(short, 10, context={"hour": 7})))

    hist_c = distinct(12)
    cands = distinct(1000)
    cases.append(("candidates_1000", req(hist_c, 20, candidates=cands, context={"hour": 20})))

    hist_d = distinct(10)
    fresh = [x for x in distinct(40) if x not in hist_d][:12]
    cand_d = fresh + fresh[:5] + hist_d[:4] + fresh[2:4]
    cand_d = [cand_d[int(j)] for j in rng.permutation(len(cand_d))]
    cases.append(("candidates_dupes_and_seen",
                  req(hist_d, 50, candidates=cand_d, context={"hour": 5})))

    hist_h = distinct(20)
    cases.append(("hour_3", req(hist_h, 10, context={"hour": 3})))
    cases.append(("hour_22", req(hist_h, 10, context={"hour": 22})))

    cases.append(("all_items_k5000", req(distinct(25), 5000, context={"hour": 18})))
    return cases


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def main():
    t0 = time.time()
    genre, w = make_weights()
    w64 = to64(w)

    model = build_model(w)
    model_bytes = model.SerializeToString()
    os.makedirs(BUNDLE_DIR, exist_ok=True)
    with open(os.path.join(BUNDLE_DIR, "model.onnx"), "wb") as f:
        f.write(model_bytes)

    manifest = {
        "format_version": 1,
        "name": "golden-sasrec",
        "version": "1.0.0",
        "feature_spec": {
            "version": 1,
            "sequence": {"input": "item_ids", "max_len": L, "padding": "left"},
            "item_features": [{"name": "genre", "input": "item_genre",
                               "cardinality": N_GENRES, "values": [int(g) for g in genre]}],
            "context": [{"name": "hour", "input": "hour",
                         "kind": {"categorical": {"cardinality": N_HOURS}}}],
            "output": {"name": "scores", "num_items": NUM},
        },
        "items": ITEMS,
        "metrics": {},
        "lineage": {"generator": "scripts/gen_golden.py", "seed": SEED,
                    "note": "random weights; a golden model for the conformance suite, not a trained one"},
        "files": {"model.onnx": {"sha256": hashlib.sha256(model_bytes).hexdigest(),
                                 "size": len(model_bytes)}},
    }
    write_text(os.path.join(BUNDLE_DIR, "manifest.json"), json.dumps(manifest, indent=2) + "\n")

    from onnx.reference import ReferenceEvaluator
    sess = ReferenceEvaluator(model)

    def top_fn(req):
        ids, gen, hour = encode(req, genre)
        return ext(rank(req, forward_full64(w64, ids, gen, hour)))

    cases = make_requests(top_fn)
    by_name = {}
    out = []
    max_opt = 0.0
    max_f32 = 0.0
    order_mismatch = []
    for name, req in cases:
        if name == "exclude_top5_of_short_history":
            req["exclude"] = [e["item"] for e in by_name["short_history_3"]["expected"][:5]]
        ids, gen, hour = encode(req, genre)
        full = forward_full64(w64, ids, gen, hour)
        opt = forward_last_only64(w64, ids, gen, hour)
        d_opt = float(np.abs(full - opt).max())
        assert np.all(np.isfinite(full)), name
        assert d_opt <= 1e-9, (name, d_opt)
        max_opt = max(max_opt, d_opt)

        (s32,) = sess.run(None, {"item_ids": ids[None, :], "item_genre": gen[None, :],
                                 "hour": np.array([hour], dtype=np.int64)})
        assert s32.shape == (1, NUM) and s32.dtype == np.float32
        d32 = float(np.abs(s32[0].astype(np.float64) - full).max())
        max_f32 = max(max_f32, d32)

        top = rank(req, full)
        if rank(req, s32[0].astype(np.float64)) != top:
            order_mismatch.append(name)
        srt = np.array([full[i] for i in top])
        gaps = -np.diff(srt) if len(srt) > 1 else np.array([np.inf])
        case = {"name": name, "request": req,
                "expected": [{"item": f"m{i}", "score": float(full[i])} for i in top]}
        by_name[name] = case
        out.append(case)
        print(f"  {name:32s} hist={int((ids > 0).sum()):2d} hour={hour:2d} k={req['k']:4d} "
              f"n={len(top):4d} |opt-full|={d_opt:.1e} |onnx_f32-full|={d32:.1e} "
              f"min_gap={gaps.min():.1e} gaps<1e-5={int((gaps < 1e-5).sum())}")

    write_text(os.path.join(OUT_DIR, "cases.json"), json.dumps(out, indent=2) + "\n")

    ops = sorted({n.op_type for n in model.graph.node})
    print(f"model.onnx: {len(model_bytes)} bytes, {len(model.graph.node)} nodes, ops: {', '.join(ops)}")
    print(f"max |last-only numpy f64 - full f64| = {max_opt:.3e} (asserted <= 1e-9)")
    print(f"max |ONNX graph (onnx.reference, f32) - full f64| = {max_f32:.3e}")
    print("f32 ranking differs from expected in: " + (", ".join(order_mismatch) or "none"))
    print(f"wrote {len(out)} cases to {os.path.relpath(OUT_DIR, ROOT)} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
