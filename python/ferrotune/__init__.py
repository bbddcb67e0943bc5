"""ferrotune: fine-tune Hugging Face language models on CPU, with a Rust core and no PyTorch."""

from ._core import (
    CheckpointError,
    ConfigError,
    DataError,
    FerrotuneError,
    InputError,
    NonFiniteError,
    ShapeError,
    TokenizerError,
)
from .tokenizer import BatchEncoding, Tokenizer

__all__ = [
    "BatchEncoding",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "FerrotuneError",
    "InputError",
    "NonFiniteError",
    "ShapeError",
    "Tokenizer",
    "TokenizerError",
]
