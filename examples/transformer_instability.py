"""Small-scale transformer instabilities: attention-logit growth, log Z drift, qk-layernorm and z-loss.

Claim. Two instabilities of large transformers appear in small ones trained at a high learning
rate (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
instabilities"). Attention-logit growth: the largest attention logit max |qᵀk|/√d grows with the
learning rate, attention entropy collapses to one-hot and the loss diverges; layer-normalizing
the queries and keys (qk-layernorm, Dehghani et al. 2023) prevents it. Output-logit divergence:
the log-partition function log Z of the output softmax drifts far from 0; the auxiliary z-loss
``1e-4 · log² Z`` (PaLM, Chowdhery et al. 2022) keeps it near 0. Their summary of a learning-rate
sweep is the LR sensitivity ``E_η[min(L(η), L₀) − min_η L(η)]`` (L₀ the loss at initialization,
the expectation over a log-spaced sweep): with both fixes it is smaller — the final loss depends
less on the learning rate (their Fig. 1).

What it does. A GPT-style decoder-only ``transformer`` (pre-LN, no biases, GPT-2 init; 2 layers,
width 64, 2 heads of dimension 32, 111k parameters) learns next-character prediction on the
shipped *tiny shakespeare* corpus (``shakespeare_chars``: 62 characters, disjoint windows of 64,
3200 of the 3685 training windows, the last 10% of the text for validation). AdamW (β = 0.9,
0.95, no weight decay), batch 16 windows (1024 characters), one epoch = 200 steps, linear warmup
over the first 10% then cosine decay to 0, from the same initialization per variant, over a
log-spaced sweep of peak learning rates η ∈ {1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1}, in four
variants: baseline; qk-layernorm (``qk_layernorm=true``: LayerNorm of q and k per head); z-loss
(``z_loss=1e-4``: ``1e-4 · log² Z`` per character added to the training loss); both. The
``attention_logits`` monitor (max |qᵀk|/√d and mean attention entropy per layer) and the
``logit_stats`` monitor (mean log Z, max |logit|) run every 10 steps on a fixed subset of 64
training windows. The loss L(η) is the **final validation cross-entropy** (``test_ce``, nats per
character, without the z-loss term, so the variants compare); L₀ is the same loss at step 0; a
run that diverged (NaN/inf, stored as a ``"diverged"`` event and not retrained on a rerun) or
ended above L₀ counts as L₀. LR sensitivity = mean_η min(L(η), L₀) − min_η L(η), per variant
(Wortsman et al.; the same with the final training loss is ``lr_sensitivity_train``).
``final_loss_vs_lr.png`` is their Fig. 1 (final loss vs η per variant, L₀ and the loss of the
character frequencies alone — the unigram model, add-one smoothed — as reference lines);
``logit_growth.png`` shows, per variant and η, the max attention logit, the lowest layer's
attention entropy and log Z over steps. ``numbers.json`` holds, per variant, the LR sensitivity,
the best η and loss, and per η the initial and final losses, the peak attention logit, the
lowest attention entropy and log Z (initial, final, max |log Z|). ``--scale full`` (for a GPU):
4 layers × width 256, 4 heads of dimension 64 as in Wortsman et al. (3.2M parameters), windows
of 128 every 32 characters, batch 64, 10 epochs (1160 steps, warmup 1 epoch), 7 rates 3e-4 …
3e-1; Wortsman et al.'s runs are far longer (1e5 steps on C4), which a 262 KB corpus cannot give.

Finding (default scale, ``numbers.json``; one seed; 444 s for the 24 runs with
``OMP_NUM_THREADS=1`` on two CPU cores shared with other jobs, load average 10–16; 184 s at load
≈ 7). Attention-logit growth appears and qk-layernorm removes it. Without qk-layernorm the peak
attention logit grows with η — 4.2, 4.7, 23, 900, 2.2e4, 6.1e5 for η = 1e-3 … 3e-1 (0.14 at
initialization) — and for η ≥ 3e-2 the attention collapses to one-hot (lowest layer's entropy
0.05, 0.0015, 1.4e-6 nats, from 3.2) and the model stops learning: the final validation loss is
3.06 / 3.13 / 3.27, about the 3.32 of the character frequencies alone, against 2.36 at the best
η = 1e-2. With qk-layernorm the peak attention logit stays 5.4–7.5 up to η = 3e-2 (15.7 at 1e-1,
46 at 3e-1: the LayerNorm gains grow), the lowest entropy stays ≥ 1.66 nats at every η (0.85 at
3e-1 with both fixes) and the loss is 2.55 at 3e-2 and 2.74 at 1e-1 (2.65 with both); so the stable range widens by about a factor 10 and the LR
sensitivity falls from 0.437 (baseline) to 0.246 (qk-layernorm), 0.239 with both (0.401 with
z-loss alone). Three effects did not appear at this scale: (1) no run diverged — no NaN, none
ended above L₀ = 4.14, so the cap at L₀ never applied; the unstable runs plateau at the unigram
level instead; (2) no output-logit divergence: log Z stays between 3.8 and 6.5 (ln 62 = 4.13 at
initialization) in every run, and the z-loss changes the final log Z by at most 0.36 (at
η = 1e-2: 6.02 without, 5.90 with), so the z-loss variant behaves like the baseline (losses
within 0.001 for η ≤ 1e-2; its 2.80 vs 3.06 at η = 3e-2 is one seed at the edge of the stable
range, not a measured effect); (3) qk-layernorm is not free here: its best loss is 2.405
(at η = 3e-3) against the baseline's 2.363 (at 1e-2) after 200 steps, where Wortsman et al. find
no cost at the optimum. One seed; ``--scale full`` was not run here (no GPU).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from common import Options, main, save, say, train_run
from landscape.train.config import TrainConfig

SCALES = {
    "default": {"lrs": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1], "layers": 2, "width": 64, "heads": 2,
                "context": 64, "stride": None, "test_fraction": 0.1, "train_size": 3200, "batch_size": 16, "epochs": 1,
                "warmup": 0.1, "every": 10, "subset": 64},
    # Head dimension 64 as Wortsman et al.; 4 layers × width 256 (3.2M parameters), windows of 128
    # characters every 32, 10 epochs of the shipped corpus (1160 steps): for a GPU.
    "full": {"lrs": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1], "layers": 4, "width": 256, "heads": 4,
             "context": 128, "stride": 32, "test_fraction": 0.1, "train_size": None, "batch_size": 64, "epochs": 10,
             "warmup": 1.0, "every": 25, "subset": 64},
}
SMOKE = {"lrs": [1e-2, 3e-1], "context": 16, "stride": None, "test_fraction": 0.005, "train_size": 64,
         "batch_size": 16, "epochs": 1, "warmup": 0.25, "every": 2, "subset": 8}
BETAS = [0.9, 0.95]
Z_LOSS = 1e-4
VARIANTS = {  # name: (qk-layernorm, z-loss weight, label)
    "baseline": (False, 0.0, "baseline"),
    "qk_layernorm": (True, 0.0, "qk-layernorm"),
    "z_loss": (False, Z_LOSS, f"z-loss {Z_LOSS:g}"),
    "qk_layernorm_z_loss": (True, Z_LOSS, "qk-layernorm + z-loss"),
}


def data_params(opts: Options) -> dict[str, Any]:
    params = {"context": opts["context"], "test_fraction": opts["test_fraction"]}
    return params if opts["stride"] is None else {**params, "stride": opts["stride"]}


def unigram_loss(opts: Options) -> float:
    """The validation cross-entropy of the training split's character frequencies (add-one
    smoothed): the loss of a model that learned only how often each character occurs."""
    from landscape.datasets import load_dataset

    data = load_dataset("shakespeare_chars", **data_params(opts))
    counts = np.bincount(data.train.y.reshape(-1).numpy(), minlength=data.num_classes) + 1.0
    return float(-np.log(counts / counts.sum())[data.test.y.reshape(-1).numpy()].mean())


def config(opts: Options, lr: float, qk_layernorm: bool, z_loss: float) -> TrainConfig:
    every, subset = opts["every"], opts["subset"]
    return TrainConfig(
        model="transformer",
        model_params={"head": "lm", "layers": opts["layers"], "width": opts["width"], "heads": opts["heads"],
                      "qk_layernorm": qk_layernorm, "bias": False},
        dataset="shakespeare_chars", dataset_params=data_params(opts), train_size=opts["train_size"],
        optimizer="adamw", optimizer_params={"betas": BETAS}, lr=lr, weight_decay=0.0, z_loss=z_loss,
        schedule="cosine", warmup_epochs=opts["warmup"], epochs=opts["epochs"], batch_size=opts["batch_size"],
        eval_batch_size=512, checkpoints="none",
        monitors={"attention_logits": {"every": every, "subset": subset},
                  "logit_stats": {"every": every, "subset": subset}})


def train_or_reuse(opts: Options, name: str, cfg: TrainConfig) -> bool:
    """Train ``cfg`` into ``opts.out/name`` (as :func:`common.train_run`); True when it diverged.

    A run that diverged (a ``"diverged"`` event in its metrics.jsonl) is kept as it is and not
    trained again on a rerun (resuming it would only diverge again), unless ``--force``."""
    from landscape.checkpoints import RunDir
    from landscape.errors import ConfigError, TrainingDiverged

    run_dir = opts.out / name
    if (run_dir / "config.json").is_file() and not opts.force:
        changed = TrainConfig.from_run(RunDir(run_dir)).diff(cfg)
        if changed:
            raise ConfigError(f"{run_dir} holds a run trained with other settings ({', '.join(sorted(changed))}); "
                              "pass --force to retrain it, or --out to write elsewhere")
        if any(r.get("event") == "diverged" for r in RunDir(run_dir).metrics()):
            say(f"[{opts.name}] {name}: diverged (stored run)")
            return True
    try:
        train_run(opts, name, cfg)
    except TrainingDiverged as exc:
        say(f"[{opts.name}] {name}: diverged: {exc}")
        return True
    return False


def records(opts: Options, name: str) -> list[dict[str, Any]]:
    from landscape.checkpoints import RunDir

    by_step: dict[int, dict[str, Any]] = {}
    for r in RunDir(opts.out / name).metrics():
        if "event" not in r and "step" in r:
            by_step.setdefault(r["step"], {}).update(r)
    return [by_step[s] for s in sorted(by_step)]


def column(recs: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of the records holding a finite ``key``."""
    kept = [r for r in recs if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    return np.array([r["step"] for r in kept], float), np.array([r[key] for r in kept], float)


def summarize(recs: list[dict[str, Any]], diverged: bool, total_steps: int) -> dict[str, Any]:
    """One run: its losses at initialization and at the end, and its logit statistics over steps."""
    steps, test = column(recs, "test_ce")
    _, train = column(recs, "train_ce")
    finished = not diverged and steps.size > 0 and steps[-1] == total_steps
    entry: dict[str, Any] = {
        "diverged": diverged, "finished": bool(finished),
        "initial_test_ce": float(test[0]), "initial_train_ce": float(train[0]),
        "final_test_ce": float(test[-1]) if finished else None,
        "final_train_ce": float(train[-1]) if finished else None,
        "final_test_acc": float(recs[-1]["test_acc"]) if finished else None,
    }
    for key in ("attn_max_logit", "log_z", "max_abs_logit"):
        _, v = column(recs, key)
        entry[f"{key}_initial"] = float(v[0]) if v.size else None
        entry[f"{key}_final"] = float(v[-1]) if v.size else None
    _, v = column(recs, "attn_max_logit")
    entry["attn_max_logit_max"] = float(v.max()) if v.size else None
    _, v = column(recs, "log_z")
    entry["log_z_max_abs"] = float(np.abs(v).max()) if v.size else None
    _, v = min_entropy(recs)
    entry["attn_entropy_initial"] = float(v[0]) if v.size else None
    entry["attn_entropy_min"] = float(v.min()) if v.size else None
    return entry


def min_entropy(recs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)``: the smallest mean attention entropy over the layers, per monitored step."""
    keys = sorted({k for r in recs for k in r if k.startswith("attn_entropy/")})
    kept = [r for r in recs if keys and all(isinstance(r.get(k), int | float) and math.isfinite(r[k]) for k in keys)]
    return (np.array([r["step"] for r in kept], float),
            np.array([min(r[k] for k in keys) for r in kept], float))


def sensitivity(losses: list[float | None], initial: list[float]) -> dict[str, Any]:
    """Wortsman et al.'s LR sensitivity ``mean_η min(L(η), L₀) − min_η L(η)`` (a run that did not
    finish, or ended above its loss at initialization, counts as L₀)."""
    capped = [min(loss, l0) if loss is not None and math.isfinite(loss) else l0
              for loss, l0 in zip(losses, initial, strict=True)]
    best = min(capped)
    return {"lr_sensitivity": float(np.mean(capped) - best), "min_loss": float(best),
            "capped_losses": [float(c) for c in capped]}


def loss_figure(lrs: list[float], table: dict[str, dict[str, Any]], unigram: float, title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.6, 4.6), layout="constrained")
    l0 = []
    for j, (name, entry) in enumerate(table.items()):
        runs = [entry["runs"][f"lr{lr:g}"] for lr in lrs]
        y = np.array([r["final_test_ce"] if r["final_test_ce"] is not None else np.nan for r in runs])
        label = f"{VARIANTS[name][2]} (LR sensitivity {entry['lr_sensitivity']:.3f})"
        ax.plot(lrs, y, "o-", color=f"C{j}", lw=1.4, label=label)
        bad = np.isnan(y)
        if bad.any():  # diverged: drawn at L₀, as the sensitivity counts them
            ax.plot(np.array(lrs)[bad], [runs[i]["initial_test_ce"] for i in np.flatnonzero(bad)], "x",
                    color=f"C{j}", ms=9, mew=2)
        l0.extend(r["initial_test_ce"] for r in runs)
    ax.axhline(float(np.mean(l0)), color="0.3", ls="--", lw=1.0, label="L₀: loss at initialization (× = diverged)")
    ax.axhline(unigram, color="0.5", ls=":", lw=1.2, label="character frequencies only (unigram)")
    ax.set_xscale("log")
    ax.set(xlabel="peak learning rate η", ylabel="final validation loss (CE, nats per character)", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(frameon=False, fontsize=7.5, loc="upper left", bbox_to_anchor=(0.0, 0.93))
    return fig


def growth_figure(lrs: list[float], runs: dict[str, dict[float, list[dict[str, Any]]]], title: str):
    import matplotlib.pyplot as plt
    from matplotlib import colormaps

    fig, axes = plt.subplots(3, len(runs), figsize=(4.0 * len(runs), 9.0), layout="constrained",
                             sharex=True, sharey="row", squeeze=False)
    colors = colormaps["viridis"](np.linspace(0.0, 0.9, len(lrs)))
    for j, (name, by_lr) in enumerate(runs.items()):
        for lr, color in zip(lrs, colors, strict=True):
            recs = by_lr[lr]
            axes[0, j].semilogy(*column(recs, "attn_max_logit"), color=color, lw=1.2, label=f"η = {lr:g}")
            axes[1, j].plot(*min_entropy(recs), color=color, lw=1.2)
            axes[2, j].plot(*column(recs, "log_z"), color=color, lw=1.2)
        axes[0, j].set_title(VARIANTS[name][2])
        axes[2, j].axhline(0.0, color="0.5", lw=0.8)
        axes[2, j].set_xlabel("step")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("max |qᵀk|/√d (all layers)")
    axes[1, 0].set_ylabel("attention entropy (nats; lowest layer)")
    axes[2, 0].set_ylabel("mean log Z of the output softmax")
    axes[0, 0].legend(frameon=False, fontsize=7)
    fig.suptitle(title, fontsize=11)
    return fig


def run(opts: Options) -> dict:
    from landscape.checkpoints import RunDir

    lrs = [float(lr) for lr in opts["lrs"]]
    unigram = unigram_loss(opts)
    numbers: dict[str, Any] = {"lrs": lrs, "betas": BETAS, "z_loss_weight": Z_LOSS,
                               "loss": "final validation cross-entropy (test_ce: no z-loss term), nats per character",
                               "unigram_test_ce": unigram}
    runs: dict[str, dict[float, list[dict[str, Any]]]] = {}
    for name, (qk, z, _) in VARIANTS.items():
        entry: dict[str, Any] = {"qk_layernorm": qk, "z_loss": z, "runs": {}}
        runs[name] = {}
        for lr in lrs:
            run_name = f"{name}-lr{lr:g}"
            diverged = train_or_reuse(opts, run_name, config(opts, lr, qk, z))
            runs[name][lr] = records(opts, run_name)
            total = int(RunDir(opts.out / run_name).meta["total_steps"])
            entry["runs"][f"lr{lr:g}"] = summarize(runs[name][lr], diverged, total)
        numbers.setdefault("steps", total)
        rs = [entry["runs"][f"lr{lr:g}"] for lr in lrs]
        entry.update(sensitivity([r["final_test_ce"] for r in rs], [r["initial_test_ce"] for r in rs]))
        train_rs = sensitivity([r["final_train_ce"] for r in rs], [r["initial_train_ce"] for r in rs])
        entry["lr_sensitivity_train"] = train_rs["lr_sensitivity"]
        entry["best_lr"] = lrs[int(np.argmin(entry["capped_losses"]))]
        numbers[name] = entry
        say(f"[{opts.name}] {name}: LR sensitivity {entry['lr_sensitivity']:.3f} (train {entry['lr_sensitivity_train']:.3f}),"
            f" best {entry['min_loss']:.3f} at η {entry['best_lr']:g}; final loss per η: "
            + ", ".join(f"{lr:g}: {c:.3f}" for lr, c in zip(lrs, entry["capped_losses"], strict=True))
            + "; max attn logit per η: "
            + ", ".join(f"{r['attn_max_logit_max']:.3g}" if r["attn_max_logit_max"] is not None else "-" for r in rs)
            + "; min attn entropy per η: "
            + ", ".join(f"{r['attn_entropy_min']:.3g}" if r["attn_entropy_min"] is not None else "-" for r in rs))
    model = f"{opts['layers']}-layer width-{opts['width']} char transformer"
    save(opts, loss_figure(lrs, {n: numbers[n] for n in VARIANTS}, unigram, f"Final loss vs learning rate ({model})"),
         "final_loss_vs_lr")
    save(opts, growth_figure(lrs, runs, f"Attention logits, attention entropy and log Z over training ({model}, "
                                        "AdamW, warmup + cosine)"), "logit_growth")
    return numbers


if __name__ == "__main__":
    sys.exit(main(run, "transformer_instability", __doc__, SCALES, SMOKE))
