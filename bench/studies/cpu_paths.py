"""What makes CPU scoring fast, measured side by side: precision, layouts, threads, oneDNN, graph
capture (torch.jit.freeze, torch.compile), ONNX Runtime, and the preprocessing's copies.

Every variant scores the same random images with the same random weights (speed does not depend
on the values) and is timed in ``--rounds`` rounds; in each round every variant runs ``--reps``
times, in an order rotated by one each round, so that a change of the shared machine's load falls on
all of them alike. Reported: the median over rounds of each variant's median time, and the median
of its per-round speed-up over the fp32 reference (both from the same round), with the largest map
difference to the reference (relative to the reference map's maximum) and the 1-minute load average.

    python3 -m bench.studies.cpu_paths --size 392 --batch 8 --out bench/results/cpu-paths-cpu-2026-12-06

Sections: the issue's yardstick (ViT-S/14, ``--size`` px, batch ``--batch``), the demo's CNN
(EfficientNet-Lite0, 224 px, token stride 16, batch 8) for the channels-last layout, and the
preprocessing of a 1024 px photo as ``inpctl predict`` does it (PIL resize, to tensor, crop,
normalise) against a variant that crops before converting and normalises in place.
"""
from __future__ import annotations

from inp_former.runtime import apply_env_defaults

apply_env_defaults()   # before torch loads libgomp, as the CLI's entry point does

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Iterator  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.studies.provenance import header_lines, provenance  # noqa: E402
from inp_former.config import ModelConfig, RunConfig  # noqa: E402
from inp_former.inference import choose_precision, score_batch  # noqa: E402
from inp_former.model import INPFormer  # noqa: E402
from kernels.dispatch import kernel_mode  # noqa: E402

Fn = Callable[[torch.Tensor], torch.Tensor]   # images -> maps
REFERENCE = "fp32 eager (reference)"


@contextlib.contextmanager
def torch_setting(get: Callable[[], Any], put: Callable[[Any], None], value: Any) -> Iterator[None]:
    """``put(value)`` inside the block, the previous ``get()`` restored after it."""
    before = get()
    put(value)
    try:
        yield
    finally:
        put(before)


def threads(count: int):
    return torch_setting(torch.get_num_threads, torch.set_num_threads, count)


def matmul_precision(level: str):
    return torch_setting(torch.get_float32_matmul_precision, torch.set_float32_matmul_precision, level)


def under(context: Callable[[], Any], fn: Fn) -> Fn:
    def run(images: torch.Tensor) -> torch.Tensor:
        with context():
            return fn(images)
    return run


def vit_variants(model: INPFormer, cfg: RunConfig, images: torch.Tensor, compile_model: bool,
                 log: Callable[[str], None]) -> tuple[dict[str, Fn], dict[str, Any]]:
    """{variant: images -> maps} for the ViT, and notes (build/compile times, failures)."""
    auto, _ = choose_precision("auto", "cpu")
    maps = lambda net, precision: (lambda x: score_batch(net, x, cfg, precision)[0])   # noqa: E731
    variants: dict[str, Fn] = {
        REFERENCE: under(lambda: kernel_mode("reference"), maps(model, "fp32")),
        f"auto ({auto} autocast): the default": maps(model, auto),
        "bf16 autocast, 1 thread": under(lambda: threads(1), maps(model, "bf16")),
        "fp32, oneDNN off (torch.backends.mkldnn)": under(lambda: torch.backends.mkldnn.flags(enabled=False),
                                                           maps(model, "fp32")),
        "fp32, matmul precision medium (oneDNN bf16 matmuls)": under(lambda: matmul_precision("medium"),
                                                                       maps(model, "fp32")),
    }
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    variants["bf16 autocast, channels-last"] = lambda x: score_batch(
        cl_model, x.contiguous(memory_format=torch.channels_last), cfg, "bf16")[0]
    stored = bf16_weights(model)
    variants["bf16 autocast, Linear/Conv weights stored bf16"] = maps(stored, "bf16")
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)   # weights cast once, not at every call
    variants["bf16 weights, no autocast"] = lambda x: score_batch(bf16_model, x.to(torch.bfloat16), cfg, "fp32")[0]
    notes: dict[str, Any] = {}
    for precision in ("fp32", "bf16"):
        name = f"torch.jit.trace + freeze, {precision}"
        try:
            started = time.perf_counter()
            variants[name] = frozen(model, cfg, images, precision)
            notes[name] = f"traced and frozen in {time.perf_counter() - started:.1f} s"
        except Exception as exc:   # a path that does not run here is a finding, not a crash
            notes[name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        log(f"{name}: {notes[name]}")
    if compile_model:
        compiled = torch.compile(model)
        name = f"torch.compile, {auto} autocast"
        started = time.perf_counter()
        try:
            score_batch(compiled, images, cfg, auto)
            notes[name] = f"first call (compiling) {time.perf_counter() - started:.1f} s"
            variants[name] = maps(compiled, auto)
        except Exception as exc:
            notes[name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        log(f"{name}: {notes[name]}")
    return variants, notes


def bf16_weights(model: INPFormer) -> INPFormer:
    """A copy whose Linear and Conv2d weights are stored in bf16: under bf16 autocast they are the
    very tensors autocast would cast them to at every call (same rounding), so the maps equal the
    autocast path's while the per-call weight casts disappear; norms and the rest stay fp32."""
    stored = copy.deepcopy(model)
    for module in stored.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            module.to(torch.bfloat16)
    return stored


def frozen(model: INPFormer, cfg: RunConfig, images: torch.Tensor, precision: str) -> Fn:
    """The export graph (images -> maps, scores, embeddings) traced (under bf16 autocast: the casts
    become graph ops, and freezing folds the weights' casts into constants), frozen and optimised
    for inference (oneDNN fusions)."""
    from inp_former.export import ExportableINPFormer, fixed_position_embedding
    from inp_former.inference import autocast

    wrapper = ExportableINPFormer(model, cfg).eval()
    with kernel_mode("reference"), fixed_position_embedding(model, cfg.model.crop), torch.no_grad(), \
            autocast("cpu", precision, cache=False):
        traced = torch.jit.trace(wrapper, (images,), check_trace=False)
    graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return graph(x)[0].float()
    return run


def onnx_variants(model: INPFormer, cfg: RunConfig, calibration: torch.Tensor,
                  log: Callable[[str], None]) -> tuple[dict[str, Fn], dict[str, Any], Any]:
    """ONNX Runtime: the fp32 export, the int8 export as ``inpctl export --int8`` writes it (encoder
    fp32), and int8 with the encoder quantised too (what export refuses on accuracy: speed only)."""
    from inp_former import quantize
    from inp_former.benchmarks.onnx_paths import onnx_missing
    from inp_former.export import export_onnx

    reason = onnx_missing()
    if reason:
        return {}, {"onnx": reason}, None
    import onnxruntime as ort

    folder = tempfile.TemporaryDirectory(prefix="cpu-paths-onnx-")
    paths = {"ONNX Runtime fp32": Path(folder.name) / "fp32.onnx",
             "ONNX Runtime int8 (inpctl export --int8: encoder fp32)": Path(folder.name) / "int8.onnx",
             "ONNX Runtime int8, encoder too": Path(folder.name) / "int8-all.onnx"}
    names = list(paths)
    started = time.perf_counter()
    export_onnx(model, cfg, paths[names[0]])
    notes = {names[0]: f"exported in {time.perf_counter() - started:.1f} s"}
    calibration_images = list(calibration.numpy())
    for name, kept in ((names[1], quantize.KEPT_FP32), (names[2], ())):
        started = time.perf_counter()
        default_kept = quantize.KEPT_FP32
        quantize.KEPT_FP32 = kept   # the study's one deviation from export: which nodes stay fp32
        try:
            quantize.quantize_onnx(paths[names[0]], paths[name], calibration_images)
        finally:
            quantize.KEPT_FP32 = default_kept
        notes[name] = f"quantised in {time.perf_counter() - started:.1f} s"
    log(f"onnx: {notes}")
    variants = {}
    for name, path in paths.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        variants[name] = lambda x, s=session: torch.from_numpy(s.run(["map"], {"image": x.numpy()})[0])
    return variants, notes, folder


def cnn_variants(cfg: RunConfig, model: INPFormer) -> dict[str, Fn]:
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    maps = lambda net, precision, fmt=torch.contiguous_format: (   # noqa: E731
        lambda x: score_batch(net, x.contiguous(memory_format=fmt), cfg, precision)[0])
    return {REFERENCE: under(lambda: kernel_mode("reference"), maps(model, "fp32")),
            "fp32, channels-last": maps(cl_model, "fp32", torch.channels_last),
            "bf16 autocast": maps(model, "bf16"),
            "bf16 autocast, channels-last": maps(cl_model, "bf16", torch.channels_last)}


def side_by_side(variants: dict[str, Fn], images: torch.Tensor, rounds: int, reps: int,
                 log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Each variant timed in every round (rotated order); rows with medians and per-round ratios."""
    names = list(variants)
    with torch.no_grad():
        reference = variants[REFERENCE](images).float()
        errors = {}
        for name in names:   # one warm-up call each (and the map for the error)
            out = variants[name](images).float()
            errors[name] = float((out - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
        times: dict[str, list[float]] = {name: [] for name in names}
        loads = []
        for r in range(rounds):
            loads.append(os.getloadavg()[0])
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                samples = []
                for _ in range(reps):
                    started = time.perf_counter()
                    variants[name](images)
                    samples.append(time.perf_counter() - started)
                times[name].append(statistics.median(samples))
            log(f"round {r + 1}/{rounds} (load {loads[-1]:.1f}): " + ", ".join(
                f"{n[:24]} {1e3 * times[n][-1]:.0f} ms" for n in names))
    batch = len(images)
    return [{"variant": name, "ms_per_batch": 1e3 * statistics.median(times[name]),
             "img_s": batch / statistics.median(times[name]),
             "x_ref": statistics.median(ref / t for ref, t in zip(times[REFERENCE], times[name])),
             "x_ref_min_max": [min(ref / t for ref, t in zip(times[REFERENCE], times[name])),
                               max(ref / t for ref, t in zip(times[REFERENCE], times[name]))],
             "max_err": errors[name], "rounds_ms": [1e3 * t for t in times[name]],
             "load_1min": [round(x, 2) for x in loads]} for name in names]


def preprocessing(rounds: int, resize: int, crop: int) -> list[dict[str, Any]]:
    """Per image: the predict path's transform against crop-before-convert + in-place normalise."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    from inp_former.data import image_transform
    from inp_former.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8))
    current = image_transform(resize, crop)
    offset = (resize - crop) // 2   # the centre crop of a square (Geometry's for these sizes)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def fewer_copies(image: Image.Image) -> torch.Tensor:
        small = image.resize((resize, resize), Image.BILINEAR).crop((offset, offset, offset + crop, offset + crop))
        return TF.to_tensor(small).sub_(mean).div_(std)

    same = float((current(photo) - fewer_copies(photo)).abs().max())
    variants = {"predict's transform (resize, to tensor, crop, normalise)": current,
                "crop before to tensor, normalise in place": fewer_copies}
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            started = time.perf_counter()
            for _ in range(8):
                fn(photo)
            times[name].append((time.perf_counter() - started) / 8)
    return [{"variant": name, "ms_per_image": 1e3 * statistics.median(t), "max_diff_to_current": same if i else 0.0}
            for i, (name, t) in enumerate(times.items())]


def profile_top(fn: Fn, images: torch.Tensor, top: int = 8) -> list[dict[str, Any]]:
    """Where the default path's time goes: the ops with the most self CPU time in one call."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(images)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in events[:top]]


def markdown(record: dict[str, Any]) -> str:
    prov, args = record["provenance"], record["args"]
    lines = ["# What makes CPU scoring fast: side by side", "",
             *header_lines(prov, f"onnxruntime {prov['onnxruntime']}, {record['threads']} torch threads, ", load=False),
             f"- {args['rounds']} rounds x {args['reps']} calls per variant, order rotated each round; "
             "random weights and images (speed only); x ref = median of the per-round ratios [min-max]; "
             "max err = largest |map - reference map| / largest |reference map|", ""]
    for title, key, batch in ((f"ViT-S/14, {args['size']} px, batch {args['batch']}", "vit", args["batch"]),
                              ("EfficientNet-Lite0 (the demo's CNN), 224 px, token stride 16, batch 8", "cnn", 8)):
        rows = record.get(key) or []
        if not rows:
            continue
        loads = [x for row in rows[:1] for x in row["load_1min"]]
        lines += [f"## {title}", "", f"Load average (1 min) at each round: {', '.join(f'{x:.1f}' for x in loads)}", "",
                  "| variant | ms / batch | img/s | x ref [min-max] | max err |", "|---|---:|---:|---|---:|"]
        for row in sorted(rows, key=lambda r: -r["x_ref"]):
            low, high = row["x_ref_min_max"]
            lines.append(f"| {row['variant']} | {row['ms_per_batch']:.0f} | {row['img_s']:.2f} | "
                         f"{row['x_ref']:.2f} [{low:.2f}-{high:.2f}] | {row['max_err']:.2g} |")
        lines.append("")
    if record.get("notes"):
        lines += ["Build notes:", ""] + [f"- {name}: {note}" for name, note in record["notes"].items()] + [""]
    if record.get("profile"):
        lines += ["## Where the default path's time goes (one call, torch.profiler, self CPU time)", "",
                  "| op | self ms | share | calls |", "|---|---:|---:|---:|"]
        lines += [f"| {p['op']} | {p['self_ms']:.0f} | {100 * p['share']:.0f}% | {p['calls']} |"
                  for p in record["profile"]] + [""]
    if record.get("preprocessing"):
        lines += ["## Preprocessing one 1024 px photo (448 -> 392, as predict does)", "",
                  "| variant | ms / image | max diff to predict's |", "|---|---:|---:|"]
        lines += [f"| {p['variant']} | {p['ms_per_image']:.2f} | {p['max_diff_to_current']:.2g} |"
                  for p in record["preprocessing"]] + [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=392)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (minutes on 2 cores)")
    parser.add_argument("--no-cnn", action="store_true")
    parser.add_argument("--out", type=Path, required=True, help="path without suffix: writes .json and .md")
    args = parser.parse_args()

    from inp_former.io import atomic_write_text
    from inp_former.runtime import configure_cpu_threads

    configure_cpu_threads()
    log = lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)   # noqa: E731
    command = "python3 -m bench.studies.cpu_paths " + " ".join(
        f"--{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}")
        for k, v in vars(args).items() if v not in (False, None))
    record: dict[str, Any] = {"provenance": provenance(command), "args": vars(args) | {"out": str(args.out)},
                              "threads": torch.get_num_threads(), "notes": {}}

    def save() -> None:
        atomic_write_text(args.out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
        atomic_write_text(args.out.with_suffix(".md"), markdown(record))

    record["preprocessing"] = preprocessing(args.rounds, 448, 392)
    log(f"preprocessing: {record['preprocessing']}")
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(encoder="small", encoder_weights="random", resize=args.size, crop=args.size))
    model = INPFormer(cfg.model).eval()
    images = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
    variants, notes = vit_variants(model, cfg, images, not args.no_compile, log)
    onnx, onnx_notes, folder = onnx_variants(model, cfg, images[:4].clone(), log)
    variants.update(onnx)
    record["notes"].update(notes | onnx_notes)
    record["profile"] = profile_top(variants[next(n for n in variants if n.startswith("auto"))], images)
    save()
    record["vit"] = side_by_side(variants, images, args.rounds, args.reps, log)
    save()
    if folder is not None:
        folder.cleanup()
    del variants, onnx
    if not args.no_cnn:
        cnn_cfg = RunConfig(model=ModelConfig(encoder="efficientnet_lite0", encoder_weights="random", resize=224,
                                              crop=224, token_stride=16))
        cnn = INPFormer(cnn_cfg.model).eval()
        record["cnn"] = side_by_side(cnn_variants(cnn_cfg, cnn), torch.randn(8, 3, 224, 224, generator=generator),
                                     args.rounds, args.reps, log)
        save()
    print(markdown(record))


if __name__ == "__main__":
    main()
