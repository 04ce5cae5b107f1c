"""Test tiers are folders; the markers come from them (``pytest -m "not model and not slow"``: the fast tier):

1. ``tests/unit/`` — tiny random Llama / Qwen2 configs built in code, pure functions, no model files (< 1 s each).
2. ``tests/model/`` — the embedded SmolLM2-135M (offline GGUF, dequantised once into a
   session cache dir); marked ``model``.
3. ``tests/slow/`` — the CLI end to end as a subprocess, Ray clusters, the notebooks; marked ``slow``.

Helpers that tests of one topic share across tiers live in ``tests/helpers/<topic>.py``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Tolerances and tiny models live in forward_influence.tools.checks (shared with scripts/gpu_check.py).
from forward_influence.tools.checks import (  # noqa: F401
    ABS_TOL_KL,
    FP32_PRECISION_FLOOR,
    REL_TOL_ENGINE,
    REL_TOL_LOGITS,
    tiny_config,
    tiny_ids,
    tiny_model,
)

DATA = Path(__file__).resolve().parents[1] / "data"

TORCH_THREADS = 2


TIERS = ("unit", "model", "slow")


def pytest_configure(config):
    torch.set_num_threads(TORCH_THREADS)


def pytest_collection_modifyitems(config, items):
    """Mark each test with its tier folder's name (``model``, ``slow``); a test outside the tier folders is an error."""
    here = Path(__file__).resolve().parent
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if here not in path.parents:
            continue  # the package's doctests
        tier = path.relative_to(here).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{path.relative_to(here)}: tests live in tests/unit, tests/model or tests/slow")
        if tier != "unit":
            item.add_marker(getattr(pytest.mark, tier))


def assert_checks(checks):
    """Every :class:`forward_influence.tools.checks.Check` passed (the failing ones in the message)."""
    failed = [str(c) for c in checks if not c.passed]
    assert checks and not failed, failed


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_chat_tokenizer():
    """A byte-level fast tokenizer built in code (3 special tokens + 256 bytes,
    no merges) with a ChatML template: multi-byte characters span several
    tokens, as in real byte-level BPE vocabularies."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def tiny_chat_model(seed: int = 0):
    """A tiny random Llama (as :func:`tiny_model`) over :func:`tiny_chat_tokenizer`'s vocabulary,
    wrapped as a :class:`~forward_influence.hf.models.LoadedModel`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from forward_influence.hf.models import LoadedModel

    tok = tiny_chat_tokenizer()
    cfg = tiny_config("llama").to_dict()
    cfg.update(
        vocab_size=len(tok), eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id
    )
    torch.manual_seed(seed)
    m = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)
    return LoadedModel(m, tok, "tiny-llama", "code", "none", torch.device("cpu"), torch.float32)


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
        from forward_influence.hf.models import LoadedModel

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
        return LoadedModel(
            model, tok, f"tiny-{self.arch}", "tests/conftest.py", revision, torch.device("cpu"), torch.float32
        )


@pytest.fixture(params=["llama", "qwen2"])
def arch(request):
    return request.param


@pytest.fixture
def ids():
    return tiny_ids()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """Dequantised-model cache: the user's if set, else one per test session."""
    d = os.environ.get("FI_CACHE_DIR") or str(tmp_path_factory.mktemp("fi-cache"))
    os.environ["FI_CACHE_DIR"] = d
    return Path(d)


@pytest.fixture(scope="session")
def smollm(cache_dir):
    from forward_influence.hf.models import load_model

    return load_model("smollm2-135m", device="cpu", dtype="float32")
