#!/usr/bin/env python3
"""PyTorch side of headroom's benchmarks (run by `cargo bench`, never by the tool itself).

Times transformers at the same shapes as the Rust bench, frozen weights, f32, and prints one
JSON line {"seconds_per_iter": ...}. Modes:
  forward     logits for a batch (torch.no_grad)
  importance  forward + backward to the per-head outputs and FFN outputs only (weights frozen,
              requires_grad only on the gates: a gate on every head output and every FFN
              output, LM loss over every position, one backward; see docs/design.md)
  blocks      each component of layer 0 (norm, attention, FFN, the whole block) timed alone:
              forward (no_grad) and backward to the input only (weights frozen), printed
              per component as {"name": {"forward": s, "backward": s}}
Models: opt-125m (random weights of OPT-125m's shape) or gguf (a GGUF file via transformers'
GGUF loader, which dequantizes to f32).
"""
import argparse, json, time

import torch
import transformers


def build(which, gguf):
    if which == "opt-125m":
        cfg = transformers.OPTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072,
                                     vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=768)
        torch.manual_seed(0)
        return transformers.OPTForCausalLM(cfg).eval()
    import os
    folder, name = os.path.split(os.path.abspath(gguf))
    return transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32).eval()


def attach_gates(model):
    """Gate tensors [L, H] and [L] (requires_grad) multiplying each head's output before the
    output projection and each FFN branch's output."""
    cfg = model.config
    if cfg.model_type == "opt":
        layers = model.model.decoder.layers
        attn_mods, ffn_mods = [l.self_attn.out_proj for l in layers], [l.fc2 for l in layers]
    else:  # llama family
        layers = model.model.layers
        attn_mods, ffn_mods = [l.self_attn.o_proj for l in layers], [l.mlp for l in layers]
    n_heads = cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    head_gate = torch.ones(len(layers), n_heads, requires_grad=True)
    ffn_gate = torch.ones(len(layers), requires_grad=True)
    for i, (am, fm) in enumerate(zip(attn_mods, ffn_mods)):
        def pre(mod, args, i=i):
            x = args[0]
            b, t, _ = x.shape
            return ((x.view(b, t, n_heads, hd) * head_gate[i].view(1, 1, -1, 1)).view(b, t, -1),) + tuple(args[1:])

        def post(mod, args, out, i=i):
            return out * ffn_gate[i]

        am.register_forward_pre_hook(pre)
        fm.register_forward_hook(post)
    return head_gate, ffn_gate


def time_it(fn, iters):
    fn()  # warm-up: first-touch page faults and lazy kernel selection
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def blocks(model, b, t, iters):
    """Seconds per forward and per input-gradient backward of each component of layer 0 at
    [b, t, D], the attention as the model runs it (its configured implementation, causal)."""
    cfg = model.config
    torch.manual_seed(0)
    x = torch.randn(b, t, cfg.hidden_size) * 0.5
    if cfg.model_type == "opt":
        layer = model.model.decoder.layers[0]
        norm = layer.self_attn_layer_norm
        attn = lambda h: layer.self_attn(hidden_states=h, attention_mask=None)[0]
        mlp = lambda h: layer.fc2(layer.activation_fn(layer.fc1(h)))
        block = lambda h: layer(h, attention_mask=None)
    else:
        layer = model.model.layers[0]
        norm = layer.input_layernorm
        pos = torch.arange(t).unsqueeze(0).expand(b, t)
        pe = model.model.rotary_emb(x, pos)
        attn = lambda h: layer.self_attn(hidden_states=h, position_embeddings=pe, attention_mask=None)[0]
        mlp = layer.mlp
        block = lambda h: layer(h, attention_mask=None, position_embeddings=pe, position_ids=pos)
    out = {"attn_implementation": cfg._attn_implementation}
    for name, f in [("norm", norm), ("attention", attn), ("ffn", mlp), ("block", block)]:
        first = lambda y: y[0] if isinstance(y, tuple) else y
        with torch.no_grad():
            fwd = time_it(lambda: first(f(x)), iters)
        dy = torch.randn(b, t, cfg.hidden_size)

        def fwd_bwd():
            xi = x.detach().requires_grad_(True)
            first(f(xi)).backward(dy)
        both = time_it(fwd_bwd, iters)
        out[name] = {"forward": fwd, "backward": max(both - fwd, 0.0)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--gguf")
    ap.add_argument("--mode", default="forward")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--iters", type=int, default=3)
    a = ap.parse_args()
    model = build(a.model, a.gguf)
    for p in model.parameters():
        p.requires_grad_(False)
    if a.mode == "blocks":
        print(json.dumps({"blocks": blocks(model, a.batch, a.seq, a.iters), "threads": torch.get_num_threads()}))
        return
    vocab = model.config.vocab_size
    ids = (torch.arange(a.batch * a.seq).reshape(a.batch, a.seq) * 104729 % (vocab - 1))

    if a.mode == "importance":
        head_gate, ffn_gate = attach_gates(model)
        acc_h = torch.zeros(head_gate.shape, dtype=torch.float64)
        acc_f = torch.zeros(ffn_gate.shape, dtype=torch.float64)

    def step():
        if a.mode == "forward":
            with torch.no_grad():
                model(input_ids=ids).logits
        elif a.mode == "importance":
            # The PyTorch importance baseline: frozen weights, gates on every head output and
            # FFN output, LM loss over the sequence, one backward.
            head_gate.grad = None
            ffn_gate.grad = None
            model(input_ids=ids, labels=ids).loss.backward()
            acc_h.add_(head_gate.grad.double().abs())
            acc_f.add_(ffn_gate.grad.double().abs())
        else:
            raise SystemExit(f"unknown mode {a.mode}")

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(a.iters):
        step()
    dt = (time.perf_counter() - t0) / a.iters
    print(json.dumps({"seconds_per_iter": dt, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "transformers": transformers.__version__}))


if __name__ == "__main__":
    main()
