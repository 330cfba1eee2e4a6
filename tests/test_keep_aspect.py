"""Keep the aspect ratio (``--keep-aspect``): non-square inputs, token grids and maps on every surface.

One tiny model (random ViT-S, tall 70x28 px parts -> 5x2 tokens, 2 iterations) is trained once through
the CLI for the module; the rest are unit checks. Random encoder weights: the metrics are not
meaningful, only their shapes and the plumbing are checked.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from inp_former.config import ModelConfig, RunConfig, map_shape
from inp_former.data.geometry import Geometry, keep_aspect_size
from inp_former.data.transforms import masks_for_metrics
from inp_former.errors import ConfigError
from inpctl.cli import app
from kernels.dispatch import kernel_mode
from kernels.scoring import anomaly_map_reference
from tests.datagen import make_mvtec_tree
from tests.helpers import tiny_config, tiny_model

runner = CliRunner()
HEIGHT, WIDTH = 70, 28          # the parts: 2.5 times taller than wide
TINY = ["--encoder", "small", "--encoder-weights", "random", "--resize", "28", "--batch-size", "2",
        "--warmup-iters", "1", "--iters", "2", "--num-workers", "0", "--device", "cpu"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(data root, run dir, train output): a keep-aspect run on tall parts, one training image square."""
    root = make_mvtec_tree(tmp_path_factory.mktemp("data"), categories=("bottle",), size=HEIGHT, width=WIDTH)
    Image.new("RGB", (56, 56), (120, 110, 100)).save(root / "bottle/train/good/square.png")
    run_dir = tmp_path_factory.mktemp("run") / "r"
    result = invoke("train", "--data", root, *TINY, "--keep-aspect", "--out", run_dir)
    assert result.exit_code == 0, result.output
    return root, run_dir, result.output


# --- the config: sizes, one source of truth --------------------------------------------------------

def test_default_config_is_the_square_paper_geometry():
    """Item 4: defaults are unchanged (392 px crop of a 448 px square, 256 x 256 maps)."""
    mc = ModelConfig()
    assert (mc.keep_aspect, mc.input_size) == (False, None)
    assert (mc.input_hw, mc.resize_hw, mc.map_hw) == ((392, 392), (448, 448), (256, 256))
    assert Geometry.from_model_config(mc) == Geometry(448, 392)
    assert RunConfig().to_dict()["model"]["keep_aspect"] is False


def test_default_maps_are_exactly_the_square_reference():
    """A square model's maps through score_batch equal the reference called with plain ints, bit for bit."""
    from inp_former.inference import score_batch

    model, cfg = tiny_model(), RunConfig(model=tiny_config())
    images = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with kernel_mode("reference"):
        maps, _, out = score_batch(model, images, cfg)
    assert out.grid == (4, 4) and maps.shape == (2, 32, 32)
    assert torch.equal(maps, anomaly_map_reference(out.encoder_groups, out.decoder_groups, 56, 32))


def test_keep_aspect_size_rounds_to_the_token_stride_and_maps_follow():
    assert keep_aspect_size((1250, 500), 448, 14) == (1120, 448)      # KolektorSDD: 1:2.5, exact
    assert keep_aspect_size((500, 1250), 448, 14) == (448, 1120)      # wide
    assert keep_aspect_size((100, 40), 30, 14) == (70, 28)            # 30 -> 28, 75 -> 70: nearest multiple
    assert keep_aspect_size((10, 1000), 64, 8) == (64, 6400)          # a line-scan strip
    assert map_shape((1120, 448), 256) == (640, 256) and map_shape((392, 392), 256) == (256, 256)
    mc = ModelConfig(keep_aspect=True, input_size=(1120, 448))
    assert (mc.input_hw, mc.resize_hw, mc.map_hw) == ((1120, 448), (1120, 448), (640, 256))
    assert Geometry.from_model_config(mc) == Geometry((1120, 448), (1120, 448))   # resize, no crop
    assert not mc.stretches((2500, 1000)) and mc.stretches((1000, 1000))          # scale is fine, aspect is not
    assert not ModelConfig().stretches((1000, 10))                                 # square models squash silently
    assert (mc.stride, ModelConfig(encoder="efficientnet_lite0").stride) == (14, 8)


def test_config_rules():
    with pytest.raises(ConfigError, match="input_size .*only with keep_aspect"):
        ModelConfig(input_size=(70, 28))
    with pytest.raises(ConfigError, match="not resolved yet"):
        ModelConfig(keep_aspect=True).input_hw
    assert ModelConfig(keep_aspect=True, resize=64).crop == 392            # crop unused: not checked against resize
    saved = RunConfig(model=ModelConfig(keep_aspect=True, input_size=(70, 28))).to_dict()
    assert saved["model"]["input_size"] == [70, 28]
    assert RunConfig.from_dict(json.loads(json.dumps(saved)), saved=True).model.input_size == (70, 28)


def test_masks_for_metrics_on_non_square_masks():
    mask = torch.zeros(1, 1, 70, 28)
    mask[..., 60:, :7] = 1.0
    binary = masks_for_metrics(mask, (40, 16))
    assert binary.shape == (1, 40, 16) and binary[0, -1, 0] and not binary[0, 0, -1]


# --- the encoders on H x W token grids ---------------------------------------------------------------

def test_dinov2_position_embedding_on_a_non_square_grid():
    """Meta's resampling (scale factor per axis) at 5 x 9 tokens: the rows follow the height, the
    columns the width (the source grid transposed gives the result transposed)."""
    from inp_former.encoders import DinoV2Encoder

    encoder = DinoV2Encoder("small", "random")
    torch.nn.init.normal_(encoder.vit.pos_embed, generator=torch.Generator().manual_seed(0))
    wide = encoder.position_embedding(5, 9)
    assert wide.shape == (1, 45, 384)
    source = encoder.vit.pos_embed.data.clone()
    encoder.vit.pos_embed.data = source.reshape(1, 37, 37, -1).transpose(1, 2).reshape(source.shape)
    tall = encoder.position_embedding(9, 5)
    torch.testing.assert_close(tall.reshape(9, 5, -1), wide.reshape(5, 9, -1).transpose(0, 1))


def test_model_and_cnn_encoder_on_non_square_images():
    from inp_former.model import INPFormer

    out = tiny_model()(torch.randn(1, 3, 70, 28))
    assert out.grid == (5, 2) and out.encoder_groups[0].shape == (1, 10, 384)
    cnn = INPFormer(ModelConfig(encoder="efficientnet_lite0", encoder_weights="random", keep_aspect=True,
                                input_size=(64, 160), num_prototypes=2, decoder_depth=4))
    out = cnn(torch.randn(1, 3, 64, 160))
    assert out.grid == (8, 20) and out.decoder_groups[0].shape == (1, 160, cnn.encoder.embed_dim)


def test_relu_attention_kernel_is_grid_agnostic():
    """The decoder's ReLU attention is per token: at a 5 x 2 grid the Triton kernel (interpreter on
    CPU) gives the reference's decoder tokens."""
    model, images = tiny_model(), torch.randn(1, 3, 70, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), kernel_mode("reference"):
        want = model(images).decoder_groups
    with torch.no_grad(), kernel_mode("triton"):
        got = model(images).decoder_groups
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


# --- a run, end to end -------------------------------------------------------------------------------

def test_training_resolves_the_input_size_and_says_so_once(run):
    root, run_dir, output = run
    model = json.loads((run_dir / "config.json").read_text())["model"]
    assert model["keep_aspect"] is True and model["input_size"] == [HEIGHT, WIDTH]
    assert "70x28 px" in output and "most common training image size 70x28" in output
    assert output.count("training images have another aspect ratio") == 1
    assert "1 of 5 training images" in output
    assert output.count("test images have another aspect ratio") == 0     # the test parts are all tall


def test_eval_follows_the_checkpoint_and_scores_non_square_masks(run, tmp_path):
    root, run_dir, _ = run
    trained = json.loads((run_dir / "metrics.json").read_text())
    result = invoke("eval", "--ckpt", run_dir, "--out", tmp_path, "--device", "cpu")
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("i_auroc", "p_auroc", "aupro"):
        assert np.isfinite(again["mean"][key]) and again["mean"][key] == pytest.approx(trained["mean"][key], abs=1e-6)
    refused = invoke("eval", "--ckpt", run_dir, "--out", tmp_path / "x", "--resize", "56", "--device", "cpu")
    assert refused.exit_code != 0 and "--resize 56: the checkpoint keeps the aspect ratio" in refused.output


def test_predict_maps_and_overlays_keep_the_image_size(run, tmp_path):
    from inp_former.predictor import Predictor

    root, run_dir, _ = run
    predictor = Predictor.from_checkpoint(run_dir / "checkpoint.pt", "cpu")
    part = root / "bottle/test/defect/000.png"
    prediction = predictor.predict(part)
    assert prediction.map.shape == (640, 256)                        # map_size 256 on the shorter side
    assert predictor.overlay(part, prediction).size == Image.open(part).size
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.open(part).resize((WIDTH * 3, HEIGHT * 3)).save(inputs / "big.png")   # same aspect, larger
    for name in ("square.png", "square2.png"):                                   # stretched to 70x28
        Image.new("RGB", (40, 40), (90, 90, 90)).save(inputs / name)
    result = invoke("predict", inputs, "--ckpt", run_dir, "--out", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 0, result.output
    sizes = {path.name: Image.open(path).size for path in (tmp_path / "out/overlays").rglob("*.png")}
    assert sizes == {"big.png": (WIDTH * 3, HEIGHT * 3), "square.png": (40, 40), "square2.png": (40, 40)}, sizes
    assert result.output.count("have another aspect ratio") == 1 and "2 of 3 scored images" in result.output


def test_export_onnx_at_the_fixed_non_square_size(run, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    root, run_dir, _ = run
    target = tmp_path / "model.onnx"
    result = invoke("export", "--ckpt", run_dir / "checkpoint.pt", "--format", "onnx", "--out", target)
    assert result.exit_code == 0, result.output
    assert "Checked with onnxruntime" in result.output and "image (batch, 3, 70, 28)" in result.output
    sidecar = json.loads((tmp_path / "model.onnx.json").read_text())
    assert sidecar["input"]["shape"] == ["batch", 3, HEIGHT, WIDTH]
    assert sidecar["outputs"]["map"]["shape"] == ["batch", 640, 256]
    assert sidecar["input"]["preprocessing"]["keep_aspect"] is True


@pytest.mark.parametrize("command", [["train"], ["bench", "quality"]])
def test_crop_with_keep_aspect_is_refused(command, tmp_path):
    result = invoke(*command, "--keep-aspect", "--crop", "56", "--device", "cpu")
    assert result.exit_code != 0
    line = [text for text in result.output.splitlines() if "--crop 56" in text]
    assert line and "unused with --keep-aspect" in line[0], result.output
