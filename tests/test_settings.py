"""Every setting and dataset layout of the paper, end to end through the CLI on tiny generated data.

Random-weight ViT-S encoders at 64/56 px and 1-2 iterations: these tests check the plumbing
(layouts, settings, checkpoints, files written), not the accuracy.
"""
import csv
import hashlib
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from inp_former.config import RunConfig
from inp_former.data import DatasetError, build_samples, list_categories
from inp_former.data.folder import HOLDOUT_FRACTION, folder_samples
from inpctl.cli import app
from tests.datagen import make_mvtec_tree
from tests.datagen_layouts import make_folder, make_realiad, make_visa_1cls, make_visa_raw
from tests.helpers import to_meta_dinov2_naming

runner = CliRunner()
TINY = ["--encoder", "small", "--encoder-weights", "random", "--resize", "64", "--crop", "56",
        "--batch-size", "2", "--warmup-iters", "1", "--device", "cpu"]
METRICS = {"i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "aupro"}


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def cli_error(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())  # rich wraps long lines


def metrics(path):
    return json.loads((path / "metrics.json").read_text())


def snapshot(root):
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory):
    return make_mvtec_tree(tmp_path_factory.mktemp("mvtec"), categories=("bottle", "cable"))


@pytest.fixture(scope="module")
def visa(tmp_path_factory):
    return make_visa_1cls(tmp_path_factory.mktemp("visa") / "1cls")


# --- dataset layouts ---------------------------------------------------------------------------

def test_visa_1cls_layout_trains_and_evaluates(visa, tmp_path):
    assert list_categories("visa", visa) == ["candle", "pcb1"]
    test = build_samples("visa", visa, "candle", "test")
    assert [s.label for s in test].count(1) == 2 and all(s.mask_path for s in test if s.label)
    # the parent folder holding 1cls/ is accepted too (the authors pass VisA_pytorch/1cls)
    assert list_categories("visa", visa.parent) == ["candle", "pcb1"]
    cli("train", "--dataset", "visa", "--data", visa, *TINY, "--iters", 2, "--out", tmp_path / "run")
    result = metrics(tmp_path / "run")
    assert set(result["categories"]) == {"candle", "pcb1"}
    assert set(result["mean"]) == METRICS and all(0 <= v <= 1 for v in result["mean"].values())


def test_raw_visa_is_read_through_the_split_csv_without_touching_it(tmp_path):
    raw = make_visa_raw(tmp_path / "VisA")
    before = snapshot(raw)
    assert list_categories("visa", raw) == ["candle", "pcb1"]
    train = build_samples("visa", raw, "pcb1", "train")
    test = build_samples("visa", raw, "pcb1", "test")
    assert len(train) == 4 and all(s.label == 0 and "/Normal/" in s.path for s in train)
    assert sorted(s.label for s in test) == [0, 0, 1, 1]
    assert all(s.mask_path.endswith(".png") and "/Masks/Anomaly/" in s.mask_path for s in test if s.label)
    cli("train", "--dataset", "visa", "--data", raw, "--categories", "pcb1", *TINY, "--iters", 1,
        "--out", tmp_path / "run")
    result = metrics(tmp_path / "run")
    assert set(result["categories"]) == {"pcb1"}
    assert result["categories"]["pcb1"]["p_auroc"] == result["categories"]["pcb1"]["p_auroc"]  # 0/1 masks read
    assert snapshot(raw) == before  # nothing written into or next to the user's folder


def test_raw_visa_and_1cls_give_the_same_masks(tmp_path):
    from inp_former.data import load_mask

    raw = make_visa_raw(tmp_path / "raw", categories=("candle",))
    one = make_visa_1cls(tmp_path / "1cls", categories=("candle",))
    raw_masks = [s.mask_path for s in build_samples("visa", raw, "candle", "test") if s.label]
    one_masks = [s.mask_path for s in build_samples("visa", one, "candle", "test") if s.label]
    for a, b in zip(raw_masks, one_masks):
        assert np.unique(np.asarray(load_mask(a))).tolist() == [0, 255]  # 0/1 on disk -> 0/255
        assert np.unique(np.asarray(load_mask(b))).tolist() == [0, 255]


def test_realiad_layout_trains_and_evaluates(tmp_path):
    root = make_realiad(tmp_path / "Real-IAD")
    assert list_categories("realiad", root) == ["audiokack", "bottle_cap"]
    test = build_samples("realiad", root, "audiokack", "test")
    assert len(test) == 4 and sorted(s.label for s in test) == [0, 0, 1, 1]
    assert {s.defect for s in test} == {"good", "QS"}
    assert all(s.path.endswith(".jpg") for s in test)  # each view is one image
    cli("train", "--dataset", "realiad", "--data", root, *TINY, "--iters", 1, "--out", tmp_path / "run")
    assert set(metrics(tmp_path / "run")["categories"]) == {"audiokack", "bottle_cap"}


def test_folder_dataset_holds_out_normal_images_for_testing(tmp_path):
    root = make_folder(tmp_path / "widget")
    assert list_categories("folder", root) == ["widget"]
    train = folder_samples(root, "widget", "train")
    test = folder_samples(root, "widget", "test")
    train_paths = {s.path for s in train}
    held = [s for s in test if s.label == 0]
    assert len(held) == round(HOLDOUT_FRACTION * 10) and not train_paths & {s.path for s in held}
    assert len(train) + len(held) == 10
    assert [s.path for s in folder_samples(root, "widget", "test")] == [s.path for s in test]  # deterministic
    assert all(s.mask_path for s in test if s.label)
    # only normal images: still a train/test split (image metrics need anomalies, so they are undefined)
    only = make_folder(tmp_path / "plain", n_abnormal=0)
    assert len(folder_samples(only, "plain", "test")) == 2 and len(folder_samples(only, "plain", "train")) == 8
    # an explicit normal_test/ folder replaces the hold-out
    (root / "normal_test").mkdir()
    (root / "normal_test" / "t.png").write_bytes((root / "normal" / "n000.png").read_bytes())
    assert len(folder_samples(root, "widget", "train")) == 10
    assert [s.path for s in folder_samples(root, "widget", "test") if s.label == 0] == [str(root / "normal_test/t.png")]


def test_folder_dataset_with_several_categories_through_the_cli(tmp_path):
    make_folder(tmp_path / "data" / "gear")
    make_folder(tmp_path / "data" / "screw", masks=False)
    assert list_categories("folder", tmp_path / "data") == ["gear", "screw"]
    cli("train", "--dataset", "folder", "--data", tmp_path / "data", *TINY, "--iters", 1, "--out", tmp_path / "run")
    result = metrics(tmp_path / "run")
    assert set(result["categories"]) == {"gear", "screw"}
    assert result["categories"]["screw"]["i_auroc"] == result["categories"]["screw"]["i_auroc"]  # not nan


@pytest.mark.parametrize("dataset, make, expected", [
    ("visa", lambda p: p, "1cls"),
    ("realiad", lambda p: p, "realiad_jsons"),
    ("folder", lambda p: p, "normal/"),
    ("mvtec", lambda p: p, "train/good"),
])
def test_wrong_layouts_name_the_path_and_show_the_layout(tmp_path, dataset, make, expected):
    data = tmp_path / "wrong"
    (data / "something").mkdir(parents=True)
    out = cli_error("train", "--dataset", dataset, "--data", data, *TINY, "--iters", 1, "--out", tmp_path / "r")
    assert str(data) in out and "expected" in out and expected in out


def test_layout_errors_name_the_missing_file(tmp_path):
    raw = make_visa_raw(tmp_path / "VisA", categories=("candle",))
    (raw / "candle" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    with pytest.raises(DatasetError, match="001.png"):
        build_samples("visa", raw, "candle", "test")
    one = make_visa_1cls(tmp_path / "1cls", categories=("candle",))
    (one / "candle" / "ground_truth" / "bad" / "000.png").unlink()
    with pytest.raises(DatasetError, match=r"test/bad/000.JPG.*ground_truth/bad/000.png"):
        build_samples("visa", one, "candle", "test")
    real = make_realiad(tmp_path / "Real-IAD", categories=("audiokack",))
    (real / "realiad_1024" / "audiokack" / "OK" / "S0000" / "audiokack_0002_OK_C3.jpg").unlink()
    with pytest.raises(DatasetError, match="realiad_1024/audiokack/OK/S0000/audiokack_0002_OK_C3.jpg"):
        build_samples("realiad", real, "audiokack", "train")
    folder = make_folder(tmp_path / "f")
    (folder / "mask" / "a001.png").unlink()
    with pytest.raises(DatasetError, match=r"a001.png.*mask/a001.png"):
        folder_samples(folder, "f", "test")


# --- settings ----------------------------------------------------------------------------------

def test_single_class_trains_one_model_per_category_and_one_table(mvtec, tmp_path):
    run_dir = tmp_path / "single"
    output = cli("train", "--data", mvtec, "--setting", "single-class", *TINY, "--iters", 2, "--out", run_dir)
    for category in ("bottle", "cable"):
        payload = torch.load(run_dir / category / "checkpoint.pt", weights_only=True)
        assert payload["config"]["data"]["categories"] == [category]
        assert payload["config"]["data"]["setting"] == "single-class"
        assert payload["meta"]["train_images"] == 4  # its own category only
    combined = metrics(run_dir)
    assert set(combined["categories"]) == {"bottle", "cable"} and combined["meta"]["setting"] == "single-class"
    assert output.count("I-AUROC") == 1  # one table at the end
    # same initialisation, different training data: the models differ
    a = torch.load(run_dir / "bottle" / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(run_dir / "cable" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert not torch.equal(a["prototypes"], b["prototypes"])
    # evaluating the run directory reproduces the combined table
    cli("eval", "--ckpt", run_dir, "--device", "cpu", "--out", tmp_path / "again")
    again = metrics(tmp_path / "again")
    for category, values in combined["categories"].items():
        for key, value in values.items():
            assert again["categories"][category][key] == pytest.approx(value, abs=1e-6)
    # a second run into the same directory is refused
    assert "already holds a run" in cli_error("train", "--data", mvtec, "--setting", "single-class", *TINY,
                                              "--iters", 1, "--out", run_dir)


def test_few_shot_samples_with_the_seed_and_expands_each_shot_to_22_images(mvtec, tmp_path):
    from inp_former.config import DataConfig
    from inp_former.data import few_shot_augmentations, image_transform, load_rgb
    from inp_former.settings import FewShotDataset, few_shot_selection

    data = DataConfig(dataset="mvtec", root=str(mvtec))
    first = few_shot_selection(data, ["bottle", "cable"], 2, seed=1)
    assert few_shot_selection(data, ["bottle", "cable"], 2, seed=1) == first
    assert {len(v) for v in first.values()} == {2}
    assert any(few_shot_selection(data, ["bottle", "cable"], 2, seed=s) != first for s in range(2, 6))
    dataset = FewShotDataset(first["bottle"], 64, 56)
    assert len(dataset) == 2 * 22
    from PIL import Image
    resized = load_rgb(first["bottle"][1].path).resize((64, 64), Image.BILINEAR)
    expected = [image_transform(64, 56)(im) for im in few_shot_augmentations(resized)]
    for index in (22, 25, 33, 39, 40, 43):
        torch.testing.assert_close(dataset[index]["image"], expected[index - 22])

    run_dir = tmp_path / "fs"
    cli("train", "--data", mvtec, "--shots", 2, *TINY, "--iters", 2, "--out", run_dir)
    payload = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert payload["config"]["data"]["setting"] == "few-shot" and payload["config"]["data"]["shots"] == 2
    assert payload["meta"]["train_images"] == 2 * 2 * 22  # 2 categories x 2 shots x 22 augmentations
    assert payload["meta"]["few_shot_images"] == [s.path for c in ("bottle", "cable") for s in first[c]]  # seed 1
    assert set(metrics(run_dir)["categories"]) == {"bottle", "cable"}  # one model, all categories
    assert "--shots 9" in cli_error("train", "--data", mvtec, "--shots", 9, *TINY, "--iters", 1,
                                    "--out", tmp_path / "x")
    assert "--shots" in cli_error("train", "--data", mvtec, "--setting", "few-shot", *TINY, "--out", tmp_path / "y")
    assert "--shots 2" in cli_error("train", "--data", mvtec, "--setting", "single-class", "--shots", 2, *TINY,
                                    "--out", tmp_path / "y")


def test_super_multi_class_trains_one_model_on_several_datasets(mvtec, visa, tmp_path):
    realiad = make_realiad(tmp_path / "Real-IAD", categories=("audiokack",))
    run_dir = tmp_path / "super"
    cli("train", "--source", f"mvtec={mvtec}", "--source", f"visa={visa}", "--source", f"realiad={realiad}", *TINY,
        "--iters", 2, "--out", run_dir)
    expected = {"mvtec/bottle", "mvtec/cable", "visa/candle", "visa/pcb1", "realiad/audiokack"}
    payload = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert payload["config"]["data"]["setting"] == "super-multi-class"
    assert set(payload["config"]["data"]["categories"]) == expected
    assert payload["meta"]["train_images"] == 4 * 5
    assert set(metrics(run_dir)["categories"]) == expected
    rows = list(csv.DictReader((run_dir / "scores.csv").open()))
    assert {r["category"] for r in rows} == expected
    # eval of one dataset of the run, by its source name
    cli("eval", "--ckpt", run_dir / "checkpoint.pt", "--categories", "visa", "--device", "cpu", "--out", tmp_path / "e")
    assert set(metrics(tmp_path / "e")["categories"]) == {"visa/candle", "visa/pcb1"}
    assert "--source 'visa'" in cli_error("train", "--source", "visa", *TINY, "--out", tmp_path / "z")
    assert "not both" in cli_error("train", "--data", mvtec, "--source", f"visa={visa}", *TINY, "--out", tmp_path / "z")


def test_zero_shot_evaluates_a_model_on_another_dataset_with_prototype_maps(mvtec, visa, tmp_path):
    from inp_former.checkpoint import load_checkpoint
    from inp_former.evaluate import evaluate
    from inp_former.inference import InferenceConfig

    run_dir = tmp_path / "source"
    cli("train", "--dataset", "visa", "--data", visa, *TINY, "--iters", 1, "--no-eval", "--out", run_dir)
    cli("eval", "--ckpt", run_dir / "checkpoint.pt", "--data", mvtec, "--dataset", "mvtec", "--map", "prototype",
        "--device", "cpu", "--out", tmp_path / "zs")
    result = metrics(tmp_path / "zs")
    assert set(result["categories"]) == {"bottle", "cable"} and result["meta"]["map_mode"] == "prototype"
    model, cfg, _ = load_checkpoint(run_dir / "checkpoint.pt")
    cfg = cfg.updated(data={"dataset": "mvtec", "root": str(mvtec)})   # configs are frozen: a changed copy
    ours = evaluate(model, cfg, ["bottle", "cable"], "cpu", InferenceConfig(map_mode="prototype"))
    for category, values in ours.categories.items():
        for key, value in values.items():
            assert result["categories"][category][key] == pytest.approx(value, abs=1e-6)


def test_old_configs_without_sources_still_load():
    raw = RunConfig().to_dict()
    del raw["data"]["sources"]
    assert RunConfig.from_dict(raw).data.sources == ()


# --- the authors' checkpoints and Meta's weights -------------------------------------------------

def test_eval_accepts_the_authors_model_pth_and_gives_our_maps(mvtec, tmp_path):
    from inp_former.config import DataConfig
    from inp_former.evaluate import evaluate
    from inp_former.inference import InferenceConfig
    from tests.helpers import tiny_config, tiny_model
    from tests.test_checkpoint import authors_state_dict

    model = tiny_model(seed=7).eval()
    state = authors_state_dict(model)
    path = tmp_path / "model.pth"
    torch.save(state, path)
    before = path.read_bytes()
    out = cli("eval", "--ckpt", path, "--data", mvtec, "--resize", 64, "--crop", 56, "--device", "cpu",
              "--out", tmp_path / "e")
    assert path.read_bytes() == before  # the user's file is never rewritten
    assert "never modified" in out and "warning" not in out  # said as a note, not as a failed store
    result = metrics(tmp_path / "e")
    # its encoder weights come from the file: not a random encoder, whatever the placeholder in the config
    assert result["meta"]["random_encoder"] is False and "random weights" not in out
    assert result["meta"]["calibration"]["image_threshold"] is not None
    cfg = RunConfig(model=tiny_config(map_size=256), data=DataConfig(dataset="mvtec", root=str(mvtec)))
    ours = evaluate(model, cfg, ["bottle", "cable"], "cpu")
    for category, values in ours.categories.items():
        for key, value in values.items():
            assert result["categories"][category][key] == pytest.approx(value, abs=1e-5)
    rows = {r["path"]: float(r["score"]) for r in csv.DictReader((tmp_path / "e" / "scores.csv").open())}
    for row in ours.rows:
        assert rows[row["path"]] == pytest.approx(row["score"], rel=1e-4, abs=1e-6)
    # a mismatch is refused with one line naming the file
    del state["decoder.5.mlp.fc2.weight"]
    torch.save(state, tmp_path / "broken.pth")
    out = cli_error("eval", "--ckpt", tmp_path / "broken.pth", "--data", mvtec, "--resize", 64, "--crop", 56,
                    "--device", "cpu")
    assert "broken.pth" in out and "decoder.5.mlp.fc2.weight" in out


def test_meta_dinov2_pth_as_encoder_weights(mvtec, tmp_path):
    import timm

    full = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0)
    meta = to_meta_dinov2_naming(full.state_dict())
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(meta, path)
    args = [a if a != "random" else str(path) for a in TINY]
    cli("train", "--data", mvtec, *args, "--iters", 1, "--no-eval", "--out", tmp_path / "run")
    payload = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert str(path) in payload["meta"]["encoder_source"]
    cli("eval", "--ckpt", tmp_path / "run" / "checkpoint.pt", "--device", "cpu", "--out", tmp_path / "e")
    meta["blocks.0.attn.qkv.weight"] = torch.zeros(5, 384)
    torch.save(meta, path)
    out = cli_error("train", "--data", mvtec, *args, "--iters", 1, "--out", tmp_path / "run2")
    assert str(path) in out and "blocks.0.attn.qkv.weight" in out
