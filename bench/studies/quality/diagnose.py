"""Per-group diagnosis of a kept training run: which encoder group carries the anomaly signal?
With ``--border``: where on the image are the errors (the border study of docs/quality.md)?

    python3 -m bench.studies.quality.diagnose RUN_DIR RECIPE DATASET [--set ...] [--border]

Loads RUN_DIR/checkpoint.pt onto the recipe's (wrapped) encoder and, on the test split, scores each
reconstruction group alone (per-token 1 - cos(encoder group, decoder group), same upsampling/blur/
top-1% as evaluation) and their mean (the method's map); prints image/pixel AUROC for each, and the
mean token distance on normal test images per group (the reconstruction floor).

``--border`` prints instead, for INP-Former's map (``recon``: mean over groups of 1 - cos) and for
the nearest-neighbour baseline on the same fused tokens (``nn``): the mean token error on normal
test images on the outermost ring of tokens and inside it, with its row and column means; in how
many normal images the largest token error lies on the ring; and image AUROC from the largest
token error (and the top-3 mean) over all tokens and over the inside tokens only, which is what
the border costs the image score (a proxy: evaluation scores the top 1% of the upsampled, blurred
map).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from inp_former.data import AnomalyDataset, image_transform, mask_transform, masks_for_metrics  # noqa: E402
from inp_former.metrics import category_metrics  # noqa: E402
from inp_former.model import INPFormer  # noqa: E402
from inp_former.settings import category_samples  # noqa: E402
from inp_former.train import resolve_categories  # noqa: E402
from kernels.scoring import top_k_count, upsample_token_map  # noqa: E402

from .recipes import build_wrapped_encoder, parse_sets, recipe_config  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("recipe")
    parser.add_argument("dataset")
    parser.add_argument("--set", action="append", default=[], dest="sets",
                        help="section.field=JSON (a config field) or name=JSON (a runtime option, e.g. reflect_pad=32)")
    parser.add_argument("--border", action="store_true", help="where on the image the errors are")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg, runtime = recipe_config(args.recipe, args.dataset, parse_sets(args.sets))
    encoder, cfg = build_wrapped_encoder(cfg, runtime, cache=False)
    model = INPFormer(cfg.model, encoder=encoder)
    payload = torch.load(args.run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    model.load_trainable_state_dict(payload["state_dict"])
    model.eval()
    if args.border:
        from .border import border_report

        border_report(model, encoder, cfg, resolve_categories(cfg))
        return 0
    mc = cfg.model
    categories = resolve_categories(cfg)
    for category in categories:
        loader = DataLoader(AnomalyDataset(category_samples(cfg.data, category, "test"),
                                           image_transform(mc.resize, mc.crop), mask_transform(mc.resize, mc.crop)),
                            batch_size=16)
        per = {}   # name -> lists
        labels, masks = [], []
        for batch in loader:
            images = batch["image"]
            with torch.no_grad():
                out = model(images)
            distances = [1 - F.cosine_similarity(e, d, dim=-1) for e, d in zip(out.encoder_groups, out.decoder_groups)]
            variants = {f"group{i}": d for i, d in enumerate(distances)}
            variants["mean (method)"] = torch.stack(distances).mean(0)
            variants["prototype distance"] = out.prototype_distance
            for name, d in variants.items():
                maps = upsample_token_map(d.float(), image_size=images.shape[-1], out_size=mc.map_size,
                                          kernel_size=mc.blur_kernel, sigma=mc.blur_sigma)
                k = top_k_count(maps[0].numel(), mc.top_fraction)
                entry = per.setdefault(name, {"scores": [], "maps": [], "normal_mean": []})
                entry["scores"].append(maps.flatten(1).topk(k, dim=1).values.mean(1))
                entry["maps"].append(maps)
                normal = torch.as_tensor(batch["label"]) == 0
                if normal.any():
                    entry["normal_mean"].append(d[normal].mean().item())
            labels.append(torch.as_tensor(batch["label"]))
            masks.append(masks_for_metrics(batch["mask"], mc.map_size))
        labels_t, masks_t = torch.cat(labels), torch.cat(masks)
        for name, entry in per.items():
            m = category_metrics(labels_t, torch.cat(entry["scores"]), masks_t, torch.cat(entry["maps"]))
            floor = sum(entry["normal_mean"]) / max(1, len(entry["normal_mean"]))
            print(f"{category} {name}: I-AUROC {100 * m['i_auroc']:.1f} P-AUROC {100 * m['p_auroc']:.1f} "
                  f"AUPRO {100 * m['aupro']:.1f}; mean token distance on normal test images {floor:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
