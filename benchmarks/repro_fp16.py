"""Reproduction 3: fp16 training needs loss scaling (Micikevicius et al. 2018).

Runs examples/repro_fp16_underflow.yaml (grid: precision fp32 / bf16 / fp16 with dynamic loss
scaling / fp16_noscale) once per seed as stabsweep sweeps, on a regression whose gradients are
small enough to underflow in fp16 (benchmarks/repro_underflow.py). Prints, per precision, the
fraction of parameter-gradient entries that were exactly zero (underflowed), the skipped
overflow steps and the final eval loss; writes a figure (benchmarks/results/fp16.png) and the
README block (benchmarks/results/fp16.md).

The stability map (lr x clip threshold) does not apply here: the grid has one categorical
axis and nothing explodes; the figure shows zero-gradient fraction and eval loss instead.

    python benchmarks/repro_fp16.py            # seeds 0 1 2, the spec's 800 steps
    python benchmarks/repro_fp16.py --steps 40 --seeds 0   # smoke test
"""

from __future__ import annotations

import statistics

from repro_common import (
    RESULTS,
    ROOT,
    machine,
    markdown_table,
    mean_sd,
    sweep_from_cli,
    write_block,
)

SPEC = ROOT / "examples" / "repro_fp16_underflow.yaml"
PRECISIONS = ("fp32", "bf16", "fp16", "fp16_noscale")
LABELS = {"fp32": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 + dynamic loss scaling",
          "fp16_noscale": "fp16, no loss scaling"}


def main() -> None:
    df, wall, args = sweep_from_cli(SPEC, __doc__)

    stats: dict[str, dict[str, list[float]]] = {}
    rows = []
    for prec in PRECISIONS:
        cell = df[df["params_precision"] == prec]
        done = cell[cell["outcome"] == "complete"]
        s = {"zero": done["eval_zero_grad_frac"].astype(float).tolist(),
             "loss": done["eval_eval_loss"].astype(float).tolist(),
             "overflow": cell["overflow_count"].astype(float).tolist()}
        stats[prec] = s
        rows.append([LABELS[prec], f"{len(done)}/{len(cell)}", _pct(s["zero"]),
                     f"{statistics.mean(s['overflow']):g}" if s["overflow"] else "-",
                     mean_sd(s["loss"], 4)])
    table = markdown_table(["precision", "completed", "zero (underflowed) gradient entries",
                            "skipped overflow steps (mean)", "final eval loss (MSE / var)"],
                           rows)

    def within_spread(prec: str) -> str:
        """|mean - fp32 mean| against 2 x the larger seed sd of the two."""
        a, b = stats["fp32"]["loss"], stats[prec]["loss"]
        if len(a) < 2 or len(b) < 2:
            return "n/a (one seed)"
        gap = abs(statistics.mean(b) - statistics.mean(a))
        spread = 2 * max(statistics.stdev(a), statistics.stdev(b))
        return (f"{'within' if gap <= spread else 'outside'} fp32's seed spread "
                f"(|gap| {gap:.4f} vs 2 sd {spread:.4f})")

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
    names = [p.replace("_", "\n") for p in PRECISIONS]
    for ax, key, label in ((axes[0], "zero", "zero-gradient fraction"),
                           (axes[1], "loss", "final eval loss (MSE / var)")):
        means = [statistics.mean(stats[p][key]) if stats[p][key] else 0 for p in PRECISIONS]
        sds = [statistics.stdev(stats[p][key]) if len(stats[p][key]) > 1 else 0
               for p in PRECISIONS]
        ax.bar(names, means, yerr=sds, color=["#4c72b0", "#55a868", "#8172b2", "#c44e52"],
               capsize=3)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.suptitle(f"underflow regression, {len(args.seeds)} seeds", fontsize=9)
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / "fp16.png"
    fig.savefig(png, dpi=90, bbox_inches="tight")
    plt.close(fig)

    steps = args.steps or 800
    text = f"""### 3. fp16 needs loss scaling (Micikevicius et al. 2018)

A workload where small gradients underflow in fp16 (`benchmarks/repro_underflow.py`: a 4-layer
tanh MLP regressing a fixed random teacher whose outputs, like the student's initial ones, are
at 1e-3 scale, so gradients sit around fp16's smallest subnormal, 6e-8). Adam (lr 1e-4, eps
1e-12 so eps does not swamp such gradients in any precision), {steps} steps, `on_spike: stop`.
Grid sweep `examples/repro_fp16_underflow.yaml` over `precision`, seeds
{' '.join(map(str, args.seeds))}. Zero-gradient fraction: parameter-gradient entries exactly 0
after backward, over all steps (fp32 gives practically none with tanh). `fp16` is GradScaler
with its defaults (init 2^16, growth 2, backoff 0.5, interval 2000); `fp16_noscale` is the
precision value added for this reproduction (fp16 autocast, no scaler).

{table}

![fp16](benchmarks/results/fp16.png)

Result: final eval loss of bf16 is {within_spread('bf16')}; of fp16 with loss scaling
{within_spread('fp16')}; of fp16 without loss scaling {within_spread('fp16_noscale')}.

`python benchmarks/repro_fp16.py`: {wall / 60:.1f} min on {machine()}.
"""
    write_block("fp16", text, [png])


def _pct(values: list[float]) -> str:
    """Mean ± sd as percentages, 3 significant digits (underflow in scaled fp16 is tiny)."""
    if not values:
        return "-"
    sd = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
    return f"{statistics.mean(values) * 100:.3g} % ± {sd:.2g}"


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


if __name__ == "__main__":
    main()
