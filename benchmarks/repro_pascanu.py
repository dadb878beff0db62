"""Reproduction 1: gradient-norm clipping moves the RNN's learning-rate cliff
(Pascanu, Mikolov & Bengio 2013).

Runs examples/repro_pascanu_clipping.yaml (grid: lr x {no clipping, norm clipping at 0.3, 1,
3}) once per seed as stabsweep sweeps, prints the explosion probability per lr and clip
setting and the best eval MSE of each, writes the stability map
(benchmarks/results/pascanu_map.png) and the README block (benchmarks/results/pascanu.md).

    python benchmarks/repro_pascanu.py            # seeds 0 1 2, ~the spec's 3000 steps
    python benchmarks/repro_pascanu.py --steps 200 --seeds 0   # smoke test
"""

from __future__ import annotations

import math
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

SPEC = ROOT / "examples" / "repro_pascanu_clipping.yaml"
CHANCE_MSE = 1.0 / 6.0


def main() -> None:
    df, wall, args = sweep_from_cli(SPEC, __doc__)

    df["clip"] = [("none" if m == "none" else f"{float(t):g}")
                  for m, t in zip(df["params_clip_method"], df["params_clip_threshold"],
                                  strict=True)]
    df["lr"] = df["params_lr"].astype(float)
    clips = ["none", *sorted((c for c in df["clip"].unique() if c != "none"), key=float)]
    lrs = sorted(df["lr"].unique())

    # explosion probability: lr rows x clip columns, "exploded/trials"
    rows = []
    for lr in lrs:
        row: list[object] = [f"{lr:g}"]
        for clip in clips:
            cell = df[(df["lr"] == lr) & (df["clip"] == clip)]
            row.append(f"{int(cell['exploded'].sum())}/{len(cell)}")
        rows.append(row)
    boom_table = markdown_table(["lr", *[f"clip {c}" for c in clips]], rows)

    # the cliff: smallest lr at which more than half the seeds exploded
    def cliff(clip: str) -> str:
        for lr in lrs:
            cell = df[(df["lr"] == lr) & (df["clip"] == clip)]
            if len(cell) and cell["exploded"].mean() > 0.5:
                return f"{lr:g}"
        return f"> {lrs[-1]:g}"

    # best config per clip setting: the (lr, clip) cell with the lowest mean eval MSE over
    # its seeds, among cells where no seed exploded
    best_rows = []
    best: dict[str, float] = {}
    for clip in clips:
        cand = []
        for lr in lrs:
            cell = df[(df["lr"] == lr) & (df["clip"] == clip)]
            if len(cell) and not cell["exploded"].any():
                vals = cell["eval_eval_loss"].astype(float).tolist()
                cand.append((statistics.mean(vals), lr, vals))
        if not cand:
            best_rows.append([clip, cliff(clip), "-", "-", "-", "no stable cell"])
            continue
        mean, lr, vals = min(cand)
        best[clip] = mean
        beats = sum(v < CHANCE_MSE for v in vals)
        best_rows.append([clip, cliff(clip), f"{lr:g}", mean_sd(vals),
                          f"{mean / CHANCE_MSE:.2f}", f"{beats}/{len(vals)} seeds"])
    best_table = markdown_table(
        ["clip threshold", "cliff: lr where > half explode", "best stable lr",
         "eval MSE (mean ± sd over seeds)", "MSE / chance", "seeds below chance 0.167"],
        best_rows)

    from stability.plots import plot_stability_map

    frame = df[df["outcome"].isin(["complete", "exploded", "slow"])]
    map_df = frame.assign(clip_threshold=[math.nan if c == "none" else float(c)
                                          for c in frame["clip"]])[
        ["lr", "clip_threshold", "exploded"]]
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = plot_stability_map(
        map_df, RESULTS / "pascanu_map.png", x="lr", y="clip_threshold", bins=8,
        title=f"rnn_adding T=20, SGD: explosion probability, {len(map_df)} trials "
              f"({len(args.seeds)} seeds)")

    unclipped_best = best.get("none", math.nan)
    clipped = {c: v for c, v in best.items() if c != "none"}
    clipped_best = min(clipped.values()) if clipped else math.nan
    steps = args.steps or 3000
    verdict_cliff = (f"the cliff is at lr {cliff('none')} without clipping and at lr "
                     + ", ".join(f"{cliff(c)} (clip {c})" for c in clips if c != "none"))
    text = f"""### 1. Clipping moves the RNN's learning-rate cliff (Pascanu et al. 2013)

`rnn_adding`, sequence length 20 (hidden 32, batch 32: what 2 cores afford for 72 trials of
3,000 steps), sum-of-two-U[0,1] target: chance MSE 0.167. Plain SGD (momentum 0), {steps} steps,
`on_spike: stop` (no update dropped, as in the paper). Grid sweep
`examples/repro_pascanu_clipping.yaml` (lr x clip threshold incl. none), seeds
{' '.join(map(str, args.seeds))}: {len(df)} trials.

Exploded trials / trials per cell:

{boom_table}

Best stable configuration of each clip setting (a cell counts when none of its seeds exploded):

{best_table}

![stability map](benchmarks/results/pascanu_map.png)

Result: {verdict_cliff}. Best eval MSE: clipped {clipped_best:.3f}, unclipped
{unclipped_best:.3f} (chance 0.167).

`python benchmarks/repro_pascanu.py`: {wall / 60:.1f} min on {machine()}.
"""
    write_block("pascanu", text, [png])


if __name__ == "__main__":
    main()
