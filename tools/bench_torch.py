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
  importance-prompts
              the authors' importance pass over real prompts (--prompts FILE, written by
              benches/importance_real.rs; FILE@BATCH, several at once): per batch, a transformers forward with `labels` on the
              continuation (-100 elsewhere), a gate on every head output and FFN output at every
              token, one backward; prints per-example losses and per-token |gate grad| sums
              beside the seconds (see importance_prompts below)
Models: opt-125m (random weights of OPT-125m's shape) or gguf (a GGUF file via transformers'
GGUF loader, which dequantizes to f32).
"""
import argparse, json, sys, time

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
def matmul_peak():
    """torch.matmul f32 GFLOP/s at 1024^3, best of a few: the Python side's measured peak."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * 1024 ** 3 / best / 1e9


def attach_token_gates(model):
    """Per-token gates, [B, T, H] on head outputs and [B, T, 1] on FFN outputs (llama family,
    the default model), set per batch in the returned dict: a gate's gradient is then the
    per-token dot <o_t, dL/do_t> whose |.| the authors sum over positions."""
    cfg = model.config
    n_heads = cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    gates = {}
    for i, l in enumerate(model.model.layers):
        def pre(mod, args, i=i):
            x = args[0]
            b, t, _ = x.shape
            return ((x.view(b, t, n_heads, hd) * gates["head"][i].unsqueeze(-1)).view(b, t, -1),) + tuple(args[1:])

        def post(mod, args, out, i=i):
            return out * gates["ffn"][i]

        l.self_attn.o_proj.register_forward_pre_hook(pre)
        l.mlp.register_forward_hook(post)
    return gates


def importance_prompts(model, gates, path, batch, warm_up):
    """The authors' importance pass (amazon-science/llm-interpret, batch 1) over the prompts
    in `path`: one JSON line {"ids": [...], "start": context length} per example, already in
    the order the Rust side batches them, `batch` per batch, with the gates of
    attach_token_gates. Returns seconds for the whole pass (after one untimed batch
    if `warm_up`: the first run of a process pays the allocator's first touches) with
    per-example losses and the f64 sums [L*H], [L]."""
    n_layers, n_heads = len(model.model.layers), model.config.num_attention_heads
    rows = [json.loads(line) for line in open(path)]
    batches = [rows[k:k + batch] for k in range(0, len(rows), batch)]

    def run(chunk):
        b, t = len(chunk), max(len(r["ids"]) for r in chunk)
        # Right padding with 0, as headroom pads: causal attention keeps it out of every real
        # position, and no label falls on it.
        ids = torch.zeros(b, t, dtype=torch.long)
        labels = torch.full((b, t), -100, dtype=torch.long)
        for i, r in enumerate(chunk):
            ids[i, :len(r["ids"])] = torch.tensor(r["ids"])
            labels[i, r["start"]:len(r["ids"])] = ids[i, r["start"]:len(r["ids"])]
        gates["head"] = [torch.ones(b, t, n_heads, requires_grad=True) for _ in range(n_layers)]
        gates["ffn"] = [torch.ones(b, t, 1, requires_grad=True) for _ in range(n_layers)]
        if b == 1:
            # The authors' call: the model's own loss, the mean NLL of the continuation.
            out = model(input_ids=ids, labels=labels)
            loss, losses = out.loss, [out.loss.item()]
        else:
            # The same cross-entropy over the full logits (what `labels` runs), but each
            # example its own mean and the batch the sum, as headroom's batches: `labels`
            # would average over the batch's tokens and mix the examples' weights.
            logits = model(input_ids=ids).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="none").view(b, t - 1)
            per = nll.sum(1) / (labels[:, 1:] != -100).sum(1)
            loss, losses = per.sum(), per.tolist()
        loss.backward()
        head = torch.stack([g.grad for g in gates["head"]])  # [L, B, T, H]
        ffn = torch.stack([g.grad for g in gates["ffn"]])[..., 0]  # [L, B, T]
        n = torch.tensor([len(r["ids"]) for r in chunk])
        valid = (torch.arange(t)[None, :] < n[:, None]).double()  # [B, T]
        h = (head.double().abs() * valid[None, :, :, None]).sum((1, 2))  # [L, H]
        f = (ffn.double().abs() * valid[None]).sum((1, 2))  # [L]
        return losses, h, f

    if warm_up:
        run(batches[0])
    acc_h = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    acc_f = torch.zeros(n_layers, dtype=torch.float64)
    losses = []
    t0 = time.perf_counter()
    for chunk in batches:
        l, h, f = run(chunk)
        losses += l
        acc_h += h
        acc_f += f
    secs = time.perf_counter() - t0
    return {"seconds": secs, "losses": losses, "head_abs": acc_h.flatten().tolist(), "ffn_abs": acc_f.tolist()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--gguf")
    ap.add_argument("--mode", default="forward")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--prompts", nargs="+", help="importance-prompts: FILE[@BATCH] ... (BATCH default --batch), or - to read them from stdin")
    a = ap.parse_args()
    model = build(a.model, a.gguf)
    for p in model.parameters():
        p.requires_grad_(False)
    if a.mode == "blocks":
        print(json.dumps({"blocks": blocks(model, a.batch, a.seq, a.iters), "threads": torch.get_num_threads()}))
        return
    if a.mode == "importance-prompts":
        # Every workload in one process (the GGUF is dequantized once). `--prompts -`: one
        # FILE@BATCH per stdin line, answered by one JSON line each, after a first line with
        # the matmul peak once the model is loaded, so the caller can interleave its own runs
        # with these and both see the same load on a shared machine.
        gates, done = attach_token_gates(model), 0
        info = {"matmul_gflops": matmul_peak(), "threads": torch.get_num_threads(),
                "torch": torch.__version__, "transformers": transformers.__version__}

        def one(spec):
            nonlocal done
            path, _, b = spec.rpartition("@") if "@" in spec else (spec, "", a.batch)
            r = importance_prompts(model, gates, path, int(b), warm_up=done == 0)
            done += 1
            return r

        if a.prompts == ["-"]:
            print(json.dumps(info), flush=True)
            for line in sys.stdin:
                if line.strip():
                    print(json.dumps(one(line.strip())), flush=True)
        else:
            print(json.dumps({"runs": [one(spec) for spec in a.prompts], **info}))
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
