"""Results people can use, through the CLI on generated data: eval thresholds + report, predict, export.

One tiny model (random ViT-S at 64 -> 56 px, 3 iterations) is trained once for the module.
"""
import base64
import csv
import io
import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from inpctl.cli import app
from tests.datagen import make_mvtec_tree

runner = CliRunner()
TINY = ["--encoder", "small", "--encoder-weights", "random", "--resize", "64", "--crop", "56", "--batch-size", "2",
        "--warmup-iters", "1", "--iters", "3", "--device", "cpu"]
CATEGORIES = ("bottle", "cable")


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data root, checkpoint) trained without eval, so the checkpoint holds no thresholds yet."""
    root = make_mvtec_tree(tmp_path_factory.mktemp("data"), categories=CATEGORIES)
    run_dir = tmp_path_factory.mktemp("run") / "r"
    # fp32 training: the tests compare one image scored alone and in a batch to 1e-6, and with bf16-trained
    # weights bf16 scoring's rounding follows the batch (about 5e-6 of a score)
    result = invoke("train", "--data", root, *TINY, "--out", run_dir, "--no-eval", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    return root, run_dir / "checkpoint.pt"


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    """eval --report --save-thresholds on the trained checkpoint: stores thresholds in it; returns (root, ckpt,
    eval dir, output, the checkpoint's payload before)."""
    root, ckpt = trained
    before = torch.load(ckpt, weights_only=True)
    assert "calibration" not in before["meta"]
    out = tmp_path_factory.mktemp("eval")
    result = invoke("eval", "--ckpt", ckpt, "--out", out, "--device", "cpu", "--report", "--report-samples", "3",
                    "--save-thresholds")
    assert result.exit_code == 0, result.output
    return root, ckpt, out, result.output, before


def _scores_csv(path):
    return list(csv.DictReader(path.open()))


# --- eval: thresholds -----------------------------------------------------------------------------

def _same(a, b) -> bool:
    """Equal, tensors (the category references in a checkpoint's meta) included."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def test_eval_stores_f1max_thresholds_in_the_checkpoint(evaluated):
    from inp_former.metrics import f1max_threshold

    _, ckpt, out, output, before = evaluated
    after = torch.load(ckpt, weights_only=True)
    calibration = after["meta"]["calibration"]["decoder"]
    rows = _scores_csv(out / "scores.csv")
    labels = torch.tensor([int(r["label"]) for r in rows])
    scores = torch.tensor([float(r["score"]) for r in rows], dtype=torch.float64)
    f1, best = f1max_threshold(labels, scores)
    threshold = calibration["image_threshold"]
    # an F1-maximising threshold: the same labels as the exact maximiser, hence the same F1
    assert torch.equal(scores >= threshold, scores >= best)
    assert calibration["image_f1"] == pytest.approx(f1)
    assert calibration["score_range"]["min"] == pytest.approx(float(scores.min()))
    assert calibration["score_range"]["max"] == pytest.approx(float(scores.max()))
    assert set(calibration["categories"]) == set(CATEGORIES)
    assert 0.0 <= calibration["pixel_threshold"] <= 2.0 and 0.0 < calibration["pixel_f1"] <= 1.0
    lo, hi = calibration["map_range"]
    assert hi > lo
    # everything else in the checkpoint is kept as it was
    assert after["config"] == before["config"]
    assert after["state_dict"].keys() == before["state_dict"].keys()
    assert all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())
    assert _same({k: v for k, v in after["meta"].items() if k != "calibration"}, before["meta"])
    # also in metrics.json, and said on the console
    assert json.loads((out / "metrics.json").read_text())["meta"]["calibration"]["image_threshold"] == threshold
    assert "F1-max thresholds" in output


def test_pixel_threshold_from_histogram_matches_exact_f1max():
    from inp_former.metrics import f1max_threshold
    from inp_former.thresholds import PixelHistogram

    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 32, 32, generator=generator) * 0.4
    masks = torch.zeros(6, 32, 32, dtype=torch.bool)
    masks[:3, 8:16, 8:20] = True
    maps[masks] += 0.15
    hist = PixelHistogram()
    hist.update(masks, maps)
    f1, threshold = hist.f1max_threshold()
    exact_f1, exact_threshold = f1max_threshold(masks, maps)
    assert f1 == pytest.approx(exact_f1, abs=1e-6)
    assert abs(threshold - exact_threshold) <= 2.0 / hist.bins
    predicted = maps >= threshold
    tp = int((predicted & masks).sum())
    assert 2 * tp / (int(predicted.sum()) + int(masks.sum())) == pytest.approx(f1, abs=1e-9)


# --- eval --report -------------------------------------------------------------------------------

class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_report_is_self_contained_with_its_figures(evaluated):
    _, _, out, _, _ = evaluated
    text = (out / "report.html").read_text()
    parser = _Tags()
    parser.feed(text)
    images = [attrs["src"] for tag, attrs in parser.tags if tag == "img"]
    # per category: 3 samples x (input, anomaly map, distance map, 6 INP attention maps); + the colour bar
    assert len(images) == len(CATEGORIES) * 3 * (3 + 6) + 1
    for src in images:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    # nothing fetched from elsewhere: no scripts, stylesheets or remote URLs (the SVG namespace is a name)
    assert not [t for t, a in parser.tags if t in ("script", "link", "iframe")]
    assert not re.search(r"(src|href)=\"(?!data:)", text)
    assert text.count("<svg") == 1 + len(CATEGORIES) + 1        # Fig. 5 pooled + per category + the loss curve
    assert "<h2>Training loss</h2>" in text                     # the run's train_log.csv
    for expected in ("I-AUROC", "AUPRO", "mean", "INP attention", "distance to nearest INP", *CATEGORIES):
        assert expected in text


def test_overlay_colour_scale_is_fixed():
    from inp_former.visualize import overlay

    grey = Image.new("RGB", (32, 32), (128, 128, 128))
    cold = np.array(overlay(grey, np.full((16, 16), 0.1, np.float32), (0.2, 0.6), alpha=1.0))
    hot = np.array(overlay(grey, np.full((16, 16), 0.9, np.float32), (0.2, 0.6), alpha=1.0))
    assert (cold[..., 2] > 100).all() and (cold[..., 0] == 0).all()      # below the scale: blue
    assert (hot[..., 0] > 100).all() and (hot[..., 2] == 0).all()        # above it: red
    mixed = np.zeros((16, 16), np.float32)
    mixed[:8] = 0.9
    alone = np.array(overlay(grey, np.full((16, 16), 0.0, np.float32), (0.2, 0.6), alpha=1.0))
    with_hot = np.array(overlay(grey, mixed, (0.2, 0.6), alpha=1.0))
    assert np.array_equal(alone[24:], with_hot[24:])   # a pixel's colour does not depend on the others


def test_inp_attention_hook_leaves_outputs_unchanged():
    from inp_former.visualize import inp_attention_maps
    from tests.helpers import tiny_model

    model = tiny_model().eval()
    images = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        plain = model(images)
    maps = inp_attention_maps(model, images)
    with torch.no_grad():
        again = model(images)
    assert maps.shape == (2, model.cfg.num_prototypes, 4, 4)
    torch.testing.assert_close(maps.sum(dim=(-1, -2)), torch.ones(2, model.cfg.num_prototypes))
    torch.testing.assert_close(plain.prototypes, again.prototypes, rtol=0, atol=0)
    assert not model.extractor.attn._forward_hooks


# --- predict ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inputs(evaluated, tmp_path_factory):
    """A folder with the bottle test images (nested), an unreadable .png and a text file; plus one
    image given as a file. Returns (paths to pass, number of readable images, the unreadable file)."""
    root, _, _, _, _ = evaluated
    folder = tmp_path_factory.mktemp("inputs") / "batch"
    shutil.copytree(root / "bottle" / "test", folder)
    broken = folder / "good" / "broken.png"
    broken.write_bytes(b"this is not a png")
    (folder / "notes.txt").write_text("ignored: not an image")
    single = root / "cable" / "test" / "defect" / "000.png"
    readable = len(list((root / "bottle" / "test").rglob("*.png"))) + 1
    return [folder, single], readable, broken


def _predictions(out):
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    return rows, json.loads((out / "predictions.json").read_text())


def test_predict_writes_csv_json_overlays_and_skips_unreadable(evaluated, inputs, tmp_path):
    _, ckpt, _, _, _ = evaluated
    paths, readable, broken = inputs
    out = tmp_path / "pred"
    result = invoke("predict", "--ckpt", ckpt, *paths, "--out", out, "--device", "cpu", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    rows, summary = _predictions(out)
    calibration = torch.load(ckpt, weights_only=True)["meta"]["calibration"]["decoder"]
    stored = calibration["image_threshold"]
    assert len(rows) == readable
    assert len(list((out / "overlays").rglob("*.png"))) == readable
    assert all((out / r["overlay"]).is_file() for r in rows)
    for row in rows:   # labels follow each image's category's stored threshold; raw and normalised scores
        own = calibration["categories"][row["category"]]["image_threshold"]
        assert row["category_source"] == ("path" if "/cable/" in row["path"] else "image")   # no folder: its look
        assert float(row["threshold"]) == own and row["threshold_source"] == "checkpoint"
        assert int(row["label"]) == int(float(row["score"]) >= own)
        assert 0.0 <= float(row["normalized_score"]) <= 1.0
        assert (float(row["normalized_score"]) >= 0.5) == (float(row["score"]) >= own)
        assert float(row["map_min"]) <= float(row["map_mean"]) <= float(row["map_max"])
        assert row["map_file"] == ""
    assert summary["threshold"] == {**summary["threshold"], "image": stored, "source": "checkpoint"}
    assert summary["counts"]["scored"] == readable and summary["counts"]["skipped"] == 1
    assert summary["counts"]["anomalous"] + summary["counts"]["normal"] == readable
    assert [s["path"] for s in summary["skipped"]] == [str(broken)]
    assert "broken.png" in result.output and "Skipped 1" in result.output
    assert [p["path"] for p in summary["predictions"]] == [r["path"] for r in rows]
    overlay = Image.open(out / rows[0]["overlay"])
    assert overlay.size == (56, 56) and overlay.mode == "RGB"


def test_predict_threshold_flag_overrides_the_stored_one(evaluated, inputs, tmp_path):
    _, ckpt, _, _, _ = evaluated
    paths, readable, _ = inputs
    first = tmp_path / "a"
    assert invoke("predict", "--ckpt", ckpt, *paths, "--out", first, "--device", "cpu", "--no-overlays").exit_code == 0
    scores = sorted(float(r["score"]) for r in _predictions(first)[0])
    threshold = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2   # half the images on each side
    out = tmp_path / "b"
    result = invoke("predict", "--ckpt", ckpt, *paths, "--out", out, "--device", "cpu", "--threshold", threshold,
                    "--no-overlays")
    assert result.exit_code == 0, result.output
    rows, summary = _predictions(out)
    assert summary["threshold"]["image"] == threshold and summary["threshold"]["source"] == "given"
    assert [int(r["label"]) for r in rows] == [int(float(r["score"]) >= threshold) for r in rows]
    assert {int(r["label"]) for r in rows} == {0, 1}
    assert not (out / "overlays").exists()


def test_predict_saves_raw_maps_equal_to_the_python_api(evaluated, inputs, tmp_path):
    from inp_former.inference import InferenceConfig
    from inp_former.predictor import Predictor

    _, ckpt, _, _, _ = evaluated
    paths, readable, _ = inputs
    out = tmp_path / "maps"
    # fp32 on both sides: in bf16 a map depends on its batch at ~1e-4 (the kernels oneDNN picks
    # depend on the batch size), and predict batches the images while predict(path) scores one
    result = invoke("predict", "--ckpt", ckpt, *paths, "--out", out, "--device", "cpu", "--save-maps",
                    "--precision", "fp32")
    assert result.exit_code == 0, result.output
    rows, _ = _predictions(out)
    assert len(list((out / "maps").rglob("*.npy"))) == readable
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", inference=InferenceConfig(precision="fp32"))
    for row in rows[:3]:
        saved = np.load(out / row["map_file"])
        api = predictor.predict(row["path"])
        assert saved.dtype == np.float32 and saved.shape == api.map.shape == (256, 256)
        np.testing.assert_allclose(saved, api.map, rtol=0, atol=1e-6)
        assert api.score == pytest.approx(float(row["score"]), abs=1e-6)
        if abs(api.score - api.threshold) > 1e-6:  # within the score tolerance of the threshold either label is right
            assert api.label == int(row["label"])


def test_predict_without_images_fails_with_one_line(evaluated, tmp_path):
    _, ckpt, _, _, _ = evaluated
    (tmp_path / "empty").mkdir()
    result = invoke("predict", "--ckpt", ckpt, tmp_path / "empty", "--out", tmp_path / "o", "--device", "cpu")
    assert result.exit_code == 2 and "no images found" in result.output


# --- Python API ------------------------------------------------------------------------------------

def test_predictor_scores_paths_pil_arrays_and_batches(evaluated):
    from inp_former.predictor import Prediction, Predictor

    root, ckpt, _, _, _ = evaluated
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    path = root / "cable" / "test" / "defect" / "001.png"
    image = Image.open(path).convert("RGB")
    by_path, by_pil, by_array = (predictor.predict(x) for x in (path, image, np.asarray(image)))
    assert isinstance(by_path, Prediction) and by_path.path == str(path)
    assert by_pil.score == pytest.approx(by_path.score, abs=1e-6) == by_array.score
    np.testing.assert_allclose(by_array.map, by_path.map, atol=1e-6)
    stored = predictor.calibration.categories["cable"]["image_threshold"]   # cable/ is on the path
    assert (by_path.category, by_path.category_source, by_path.threshold) == ("cable", "path", stored)
    assert by_pil.category_source == by_array.category_source == "image"   # no path: the image decides
    assert by_path.label == int(by_path.score >= by_path.threshold)
    batch = predictor.predict([path, image, np.asarray(image)])
    assert isinstance(batch, list) and len(batch) == 3
    assert batch[0].score == pytest.approx(by_path.score, abs=1e-6)
    # a threshold given to the API wins, and maps to normalised score 0.5
    custom = Predictor.from_checkpoint(ckpt, device="cpu", threshold=by_path.score)
    again = custom.predict(path)
    assert again.label == 1 and again.threshold == by_path.score and again.normalized_score == pytest.approx(0.5)
    assert custom.overlay(path, again).size == (56, 56)
    with pytest.raises(ValueError, match="expected"):
        predictor.predict(np.zeros((3, 8, 8), np.uint8))


# --- export ----------------------------------------------------------------------------------------

def test_export_onnx_matches_torch_for_batch_1_and_3(evaluated, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from inp_former.checkpoint import load_checkpoint
    from inp_former.inference import score_batch

    _, ckpt, _, _, _ = evaluated
    target = tmp_path / "model.onnx"
    result = invoke("export", "--ckpt", ckpt, "--format", "onnx", "--out", target)
    assert result.exit_code == 0, result.output
    assert "Checked with onnxruntime" in result.output
    sidecar = json.loads((tmp_path / "model.onnx.json").read_text())
    stored = torch.load(ckpt, weights_only=True)["meta"]["calibration"]["decoder"]
    assert sidecar["image_threshold"] == stored["image_threshold"]
    assert sidecar["input"]["shape"] == ["batch", 3, 56, 56]
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["map", "score", "embedding"]  # embedding: the category rule
    model, cfg, _ = load_checkpoint(ckpt)
    for batch in (1, 3):
        images = torch.randn(batch, 3, 56, 56, generator=torch.Generator().manual_seed(batch))
        maps, scores, _ = score_batch(model.eval(), images, cfg)
        onnx_maps, onnx_scores = session.run(["map", "score"], {"image": images.numpy()})
        assert onnx_maps.shape == (batch, 256, 256) and onnx_scores.shape == (batch,)
        np.testing.assert_allclose(onnx_maps, maps.numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(onnx_scores, scores.numpy(), rtol=0, atol=1e-5)


def test_export_rejects_unknown_format(evaluated, tmp_path):
    _, ckpt, _, _, _ = evaluated
    result = invoke("export", "--ckpt", ckpt, "--format", "tflite", "--out", tmp_path / "m")
    assert result.exit_code == 2 and "--format" in result.output
