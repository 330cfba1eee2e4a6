"""Issue 25 item 7 and the predict side of item 3: ``predict --masks`` (binary masks at each input's
resolution, named like the overlays; refused without a pixel threshold; the same after --resume;
under torchrun in tests/test_sharded_scoring.py), the pixel limit shared with serve, and one warning
for images far smaller than the model's input. Through the real CLI, on a tiny untrained model
(random ViT-S, 64 -> 56 px, 32 x 32 maps): the masks measure nothing about INP-Former, only how predict makes them.
"""
from __future__ import annotations

import csv
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from inpctl.cli import app
from tests.predict_setup import save_tiny_checkpoint, write_image

runner = CliRunner()
# (width, height): a wide and a tall image (parts of each fall outside the square centre crop), a square one
SIZES = {"a/wide.png": (100, 80), "b/tall.png": (60, 90), "a/sub/square.png": (64, 64)}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _rows(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "predictions.csv").open()))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs") / "parts"
    for seed, (name, (width, height)) in enumerate(SIZES.items()):
        write_image(folder / name, width, height, seed)
    return folder


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """A checkpoint without any stored threshold."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("plain") / "checkpoint.pt")


@pytest.fixture(scope="module")
def calibrated(plain, images, tmp_path_factory) -> tuple[Path, float]:
    """The checkpoint with stored thresholds: the pixel one the median map value of the images, so
    that every mask has both values. Returns (checkpoint, pixel threshold)."""
    from inp_former.predictor import Predictor
    from inp_former.thresholds import Calibration, store_calibration

    path = tmp_path_factory.mktemp("calibrated") / "checkpoint.pt"
    shutil.copy(plain, path)
    predictions = Predictor.from_checkpoint(path, device="cpu").predict(sorted(map(str, images.rglob("*.png"))))
    values = np.concatenate([p.map.reshape(-1) for p in predictions])
    pixel = float(np.median(values))
    store_calibration(path, Calibration(image_threshold=float(np.median([p.score for p in predictions])),
                                        pixel_threshold=pixel, map_range=[float(values.min()), float(values.max())]))
    return path, pixel


def test_masks_are_binary_at_each_inputs_resolution_and_named_like_the_overlays(calibrated, images, tmp_path):
    from inp_former.data.geometry import Geometry
    from inp_former.predictor import Predictor

    ckpt, pixel = calibrated
    out = tmp_path / "out"
    result = invoke("predict", images, "--ckpt", ckpt, "--out", out, "--device", "cpu", "--masks", "--save-maps")
    assert result.exit_code == 0, result.output
    assert f"3 masks in {out / 'masks'}" in " ".join(result.output.split())
    rows = _rows(out)
    assert len(rows) == 3 and len(list((out / "masks").rglob("*.png"))) == 3
    geometry = Geometry(64, 56)
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    for row in rows:
        assert row["mask"] == "masks/" + row["overlay"].removeprefix("overlays/")   # the overlay's name and folders
        mask = Image.open(out / row["mask"])
        size = Image.open(row["path"]).size
        assert mask.mode == "L" and mask.size == size == SIZES[row["path"].split("parts/")[1]]
        values = np.asarray(mask)
        pasted = geometry.paste(np.load(out / row["map_file"]), size, mode="bilinear")   # NaN outside the crop
        np.testing.assert_array_equal(values, np.where(pasted >= pixel, 255, 0))
        assert set(np.unique(values[~np.isnan(pasted)])) == {0, 255}
        assert not values[np.isnan(pasted)].any()   # where the model never looked: 0
        # the Python API gives the same mask (its map may differ by rounding: only at the threshold)
        api = np.asarray(predictor.mask(row["path"], predictor.predict(row["path"])))
        assert np.all(np.abs(pasted[api != values] - pixel) < 1e-4)
    wide = next(row for row in rows if row["path"].endswith("wide.png"))
    assert np.isnan(geometry.paste(np.load(out / wide["map_file"]), (100, 80))).any()   # the case was tested
    summary = json.loads((out / "predictions.json").read_text())
    assert [p["mask"] for p in summary["predictions"]] == [row["mask"] for row in rows]


def test_masks_without_a_pixel_threshold_are_refused_before_scoring(plain, images, tmp_path):
    out = tmp_path / "out"
    result = invoke("predict", images, "--ckpt", plain, "--out", out, "--device", "cpu", "--masks")
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: --masks: ")
    assert f"inpctl eval --ckpt {plain} --save-thresholds" in " ".join(result.output.split())
    assert "Traceback" not in result.output and not out.exists()   # nothing was scored or written


def test_resumed_masks_equal_an_uninterrupted_runs(calibrated, images, tmp_path, monkeypatch):
    import inp_former.batch_predict as batch_predict

    ckpt, _ = calibrated
    args = [images, "--ckpt", ckpt, "--device", "cpu", "--masks", "--no-overlays", "--batch-size", "1"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert invoke("predict", *args, "--out", full).exit_code == 0

    score, calls = batch_predict._score_chunk, []

    def interrupted(*a, **k):   # Ctrl-C while the second of three batches is read
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return score(*a, **k)

    monkeypatch.setattr(batch_predict, "_score_chunk", interrupted)
    stopped = invoke("predict", *args, "--out", part)
    assert stopped.exit_code == 130 and "error: interrupted" in stopped.output
    assert len(list((part / "masks").rglob("*.png"))) == 1 and not (part / "predictions.csv").exists()
    monkeypatch.setattr(batch_predict, "_score_chunk", score)

    resumed = invoke("predict", *args, "--out", part, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "Resumed: 1 files" in resumed.output
    assert _files(part / "masks") == _files(full / "masks") and len(_files(full / "masks")) == 3
    assert (part / "predictions.csv").read_bytes() == (full / "predictions.csv").read_bytes()


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says width x height and whose pixel data is missing: only a reader that
    decodes it would find out (and would need width x height x 3 bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    return path


def test_over_the_pixel_limit_is_skipped_from_its_header_and_far_smaller_gets_one_warning(calibrated, images,
                                                                                         tmp_path):
    """One run (each run loads the model): a PNG whose header alone says 9000 x 9000, the 100 x 80
    image over --max-megapixels 0.007, two images far smaller than the 56 x 56 input and one not."""
    from inp_former.serve import ServeConfig
    from inp_former.serve.config import MAX_MEGAPIXELS
    from inp_former.workflow import PredictOptions

    assert ServeConfig("x.pt").max_megapixels == PredictOptions().max_megapixels == MAX_MEGAPIXELS == 40.0
    ckpt, _ = calibrated
    huge = _png_header_only(tmp_path / "huge.png", 9000, 9000)
    small = tmp_path / "small"
    write_image(small / "a.png", 1, 1)
    write_image(small / "b.png", 40, 20, seed=1)   # 20 < 56 / 2
    write_image(small / "c.png", 30, 30, seed=2)   # 30 >= 28 on both sides: not far smaller
    out = tmp_path / "out"
    result = invoke("predict", images, huge, small, "--ckpt", ckpt, "--out", out, "--device", "cpu", "--no-overlays",
                    "--max-megapixels", "0.007")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    # decoding the huge file would have failed otherwise ("not a readable image"): its header decided
    assert (f"{huge}: more than the limit of 0.007 megapixels (9000 x 9000 pixels); raise --max-megapixels to "
            "score it") in text
    summary = json.loads((out / "predictions.json").read_text())
    skipped = {s["path"]: s for s in summary["skipped"]}
    assert sorted(skipped) == sorted([str(huge), str(images / "a" / "wide.png")])   # 100 x 80: 0.008 MP
    assert skipped[str(huge)] == {"path": str(huge), "arg": "max_megapixels",   # the library's own words
                                  "error": "more than the limit of 0.007 megapixels (9000 x 9000 pixels); "
                                           "raise max_megapixels to score it"}
    assert sorted(Path(r["path"]).name for r in summary["predictions"]) == ["a.png", "b.png", "c.png",
                                                                            "square.png", "tall.png"]

    warnings = [line for line in result.output.splitlines() if "far smaller" in line]
    assert len(warnings) == 1, result.output
    assert ("warning: 2 image(s) far smaller than the model's input of 56 x 56 pixels (a side under half of it), "
            f"e.g. {small / 'a.png'} (1 x 1)") in text
    assert summary["small_images"] == {"model_input": [56, 56],
                                       "images": [{"path": str(small / "a.png"), "size": [1, 1]},
                                                  {"path": str(small / "b.png"), "size": [40, 20]}]}
