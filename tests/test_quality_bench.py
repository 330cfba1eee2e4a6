"""The quality benchmark as a library tool: any dataset config, three rows, loss summary, JSON-ready."""
from __future__ import annotations

import copy
import json
import math
import shlex

import pytest

from inp_former.benchmarks.quality import METHODS, format_table, loss_summary, markdown_report, run_quality
from inp_former.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from tests.datagen import make_mvtec_tree

METRICS = ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "aupro")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return make_mvtec_tree(tmp_path_factory.mktemp("quality-data"), categories=("bottle", "cable"),
                           n_train=4, n_test_good=2, n_test_bad=2, size=64)


def _tiny_config(root, categories=()) -> RunConfig:
    return RunConfig(model=ModelConfig(encoder="timm:resnet18", encoder_weights="random", resize=64, crop=64),
                     train=TrainConfig(iters=4, batch_size=2, warmup_iters=1, checkpoint_every=0),
                     data=DataConfig(dataset="mvtec", root=str(root), categories=tuple(categories)))


def test_run_quality_on_a_dataset_config_reports_rows_losses_and_time(tiny_root):
    cfg = _tiny_config(tiny_root, categories=["cable"])
    before = copy.deepcopy(cfg.to_dict())
    result = run_quality(cfg, "cpu", batch_size=4)

    assert cfg.to_dict() == before                     # the caller's config is left alone
    json.loads(json.dumps(result, allow_nan=True))     # plain JSON types only
    assert list(result["rows"]) == list(METHODS)
    assert set(result["categories"]["trained"]) == {"cable"}     # the config's categories, not all of root
    for metrics in result["rows"].values():
        for key in METRICS:
            assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    meta = result["meta"]
    assert meta["categories"] == ["cable"] and meta["iterations"] == 4 and meta["train_seconds"] >= 0
    assert meta["bank_tokens"] == 4 * 8 * 8            # 4 training images, 8x8 tokens at stride 8
    assert set(meta["eval_seconds"]) == set(METHODS) and meta["test_images"] == 4
    assert "Evaluation time per test image (4 images" in markdown_report(result)
    assert result["config"]["model"]["encoder_stages"] is not None   # the encoder's choices are recorded

    losses, summary = result["losses"], result["loss"]
    assert len(losses) == summary["steps"] == 4 and all(math.isfinite(v) for v in losses)
    assert summary["first"] == losses[0] and summary["last"] == losses[-1] == meta["final_loss"]
    assert summary["at_50"] in losses and summary["min"] == min(losses)
    assert isinstance(summary["still_falling"], bool)
    assert "nearest-neighbour" in format_table(result)


def test_run_quality_rows_can_be_chosen(tiny_root):
    result = run_quality(_tiny_config(tiny_root), "cpu", batch_size=4, methods=("nearest-neighbour",))
    assert list(result["rows"]) == ["nearest-neighbour"] and "loss" not in result
    assert set(result["categories"]["nearest-neighbour"]) == {"bottle", "cable"}   # empty = every category
    with pytest.raises(ValueError, match="methods"):
        run_quality(_tiny_config(tiny_root), "cpu", methods=("patchcore",))


def test_the_baseline_of_a_tiled_model_works_on_the_same_tiles(tiny_root):
    """With --tile the nearest-neighbour bank holds the tokens of every training tile, and test
    images are scored tile by tile into maps at their own resolution, as the tiled model is."""
    from inp_former.tiling import TileLayout

    cfg = _tiny_config(tiny_root, categories=["cable"]).updated(model={"resize": 224, "crop": 224, "tile": 32,
                                                                       "tile_overlap": 8, "encoder_padding": 8})
    result = run_quality(cfg, "cpu", batch_size=4, methods=("nearest-neighbour",))
    tiles = len(TileLayout.of(64, 64, 32, 8))
    assert tiles > 1
    assert result["meta"]["bank_tokens"] == 4 * tiles * 4 * 4     # 4 images, every tile's 4x4 tokens (stride 8)
    metrics = result["rows"]["nearest-neighbour"]
    assert all(0.0 <= metrics[key] <= 1.0 for key in METRICS)
    assert "(the nearest-neighbour baseline on the same tiles)" in markdown_report(result)


def test_loss_summary_reads_a_curve():
    falling = [1.0 / (1 + 0.1 * i) for i in range(100)]
    s = loss_summary(falling)
    assert s["steps"] == 100 and s["first"] == 1.0 and s["last"] == falling[-1]
    assert s["at_25"] == falling[25] and s["at_50"] == falling[50] and s["at_75"] == falling[74]
    assert s["tail_change"] < 0 and s["still_falling"] is True
    flat = loss_summary([0.5 + 0.001 * (-1) ** i for i in range(100)])
    assert abs(flat["tail_change"]) < 0.01 and flat["still_falling"] is False
    rising = loss_summary([0.1 * i for i in range(1, 11)])
    assert rising["still_falling"] is False and rising["tail_change"] > 0
    empty = loss_summary([])
    assert empty["steps"] == 0 and empty["still_falling"] is None and math.isnan(empty["first"])
    assert loss_summary([0.3])["still_falling"] is False


def test_bench_quality_command_writes_the_record_with_its_provenance(tiny_root, tmp_path, monkeypatch):
    """What bench/quality_demo.py did, now ``inpctl bench quality --json --md``: the command that
    reproduces the run, the machine and the software, in the JSON and in a Markdown record."""
    from typer.testing import CliRunner

    import inp_former.demo as demo
    from inpctl.cli import app

    monkeypatch.setattr(demo, "demo_config", lambda seed=1: (_tiny_config(tiny_root), "tiny stand-in for the demo"))
    json_path, md_path = tmp_path / "q.json", tmp_path / "q.md"
    args = ["--categories", "cable", "--iters", "3", "--device", "cpu", "--json", str(json_path), "--md", str(md_path)]
    result = CliRunner().invoke(app, ["bench", "quality", *args])
    assert result.exit_code == 0, result.output

    written = json.loads(json_path.read_text())
    provenance = written["provenance"]
    assert provenance["command"] == shlex.join(["inpctl", "bench", "quality", *args])   # only what was typed
    assert provenance["device"] == "cpu" and provenance["torch"] and provenance["date_utc"].endswith("UTC")
    assert written["config"]["train"]["iters"] == 3 and written["config"]["data"]["categories"] == ["cable"]

    text = md_path.read_text()
    assert text == markdown_report(written)
    assert text.startswith("# Detection quality on cable (cpu)")
    assert f"- Command: `{provenance['command']}`" in text
    assert "| trained | cable |" in text and "| nearest-neighbour | cable |" in text
    assert "Trained minus untrained (points): I-AUROC" in text
    assert "- Training: 3 iterations, batch 2" in text



def test_bench_quality_runs_the_rows_it_is_given_and_names_a_bad_one(tiny_root, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import inp_former.demo as demo
    from inpctl.cli import app

    monkeypatch.setattr(demo, "demo_config", lambda seed=1: (_tiny_config(tiny_root), "tiny stand-in for the demo"))
    bad = CliRunner().invoke(app, ["bench", "quality", "--methods", "trained,patchcore"])
    assert bad.exit_code == 2 and "--methods trained,patchcore: expected" in bad.output
    result = CliRunner().invoke(app, ["bench", "quality", "--methods", "nearest-neighbour", "--categories", "cable",
                                      "--device", "cpu", "--json", str(tmp_path / "q.json")])
    assert result.exit_code == 0, result.output
    assert list(json.loads((tmp_path / "q.json").read_text())["rows"]) == ["nearest-neighbour"]
