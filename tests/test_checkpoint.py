"""Checkpoints: our format round-trips; the authors' model.pth imports to the same outputs."""
import pytest
import timm
import torch

from inp_former.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from inp_former.config import RunConfig
from tests.helpers import tiny_config, tiny_model, to_meta_dinov2_naming


def test_round_trip_gives_identical_outputs(tmp_path):
    model = tiny_model(seed=3).eval()
    cfg = RunConfig(model=tiny_config())
    save_checkpoint(tmp_path / "c.pt", model, cfg, meta={"iterations": 7})
    payload = torch.load(tmp_path / "c.pt", weights_only=True)  # plain data, no code
    assert payload["meta"]["iterations"] == 7
    loaded, loaded_cfg, meta = load_checkpoint(tmp_path / "c.pt")
    assert loaded_cfg == cfg
    images = torch.randn(2, 3, 56, 56)
    a, b = model(images), loaded.eval()(images)
    for x, y in zip(a.decoder_groups + [a.prototypes], b.decoder_groups + [b.prototypes]):
        assert torch.equal(x, y)


def test_a_different_encoder_is_detected(tmp_path):
    model = tiny_model()
    cfg = RunConfig(model=tiny_config())
    save_checkpoint(tmp_path / "c.pt", model, cfg)
    payload = torch.load(tmp_path / "c.pt", weights_only=True)
    payload["meta"]["encoder_fingerprint"] += 1.0
    torch.save(payload, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="not the one it was trained with"):
        load_checkpoint(tmp_path / "c.pt")


def authors_state_dict(model) -> dict:
    """The authors' model.pth layout (docs/behaviour.md), built from one of our models + a full 12-block ViT-S."""
    ours_to_theirs = {"prototypes": "prototype_token", "bottleneck.": "bottleneck.0.", "extractor.": "aggregation.0."}
    state = {}
    for key, value in model.trainable_state_dict().items():
        for mine, theirs in ours_to_theirs.items():
            if key.startswith(mine):
                key = theirs + key[len(mine):]
                break
        state[key.replace(".attn.scale", ".attn.learn_scale")] = value.clone()
    full = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0)
    vit_state = full.state_dict()
    vit_state.update({k: v for k, v in model.encoder.vit.state_dict().items()})  # blocks 0..9 + embeddings
    state.update({f"encoder.{key}": value for key, value in to_meta_dinov2_naming(vit_state).items()})
    return state


def test_authors_checkpoint_imports_with_identical_outputs(tmp_path):
    model = tiny_model(seed=5).eval()
    torch.nn.init.normal_(model.decoder[3].attn.scale)
    state = authors_state_dict(model)
    assert len(state) == 315  # the authors' model: 315 tensors for ViT-S
    assert state["prototype_token"].shape == (6, 384) and state["encoder.pos_embed"].shape == (1, 1 + 37 * 37, 384)
    torch.save(state, tmp_path / "model.pth")
    imported, cfg, meta = load_checkpoint(tmp_path / "model.pth")
    assert cfg.model.encoder == "small" and cfg.model.num_prototypes == 6 and "authors" in meta["imported_from"]
    images = torch.randn(2, 3, 56, 56)
    a, b = model(images), imported.eval()(images)
    for x, y in zip(a.encoder_groups + a.decoder_groups, b.encoder_groups + b.decoder_groups):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("damage", ["drop", "shape"])
def test_authors_checkpoint_mismatch_is_refused(tmp_path, damage):
    state = authors_state_dict(tiny_model())
    if damage == "drop":
        del state["decoder.2.attn.q.weight"]
    else:
        state["aggregation.0.attn.kv.weight"] = torch.zeros(10, 384)
    torch.save(state, tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="model.pth"):
        load_checkpoint(tmp_path / "model.pth")
