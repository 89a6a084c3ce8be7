#!/usr/bin/env python3
"""Golden gradients for headroom's activation-only backward (issue 3).

For every tiny golden HF model in tests/golden/<variant>/ (made by make_golden.py), loaded from
disk exactly as the Rust side loads it (f16/bf16 weights upcast to f32, eager attention):
  input  = seq2 (19 tokens) of golden.safetensors, context = first 14 tokens, continuation = last 5
  loss   = -(1/5) * sum_j log p(cont_j | ...)            (spec eq. 9, one example)
  per-token gates (all ones) multiply each head's output before the output projection
  ([T, H] per layer) and each FFN branch output ([T] per layer); their gradients are the
  per-token dots <o_t, dL/do_t> and <f_t, dL/df_t> that the importance scores sum.
Writes tests/golden/<variant>/grads.safetensors: ids (i64 [T]), ctx_len (i64 [1]), loss (f32 [1]),
head_dot (f32 [L, T, H]), ffn_dot (f32 [L, T]), gate_grad_heads (f32 [L, H]) from a separate
per-head scalar gate (Michel's dL/dxi), and gate_grad_ffns (f32 [L]).
Run: tools/.venv/bin/python tools/make_golden_grads.py
"""
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden"
VARIANTS = ["opt_preln", "opt_postln", "gpt2", "neox", "neox_seq", "llama_gqa", "qwen2", "mistral_swa"]
CTX_LEN = 14


def hook_points(model):
    t = model.config.model_type
    if t == "opt":
        ls = model.model.decoder.layers
        return [l.self_attn.out_proj for l in ls], [l.fc2 for l in ls]
    if t == "gpt2":
        ls = model.transformer.h
        return [l.attn.c_proj for l in ls], [l.mlp for l in ls]
    if t == "gpt_neox":
        ls = model.gpt_neox.layers
        return [l.attention.dense for l in ls], [l.mlp for l in ls]
    ls = model.model.layers
    return [l.self_attn.o_proj for l in ls], [l.mlp for l in ls]


def run(model, ids, head_gates, ffn_gates, hd):
    attn_mods, ffn_mods = hook_points(model)
    handles = []
    for l, m in enumerate(attn_mods):
        def pre(mod, args, l=l):
            x = args[0]  # [1, T, H*hd]
            g = head_gates[l]  # [T, H] or [H]
            g = g.repeat_interleave(hd, dim=-1)
            return (x * g,) + tuple(args[1:])
        handles.append(m.register_forward_pre_hook(pre))
    for l, m in enumerate(ffn_mods):
        def post(mod, args, out, l=l):
            g = ffn_gates[l]  # [T, 1] or scalar
            return out * g
        handles.append(m.register_forward_hook(post))
    logits = model(input_ids=ids[None], use_cache=False).logits[0]  # [T, V]
    for h in handles:
        h.remove()
    lp = torch.log_softmax(logits.double(), dim=-1)
    targets = ids[CTX_LEN:]
    picked = lp[CTX_LEN - 1:-1].gather(1, targets[:, None])[:, 0]
    return -picked.mean()


def main():
    torch.manual_seed(0)
    for v in VARIANTS:
        d = GOLDEN / v
        model = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32,
                                                                  attn_implementation="eager").eval()
        for p in model.parameters():
            p.requires_grad_(False)
        cfg = model.config
        n_layers = cfg.num_hidden_layers if hasattr(cfg, "num_hidden_layers") else cfg.n_layer
        n_heads = cfg.num_attention_heads if hasattr(cfg, "num_attention_heads") else cfg.n_head
        hidden = cfg.hidden_size if hasattr(cfg, "hidden_size") else cfg.n_embd
        hd = getattr(cfg, "head_dim", None) or hidden // n_heads
        ids = load_file(d / "golden.safetensors")["seq2"].long()
        T = ids.shape[0]
        # Per-token gates: gradients are the per-token dots.
        hg = [torch.ones(T, n_heads, requires_grad=True) for _ in range(n_layers)]
        fg = [torch.ones(T, 1, requires_grad=True) for _ in range(n_layers)]
        loss = run(model, ids, hg, fg, hd)
        loss.backward()
        head_dot = torch.stack([g.grad for g in hg])  # [L, T, H]
        ffn_dot = torch.stack([g.grad[:, 0] for g in fg])  # [L, T]
        # Per-head scalar gates (Michel): dL/dxi = sum_t dot.
        sg = [torch.ones(n_heads, requires_grad=True) for _ in range(n_layers)]
        sf = [torch.ones((), requires_grad=True) for _ in range(n_layers)]
        loss2 = run(model, ids, sg, sf, hd)
        loss2.backward()
        gh = torch.stack([g.grad for g in sg])
        gf = torch.stack([g.grad for g in sf])
        assert torch.allclose(gh, head_dot.sum(1), atol=1e-5), v
        assert torch.allclose(gf, ffn_dot.sum(1), atol=1e-5), v
        out = {
            "ids": ids.to(torch.int64),
            "ctx_len": torch.tensor([CTX_LEN], dtype=torch.int64),
            "loss": torch.tensor([loss.item()], dtype=torch.float32),
            "head_dot": head_dot.float().contiguous(),
            "ffn_dot": ffn_dot.float().contiguous(),
            "gate_grad_heads": gh.float().contiguous(),
            "gate_grad_ffns": gf.float().contiguous(),
        }
        save_file(out, d / "grads.safetensors", metadata={"transformers": transformers.__version__,
                                                           "torch": torch.__version__})
        print(f"{v:12} loss {loss.item():.4f}  |head_dot| max {head_dot.abs().max():.3e}  "
              f"|ffn_dot| max {ffn_dot.abs().max():.3e}")


if __name__ == "__main__":
    main()
