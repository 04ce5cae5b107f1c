"""``fi-bench`` configuration, declared once (the CLI flags come from these fields).

>>> BenchConfig(task="fidelity", budgets=(0.2, 0.4)).validate().task
'fidelity'
>>> BenchConfig(task="fidelity", budgets=(1.5,)).validate()
Traceback (most recent call last):
...
forward_influence.errors.InputError: --budgets for fidelity are fractions of the cache kept, in (0, 1]; got 1.5
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forward_influence.config import RAY_HELP, ConfigBase, check_ray, option
from forward_influence.errors import InputError

TASKS = ("fidelity", "retrieval", "qa", "ifeval")


def shipped_model() -> bool:
    """Whether this install ships a distilled model (the distilled method's default)."""
    from forward_influence.compress.distilled import default_model_path

    try:
        default_model_path()
    except InputError:
        return False
    return True


DEFAULT_BUDGETS = {"prefill": (0.2, 0.4), "decoding": (128.0, 256.0, 512.0)}


@dataclass(frozen=True)
class BenchConfig(ConfigBase):
    """Everything a compressor benchmark depends on."""

    model: str = option("smollm2-135m", "alias, local directory, .gguf file or hub id")
    task: str = option("fidelity", "fidelity, retrieval, qa or ifeval")
    doc: str | None = option(
        None, "fidelity: documents (any fi-measure source; default built-in SQuAD articles); qa: a SQuAD-format file"
    )
    doc_ids: tuple[str, ...] | None = option(
        None,
        "fidelity: only these document ids of --doc, comma-separated (e.g. the documents an --fi-run measured)",
        type="strs",
    )
    ifeval_data: str | None = option(None, "ifeval: IFEval's input_data.jsonl")
    methods: tuple[str, ...] | None = option(
        None,
        "compressors, comma-separated (default: every registered one; fi_oracle needs --fi-run); "
        "NAME:KEY=VALUE[:KEY=VALUE] sets hyperparameters, e.g. distilled:head_mix=0 (the label of its rows)",
        type="strs",
    )
    budgets: tuple[float, ...] | None = option(
        None,
        "prefill tasks: fractions kept (default 0.2,0.4); ifeval: cache sizes in tokens (default 128,256,512)",
        type="floats",
    )
    n_samples: int | None = option(
        None, "use the first M samples (documents, generated examples, questions or prompts)"
    )
    out: str | None = option(None, "output directory")
    n_prefix: int = option(1024, "fidelity: tokens compressed (split position N)")
    n_future: int = option(128, "fidelity: tokens teacher-forced after the split")
    far: int = option(128, "fidelity: kl_far averages the targets more than FAR after the split (fi-measure's far)")
    lengths: tuple[int, ...] = option((1024, 2048, 4096), "retrieval: context lengths in tokens", type="ints")
    depths: tuple[float, ...] = option(
        (0.1, 0.5, 0.9), "retrieval: needle depths (fraction of the context)", type="floats"
    )
    kinds: tuple[str, ...] = option(("passkey", "multikey", "vartrack"), "retrieval: example kinds", type="strs")
    max_context: int = option(1536, "qa: article tokens kept as context")
    max_new_tokens: int = option(256, "ifeval: tokens generated per prompt")
    interval: int = option(16, "ifeval: decoding steps between cuts")
    fi_run: str | None = option(
        None,
        "an fi-measure output dir on the same documents (split mode): FI kept per method, the FI oracle, additivity",
    )
    distilled_model: str | None = option(
        None, "the distilled method's model (a file of fi-distill; default: the one shipped with the package)"
    )
    bootstrap: int = option(2000, "bootstrap resamples for the paired intervals")
    device: str = option("auto", "auto, cpu or cuda")
    dtype: str = option("auto", "auto (bf16 on CUDA, fp32 on CPU), float32 or bfloat16")
    ray: str | None = option(None, RAY_HELP)
    seed: int = option(0, "random seed (generators, random method, bootstrap)")
    progress: bool = option(True, "show progress bars")
    report: bool = option(True, "write figures and report.html")

    non_semantic = frozenset({"out", "progress", "report", "bootstrap", "ray"})

    @property
    def setting(self) -> str:
        return "decoding" if self.task == "ifeval" else "prefill"

    def resolved_budgets(self) -> tuple[float, ...]:
        return tuple(self.budgets) if self.budgets else DEFAULT_BUDGETS[self.setting]

    def validate(self) -> BenchConfig:
        if self.task not in TASKS:
            raise InputError(f"--task must be one of {', '.join(TASKS)}; got {self.task!r}")
        for b in self.resolved_budgets():
            if self.setting == "prefill" and not 0 < b <= 1:
                raise InputError(f"--budgets for {self.task} are fractions of the cache kept, in (0, 1]; got {b}")
            if self.setting == "decoding" and not (b >= 1 and float(b).is_integer()):
                raise InputError(f"--budgets for ifeval are cache sizes in tokens (integers >= 1); got {b}")
        for name in ("n_prefix", "n_future", "max_context", "max_new_tokens", "interval", "bootstrap"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(self, name)}")
        if self.far < 0:
            raise InputError(f"--far must be >= 0; got {self.far}")
        if self.n_samples is not None and self.n_samples < 1:
            raise InputError(f"--n-samples must be >= 1; got {self.n_samples}")
        if any(not 0 <= d <= 1 for d in self.depths):
            raise InputError(f"--depths are fractions in [0, 1]; got {self.depths}")
        if self.task == "ifeval" and not self.ifeval_data:
            raise InputError("--task ifeval needs --ifeval-data PATH (IFEval's input_data.jsonl)")
        if self.distilled_model and not Path(self.distilled_model).is_file():
            raise InputError(f"--distilled-model {self.distilled_model} is not a file; give a model fi-distill wrote")
        if self.doc_ids and self.task != "fidelity":
            raise InputError("--doc-ids selects fidelity documents: use it with --task fidelity")
        if self.fi_run and self.task != "fidelity":
            raise InputError("--fi-run validates document fidelity: use it with --task fidelity")
        check_ray(self.ray)
        return self

    def method_names(self) -> list[str]:
        from forward_influence.compress import list_compressors
        from forward_influence.compress.base import compressor_class as _class
        from forward_influence.compress.specs import base_name, check_spec, method_spec, spec_label

        valid = list_compressors()

        def compressor_class(m: str) -> Any:  # a spec's method (NAME:KEY=VALUE sets a hyperparameter)
            return _class(base_name(m))

        def needs_fi(m: str) -> bool:
            return "measured_fi" in compressor_class(m).inputs

        def learned(m: str) -> bool:
            return "model_file" in compressor_class(m).inputs

        def has_model(m: str) -> bool:  # a learned scorer needs a model file (given or shipped)
            return not learned(m) or bool(self.distilled_model) or shipped_model()

        def wrong_setting(m: str) -> bool:  # a method that cannot cut while decoding, in a decoding task
            if self.setting == "prefill" or (learned(m) and not has_model(m)):
                return False
            return not compressor_class(m).decodes(model_file=self.distilled_model)

        def available(m: str) -> bool:  # an oracle needs --fi-run; a learned scorer a model file
            if wrong_setting(m):
                return False
            if needs_fi(m):
                return bool(self.fi_run)
            return has_model(m)

        given = list(self.methods) if self.methods else [m for m in valid if available(m)]
        bad = [m for m in given if base_name(m) not in valid]
        if bad:
            raise InputError(f"unknown method {bad[0]!r}; valid: {', '.join(valid)}")
        names = [spec_label(m) for m in given]  # the rows' labels: "SnapKV" is "snapkv" to every lookup
        seen: dict[Any, str] = {}
        for m in given:
            try:  # built once here: a bad value fails before the model loads
                if has_model(m):
                    check_spec(m, seed=self.seed, model_file=self.distilled_model)
                name, hyper = method_spec(m)
            except ValueError as exc:
                raise InputError(str(exc)) from None
            key = (name, frozenset(hyper.items()))
            if key in seen:
                raise InputError(f"--methods names {seen[key]!r} twice (as {m!r}): name each setting once")
            seen[key] = m
        early = [m for m in names if wrong_setting(m)]
        if early:
            raise InputError(
                f"method {early[0]} cannot cut a cache while decoding (it ranks prefill evictions only, or its model "
                "reads attention from every query); use it with a prefill task"
            )
        oracle = [m for m in names if needs_fi(m)]
        if oracle and not self.fi_run:
            raise InputError(f"method {oracle[0]} needs --fi-run DIR (an fi-measure run on the same documents)")
        return names
