"""Frozen encoders behind one interface (:class:`FrozenEncoder`): DINOv2-with-registers ViTs (the
paper's), timm CNNs (the light offline choice), and the registry that builds one from a config."""
from inp_former.encoders.base import (RANDOM_SOURCE, FrozenEncoder, hub_reachable, in_hf_cache, read_state_dict,
                                      state_mismatch)
from inp_former.encoders.cnn import (CNN_ENCODERS, LITE0_PACKAGE, TIMM_PREFIX, TimmCNNEncoder, lite0_package_file,
                                     timm_name_of)
from inp_former.encoders.dinov2 import DINOV2_VARIANTS, DinoV2Encoder, meta_dinov2_to_timm, pretrained_available
from inp_former.encoders.registry import ENCODERS, build_encoder
from inp_former.errors import EncoderWeightsError

__all__ = ["CNN_ENCODERS", "DINOV2_VARIANTS", "ENCODERS", "EncoderWeightsError", "FrozenEncoder", "DinoV2Encoder",
           "LITE0_PACKAGE", "RANDOM_SOURCE", "TIMM_PREFIX", "TimmCNNEncoder", "build_encoder", "hub_reachable",
           "in_hf_cache", "lite0_package_file", "meta_dinov2_to_timm", "pretrained_available", "read_state_dict",
           "state_mismatch", "timm_name_of"]
