"""Encoders of the client model: cached frozen features or small trainable towers."""

from adamodal.towers.features import (
    HASH_VOCAB,
    TOWER_CHOICES,
    Inputs,
    build_inputs,
    feature_cache_path,
    hash_texts,
    hash_token,
    tokenize,
)
from adamodal.towers.small import (
    IMAGE_TOWERS,
    TEXT_TOWERS,
    BagOfWordsTower,
    LeNetTower,
    MLPTower,
    make_image_tower,
    make_text_tower,
)

__all__ = [
    "HASH_VOCAB",
    "IMAGE_TOWERS",
    "TEXT_TOWERS",
    "TOWER_CHOICES",
    "BagOfWordsTower",
    "Inputs",
    "LeNetTower",
    "MLPTower",
    "build_inputs",
    "feature_cache_path",
    "hash_texts",
    "hash_token",
    "make_image_tower",
    "make_text_tower",
    "tokenize",
]
