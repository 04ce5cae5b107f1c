"""Run every command the README and docs/ show, from a clone with nothing beside it.

Collects the shell commands of README.md, data/README.md and docs/*.md (fenced ``bash`` blocks, a ``\\``
continuation joined; inline ``python scripts/...`` mentions) and each page's Python examples, then, in a
fresh ``git clone`` of this repository (``make setup`` builds its ``.venv/``; nothing outside the clone is
read), runs them page by page in the page's order, with ``runs/`` emptied before each page (pages are
independent; commands within a page may use each other's outputs). A page's Python blocks run in one
interpreter, after a prelude that defines the names the snippets take as given (``model``, ``tok``,
``ids``: the first 1,200 tokens of the first paper, ``prompt_ids``, ``question_ids``, ``torch``).

Each command gets one of:

* **run** — as written;
* **small** — as written plus the arguments in :data:`SMALL` (argparse keeps the last value), for the
  long runs (all 11 papers, the headline scripts, the benchmarks): the same code path on fewer documents
  and shorter contexts, as the issue allows for the headline scripts;
* **skip** — needs what a clone cannot have here: a CUDA GPU, a hub model (network), several machines,
  or is a template; the reason is printed. ``make test`` is the suite itself (CI runs it).

Prints one line per command (status, seconds, page:line, the command run) and the failures' last output
lines; last line ``docs_commands ok=N failed=M skipped=K``; exit 1 when any failed.

    .venv/bin/python scripts/check_docs.py --list                # the classification only (a unit test checks it)
    .venv/bin/python scripts/check_docs.py                       # all pages, in a fresh clone (~40 min on 2 cores)
    .venv/bin/python scripts/check_docs.py --pages docs/usage.md --clone /tmp/c --keep
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "data/README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"^(make|fi-measure|fi-bench|fi-analyze|fi-distill|ray|(\.venv/bin/)?python3? scripts/)")
INLINE = re.compile(r"`((?:\.venv/bin/)?python3? scripts/[\w/]+\.py[^`]*|make [a-z]+)`")

# (pattern on the command, reason): what a clone on this CPU machine cannot run
SKIP = [
    (r"--device cuda", "needs a CUDA GPU (scripts/gpu_check.py --device cpu --tiny runs the same code here)"),
    (r"--model llama", "needs a hub model (network and a GPU)"),
    (r"^ray start|--ray auto", "needs a Ray cluster across machines (--ray local:2 runs the same path here)"),
    (r"^make test\b", "the test suite itself: CI runs it (.ci/run)"),
    (r"scripts/check_docs\.py(?!.*--list)", "this checker itself (its --list form runs)"),
    (r"^make TORCH=", "a template (another torch version)"),
    (r"^make bench\b", "its three scripts are checked one by one with small settings"),
    (r"PROMPTS|HOST|HEAD_IP|…", "a template"),
    (r"^fi-(measure|analyze|bench)( --[\w-]+)?$", "a flag named in prose, not a command"),
]
# (pattern, arguments appended): the long runs, on fewer documents and shorter contexts
SMALL = [
    (
        r"^fi-measure .*--generate (data|synthetic)",
        "--max-docs 1 --synthetic-examples 1 --max-new-tokens 200 --min-new-tokens 200 --delay 16 --horizon 64 "
        "--stride 16",
    ),
    (r"^fi-measure .*--generate runs/", "--max-docs 1 --n-prefix 128 --n-future 64"),
    (r"^fi-measure .*--method fisher", "--max-docs 1 --n-prefix 256 --n-future 64 --samples 2"),
    (r"^fi-measure .*--mode sliding", "--max-docs 1 --max-tokens 384 --stride 16"),
    (r"^fi-measure ", "--max-docs 1 --n-prefix 256 --n-future 64 --stride 8"),
    (r"^fi-bench .*--task retrieval", "--n-samples 1 --lengths 1024 --kinds passkey --methods full,snapkv,infokv"),
    (r"^fi-bench .*--task ifeval", "--n-samples 1 --max-new-tokens 24 --methods full,snapkv,infokv"),
    (r"^fi-bench .*--doc-ids", "--bootstrap 200"),  # named documents of a small run: its shape as written
    (r"^fi-bench .*--fi-run", "--n-samples 1 --n-prefix 256 --n-future 64"),
    (r"^fi-bench ", "--n-samples 1 --n-prefix 256 --n-future 64 --methods full,snapkv,infokv --bootstrap 200"),
    (r"scripts/headline_(claims|generations)\.py|scripts/(bench_headline|validate_compressors)\.py", "--small"),
    (r"scripts/validate_fisher\.py", "--docs 1 --n-prefix 256 --n-future 128 --stride 32 --samples 2 --far 64"),
    (
        r"scripts/tune_infokv\.py",
        "--max-docs 1 --n-prefix 256 --n-future 64 --budgets 0.2 --mixes 0 0.05 --norms zscore",
    ),
    (r"scripts/bench_ablation\.py", "--n-prefix 256 --n-future 64 --n-positions 8 --probe-s 0.2"),
    (r"scripts/bench_signals\.py", "--tokens 512 --rounds 1"),
    (r"scripts/distill_(runs|headline|fidelity)\.py", "--small"),
    (r"scripts/bench_compress\.py", "--lengths 512 --repeats 1"),
    (
        r"scripts/bench_ray\.py",
        "--max-docs 1 --n-prefix 128 --n-future 64 --stride 8 --repeats 1 --driver-n 256 --driver-f 64",
    ),
    (r"scripts/profile_engine\.py", "--n-prefix 256 --n-future 64 --n-positions 8"),
    (r"scripts/precision_floor\.py", "--n-prefix 256 --n-future 64 --n-positions 4"),
]
LAB = r"^make lab\b"  # a server: started, asked for /lab over 127.0.0.1, stopped
PRELUDE = """
import torch
from forward_influence import load_model
from forward_influence.measurement.documents import iter_documents
lm = load_model("smollm2-135m", device="cpu", dtype="float32")
model, tok = lm.model, lm.tokenizer
ids = torch.tensor(tok(next(iter_documents("data/arxiv.json")).text)["input_ids"][:1200])
prompt_ids = torch.tensor(tok.apply_chat_template([{"role": "user", "content": "Name three primes."}],
                                                  add_generation_prompt=True, tokenize=True, return_dict=False))
question_ids = torch.tensor(tok(" Question: what is this paper about? Answer:")["input_ids"])
"""


@dataclass
class Command:
    page: str
    line: int
    text: str  # as written (continuations joined, comment dropped)
    kind: str  # "shell" or "python"
    action: str = "run"  # run | small | skip | lab
    extra: str = ""  # small: the arguments appended; skip: the reason

    @property
    def argv_text(self) -> str:
        return f"{self.text} {self.extra}" if self.action == "small" else self.text


def strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` outside quotes, after whitespace)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def classify(cmd: Command) -> Command:
    if cmd.kind == "python":
        return cmd
    for pattern, reason in SKIP:
        if re.search(pattern, cmd.text):
            cmd.action, cmd.extra = "skip", reason
            return cmd
    if re.search(LAB, cmd.text):
        cmd.action = "lab"
        return cmd
    for pattern, extra in SMALL:
        if re.search(pattern, cmd.text):
            cmd.action, cmd.extra = "small", extra
            return cmd
    return cmd


def collect(root: Path = ROOT, pages: list[str] | None = None) -> list[Command]:
    """Every command and Python block of the pages, classified, each shell command once (its first place)."""
    out, seen = [], set()
    for page in pages or PAGES:
        text = (root / page).read_text(encoding="utf-8")
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            lang, body = m.groups()
            first = text.count("\n", 0, m.start()) + 2
            if lang == "python":  # one interpreter per page: a later example may use an earlier one's names
                same = [c for c in out if c.page == page and c.kind == "python"]
                if same:
                    same[0].text += "\n" + body
                else:
                    out.append(Command(page, first - 1, body, "python"))
                continue
            if lang not in ("bash", "sh"):
                continue
            pending, start = "", 0
            for k, raw in enumerate(body.splitlines()):
                line = strip_comment(raw)
                if not pending:
                    start = first + k
                pending = f"{pending} {line.strip()}".strip()
                if pending.endswith("\\"):
                    pending = pending[:-1].rstrip()
                    continue
                if pending and COMMAND.match(pending) and pending not in seen:
                    seen.add(pending)
                    out.append(classify(Command(page, start, pending, "shell")))
                pending = ""
        for m in INLINE.finditer(text):
            cmd = " ".join(strip_comment(m.group(1)).split())  # a mention may wrap
            if cmd not in seen and not any(cmd in c.text for c in out if c.kind == "shell"):
                seen.add(cmd)
                out.append(classify(Command(page, text.count("\n", 0, m.start()) + 1, cmd, "shell")))
    return out


def run_lab(clone: Path, env: dict[str, str], timeout: float) -> tuple[bool, str]:
    """``make lab`` on a free loopback port: True once /lab answers 200, then the server is stopped."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = f"--no-browser --ip 127.0.0.1 --port {port} --IdentityProvider.token=''"
    proc = subprocess.Popen(
        ["make", "lab", f"LAB_ARGS={args}"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab", timeout=5) as r:
                    if r.status == 200:
                        return True, f"JupyterLab answered 200 on 127.0.0.1:{port}/lab"
            except OSError:
                time.sleep(2)
        return False, f"no answer from /lab (exit {proc.poll()})"
    finally:
        os.killpg(proc.pid, 15)
        try:
            log = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            log = ""
        if proc.returncode not in (None, 0, -15, 143, 2):  # make reports the killed child as 2
            print(log[-2000:])


def execute(cmd: Command, clone: Path, env: dict[str, str], timeout: float) -> tuple[bool, str]:
    if cmd.action == "lab":
        return run_lab(clone, env, timeout)
    if cmd.kind == "python":
        argv = [str(clone / ".venv/bin/python"), "-c", PRELUDE + "\n" + cmd.text]
    else:
        argv = ["bash", "-c", cmd.argv_text]
    try:
        p = subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-6:])
    return p.returncode == 0, tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print the commands and their classification; run nothing")
    ap.add_argument(
        "--pages", default=None, help="comma-separated pages (default: README.md, data/README.md, docs/*.md)"
    )
    ap.add_argument("--clone", default=None, help="where to clone (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the clone afterwards")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per command")
    args = ap.parse_args(argv)
    pages = args.pages.split(",") if args.pages else None
    cmds = collect(ROOT, pages)
    if args.list:
        for c in cmds:
            what = c.text.splitlines()[0] + (" …" if c.kind == "python" else "")
            print(f"{c.action:5s}  {c.page}:{c.line}  {what}" + (f"   [{c.extra}]" if c.extra else ""))
        return 0
    clone = Path(args.clone or tempfile.mkdtemp(prefix="fi-docs-")) / "forward_influence"
    if clone.exists():
        raise SystemExit(f"check_docs: {clone} exists; pass another --clone")
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    t = time.perf_counter()
    subprocess.run(["make", "setup"], cwd=clone, check=True)
    print(f"setup: make setup in {time.perf_counter() - t:.0f} s ({clone})", flush=True)
    env = dict(
        os.environ,
        PATH=f"{clone / '.venv/bin'}:{os.environ['PATH']}",
        VIRTUAL_ENV=str(clone / ".venv"),
        MPLBACKEND="Agg",
    )
    counts, page = {"ok": 0, "failed": 0, "skipped": 0}, None
    for c in cmds:
        if c.page != page:
            page = c.page
            shutil.rmtree(clone / "runs", ignore_errors=True)
        shown = c.argv_text if c.kind == "shell" else f"python block ({len(c.text.splitlines())} lines)"
        if c.action == "skip":
            counts["skipped"] += 1
            print(f"skip    {'':>6s}  {c.page}:{c.line}  {shown}   [{c.extra}]", flush=True)
            continue
        t = time.perf_counter()
        ok, tail = execute(c, clone, env, args.timeout)
        counts["ok" if ok else "failed"] += 1
        print(f"{'ok' if ok else 'FAILED':7s} {time.perf_counter() - t:5.0f}s  {c.page}:{c.line}  {shown}", flush=True)
        if not ok:
            print("    " + tail.replace("\n", "\n    "), flush=True)
    if not args.keep:
        shutil.rmtree(clone.parent, ignore_errors=True)
    print(f"docs_commands ok={counts['ok']} failed={counts['failed']} skipped={counts['skipped']}")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
