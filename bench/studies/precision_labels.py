"""How many images change label when a model calibrated in fp32 scores on the faster paths (issue:
thresholds follow the path). Scores every test image of a run's data with the fp32 reference
(torch eager), with torch's bf16 autocast (``--runtime torch``) and with the defaults (``auto``:
OpenVINO where the ``openvino`` extra is installed on a CPU with native bf16), labels each with the
checkpoint's stored thresholds by the one decision rule, counts the flips against fp32, and gives
each path's image AUROC (mean over categories). Run from the repository root:

    python3 -m bench.studies.precision_labels RUN_DIR --out bench/results

Writes ``precision-labels-cpu-<date>.json`` into ``--out`` (``--name`` to choose another file name).
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
    parser.add_argument("--name", default=None, help="file name [default: precision-labels-cpu-<date>.json]")
    args = parser.parse_args()
    import os

    from inp_former.quantize import mean_category_auroc

    os.environ.pop("INPCTL_RUNTIME", None)   # auto means auto here
    paths_of = {"fp32": InferenceConfig(precision="fp32"), "torch bf16": InferenceConfig(runtime="torch"),
                "default": InferenceConfig()}
    scored, described = {}, {}
    for name, inference in paths_of.items():
        predictor = Predictor.from_checkpoint(args.run_dir, "cpu", inference)
        samples = [s for c in resolve_categories(predictor.cfg.data)
                   for s in category_samples(predictor.cfg.data, c, "test")]
        scored[name], described[name] = predictor.predict_batch([s.path for s in samples]), predictor.scorer.describe()
    truth = np.array([s.label for s in samples])
    categories = np.array([s.category for s in samples])
    record = {"date": _dt.date.today().isoformat(), "run_dir": str(args.run_dir), "images": len(samples),
              "paths": {}, "cpu": cpu_capabilities().as_dict(), "threads": torch.get_num_threads(),
              "torch": torch.__version__,
              "commit": subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                                       text=True).stdout.strip(),
              "command": f"python3 -m bench.studies.precision_labels {args.run_dir} --out {args.out}"
                         + (f" --name {args.name}" if args.name else "")}
    reference = scored["fp32"]
    margin = sorted(abs(a.score - a.threshold) / a.threshold for a in reference)
    record["closest_score_to_threshold_rel"] = margin[0]
    for name, predictions in scored.items():
        pairs = list(zip(reference, predictions))
        record["paths"][name] = {
            "scored_by": described[name],
            "label_changes": sum(a.label != b.label for a, b in pairs),
            "changed": [a.path for a, b in pairs if a.label != b.label],
            "max_score_rel_diff": max(abs(a.score - b.score) / abs(a.score) for a, b in pairs),
            "max_map_rel_diff_of_max": max(float(np.abs(a.map - b.map).max() / np.abs(a.map).max()) for a, b in pairs),
            "image_auroc": mean_category_auroc(truth, np.array([p.score for p in predictions]), categories)}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / (args.name or f"precision-labels-cpu-{record['date']}.json")
    path.write_text(json.dumps(record, indent=2) + "\n")
    for name, row in record["paths"].items():
        print(f"{name}: {row['label_changes']} of {len(samples)} labels change from fp32; image AUROC "
              f"{row['image_auroc']:.2f}; scores differ by at most {row['max_score_rel_diff']:.2%}, maps by "
              f"{row['max_map_rel_diff_of_max']:.2%} of their maximum ({row['scored_by']})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
