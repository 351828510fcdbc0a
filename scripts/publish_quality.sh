#!/usr/bin/env bash
# Publish the quality-at-full-2:4 measurements (issue 23) into docs/RESULTS.md, by script, nothing retyped.
#
# Inputs: the methods.json files that these `bench methods` runs wrote (each resumable; re-running one reuses
# every finished run of its --work folder), all on fmnist-dit, 500 DDIM-25 samples against 1,000 test images,
# the fine-tuning defaults (lr 3e-5), OMP_NUM_THREADS=1:
#   600 steps, seed 0, every method:  --steps 600 --seeds 0 --out reports/fmnist-dit-s600
#   600 steps, 3 seeds, the main ones: --steps 600 --seeds 0,1,2 --out reports/fmnist-dit-s600-seeds
#   2400 steps:                       --steps 2400 --seeds 0,1[,2] --out reports/fmnist-dit-s2400
#   9600 steps:                       --steps 9600 --seeds 0 --out reports/fmnist-dit-s9600
#   dense control at lr 3e-4:         --steps 600 --lr 3e-4 --seeds 0 --out reports/fmnist-dit-s600-lr3e-4
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

# 600 steps: the 3-seed runs first (they win where a method x seed is in both), then seed 0 of every method.
$B merge reports/fmnist-dit-s600-seeds/methods.json reports/fmnist-dit-s600/methods.json --out $R-s600
for f in $R-s600 reports/fmnist-dit-s2400 reports/fmnist-dit-s9600 reports/fmnist-dit-s600-lr3e-4; do
    [ -f $f/methods.json ] && $B report --out $f
done

# The budget curve: the 600-step file first, so the starting model's band has its 3 seeds.
budget_files=($R-s600/methods.json reports/fmnist-dit-s2400/methods.json)
[ -f reports/fmnist-dit-s9600/methods.json ] && budget_files+=(reports/fmnist-dit-s9600/methods.json)
$B budgets "${budget_files[@]}" --out $R-budgets

publish() {  # folder, markdown, section title, intro
    $PY scripts/publish_report.py "$1" --markdown "$2" --images "docs/images/$(basename "$1")" \
        --json-dir "docs/results/$(basename "$1")" --title "$3" --intro "$4"
}
INTRO="Measured $WHEN; one torch thread per run, two runs at a time. Written by scripts/publish_quality.sh \
from the runs' JSON (docs/results/), the tables and plots as \`bench report\`/\`bench budgets\` print them."
publish $R-budgets budgets.md "Quality at full 2:4: the budget curve (issue 23)" "$INTRO"
publish $R-s600 report.md "Quality at full 2:4: 600 steps, every method (issue 23)" "$INTRO"
publish reports/fmnist-dit-s2400 report.md "Quality at full 2:4: 2400 steps (issue 23)" "$INTRO"
[ -f reports/fmnist-dit-s9600/report.md ] &&
    publish reports/fmnist-dit-s9600 report.md "Quality at full 2:4: 9600 steps (issue 23)" "$INTRO"
[ -f reports/fmnist-dit-s600-lr3e-4/report.md ] &&
    publish reports/fmnist-dit-s600-lr3e-4 report.md \
        "Fine-tuning that does no harm: the dense control at the old rate 3e-4 (issue 23)" "$INTRO"

# The README's two pictures: the budget curve and the 2400-step samples (starting model beside the recipe).
cp docs/images/q23-budgets/budgets.png docs/images/readme-budgets.png
grid=$(ls docs/images/fmnist-dit-s2400/*grid*.png | head -1)
cp "$grid" docs/images/readme-samples.png
echo "published; README pictures from docs/images/q23-budgets/budgets.png and $grid"
