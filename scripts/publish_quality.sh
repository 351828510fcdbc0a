#!/usr/bin/env bash
# Publish the quality-at-full-2:4 measurements (issue 23) into docs/RESULTS.md, by script, nothing retyped.
#
# Inputs: the methods.json files that these `bench methods` runs wrote (each resumable; re-running one reuses
# every finished run of its --work folder), all on fmnist-dit, 500 DDIM-25 samples against 1,000 test images,
# the fine-tuning defaults (lr 3e-5), OMP_NUM_THREADS=1:
#   600 steps, seed 0:                --steps 600 --seeds 0 --out reports/fmnist-dit-s600 (and -s600-extra)
#   600 steps, seeds 1 and 2:         --steps 600 --seeds 1 --out reports/fmnist-dit-s600-seed1 (2: -seed2)
#   600 steps, the recipe knobs:      --steps 600 --seeds 0 --methods fixed+teacher+feat-sparsegpt --out
#                                     reports/fmnist-dit-s600-knob-teacher (--seeds 1,2: -knob-teacher-s12; srste+kd+feat+ramp-sparsegpt: -knob-ramp)
#   1200, 2400 and 9600 steps:        --steps N --seeds 0 --out reports/fmnist-dit-sN
#   2400 steps, seeds 1 and 2:        --steps 2400 --seeds 1 --out reports/fmnist-dit-s2400-seed1 (seed 2 in two
#                                     files, -seed2 and -seed2-srste, so the two queues could run side by side)
#   2400 steps, teacher alone:       --steps 2400 --seeds S --methods fixed+teacher+feat-sparsegpt
#                                     --out reports/fmnist-dit-s2400-teacher-sS
#   9600 steps, seed 1:               --steps 9600 --seeds 1 --out reports/fmnist-dit-s9600-seed1
#   dense control at lr 3e-4:         --steps 600 --lr 3e-4 --seeds 0 --out reports/fmnist-dit-s600-lr3e-4
#   the sparse rate at 600 steps:     --steps 600 --lr 1e-4 --seeds 0 --methods start,fixed+kd+feat-sparsegpt
#                                     --out reports/fmnist-dit-s600-lr1e-4; --lr 3e-4 --methods
#                                     start,dense,fixed+kd+feat-sparsegpt --out reports/fmnist-dit-s600-lr3e-4-sparse
#                                     (its --work is the dense control's, so the dense run is reused)
# (each with --model fmnist-dit --dense-checkpoint runs/fmnist-dit/dense/checkpoint --num-samples 500
# --ref-num 1000 and its own --work runs/fmnist-dit/bench-methods/<name>; the commands are in docs/RESULTS.md).
#
#   bash scripts/publish_quality.sh "2026-12-06, the 2-core CPU machine"
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WHEN=${1:?"say when and where the runs ran, e.g. '2026-12-06, the 2-core CPU machine'"}
B="$PY -m sparse_deploy.bench -q"
R=reports/q23
rm -rf $R-s600 $R-s2400 $R-s9600 $R-budgets $R-calibration  # this script's own derived folders, rebuilt from the runs below

# 600 steps: one methods.json from the four runs (one protocol; each method x seed in one of them).
s600=(reports/fmnist-dit-s600/methods.json)
for f in extra knobs knob-teacher knob-teacher-s12 knob-ramp seed1 seed2; do
    [ -f reports/fmnist-dit-s600-$f/methods.json ] && s600+=(reports/fmnist-dit-s600-$f/methods.json)
done
$B merge "${s600[@]}" --out $R-s600
# 2400 and 9600 steps: seed 0 beside the later seeds, one methods.json per budget.
for n in 2400 9600; do
    files=()
    for f in reports/fmnist-dit-s$n reports/fmnist-dit-s$n-seed1 reports/fmnist-dit-s$n-seed2 \
        reports/fmnist-dit-s$n-seed2-srste reports/fmnist-dit-s$n-teacher-s{0,1,2}; do
        [ -f $f/methods.json ] && files+=($f/methods.json)
    done
    if [ ${#files[@]} -gt 1 ]; then $B merge "${files[@]}" --out $R-s$n; else cp -r "$(dirname "${files[0]}")" $R-s$n; fi
done
for f in $R-s600 reports/fmnist-dit-s1200 $R-s2400 $R-s9600 reports/fmnist-dit-s600-lr3e-4 \
    reports/fmnist-dit-s600-lr3e-4-sparse reports/fmnist-dit-s600-lr1e-4; do
    [ -f $f/methods.json ] && $B report --out $f
done

# The budget curve: the 600-step file first, so the starting model's band has its 3 seeds.
budget_files=($R-s600/methods.json)
budget_files+=(reports/fmnist-dit-s1200/methods.json $R-s2400/methods.json $R-s9600/methods.json)
$B budgets "${budget_files[@]}" --out $R-budgets
rm -rf docs/results/q23-budgets/sources  # the methods.json behind every point of the curve, copied afresh
mkdir -p docs/results/q23-budgets/sources
for f in "${budget_files[@]}"; do cp "$f" "docs/results/q23-budgets/sources/$(basename "$(dirname "$f")").json"; done

# The calibrated start's layer errors (coverage.json of each seed's one-shot SparseGPT run): SparseGPT's
# relative squared output error per layer on its calibration inputs beside the magnitude mask's on the same inputs.
$PY - "$R-calibration" runs/fmnist-dit/bench-methods/v2-s600-lr3e-5/oneshot-sparsegpt/seed*/coverage.json <<'PY'
import json, statistics, sys
from pathlib import Path
out, files = Path(sys.argv[1]), sys.argv[2:]
rows = []
for f in files:
    start = json.loads(Path(f).read_text())["mask_start"]
    errs = start["layers"].values()
    rows.append({"file": f, "calib_samples": start["calib_samples"], "layers": len(errs),
                 "sparsegpt_mean_error": statistics.fmean(e["error"] for e in errs),
                 "magnitude_mean_error": statistics.fmean(e["magnitude_error"] for e in errs)})
out.mkdir(parents=True, exist_ok=True)
(out / "calibration.json").write_text(json.dumps(rows, indent=1) + "\n")
lines = ["# Calibrated start", "", "| run | layers | calibration samples | mean relative output error, SparseGPT + refit "
         "| the same, magnitude mask |", "| --- | --- | --- | --- | --- |"]
lines += [f"| `{r['file']}` | {r['layers']} | {r['calib_samples']} | {r['sparsegpt_mean_error']:.4f} "
          f"| {r['magnitude_mean_error']:.4f} |" for r in rows]
# Whether learned masks move: SR-STE's flip rate (share of mask entries flipped per refresh, mean over layers
# and over the run's checkpoint intervals) from each 600-step SR-STE run's mask_flips.jsonl.
flips = []
bench = Path("runs/fmnist-dit/bench-methods")
for f in sorted(bench.glob("v2-s600-lr3e-5/srste*/seed*/mask_flips.jsonl")) + sorted(
    bench.glob("v2-s2400-lr3e-5/srste*/seed*/mask_flips.jsonl")
):
    records = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    rates = [statistics.fmean(r["layers"].values()) for r in records if r["layers"]]
    flips.append({"file": str(f), "mean_flip_rate": statistics.fmean(rates), "last_flip_rate": rates[-1]})
(out / "mask_flips.json").write_text(json.dumps(flips, indent=1) + "\n")
lines += ["", "SR-STE's mask flips (share of mask entries flipped per refresh, mean over layers):", "",
          "| run | mean over the run | last interval |", "| --- | --- | --- |"]
lines += [f"| `{r['file']}` | {r['mean_flip_rate']:.2e} | {r['last_flip_rate']:.2e} |" for r in flips]
# How far the learned masks end from where they started: the share of mask entries in which each SR-STE run's
# final masks differ from the calibrated start of its seed (the one-shot SparseGPT run's masks, which the fixed
# runs keep), over all 36 layers.
from safetensors.torch import load_file

moved = []
for f in sorted(bench.glob("v2-s*-lr3e-5/srste+kd+feat-sparsegpt/seed*/checkpoint/model.safetensors")):
    seed = f.parent.parent.name
    start_file = bench / "v2-s600-lr3e-5" / "oneshot-sparsegpt" / seed / "checkpoint" / "model.safetensors"
    if not start_file.is_file():
        continue
    final, start = load_file(f), load_file(start_file)
    keys = [k for k in start if k.endswith("weight_mask")]
    changed = sum(int((final[k] != start[k]).sum()) for k in keys)
    moved.append({"file": str(f.parent.parent), "steps": int(f.parts[-5].split("-")[1][1:]), "layers": len(keys),
                  "changed_share": changed / sum(start[k].numel() for k in keys)})
moved.sort(key=lambda r: (r["steps"], r["file"]))
(out / "masks_moved.json").write_text(json.dumps(moved, indent=1) + "\n")
lines += ["", "How far SR-STE's masks end from the calibrated start of the same seed (share of mask entries that "
          "differ, 36 layers):", "", "| run | fine-tuning steps | mask entries changed |", "| --- | --- | --- |"]
lines += [f"| `{r['file']}` | {r['steps']} | {r['changed_share']:.2%} |" for r in moved]
(out / "calibration.md").write_text("\n".join(lines) + "\n")
PY

publish() {  # folder, markdown, section title, intro[, section name: default the folder's name]
    local name=${5:-$(basename "$1")}
    $PY scripts/publish_report.py "$1" --markdown "$2" --images "docs/images/$name" \
        --json-dir "docs/results/$name" --title "$3" --intro "$4" --section "$name"
}
INTRO="Measured $WHEN; one torch thread per run, two runs at a time. Written by scripts/publish_quality.sh \
from the runs' JSON (docs/results/), the tables and plots as \`bench report\`/\`bench budgets\` print them."
publish $R-budgets budgets.md "Quality at full 2:4: the budget curve (issue 23)" "$INTRO"
publish $R-s600 report.md "Quality at full 2:4: 600 steps, every method (issue 23)" "$INTRO"
publish $R-calibration calibration.md "Quality at full 2:4: the calibrated start's layer errors, how far SR-STE's masks move (issue 23)" "$INTRO"
publish $R-s2400 report.md "Quality at full 2:4: 2400 steps (issue 23)" "$INTRO" fmnist-dit-s2400
publish $R-s9600 report.md "Quality at full 2:4: 9600 steps (issue 23)" "$INTRO" fmnist-dit-s9600
# The rate: the dense control at 3e-4 (the sparse recipe beside it once that run exists, same section), and the
# sparse recipe at 1e-4.
lr3=reports/fmnist-dit-s600-lr3e-4
[ -f $lr3-sparse/report.md ] && lr3=$lr3-sparse
publish $lr3 report.md "Fine-tuning that does no harm: the rate 3e-4 against the default 3e-5 (issue 23)" "$INTRO" \
    fmnist-dit-s600-lr3e-4
[ -f reports/fmnist-dit-s600-lr1e-4/report.md ] &&
    publish reports/fmnist-dit-s600-lr1e-4 report.md "Quality at full 2:4: the sparse recipe at the rate 1e-4 (issue 23)" \
        "$INTRO"

# The README's two pictures and its table: the budget curve and the 2400-step samples (starting model beside the recipe).
cp docs/images/q23-budgets/budgets.png docs/images/readme-budgets.png
grid=docs/images/fmnist-dit-s2400/samples_dense_vs_sparse.png
cp "$grid" docs/images/readme-samples.png
$PY scripts/readme_quality.py  # the README's table of figures, from the JSON just published
echo "published; README pictures from docs/images/q23-budgets/budgets.png and $grid"
