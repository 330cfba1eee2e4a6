"""The category rule (inp_former/categories.py) and the one decision (inp_former/thresholds.py):
given > path > image > pooled, references stored at training, the same label at every surface."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inp_former.categories import CategoryReferences, CategoryResolver, category_from_path
from inp_former.thresholds import Calibration, DecisionRule, label_of
from tests.helpers import tiny_config, tiny_model

CATEGORIES = ("bottle", "cable")


# --- the rules on their own ------------------------------------------------------------------------

@pytest.mark.parametrize("path, expected", [
    ("/data/mvtec_ad/bottle/test/broken/000.png", "bottle"),
    ("C:\\data\\CABLE\\test\\000.png", "cable"),                  # Windows separators, any case
    ("/data/cable/bottle/000.png", "bottle"),                     # the deepest folder wins
    ("/data/bottles/000.png", None),                              # whole folder names only
    ("bottle.png", None),                                         # the file name is not a folder
    ("/x/mvtec/bottle/000.png", "mvtec/bottle"),                  # super-multi-class: two folders
    ("/x/visa/bottle/000.png", "bottle"),
    (None, None),
])
def test_category_from_path(path, expected):
    assert category_from_path(path, ["bottle", "cable", "mvtec/bottle"]) == expected


def test_resolver_order_and_fallbacks():
    refs = CategoryReferences({"bottle": torch.eye(4)[:2], "cable": torch.eye(4)[2:]})
    resolver = CategoryResolver(CATEGORIES, refs)
    assert resolver.resolve("/d/cable/1.png", torch.eye(4)[0]) == ("cable", "path")     # path before image
    assert resolver.resolve("/d/other/1.png", torch.eye(4)[3]) == ("cable", "image")
    assert resolver.resolve(None, torch.tensor([0.9, 0.1, 0.0, 0.0])) == ("bottle", "image")
    assert resolver.resolve("/d/other/1.png", None) == (None, "pooled")
    old = CategoryResolver(CATEGORIES, None)
    assert old.needs_references and old.resolve("/d/x.png", torch.eye(4)[0]) == (None, "pooled")
    assert CategoryResolver(["bottle"], None).resolve(None, None) == ("bottle", "only")
    # references of a category without a threshold cannot choose a threshold
    assert CategoryResolver(["cable", "pcb"], refs).references.categories == ["cable"]


def test_references_survive_the_checkpoint_format():
    vectors = {"bottle": torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)}
    again = CategoryReferences.from_meta({"category_references": CategoryReferences(vectors).to_meta()})
    assert again.vectors["bottle"].dtype == torch.float32
    assert torch.allclose(again.vectors["bottle"], vectors["bottle"], atol=1e-3)   # stored as float16
    assert CategoryReferences.from_meta({}) is None
    assert CategoryReferences.from_meta({"category_references": {"version": 99, "vectors": vectors}}) is None


def test_the_decision_rule():
    calibration = Calibration(image_threshold=0.5, categories={"bottle": {"image_threshold": 0.3, "pixel_threshold": 0.2},
                                                               "cable": {"image_threshold": None}},
                              pixel_threshold=0.4)
    rule = DecisionRule(calibration)
    assert label_of(0.3, 0.3) == 1 and label_of(0.29, 0.3) == 0 and label_of(1.0, None) is None
    d = rule.decide(0.3, "bottle", "path")
    assert (d.label, d.threshold, d.category, d.category_source, d.threshold_source) == (1, 0.3, "bottle", "path",
                                                                                         "checkpoint")
    d = rule.decide(0.45, "cable", "image")                     # no threshold of its own: the pooled one
    assert (d.label, d.threshold, d.category, d.category_source) == (0, 0.5, None, "pooled")
    assert rule.pixel_threshold("bottle") == 0.2 and rule.pixel_threshold("cable") == 0.4
    given = DecisionRule(calibration, threshold=0.7).decide(0.7)
    assert (given.label, given.threshold, given.threshold_source, given.category_source) == (1, 0.7, "given", None)
    assert DecisionRule(None).decide(0.9).label is None
    with pytest.raises(ValueError, match="category 'pcb'"):
        rule.check_category("pcb")


# --- a real checkpoint: references at training, the image rule, every surface ------------------------

def _texture(rng: np.random.Generator, colour: tuple[int, int, int], stripes: bool, size: int = 64) -> np.ndarray:
    image = np.empty((size, size, 3))
    image[:] = colour
    if stripes:
        image[::8] *= 0.4
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def two_products(tmp_path_factory):
    """A checkpoint of two visibly different products with thresholds and category references stored
    as training stores them, and their test images copied into one flat folder (no category in the path)."""
    from inp_former.checkpoint import save_checkpoint
    from inp_former.config import DataConfig, RunConfig
    from inp_former.thresholds import store_calibration
    from inp_former.workflow import store_category_references

    base = tmp_path_factory.mktemp("products")
    rng = np.random.default_rng(0)
    looks = {"bottle": ((200, 60, 40), False), "cable": ((40, 90, 210), True)}
    flat = base / "flat"
    flat.mkdir()
    for category, (colour, stripes) in looks.items():
        for split, count in (("train/good", 6), ("test/good", 3)):
            folder = base / "data" / category / split
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(_texture(rng, colour, stripes)).save(folder / f"{i:03d}.png")
                if split == "test/good":
                    Image.fromarray(_texture(rng, colour, stripes)).save(flat / f"{category[0]}{i}.png")
    cfg = RunConfig(model=tiny_config(), data=DataConfig(root=str(base / "data"), categories=CATEGORIES))
    model = tiny_model(seed=0).eval()
    run_dir = base / "run"
    run_dir.mkdir()
    ckpt = run_dir / "checkpoint.pt"
    save_checkpoint(ckpt, model, cfg)
    store_calibration(ckpt, Calibration(image_threshold=0.5, categories={"bottle": {"image_threshold": 0.1},
                                                                         "cable": {"image_threshold": 0.9}}))
    store_category_references(model, cfg, ckpt, "cpu")
    return ckpt, base / "data", flat


def test_references_are_stored_and_pick_the_category_from_the_image(two_products):
    from inp_former.checkpoint import read_checkpoint
    from inp_former.predictor import Predictor

    ckpt, data, flat = two_products
    stored = CategoryReferences.from_meta(read_checkpoint(ckpt)["meta"])
    assert stored.categories == list(CATEGORIES) and stored.vectors["bottle"].shape == (6, 384)
    predictor = Predictor.from_checkpoint(ckpt.parent, "cpu")                 # a run directory works too
    assert predictor.category_warning is None
    for p in predictor.predict(sorted(flat.iterdir())):
        expected = "bottle" if Path(p.path).name.startswith("b") else "cable"
        assert (p.category, p.category_source) == (expected, "image"), p.path
        assert p.threshold == {"bottle": 0.1, "cable": 0.9}[expected]
    by_path = predictor.predict(data / "cable" / "test" / "good" / "000.png")
    assert (by_path.category, by_path.category_source) == ("cable", "path")
    given = Predictor.from_checkpoint(ckpt, "cpu", category="bottle").predict(data / "cable/test/good/000.png")
    assert (given.category, given.category_source, given.threshold) == ("bottle", "given", 0.1)


def test_an_old_checkpoint_falls_back_to_pooled_and_says_how_to_fix_it(two_products, tmp_path):
    import shutil

    from inp_former.categories import REFERENCES_KEY
    from inp_former.checkpoint import update_meta
    from inp_former.predictor import Predictor

    ckpt, _, flat = two_products
    old = tmp_path / "old.pt"
    shutil.copy(ckpt, old)
    update_meta(old, lambda meta: meta.pop(REFERENCES_KEY))
    predictor = Predictor.from_checkpoint(old, "cpu")
    assert "inpctl eval --ckpt" in predictor.category_warning and "--save-thresholds" in predictor.category_warning
    p = predictor.predict(sorted(flat.iterdir())[0])
    assert (p.category, p.category_source, p.threshold) == (None, "pooled", 0.5)


def test_a_score_equal_to_the_threshold_is_anomalous_on_every_surface(two_products, tmp_path):
    """The Python API, predict's files, the server and the ONNX sidecar (with the example code of
    docs/deployment.md) all label score == threshold as anomalous."""
    from inp_former.batch_predict import predict_files
    from inp_former.predictor import Predictor

    ckpt, _, flat = two_products
    image = sorted(flat.iterdir())[0]
    score = Predictor.from_checkpoint(ckpt, "cpu").predict(image).score
    exact = Predictor.from_checkpoint(ckpt, "cpu", threshold=score)
    assert exact.predict(image).label == 1                                     # Python API

    predict_files(exact, [image], tmp_path / "out", overlays=False)            # inpctl predict's files
    row = next(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert float(row["score"]) == score and row["label"] == "1" and row["threshold_source"] == "given"

    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from inp_former.serve import ServeConfig, create_app

    with TestClient(create_app(exact, ServeConfig(ckpt))) as client:          # inpctl serve
        answer = client.post("/predict", files=[("files", (image.name, image.read_bytes()))]).json()
    assert answer["predictions"][0]["score"] == score and answer["predictions"][0]["label"] == 1


def test_onnx_sidecar_carries_the_decision_and_the_docs_example_applies_it(two_products, tmp_path):
    """model.onnx.json holds per-category thresholds and the category rule's data; the deployment
    example in docs/deployment.md, run as written, labels images as inpctl predict does."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from inp_former.inference import InferenceConfig
    from inp_former.predictor import Predictor
    from inp_former.workflow import export_model

    ckpt, data, flat = two_products
    outcome = export_model(ckpt.parent, tmp_path / "model.onnx", check=True)   # a run directory works too
    assert max(outcome["check"].values()) < 1e-4
    sidecar = json.loads((tmp_path / "model.onnx.json").read_text())
    assert sidecar["category_thresholds"]["cable"]["image_threshold"] == 0.9
    assert sidecar["label_rule"].endswith("score >= threshold")
    assert set(sidecar["category_rule"]["image"]["vectors"]) == set(CATEGORIES)

    text = (Path(__file__).resolve().parents[1] / "docs" / "deployment.md").read_text()
    code = text.split("```python\n# ONNX: label images without inpctl\n", 1)[1].split("```", 1)[0]
    namespace: dict = {"ort": ort}
    exec(compile(code, "docs/deployment.md", "exec"), namespace)
    predictor = Predictor.from_checkpoint(ckpt, "cpu", InferenceConfig(precision="fp32"))   # the graph is fp32
    images = sorted(flat.iterdir()) + [data / "cable" / "test" / "good" / "001.png"]
    for path in images:
        ours = predictor.predict(path)
        theirs = namespace["label_image"](str(tmp_path / "model.onnx"), str(path))
        assert theirs["category"] == ours.category and theirs["threshold"] == pytest.approx(ours.threshold)
        assert theirs["score"] == pytest.approx(ours.score, abs=1e-4) and theirs["label"] == ours.label
    # the sidecar's label rule at equality: a threshold equal to the ONNX score is anomalous
    sidecar["category_thresholds"] = {name: {"image_threshold": theirs["score"]} for name in CATEGORIES}
    (tmp_path / "model.onnx.json").write_text(json.dumps(sidecar))
    assert namespace["label_image"](str(tmp_path / "model.onnx"), str(images[-1]))["label"] == 1


# --- evaluations are never overwritten silently --------------------------------------------------------

def test_eval_refuses_to_replace_an_evaluation_of_another_scope(two_products, tmp_path):
    from inp_former.errors import ConfigError
    from inp_former.evaluate import EvalConfig
    from inp_former.inference import InferenceConfig
    from inp_former.workflow import DataOverride, evaluate_checkpoint

    ckpt, data, _ = two_products
    for category in CATEGORIES:   # a defect image each, so that the metrics exist
        folder = data / category / "test" / "defect"
        folder.mkdir(exist_ok=True)
        (data / category / "ground_truth" / "defect").mkdir(parents=True, exist_ok=True)
        image = np.asarray(Image.open(data / category / "test" / "good" / "000.png")).copy()
        image[20:40, 20:40] = 255
        Image.fromarray(image).save(folder / "000.png")
        mask = np.zeros(image.shape[:2], np.uint8)
        mask[20:40, 20:40] = 255
        Image.fromarray(mask).save(data / category / "ground_truth" / "defect" / "000_mask.png")
    out = tmp_path / "eval"
    small = EvalConfig(InferenceConfig(batch_size=4))
    evaluate_checkpoint(ckpt, evaluation=small, out_dir=out, device="cpu")
    evaluate_checkpoint(ckpt, evaluation=small, out_dir=out, device="cpu")          # the same scope: replaced
    before = (out / "metrics.json").read_text()
    assert json.loads(before)["meta"]["precision_reason"].startswith("auto: ")   # which precision and why
    with pytest.raises(ConfigError) as refused:
        evaluate_checkpoint(ckpt, DataOverride(categories=("bottle",)), small, out, "cpu")
    message = refused.value.render({"out": "--out"})
    assert "bottle, cable" in message and "--out" in message and "--overwrite" in message
    assert (out / "metrics.json").read_text() == before                             # untouched
    with pytest.raises(ConfigError, match="map_mode"):
        evaluate_checkpoint(ckpt, evaluation=EvalConfig(InferenceConfig(map_mode="prototype")), out_dir=out,
                            device="cpu")
    evaluate_checkpoint(ckpt, DataOverride(categories=("bottle",)), small, out, "cpu", overwrite=True)
    assert list(json.loads((out / "metrics.json").read_text())["categories"]) == ["bottle"]


def test_run_directories_are_checkpoints_everywhere_and_empty_ones_say_so(two_products, tmp_path):
    from inp_former.checkpoint import resolve_checkpoint
    from inp_former.errors import CheckpointError

    ckpt, _, _ = two_products
    assert resolve_checkpoint(ckpt.parent) == ckpt
    with pytest.raises(CheckpointError, match="a directory without checkpoint.pt"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "bottle").mkdir()
    (tmp_path / "bottle" / "checkpoint.pt").write_bytes(ckpt.read_bytes())
    with pytest.raises(CheckpointError, match="single-class run directory .*bottle"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such file or directory"):
        resolve_checkpoint(tmp_path / "missing.pt")
