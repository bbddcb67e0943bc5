"""Stubs of the Rust extension module ferrotune._core (kept true by mypy.stubtest)."""

from os import PathLike
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt
from typing_extensions import final

__all__ = [
    "FerrotuneError",
    "ConfigError",
    "CheckpointError",
    "ShapeError",
    "InputError",
    "DataError",
    "TokenizerError",
    "NonFiniteError",
    "BusyError",
    "CausalLM",
    "AdamW",
    "Tokenizer",
    "Generation",
    "process_logits",
    "load_safetensors",
    "save_safetensors",
    "read_gguf_metadata",
    "read_gguf_tensor_infos",
    "load_gguf_tokenizer",
    "load_gguf",
    "save_gguf",
    "cpu_isa",
    "build_info",
    "set_bf16_products",
    "bf16_products",
    "__version__",
]

__version__: str

def build_info() -> dict[str, str]:
    """How this extension was built and what it runs with: version, commit, profile, target,
    rustc, crates (the numerics crates' versions), cpu_isa and threads."""

def cpu_isa() -> str:
    """The instruction set ferrotune's kernels use here: "avx512+bf16", "avx512", "avx2", "neon" or "generic"."""

def set_bf16_products(on: bool) -> bool:
    """Lets large f32 products run with bf16 operands; False (nothing changed) without AVX512_BF16."""

def bf16_products() -> bool:
    """Whether large f32 products run with bf16 operands now."""

class FerrotuneError(Exception):
    """Base class of every ferrotune error."""

class ConfigError(FerrotuneError):
    """A model or training configuration is invalid."""

class CheckpointError(FerrotuneError):
    """A checkpoint or weights file is missing pieces, corrupt or inconsistent."""

class ShapeError(FerrotuneError):
    """A tensor or input has the wrong shape."""

class InputError(FerrotuneError):
    """An argument or input value is invalid."""

class DataError(FerrotuneError):
    """A dataset or batch cannot be used."""

class TokenizerError(FerrotuneError):
    """A tokenizer cannot be loaded, trained or used."""

class NonFiniteError(FerrotuneError):
    """A loss or gradient became NaN or infinite."""

class BusyError(FerrotuneError):
    """A model was called from a second thread while a call into it was still running."""

_Texts = Union[Iterable[str], Iterable[Sequence[str]]]
_Path = Union[str, PathLike[str]]

@final
class Tokenizer:
    """The Rust tokenizer behind ferrotune.Tokenizer."""

    @staticmethod
    def from_pretrained(path: _Path) -> Tokenizer: ...
    @staticmethod
    def train_new_bpe(
        texts: _Texts,
        vocab_size: int,
        min_frequency: int = 0,
        special_tokens: Optional[list[str]] = None,
    ) -> Tokenizer: ...
    def train_new_from_iterator(
        self,
        texts: _Texts,
        vocab_size: int,
        min_frequency: int = 0,
        new_special_tokens: Optional[list[str]] = None,
    ) -> Tokenizer: ...
    def to_state(self) -> tuple[str, str]: ...
    @staticmethod
    def from_state(tokenizer_json: str, config_json: str) -> Tokenizer: ...
    def to_str(self, pretty: bool = False) -> str: ...
    def encode_batch(
        self,
        texts: Sequence[str],
        add_special_tokens: bool = True,
        padding: str = "do_not_pad",
        truncation: bool = False,
        max_length: Optional[int] = None,
        pad_to_multiple_of: Optional[int] = None,
        return_offsets: bool = False,
    ) -> tuple[list[list[int]], list[list[int]], Optional[list[list[tuple[int, int]]]]]: ...
    def encode_batch_np(
        self,
        texts: Sequence[str],
        add_special_tokens: bool = True,
        padding: str = "do_not_pad",
        truncation: bool = False,
        max_length: Optional[int] = None,
        pad_to_multiple_of: Optional[int] = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...
    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[str]: ...
    def pad(
        self,
        columns: Sequence[tuple[str, Sequence[Sequence[int]]]],
        padding: str = "longest",
        max_length: Optional[int] = None,
        pad_to_multiple_of: Optional[int] = None,
        return_np: bool = True,
    ) -> dict[str, Any]: ...
    def decode(
        self,
        ids: Sequence[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: Optional[bool] = None,
    ) -> str: ...
    def decode_batch(
        self,
        sequences: Sequence[Sequence[int]],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: Optional[bool] = None,
    ) -> list[str]: ...
    def token_to_id(self, token: str) -> Optional[int]: ...
    def id_to_token(self, id: int) -> Optional[str]: ...
    @property
    def vocab_size(self) -> int: ...
    def __len__(self) -> int: ...
    def get_vocab(self, with_added_tokens: bool = True) -> dict[str, int]: ...
    def added_tokens(self) -> list[tuple[int, str, bool]]: ...
    def add_tokens(self, tokens: Sequence[str], special: bool = False) -> int: ...
    def add_additional_special_tokens(self, tokens: Sequence[str]) -> int: ...
    def special_token(self, kind: str) -> Optional[str]: ...
    def special_token_id(self, kind: str) -> Optional[int]: ...
    def set_special_token(self, kind: str, token: Optional[str]) -> bool: ...
    def set_special_token_id(self, kind: str, id: Optional[int]) -> None: ...
    @property
    def additional_special_tokens(self) -> list[str]: ...
    @property
    def all_special_tokens(self) -> list[str]: ...
    @property
    def padding_side(self) -> str: ...
    @padding_side.setter
    def padding_side(self, side: str) -> None: ...
    @property
    def truncation_side(self) -> str: ...
    @truncation_side.setter
    def truncation_side(self, side: str) -> None: ...
    @property
    def model_max_length(self) -> Optional[int]: ...
    @model_max_length.setter
    def model_max_length(self, n: Optional[int]) -> None: ...
    @property
    def clean_up_tokenization_spaces(self) -> bool: ...
    @clean_up_tokenization_spaces.setter
    def clean_up_tokenization_spaces(self, v: bool) -> None: ...
    @property
    def name_or_path(self) -> str: ...
    @name_or_path.setter
    def name_or_path(self, name: str) -> None: ...
    @property
    def tokenizer_class(self) -> Optional[str]: ...
    def save_pretrained(self, directory: _Path) -> list[str]: ...

_Ids = npt.NDArray[np.int64]
_F32 = npt.NDArray[np.float32]

@final
class CausalLM:
    """The Rust model (any supported architecture) behind ferrotune.Model."""

    @staticmethod
    def from_pretrained(path: _Path) -> CausalLM: ...
    @staticmethod
    def from_config(config_json: str, seed: int) -> CausalLM: ...
    @staticmethod
    def from_pretrained_with_config(path: _Path, config_json: str, seed: int) -> CausalLM: ...
    @property
    def num_labels(self) -> Optional[int]: ...
    def config_json(self) -> str: ...
    def forward(
        self,
        input_ids: _Ids,
        attention_mask: Optional[_Ids] = None,
        labels: Optional[_Ids] = None,
        return_logits: bool = True,
    ) -> tuple[Optional[float], Optional[_F32]]: ...
    def loss_stats(
        self, input_ids: _Ids, attention_mask: Optional[_Ids] = None, labels: Optional[_Ids] = None
    ) -> tuple[float, int, int]: ...
    def token_losses(
        self, input_ids: _Ids, attention_mask: Optional[_Ids] = None, labels: Optional[_Ids] = None
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]: ...
    def forward_backward(
        self,
        input_ids: _Ids,
        attention_mask: Optional[_Ids] = None,
        labels: Optional[_Ids] = None,
        num_items_in_batch: Optional[float] = None,
        on_block_done: Optional[Callable[[int], object]] = None,
    ) -> tuple[float, int]: ...
    def block_grad_ranges(self) -> list[tuple[int, int]]: ...
    def grad_buffer(self) -> _F32: ...
    def zero_grad(self) -> None: ...
    def clip_grad_norm(self, max_norm: float) -> float: ...
    def param_info(self) -> list[tuple[str, list[int]]]: ...
    def num_parameters(self, trainable_only: bool = False) -> int: ...
    def set_trainable(self, names: Sequence[str], trainable: bool) -> None: ...
    def trainable_names(self) -> list[str]: ...
    def lora_modules(self) -> list[tuple[str, int, int]]: ...
    def add_lora(self, modules: Sequence[str], r: int, alpha: float, dropout: float, use_rslora: bool, seed: int) -> None: ...
    def merge_lora(self) -> None: ...
    def lora_info(self) -> Optional[tuple[int, float, float, bool, list[str]]]: ...
    def state_dict(self) -> dict[str, _F32]: ...
    def gradients(self) -> dict[str, _F32]: ...
    def load_state_dict(self, tensors: Sequence[tuple[str, _F32]], strict: bool) -> None: ...
    training: bool
    rng_state: int
    gradient_checkpointing: bool
    def activation_bytes(self) -> int: ...
    def save_pretrained(self, path: _Path) -> None: ...

@final
class AdamW:
    """The fused Rust AdamW behind ferrotune.AdamW."""

    def __new__(
        cls,
        model: CausalLM,
        lr: float,
        beta1: float,
        beta2: float,
        eps: float,
        weight_decay: float,
        no_decay: Sequence[str],
    ) -> AdamW: ...
    def step(self) -> None: ...
    def backward_step(
        self,
        input_ids: _Ids,
        attention_mask: Optional[_Ids] = None,
        labels: Optional[_Ids] = None,
        num_items_in_batch: Optional[float] = None,
        reduce_gradients: Optional[Callable[[_F32], object]] = None,
    ) -> tuple[float, int, float]: ...
    lr: float
    @property
    def step_count(self) -> int: ...
    def moments(self) -> tuple[int, list[tuple[str, _F32, _F32]]]: ...
    def load_moments(self, step: int, moments: Sequence[tuple[str, _F32, _F32]]) -> None: ...

def load_safetensors(path: _Path) -> tuple[list[tuple[str, str, list[int], bytes]], dict[str, str]]: ...
def save_safetensors(
    path: _Path,
    tensors: Sequence[tuple[str, str, Sequence[int], bytes]],
    metadata: Optional[dict[str, str]] = None,
) -> None: ...

def read_gguf_metadata(path: _Path) -> dict[str, Any]: ...
def read_gguf_tensor_infos(path: _Path) -> list[tuple[str, str, list[int]]]: ...
def load_gguf_tokenizer(path: _Path) -> tuple[str, str, Optional[str]]: ...
def load_gguf(
    path: _Path,
) -> tuple[str, list[tuple[str, list[int], _F32]], str, Optional[str], str]: ...
def save_gguf(
    model: CausalLM,
    path: _Path,
    quantization: str,
    tokenizer: Tokenizer,
    chat_template: Optional[str],
    name: str,
    progress: Optional[Callable[[int, int], object]] = None,
) -> tuple[list[tuple[str, str]], int, list[str]]: ...

@final
class Generation:
    """KV-cached decoding state of one generate() call."""

    def __new__(
        cls,
        model: CausalLM,
        input_ids: _Ids,
        attention_mask: Optional[_Ids],
        max_new_tokens: int,
        do_sample: bool,
        temperature: Optional[float],
        top_k: Optional[int],
        top_p: Optional[float],
        min_p: Optional[float],
        repetition_penalty: Optional[float],
        eos_token_ids: Sequence[int],
        pad_token_id: Optional[int],
        seed: int,
        output_logits: bool = False,
        bf16_weights: bool = False,
    ) -> Generation: ...
    def step(self, max_steps: int) -> _Ids: ...
    def finish_rows(self, rows: Sequence[bool]) -> None: ...
    @property
    def done(self) -> bool: ...
    @property
    def unfinished(self) -> list[bool]: ...
    def sequences(self) -> _Ids: ...
    def logits(self) -> _F32: ...

def process_logits(
    scores: _F32,
    input_ids: _Ids,
    ignore: Optional[npt.NDArray[np.int64]],
    do_sample: bool,
    temperature: Optional[float] = None,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    min_p: Optional[float] = None,
    repetition_penalty: Optional[float] = None,
) -> _F32: ...
