#!/usr/bin/env python3
"""Golden data for headroom's induction scores (spec section 7), independent of the Rust code.

Run with the pinned venv (see tools/setup-golden-env.sh):
    tools/.venv/bin/python tools/make_golden_induction.py

Reads the tiny random checkpoints in tests/golden/{opt_preln,opt_postln,llama_gqa}/ (made by
tools/make_golden.py) and writes tests/golden/induction/<variant>.safetensors + README-style
tests/golden/induction/golden.json. Deterministic (fixed seeds, one thread).

Everything is computed from transformers' own modules and outputs:
- prefix matching + TransformerLens score: attention probabilities of a full forward pass
  (`output_attentions=True`, eager attention);
- copying: per layer, the embedding-only input (`embed_tokens` (+ `project_in`) + learned positions
  `embed_positions.weight[pos + 2]` for OPT; RoPE through the model's own `rotary_emb` for Llama),
  the layer's own pre-attention norm (none for post-LN OPT), the attention pattern returned by the
  layer's own attention module on that input, the value vectors from its `v_proj` (GQA: query head h
  reads kv head h // (H / KV)), the per-head input of `out_proj`/`o_proj` captured by a forward
  pre-hook (Olsson mode), the out_proj columns of the head (+ its full bias in the authors' mode),
  `project_out` where present, then `lm_head`: full-vocabulary softmax (authors) or raw logits
  (Olsson). The scoring loops follow spec 7.2/7.3 literally: the authors' prefix loop
  (`for n in range(j // L): A[j][n*L + j%L + 1]`, BOS sequences) and a token-matching
  re-derivation for the definition mode.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

from make_golden import OUT, VERSIONS

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
transformers.logging.set_verbosity_error()

VARIANTS = {"opt_preln": "opt", "opt_postln": "opt", "llama_gqa": "llama"}
# (L, has_bos): X repeated 4 times (prefix) / once (copying). T = 4L + 1 <= 64 positions.
PREFIX_SEQS = [(5, True), (9, True), (13, True), (7, False)]
COPY_SEQS = [(20, True), (40, True), (63, True), (30, False)]
SEED = 20240
TOKEN_RANGE = (3, 256)  # never 0/1/2 (bos/eos/pad ids of the tiny models)
BUDGET = 80_000


def draw_x(rng: np.random.Generator, n: int) -> list[int]:
    return [int(x) for x in rng.choice(np.arange(*TOKEN_RANGE), size=n, replace=False)]


def causal(t: int) -> torch.Tensor:
    return torch.full((t, t), float("-inf")).triu(1)[None, None]


# ------------------------------------------------------------------------------------------------
# prefix matching


def prefix_authors_loop(a: np.ndarray, L: int) -> float:
    """The authors' loop (spec 7.2), for [BOS] + X*4 (position 0 = BOS)."""
    score = 0.0
    for j in range(L + 1, 4 * L + 1):
        for n in range(j // L):
            score += a[j, n * L + (j % L) + 1]
    return score / (3 * L)


def prefix_by_token_match(a: np.ndarray, ids: list[int], offset: int, L: int, quirk: bool) -> float:
    """Definition re-derived from tokens: for each query in repeats 2-4, attention to the position
    after every earlier occurrence of its token. `quirk` adds A[j][offset] for X[L-1] queries."""
    score = 0.0
    for j in range(offset + L, offset + 4 * L):
        for k in range(offset, j):
            if ids[k] == ids[j]:
                score += a[j, k + 1]
        if quirk and ids[j] == ids[offset + L - 1]:
            score += a[j, offset]
    return score / (3 * L)


def tl_score(a: np.ndarray, ids: list[int]) -> float:
    t = len(ids)
    p = np.zeros((t, t))
    for q in range(t):
        for k in range(1, q + 1):
            if ids[k - 1] == ids[q]:
                p[q, k] = 1.0
    return float((a * p).sum() / a.sum())


def prefix_scores(model, ids: list[int], offset: int, L: int):
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_attentions=True)
    n_layers = len(out.attentions)
    H = out.attentions[0].shape[1]
    res = {k: np.zeros((n_layers, H)) for k in ("definition", "authors", "tl")}
    for l, att in enumerate(out.attentions):
        att = att[0].double().numpy()
        for h in range(H):
            a = att[h]
            res["definition"][l, h] = prefix_by_token_match(a, ids, offset, L, quirk=False)
            if offset == 1:
                res["authors"][l, h] = prefix_authors_loop(a, L)
                alt = prefix_by_token_match(a, ids, offset, L, quirk=True)
                assert abs(alt - res["authors"][l, h]) < 1e-12, (alt, res["authors"][l, h])
            else:
                res["authors"][l, h] = prefix_by_token_match(a, ids, offset, L, quirk=True)
            res["tl"][l, h] = tl_score(a, ids)
    return res


# ------------------------------------------------------------------------------------------------
# copying


def layer_parts(model, family: str, ids: list[int], l: int):
    """Embedding-only input through layer l's attention. Returns (probs [H,T,T], values per query
    head [H,T,hd], head outputs [H,T,hd], W_o [D, H*hd], b_o or None, project_out or None, U [V,E])."""
    t = len(ids)
    x = torch.tensor([ids])
    captured = {}
    if family == "opt":
        dec = model.model.decoder
        e = dec.embed_tokens(x)
        if dec.project_in is not None:
            e = dec.project_in(e)
        e = e + dec.embed_positions.weight[2 : 2 + t][None]
        layer = dec.layers[l]
        hs = layer.self_attn_layer_norm(e) if layer.do_layer_norm_before else e
        attn = layer.self_attn
        o_proj = attn.out_proj
        hook = o_proj.register_forward_pre_hook(lambda m, a: captured.__setitem__("o", a[0]))
        _, probs = attn(hs, attention_mask=causal(t))
        hook.remove()
        H, KV, hd = attn.num_heads, attn.num_heads, attn.head_dim
        v = attn.v_proj(hs)[0]
        proj_out = dec.project_out
    else:
        m = model.model
        e = m.embed_tokens(x)
        layer = m.layers[l]
        hs = layer.input_layernorm(e)
        pos = m.rotary_emb(hs, position_ids=torch.arange(t)[None])
        attn = layer.self_attn
        o_proj = attn.o_proj
        hook = o_proj.register_forward_pre_hook(lambda m_, a: captured.__setitem__("o", a[0]))
        _, probs = attn(hs, position_embeddings=pos, attention_mask=causal(t))
        hook.remove()
        cfg = model.config
        H, KV, hd = cfg.num_attention_heads, cfg.num_key_value_heads, attn.head_dim
        v = attn.v_proj(hs)[0]
        proj_out = None
    vals = torch.stack([v[:, (h // (H // KV)) * hd : (h // (H // KV) + 1) * hd] for h in range(H)])
    outs = torch.stack([captured["o"][0, :, h * hd : (h + 1) * hd] for h in range(H)])
    return probs[0], vals, outs, o_proj.weight, o_proj.bias, proj_out, model.lm_head.weight, hd


def copy_scores(model, family: str, ids: list[int], n_layers: int):
    t = len(ids)
    res = {"authors": [], "olsson": []}
    for l in range(n_layers):
        with torch.no_grad():
            probs, vals, outs, W, b, proj_out, U, hd = layer_parts(model, family, ids, l)
            H = probs.shape[0]
            row_a, row_o = [], []
            for h in range(H):
                Wh = W[:, h * hd : (h + 1) * hd]  # [D, hd]
                out_a = vals[h] @ Wh.T + (b if b is not None else 0.0)  # value of token j itself + full bias
                out_o = outs[h] @ Wh.T  # attention-weighted, no bias
                if proj_out is not None:
                    out_a, out_o = proj_out(out_a), proj_out(out_o)
                p = torch.softmax(out_a @ U.T, dim=-1).double().numpy()  # [T, V], full vocabulary
                z = (out_o @ U.T).double().numpy()  # raw logits
                a = probs[h].double().numpy()
                sa = so = 0.0
                for j in range(1, t):
                    m = int(np.argmax(a[j, : j + 1]))  # first index on ties
                    att = ids[: j + 1]
                    s = p[j, att]
                    r = np.maximum(s - s.mean(), 0.0)
                    sa += 0.0 if r.sum() == 0 else r[m] / r.sum()
                    s = z[j, att]
                    r = np.maximum(s - s.mean(), 0.0)
                    so += 0.0 if r.sum() == 0 else r[m] / r.sum()
                row_a.append(sa / (t - 1))
                row_o.append(2.0 * so / (t - 1) - 1.0)
            res["authors"].append(row_a)
            res["olsson"].append(row_o)
    return {k: np.array(v) for k, v in res.items()}


# ------------------------------------------------------------------------------------------------


def main() -> None:
    out_dir = OUT / "induction"
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    prefix_x = [draw_x(rng, L) for L, _ in PREFIX_SEQS]
    copy_x = [draw_x(rng, L) for L, _ in COPY_SEQS]
    summary = {
        "generator": "tools/make_golden_induction.py",
        "versions": VERSIONS,
        "prefix_sequences": [{"L": L, "bos": b} for L, b in PREFIX_SEQS],
        "copy_sequences": [{"L": L, "bos": b} for L, b in COPY_SEQS],
        "token_range": list(TOKEN_RANGE),
        "seed": SEED,
        "tensors": {
            "prefix_ids.{i} / copy_ids.{i}": "i64 [T]: the sequence (BOS included when present)",
            "prefix_meta / copy_meta": "i64 [n, 2]: (offset = 1 with BOS else 0, L)",
            "prefix_definition / prefix_authors / tl_induction": "f32 [n, layers, heads]",
            "copy_authors / copy_olsson": "f32 [n, layers, heads]",
        },
        "variants": {},
    }
    total = 0
    for variant, family in VARIANTS.items():
        folder = OUT / variant
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        bos = model.config.bos_token_id
        n_layers = model.config.num_hidden_layers
        tensors: dict[str, torch.Tensor] = {}
        pd, pa, tl, ca, co = [], [], [], [], []
        pmeta, cmeta = [], []
        for i, ((L, has_bos), x) in enumerate(zip(PREFIX_SEQS, prefix_x)):
            ids = ([bos] if has_bos else []) + x * 4
            tensors[f"prefix_ids.{i}"] = torch.tensor(ids, dtype=torch.int64)
            pmeta.append([int(has_bos), L])
            r = prefix_scores(model, ids, int(has_bos), L)
            pd.append(r["definition"]), pa.append(r["authors"]), tl.append(r["tl"])
        for i, ((L, has_bos), x) in enumerate(zip(COPY_SEQS, copy_x)):
            ids = ([bos] if has_bos else []) + x
            tensors[f"copy_ids.{i}"] = torch.tensor(ids, dtype=torch.int64)
            cmeta.append([int(has_bos), L])
            r = copy_scores(model, family, ids, n_layers)
            ca.append(r["authors"]), co.append(r["olsson"])
        tensors["prefix_meta"] = torch.tensor(pmeta, dtype=torch.int64)
        tensors["copy_meta"] = torch.tensor(cmeta, dtype=torch.int64)
        for name, arr in [("prefix_definition", pd), ("prefix_authors", pa), ("tl_induction", tl), ("copy_authors", ca), ("copy_olsson", co)]:
            tensors[name] = torch.tensor(np.array(arr), dtype=torch.float32)
        path = out_dir / f"{variant}.safetensors"
        save_file(tensors, str(path))
        total += path.stat().st_size
        pdiff = float(np.abs(np.array(pa) - np.array(pd)).max())
        summary["variants"][variant] = {
            "family": family,
            "bos": bos,
            "post_ln": family == "opt" and not model.config.do_layer_norm_before,
            "max_prefix_authors_minus_definition": pdiff,
            "prefix_definition_range": [float(np.min(pd)), float(np.max(pd))],
            "copy_authors_range": [float(np.min(ca)), float(np.max(ca))],
            "copy_olsson_range": [float(np.min(co)), float(np.max(co))],
        }
        print(f"{variant}: authors-vs-definition prefix max diff {pdiff:.4g}; copy authors range {summary['variants'][variant]['copy_authors_range']}")
    (out_dir / "golden.json").write_text(json.dumps(summary, indent=2) + "\n")
    total += (out_dir / "golden.json").stat().st_size
    print(f"total {total} bytes")
    assert total < BUDGET, f"induction golden data is {total} bytes, over {BUDGET}"


if __name__ == "__main__":
    main()
