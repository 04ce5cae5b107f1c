"""Test tiers (see README "Tests"):

1. fast — tiny random Llama / Qwen2 configs built in code, no files (< 1 s each).
2. model — the embedded SmolLM2-135M (offline GGUF, dequantised once into a
   session cache dir); marked ``model``.
3. slow — the CLI end to end and the notebooks; marked ``slow``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parents[1] / "data"

# Tolerances, named once.
REL_TOL_ENGINE = 1e-4  # engine vs independent 4-D-mask forward (fp32)
ABS_TOL_KL = 1e-9  # KL values that should be zero
FP32_PRECISION_FLOOR = 1e-8  # a dithered null row's KL in float32 (measured ~1e-12 on SmolLM2, ~1e-14 tiny models)
TORCH_THREADS = 2


def pytest_configure(config):
    torch.set_num_threads(TORCH_THREADS)


def tiny_config(arch: str, attn: str = "sdpa"):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,  # grouped KV heads
        max_position_embeddings=512,
        attn_implementation=attn,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    return Qwen2Config(**common)  # qkv bias


def tiny_model(arch: str = "llama", attn: str = "sdpa", seed: int = 0):
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cls = LlamaForCausalLM if arch == "llama" else Qwen2ForCausalLM
    m = cls(tiny_config(arch, attn)).eval()
    # Random init gives near-uniform predictions; sharpen so KLs are not tiny.
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)
    return m


def char_tokenizer():
    """A fast character-level tokenizer for the tiny models: ``<unk>`` and the
    95 printable ASCII characters (vocab 96), with character offsets."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{chr(c): c - 31 for c in range(32, 127)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


@dataclass(frozen=True)
class TinySource:
    """Picklable model source (``() -> LoadedModel``) for Ray workers: the tiny
    model with :func:`char_tokenizer`, built in the worker.

    ``fault``: ``"raise"`` raises, ``"exit"`` ends the process, whenever the
    model reads ``fault_char``; ``delay`` seconds are slept per forward (time
    to kill a worker mid-unit), only on inputs holding ``delay_char`` if
    given; ``revision="pid"`` makes every process report its own revision
    (workers that disagree). None of these change a number.
    """

    arch: str = "llama"
    seed: int = 0
    fault: str | None = None
    fault_char: str = "~"
    delay: float = 0.0
    delay_char: str | None = None
    revision: str = "tiny"

    def __call__(self):
        from forward_influence.models import LoadedModel

        tok = char_tokenizer()
        model = tiny_model(self.arch, seed=self.seed)
        fault_id = tok.convert_tokens_to_ids(self.fault_char)
        slow_id = tok.convert_tokens_to_ids(self.delay_char) if self.delay_char else None

        def hook(_module, args):
            if self.delay and (slow_id is None or bool((args[0] == slow_id).any())):
                time.sleep(self.delay)
            if self.fault and bool((args[0] == fault_id).any()):
                if self.fault == "exit":
                    os._exit(3)
                raise RuntimeError(f"injected fault on {self.fault_char!r}")

        if self.fault or self.delay:
            model.get_input_embeddings().register_forward_pre_hook(hook)
        revision = f"pid{os.getpid()}" if self.revision == "pid" else self.revision
        return LoadedModel(model, tok, f"tiny-{self.arch}", "tests/conftest.py", revision, torch.device("cpu"), torch.float32)


@pytest.fixture(params=["llama", "qwen2"])
def arch(request):
    return request.param


@pytest.fixture
def ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 96, (48,), generator=g)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """Dequantised-model cache: the user's if set, else one per test session."""
    d = os.environ.get("FI_CACHE_DIR") or str(tmp_path_factory.mktemp("fi-cache"))
    os.environ["FI_CACHE_DIR"] = d
    return Path(d)


@pytest.fixture(scope="session")
def smollm(cache_dir):
    from forward_influence.models import load_model

    return load_model("smollm2-135m", device="cpu", dtype="float32")
