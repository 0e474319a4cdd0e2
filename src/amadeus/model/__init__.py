"""The networks (NoteTransformer backbone, the note decoders: the Amadeus diffusion head and the comparison
baselines) and the masked-diffusion maths (`amadeus.model.diffusion`)."""

from amadeus.model.baselines import DECODERS, build_decoder
from amadeus.model.config import ModelConfig
from amadeus.model.embedding import NoteEmbedding
from amadeus.model.head import AttributeDiffusionHead
from amadeus.model.note_decoder import DecoderLoss, NoteDecoder
from amadeus.model.transformer import KVCache, NoteTransformer, TransformerOutput

__all__ = [
    "AttributeDiffusionHead",
    "DECODERS",
    "DecoderLoss",
    "KVCache",
    "ModelConfig",
    "NoteDecoder",
    "NoteEmbedding",
    "NoteTransformer",
    "TransformerOutput",
    "build_decoder",
]
