"""LoRA with PEFT's API and files: ``LoraConfig``, ``get_peft_model``, ``PeftModel``.

The adapters run in Rust (fused forward/backward, frozen base weights, no ``W + BA`` while
training). ``PeftModel.save_pretrained`` writes ``adapter_config.json`` +
``adapter_model.safetensors`` with PEFT's key names, which ``peft.PeftModel.from_pretrained``
loads onto the transformers base model; ``PeftModel.from_pretrained`` reads PEFT-written
adapters back.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from numbers import Real
from typing import Any, Dict, List, Optional, Union

import numpy as np

from . import hub
from ._core import ConfigError, InputError
from .io import atomic_directory, load_safetensors, read_checkpoint_json, save_safetensors
from .modeling import Model, PathLike

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."

# PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING for the architectures we have
DEFAULT_TARGETS = {
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
}


@dataclass
class LoraConfig:
    """PEFT's ``LoraConfig`` (the fields ferrotune implements; others raise)."""

    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    target_modules: Optional[Union[List[str], str]] = None
    bias: str = "none"
    modules_to_save: Optional[List[str]] = None
    use_rslora: bool = False
    task_type: Optional[str] = "CAUSAL_LM"
    init_lora_weights: bool = True
    fan_in_fan_out: bool = False
    base_model_name_or_path: Optional[str] = None
    inference_mode: bool = False
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ConfigError(f"LoraConfig.r must be positive, got {self.r}")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, Real) or not math.isfinite(self.lora_alpha):
            raise ConfigError(f"LoraConfig.lora_alpha must be a finite number, got {self.lora_alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"LoraConfig.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ConfigError(f"LoraConfig.bias must be 'none', 'all' or 'lora_only', got {self.bias!r}")
        if self.init_lora_weights is not True:
            raise ConfigError("only init_lora_weights=True (PEFT's default: kaiming-uniform A, zero B) is supported")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (self.r**0.5 if self.use_rslora else self.r)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d["peft_type"] = "LORA"
        if isinstance(d["target_modules"], (list, tuple, set)):
            d["target_modules"] = sorted(d["target_modules"])
        return {**extra, **d}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "LoraConfig":
        d = dict(d)
        peft_type = d.pop("peft_type", "LORA")
        if peft_type != "LORA":
            raise ConfigError(f"only LORA adapters are supported, got peft_type {peft_type!r}")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kwargs = {k: d.pop(k) for k in list(d) if k in known}
        unsupported = {k: v for k, v in d.items() if k in ("use_dora", "layers_to_transform", "rank_pattern", "alpha_pattern") and v}
        if unsupported:
            raise ConfigError(f"adapter options ferrotune does not implement: {unsupported}")
        if kwargs.get("init_lora_weights") is not True:
            kwargs["init_lora_weights"] = True  # how the adapter was initialised does not matter when loading it
        return cls(**kwargs, extra=d)

    @classmethod
    def from_pretrained(cls, directory: PathLike) -> "LoraConfig":
        path = os.path.join(os.fspath(directory), ADAPTER_CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(2, f"No such file or directory: {path}", path)
        return cls.from_dict(read_checkpoint_json(path, {}))


def _matches(module: str, targets: Union[List[str], str]) -> bool:
    """PEFT's check_target_module_exists: a regex must match the whole name; a list entry
    must equal the name or be its last dotted components."""
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith("." + t) for t in targets)


def _module_of(param: str) -> str:
    return param.rsplit(".", 1)[0]


class PeftModel(Model):
    """A model with LoRA adapters. It is a ``Model`` (the Trainer, generate and evaluation
    work unchanged); only the adapters (and ``modules_to_save``) train."""

    def __init__(self, model: Model, peft_config: LoraConfig) -> None:
        super().__init__(model._core, model.generation_config, model.name_or_path)
        self.peft_config = peft_config
        self._vocab_resized = getattr(model, "_vocab_resized", False)

    # ---- PEFT API ---------------------------------------------------------------------
    def print_trainable_parameters(self) -> None:
        trainable, total = self.num_parameters(trainable_only=True), self.num_parameters()
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    def get_base_model(self) -> Model:
        return Model(self._core, self.generation_config, self.name_or_path)

    def merge_and_unload(self) -> Model:
        """Folds the adapters into the base weights: a plain model with the same outputs."""
        self._core.merge_lora()
        return Model(self._core, self.generation_config, self.name_or_path)

    def adapter_state_dict(self) -> Dict[str, np.ndarray]:
        """The adapter (and modules_to_save) tensors under PEFT's file key names."""
        sd = self.state_dict()
        return {PREFIX + name: sd[name] for name in self.trainable_parameter_names()}

    def _embedding_layers(self, save_embedding_layers: Union[bool, str]) -> Dict[str, np.ndarray]:
        """The embedding layers PEFT's ``save_embedding_layers`` adds to the adapter file.

        ``"auto"``: when the vocabulary was resized (``resize_token_embeddings``) or a tied
        embedding trains (``modules_to_save``). For a tied model the file then also holds
        ``lm_head.weight`` (= the embedding), the key PEFT writes: PEFT's ModulesToSaveWrapper
        unties the trained copy from the output projection, and this key makes the adapter give
        the same logits under PEFT as here, where input and output share the trained matrix."""
        if save_embedding_layers not in (True, False, "auto"):
            raise InputError(f"save_embedding_layers must be True, False or 'auto', got {save_embedding_layers!r}")
        vocab = self._vocab_parameters()
        tied = len(vocab) == 1
        trainable = set(self.trainable_parameter_names())
        if save_embedding_layers == "auto":
            save_embedding_layers = self._vocab_resized or (tied and vocab[0] in trainable)
        if not save_embedding_layers:
            return {}
        sd = self.state_dict()
        out = {PREFIX + name: sd[name] for name in vocab}
        if tied:
            out[PREFIX + "lm_head.weight"] = sd[vocab[0]]
        return out

    def save_pretrained(self, save_directory: PathLike, save_embedding_layers: Union[bool, str] = "auto") -> None:
        """Writes adapter_config.json + adapter_model.safetensors (PEFT's format): the adapters,
        ``modules_to_save`` and, like PEFT, the embedding layers when ``save_embedding_layers``
        is True or (``"auto"``) the vocabulary was resized. The files are written all at once
        (see :func:`ferrotune.io.atomic_directory`; other files in the directory are kept)."""
        tensors = {**self._embedding_layers(save_embedding_layers), **self.adapter_state_dict()}
        with atomic_directory(save_directory) as out:
            save_safetensors(tensors, os.path.join(out, ADAPTER_WEIGHTS_NAME), {"format": "pt"})
            with open(os.path.join(out, ADAPTER_CONFIG_NAME), "w", encoding="utf-8") as f:
                f.write(json.dumps(self.peft_config.to_dict(), indent=2, sort_keys=True) + "\n")
            if self.generation_config is not None:
                self.generation_config.save_pretrained(out)

    weights_name = ADAPTER_WEIGHTS_NAME

    def load_weights(self, directory: PathLike) -> None:
        """Loads adapter weights written by ``save_pretrained`` (or by PEFT)."""
        path = os.path.join(os.fspath(directory), ADAPTER_WEIGHTS_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(2, f"No such file or directory: {path}", path)
        tensors = load_safetensors(path)
        ours: Dict[str, np.ndarray] = {}
        copies: Dict[str, np.ndarray] = {}
        for key, value in tensors.items():
            name = key[len(PREFIX):] if key.startswith(PREFIX) else key
            name = name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
            if ".original_module." in name:
                continue  # PEFT's save_embedding_layers: the base layer under a modules_to_save copy
            if ".modules_to_save." in name:  # the same copy again, under its in-memory name
                module, _, param = name.partition(".modules_to_save.")
                copies[module + "." + param.removeprefix("default.")] = value
                continue
            ours[name] = value
        for name, value in copies.items():
            ours.setdefault(name, value)
        params = set(self.parameter_names())
        vocab = self._vocab_parameters()
        if "lm_head.weight" in ours and "lm_head.weight" not in params and len(vocab) == 1:
            # a tied model: PEFT writes the output projection too (see _embedding_layers)
            head = ours.pop("lm_head.weight")
            if vocab[0] in ours and not np.array_equal(head, ours[vocab[0]]):
                warnings.warn(
                    f"{path}: lm_head.weight differs from {vocab[0]} (PEFT trained a copy of the tied "
                    "embedding and kept the output projection); this model ties them, so it uses the "
                    f"trained {vocab[0]} for both and its logits differ from PEFT's",
                    stacklevel=2,
                )
        expected = set(self.trainable_parameter_names())
        # base parameters in the file (PEFT's save_embedding_layers) load too, as in PEFT
        missing, unexpected = expected - set(ours), set(ours) - params
        if missing or unexpected:
            raise InputError(
                f"adapter file {path} does not fit this model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        self.load_state_dict(ours, strict=False)

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        model: Model,
        adapter_dir: PathLike,
        is_trainable: bool = False,
        *,
        revision: Optional[str] = None,
        local_files_only: bool = False,
        cache_dir: Optional[PathLike] = None,
    ) -> "PeftModel":
        """Loads a PEFT adapter directory, or a Hub id found in the Hugging Face cache or
        downloaded (see :func:`ferrotune.hub.resolve`), onto ``model`` (like
        ``peft.PeftModel.from_pretrained``). The adapted modules are read from the adapter file's keys."""
        adapter_dir = hub.resolve(
            adapter_dir,
            revision=revision,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            filenames=hub.ADAPTER_FILES,
        )
        config = LoraConfig.from_pretrained(adapter_dir)
        tensors = load_safetensors(os.path.join(os.fspath(adapter_dir), ADAPTER_WEIGHTS_NAME))
        modules = sorted(
            {_module_of(_module_of(k[len(PREFIX):])) for k in tensors if ".lora_A." in k and k.startswith(PREFIX)}
        )
        peft = _attach(model, config, modules)
        peft.load_weights(adapter_dir)
        if not is_trainable:
            peft.eval()
        return peft


def _attach(model: Model, config: LoraConfig, modules: List[str], seed: int = 0) -> PeftModel:
    if not modules:
        raise InputError(f"target_modules {config.target_modules!r} match no linear module of this model")
    model._core.add_lora(modules, config.r, float(config.lora_alpha), float(config.lora_dropout), config.use_rslora, seed)
    names = model.parameter_names()
    extra = []
    if config.bias == "all":
        extra += [n for n in names if n.endswith(".bias") and ".lora_" not in n]
    elif config.bias == "lora_only":
        extra += [n for n in names if n.endswith(".bias") and _module_of(n) in modules]
    for target in config.modules_to_save or []:
        hits = [n for n in names if _matches(_module_of(n), [target]) and ".lora_" not in n]
        if not hits:
            raise InputError(f"modules_to_save entry {target!r} matches no module of this model")
        extra += hits
    if extra:
        model._core.set_trainable(sorted(set(extra)), True)
    # what PEFT writes: the base to load the adapter onto (AutoPeftModel reads it), and
    # fan_in_fan_out for GPT-2's Conv1D modules, whose weights are (in, out)
    if config.base_model_name_or_path is None and model.name_or_path:
        config.base_model_name_or_path = model.name_or_path
    if model.config.model_type == "gpt2":
        config.fan_in_fan_out = True
    return PeftModel(model, config)


def get_peft_model(model: Model, peft_config: LoraConfig, seed: int = 0) -> PeftModel:
    """Adds LoRA adapters to ``model`` (in place, like PEFT) and returns it as a PeftModel.

    ``target_modules`` names modules as transformers does (``c_attn``, ``q_proj``, ...; a
    list of names or name suffixes, or one regex matched against the full module name);
    None uses PEFT's default for the architecture. A is initialised like PEFT
    (kaiming-uniform, from ``seed``), B at zero; every base parameter is frozen."""
    if not isinstance(model, Model) or isinstance(model, PeftModel):
        raise TypeError("get_peft_model expects a ferrotune.Model without adapters")
    targets = peft_config.target_modules
    if targets is None:
        model_type = model.config.model_type
        if model_type not in DEFAULT_TARGETS:
            raise ConfigError(f"no default target_modules for model_type {model_type!r}; set target_modules")
        targets = peft_config.target_modules = list(DEFAULT_TARGETS[model_type])
    modules = [name for name, _, _ in model._core.lora_modules() if _matches(name, targets)]
    return _attach(model, peft_config, modules, seed)
