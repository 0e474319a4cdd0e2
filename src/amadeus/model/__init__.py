"""The networks (NoteTransformer backbone, AttributeDiffusionHead, comparison baselines) and the
masked-diffusion maths (`amadeus.model.diffusion`)."""

from amadeus.model.baselines import FlatBaseline, NestedHead, ParallelHead
from amadeus.model.config import ModelConfig
from amadeus.model.embedding import NoteEmbedding
from amadeus.model.head import AttributeDiffusionHead
from amadeus.model.transformer import KVCache, NoteTransformer, TransformerOutput

__all__ = [
    "AttributeDiffusionHead",
    "FlatBaseline",
    "KVCache",
    "ModelConfig",
    "NestedHead",
    "NoteEmbedding",
    "NoteTransformer",
    "ParallelHead",
    "TransformerOutput",
]
