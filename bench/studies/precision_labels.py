"""How many images change label when a model calibrated in fp32 scores in bf16 (issue: thresholds
follow the path). Scores every test image of a run's data with fp32 and with bf16 autocast, labels
both with the checkpoint's stored (fp32-calibrated) thresholds by the one decision rule, and counts
the flips. Run from the repository root:

    python3 -m bench.studies.precision_labels RUN_DIR --out bench/results

Writes ``precision-labels-cpu-<date>.json`` into ``--out``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
from pathlib import Path

import numpy as np
import torch

from inp_former.inference import InferenceConfig
from inp_former.predictor import Predictor
from inp_former.runtime import cpu_capabilities
from inp_former.settings import category_samples, resolve_categories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    scored = {}
    for precision in ("fp32", "bf16"):
        predictor = Predictor.from_checkpoint(args.run_dir, "cpu", InferenceConfig(precision=precision))
        paths = [s.path for c in resolve_categories(predictor.cfg.data)
                 for s in category_samples(predictor.cfg.data, c, "test")]
        scored[precision] = predictor.predict_batch(paths)
    pairs = list(zip(scored["fp32"], scored["bf16"]))
    flips = [a.path for a, b in pairs if a.label != b.label]
    rel = [abs(a.score - b.score) / abs(a.score) for a, b in pairs]
    map_rel = max(float(np.abs(a.map - b.map).max() / np.abs(a.map).max()) for a, b in pairs)
    margin = sorted(abs(a.score - a.threshold) / a.threshold for a, _ in pairs)
    record = {"date": _dt.date.today().isoformat(), "run_dir": str(args.run_dir), "images": len(pairs),
              "label_changes": len(flips), "changed": flips, "max_score_rel_diff": max(rel),
              "max_map_rel_diff_of_max": map_rel, "closest_score_to_threshold_rel": margin[0],
              "cpu": cpu_capabilities().as_dict(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "commit": subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                                       text=True).stdout.strip(),
              "command": f"python3 -m bench.studies.precision_labels {args.run_dir} --out {args.out}"}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"precision-labels-cpu-{record['date']}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{len(flips)} of {len(pairs)} labels change from fp32 to bf16; scores differ by at most "
          f"{max(rel):.2%}, maps by {map_rel:.2%} of their maximum; wrote {path}")


if __name__ == "__main__":
    main()
