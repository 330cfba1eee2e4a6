"""Shapes and invariants of the encoder, the INP modules and the whole model (docs/behaviour.md)."""
import pytest
import torch
import torch.nn.functional as F

from inp_former.encoders.dinov2 import DINOV2_GRID, DinoV2Encoder, meta_dinov2_to_timm
from inp_former.model import INPFormer, INPGuidedDecoderBlock, prototype_distance
from tests.helpers import tiny_model


def test_encoder_layers_and_token_layout():
    model = tiny_model()
    images = torch.randn(2, 3, 56, 56)
    layers = model.encoder(images)
    assert len(layers) == 8 and model.encoder.layers == tuple(range(2, 10))
    assert all(t.shape == (2, 16, 384) for t in layers)
    assert len(model.encoder.vit.blocks) == 10  # blocks 10 and 11 are never run
    # The taken tokens are the raw block outputs without CLS and the 4 registers.
    vit = model.encoder.vit
    x = vit.patch_embed.proj(images).flatten(2).transpose(1, 2) + model.encoder.position_embedding(4, 4)
    x = torch.cat([torch.cat([vit.cls_token, vit.reg_token], 1).expand(2, -1, -1), x], 1)
    for block in vit.blocks[:3]:
        x = block(x)
    torch.testing.assert_close(layers[0], x[:, 5:])


def test_large_encoder_layer_choice():
    from inp_former.encoders import DINOV2_VARIANTS

    assert DINOV2_VARIANTS["large"][1] == (4, 6, 8, 10, 12, 14, 16, 18)


def test_position_embedding_is_metas_bicubic_not_timms():
    from timm.layers import resample_abs_pos_embed

    encoder = DinoV2Encoder("small", "random")
    torch.nn.init.normal_(encoder.vit.pos_embed)
    ours = encoder.position_embedding(28, 28)
    grid = encoder.vit.pos_embed.reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    meta = F.interpolate(grid, scale_factor=(28.1 / 37, 28.1 / 37), mode="bicubic", antialias=False)
    torch.testing.assert_close(ours, meta.permute(0, 2, 3, 1).reshape(1, 784, -1))
    timm_way = resample_abs_pos_embed(encoder.vit.pos_embed, (28, 28), (37, 37), num_prefix_tokens=0)
    assert (ours - timm_way).norm() / ours.norm() > 0.1  # the two really differ
    assert encoder.position_embedding(DINOV2_GRID, DINOV2_GRID) is encoder.vit.pos_embed


def test_meta_checkpoint_gives_the_same_encoder(tmp_path):
    source = DinoV2Encoder("small", "random")
    torch.nn.init.normal_(source.vit.pos_embed)
    torch.nn.init.normal_(source.vit.cls_token)
    import timm

    # Meta's files hold all 12 blocks; ours runs only the first 10.
    timm_state = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0).state_dict()
    timm_state.update({k: v.clone() for k, v in source.vit.state_dict().items()})
    # Meta's layout: CLS position entry inside pos_embed, 'register_tokens', a mask token.
    cls_pos = torch.randn(1, 1, 384)
    meta = {k: v for k, v in timm_state.items() if k not in ("reg_token", "pos_embed", "cls_token")}
    meta.update(register_tokens=timm_state["reg_token"], mask_token=torch.zeros(1, 384),
                cls_token=timm_state["cls_token"] - cls_pos,
                pos_embed=torch.cat([cls_pos, timm_state["pos_embed"]], 1))
    converted = meta_dinov2_to_timm(meta)
    assert set(converted) == set(timm_state)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(meta, path)
    loaded = DinoV2Encoder("small", str(path))
    images = torch.randn(1, 3, 56, 56)
    for a, b in zip(loaded(images), source(images)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_mismatched_encoder_weights_are_refused(tmp_path):
    from inp_former.encoders import EncoderWeightsError

    path = tmp_path / "other.pth"
    torch.save({"blocks.0.norm1.weight": torch.ones(3)}, path)
    with pytest.raises(EncoderWeightsError, match="does not fit"):
        DinoV2Encoder("small", str(path))


def test_pretrained_offline_gives_a_clear_error(monkeypatch):
    from inp_former.encoders import EncoderWeightsError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-inpctl-test")
    with pytest.raises(EncoderWeightsError, match="encoder_weights"):
        DinoV2Encoder("small", "pretrained")


def test_model_output_shapes_and_trainable_parts():
    model = tiny_model()
    out = model(torch.randn(3, 3, 56, 56))
    assert out.grid == (4, 4)   # (grid_h, grid_w)
    assert [t.shape for t in out.encoder_groups] == [(3, 16, 384)] * 2
    assert [t.shape for t in out.decoder_groups] == [(3, 16, 384)] * 2
    assert out.prototypes.shape == (3, 6, 384) and out.prototype_distance.shape == (3, 16)
    names = model.trainable_state_dict().keys()
    assert not any(n.startswith("encoder.") for n in names)
    assert model.decoder[0].attn.scale.shape == (6, 1, 1)
    assert all(not p.requires_grad for p in model.encoder.parameters())


def test_base_model_parameter_count():
    from inp_former.config import ModelConfig
    from inp_former.model import INPFormer

    class FakeEncoder(DinoV2Encoder):  # only the sizes matter here; skip building ViT-B
        def __init__(self):
            torch.nn.Module.__init__(self)
            self.embed_dim, self.num_heads, self.groups = 768, 12, ((0,), (0,))

    model = INPFormer(ModelConfig(), encoder=FakeEncoder())
    count = sum(p.numel() for p in model.trainable_parameters())
    assert abs(count - 68.5e6) < 0.1e6  # the authors' model: about 68.5M trainable parameters for ViT-B


def test_initialisation():
    model = tiny_model()
    for name, module in model.named_modules():
        if name.startswith("encoder"):
            continue
        if isinstance(module, torch.nn.Linear):
            assert module.weight.abs().max() <= 0.03 and module.bias.abs().max() == 0
        if isinstance(module, torch.nn.LayerNorm):
            assert module.eps == 1e-8 and (module.weight == 1).all() and (module.bias == 0).all()
    assert abs(model.prototypes.std().item() - 1) < 0.2


def test_truncated_normal_has_the_truncated_distribution():
    """N(0, 0.01) truncated at +-0.03 (3 sigma): std 0.98658 sigma, symmetric, nothing outside."""
    from inp_former.model import truncated_normal_

    torch.manual_seed(3)
    x = truncated_normal_(torch.empty(400, 1000), std=0.01, bound=0.03)
    assert x.abs().max() <= 0.03 and x.abs().max() > 0.029           # the bound is reached, never passed
    assert abs(x.std().item() - 0.0098658) < 5e-5 and abs(x.mean().item()) < 5e-5
    reference = torch.nn.init.trunc_normal_(torch.empty(400, 1000), std=0.01, a=-0.03, b=0.03)
    assert abs(x.std().item() - reference.std().item()) < 5e-5


def test_a_model_built_for_loading_equals_the_model_it_loads():
    """init_weights=False (what load_checkpoint builds) leaves the trainable weights for the loaded
    ones, on the CPU, trainable; the random encoder is the same every time."""
    model = tiny_model()
    empty = INPFormer(model.cfg, init_weights=False)
    assert {p.device.type for p in empty.parameters()} == {"cpu"}
    assert all(p.requires_grad for p in empty.trainable_parameters())
    empty.load_trainable_state_dict(model.trainable_state_dict())
    for (name, ours), theirs in zip(empty.state_dict().items(), model.state_dict().values()):
        assert torch.equal(ours, theirs), name
    vit = empty.encoder.vit
    assert abs(vit.blocks[0].attn.qkv.weight.std().item() - 0.02) < 1e-3 and (vit.blocks[0].attn.qkv.bias == 0).all()


def test_decoder_block_has_no_attention_residual():
    torch.manual_seed(0)
    block = INPGuidedDecoderBlock(32, 4, 4.0)
    torch.nn.init.zeros_(block.attn.proj.weight)
    torch.nn.init.zeros_(block.attn.proj.bias)
    x, inps = torch.randn(2, 9, 32), torch.randn(2, 3, 32)
    out = block(x, inps)
    # With a zero attention output, x itself must not come through: out = 0 + mlp(norm2(0)).
    expected = block.mlp(block.norm2(torch.zeros_like(x)))
    torch.testing.assert_close(out, expected)


def test_decoder_groups_are_reversed_and_every_block_sees_the_same_inps():
    model = tiny_model()
    outputs, inps = [], []

    def record(module, args, out):
        outputs.append(out)
        inps.append(args[1])

    hooks = [blk.register_forward_hook(record) for blk in model.decoder]
    out = model(torch.randn(2, 3, 56, 56))
    for h in hooks:
        h.remove()
    assert len(outputs) == 8
    torch.testing.assert_close(out.decoder_groups[0], torch.stack(outputs[4:]).mean(0))  # last 4 blocks
    torch.testing.assert_close(out.decoder_groups[1], torch.stack(outputs[:4]).mean(0))  # first 4 blocks
    assert all(p is inps[0] for p in inps) and inps[0] is out.prototypes


def test_a_decoder_too_shallow_for_the_encoders_groups_is_refused_by_name():
    """DINOv2's two groups of 4 layers pair with 8 decoder layers: fewer failed in forward with an
    IndexError; now the model refuses to be built, naming the setting."""
    from inp_former.errors import ConfigError

    with pytest.raises(ConfigError, match=r"decoder_depth 6: .* give at least 8") as refused:
        tiny_model(decoder_depth=6)
    assert refused.value.arg == "decoder_depth"


def test_prototype_distance_matches_broadcast_cosine():
    tokens, protos = torch.randn(2, 10, 16), torch.randn(2, 3, 16)
    direct = 1 - F.cosine_similarity(tokens.unsqueeze(2), protos.unsqueeze(1), dim=-1)
    torch.testing.assert_close(prototype_distance(tokens, protos), direct.min(-1).values)


def test_extractor_uses_one_norm_for_queries_and_tokens():
    model = tiny_model()
    calls = []
    hook = model.extractor.norm1.register_forward_hook(lambda m, a, o: calls.append(a[0].shape))
    model(torch.randn(1, 3, 56, 56))
    hook.remove()
    assert calls == [(1, 6, 384), (1, 16, 384)]
