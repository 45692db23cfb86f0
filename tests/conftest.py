"""Shared fixtures and test seams.

Git identity: tests commit with plain `git` (tests/toy.py) as well as through the harness. A
machine without a global identity (CI, a fresh container) must pass exactly like a developer's,
so every test process and its children read one private global config with an identity, and
never the user's or the system's.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

_GIT_HOME = Path(tempfile.mkdtemp(prefix="autoresearch-test-git-"))
(_GIT_HOME / "gitconfig").write_text(
    "[user]\n\tname = autoresearch tests\n\temail = tests@autoresearch.invalid\n"
    "[init]\n\tdefaultBranch = main\n",
    encoding="utf-8",
)
os.environ["GIT_CONFIG_GLOBAL"] = str(_GIT_HOME / "gitconfig")
os.environ["GIT_CONFIG_NOSYSTEM"] = "1"
atexit.register(shutil.rmtree, _GIT_HOME, True)  # one per test process: they piled up in /tmp
# One torch thread per process (the runs inherit it: OMP_* passes the sandbox's allowlist). scripts/test.sh
# runs two pytest workers on CI's 2 cores; with torch's default of a thread per core, two training processes
# thrash at its barriers (measured on a loaded 2-core machine: a forward pass 1.7 s with 2 threads, 0.15 s
# with 1), and the budget rule's allowances are for a machine that is busy, not thrashing.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# ------------------------------------------------------------------------------------------------
# Loop-policy seams: a fake executor and a fake clock (tests/test_loop_policy.py, test_noise.py).
# The controller takes both through its constructor:
#     Controller(root, cfg, executor=fake_executor(root, [1.0, 1.2]), clock=fake_clock)
# Git, the ledger and the checks stay real; only where a run happens and what time it is are fake.

from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402

Outcome = float | dict[str, float] | None | BaseException


@dataclass(frozen=True)
class ExecutorCall:
    commit: str
    seed: int
    env: dict[str, str]
    key: str  # names the run's files: "3", "3.s2" for its second seed


class FakeClock:
    """A clock the test moves: by hand (`advance`), or by `step` seconds on every reading."""

    def __init__(self, start: float = 1_800_000_000.0, step: float = 0.0) -> None:
        self.now, self.step = start, step

    def __call__(self) -> float:
        t = self.now
        self.now += self.step
        return t

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeExecutor:
    """The controller's executor without processes: each `run` takes the next outcome of `script`
    (a list), or asks `script(call)` (a function). A number is the primary metric, a dict all the
    metrics, None a run that printed no metric (a crash), an exception is raised as the run's
    environment error. Every run is recorded in `calls`, every other command in `commands`;
    with a `clock`, each run advances it by `wall_s`. Its `checkout` is the real workspace, so
    the post-run checks inspect real files."""

    def __init__(self, root: Path, script: Sequence[Outcome] | Callable[[ExecutorCall], Outcome], *,
                 metric: str = "score", wall_s: float = 1.0, clock: FakeClock | None = None) -> None:
        from harness.workspace import Workspace

        self.checkout = Workspace(root)
        self.script = script if callable(script) else list(script)
        self.metric, self.wall_s, self.clock = metric, wall_s, clock
        self.calls: list[ExecutorCall] = []
        self.commands: list[str] = []

    def run(self, commit: str, seed: int, env: dict[str, str], *, key: str, label: str):
        from harness.gate import Sample

        call = ExecutorCall(commit, seed, dict(env), key)
        self.calls.append(call)
        outcome = self.script(call) if callable(self.script) else self.script.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is None:
            metrics: dict[str, float] = {}
        elif isinstance(outcome, dict):
            metrics = dict(outcome)
        else:
            metrics = {self.metric: float(outcome)}
        if self.clock is not None:
            self.clock.advance(self.wall_s)
        return Sample(seed, self._result(f"runs/{key}.log", metrics), metrics, None, None, {})

    def evaluate(self, command: str, env: dict[str, str], *, key: str, label: str, commit: str | None = None):
        from harness.gate import Sample

        self.commands.append(command)
        return Sample(int(env.get("AUTORESEARCH_SEED", 0)), self._result(f"runs/{key}.log", {}), {}, None, None, {})

    def command(self, command: str, env: dict[str, str], *, log: str, timeout_s: float, label: str):
        self.commands.append(command)
        return self._result(log, {})

    def prepare(self, command: str, env: dict[str, str], *, log: str, timeout_s: float):
        self.commands.append(command)
        return self._result(log, {})

    def describe(self) -> str:
        return "a fake executor (no processes)"

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass

    def _result(self, log: str, metrics: dict[str, float]):
        from harness.runner import RunResult

        path = self.checkout.state_dir / log
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(f"METRIC {k}={v}\n" for k, v in metrics.items())
        path.write_text(text, encoding="utf-8")
        return RunResult(0, False, False, self.wall_s, None, text, path)


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake_executor() -> type[FakeExecutor]:
    """The FakeExecutor class: `fake_executor(root, script, clock=fake_clock)`."""
    return FakeExecutor


# ---------------------------------------------------------------------------
# Targets' fixed side, imported by path (test_kit.py, test_pretrain_*.py)
#
# Every target has its own prepare.py, so no test may `import prepare` (or put a target folder on
# sys.path): the names would collide across targets. These load a file under a name of the test's
# choosing, and give prepare.py its `import arkit` the way a workspace does (arkit.py beside it).
# ---------------------------------------------------------------------------

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def load_by_path(path: Path | str, name: str, aliases: dict | None = None):
    """Execute the file at `path` as module `name` (kept in sys.modules under that name only). `aliases`
    (module name -> module) are visible in sys.modules only while it runs, for its own imports."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    saved = {alias: sys.modules.get(alias) for alias in aliases or {}}
    sys.modules.update(aliases or {})
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        for alias, old in saved.items():
            if old is None:
                sys.modules.pop(alias, None)
            else:
                sys.modules[alias] = old
    return module


_TARGET_MODULES: dict[str, object] = {}


def kit_module():
    """assets/arkit.py, loaded once per test process as `autoresearch_kit` (tests/test_kit.py loads fresh
    copies of its own, for the import-time behaviour)."""
    if "kit" not in _TARGET_MODULES:
        _TARGET_MODULES["kit"] = load_by_path(ASSETS / "arkit.py", "autoresearch_kit")
    return _TARGET_MODULES["kit"]


def pretrain_prepare():
    """assets/pretrain/prepare.py as `pretrain_prepare`, its `import arkit` answered by kit_module()."""
    if "prepare" not in _TARGET_MODULES:
        _TARGET_MODULES["prepare"] = load_by_path(
            ASSETS / "pretrain" / "prepare.py", "pretrain_prepare", {"arkit": kit_module()}
        )
    return _TARGET_MODULES["prepare"]


def pretrain_train():
    """assets/pretrain/train.py as `pretrain_train`, its `from prepare import` answered by pretrain_prepare()."""
    if "train" not in _TARGET_MODULES:
        _TARGET_MODULES["train"] = load_by_path(
            ASSETS / "pretrain" / "train.py", "pretrain_train", {"prepare": pretrain_prepare()}
        )
    return _TARGET_MODULES["train"]


def pretrain_workspace(directory: Path) -> Path:
    """prepare.py, train.py and arkit.py side by side in `directory`, as `autoresearch init` lays them out."""
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    for name in ("prepare.py", "train.py"):
        shutil.copy(ASSETS / "pretrain" / name, directory / name)
    shutil.copy(ASSETS / "arkit.py", directory / "arkit.py")
    return directory


def run_py(cwd: Path, env: dict[str, str], *args: str, timeout: float = 240):
    """`python ARGS` in `cwd` with exactly `env`, output captured as text."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------
# Pretrain artefacts shared by every test process of one pytest run
#
# Prepared data and a 2 s run's checkpoint take 20-110 s to make on a loaded 2-core machine, and half a dozen
# modules want the same ones (test_pretrain_eval, _heldout, test_bases, test_arbase, test_sft, ...). Each is
# made once per pytest run, by whichever xdist worker asks first, under a file lock in a directory all the
# run's workers share; everyone else waits on the lock and then copies it. Tests get a private copy (so a
# test may still write into its cache or checkpoint) in the directory they name, exactly as if they had made
# it themselves. The artefact is keyed by what makes it: the prepare arguments (flag order does not matter)
# and the training budget.
# ---------------------------------------------------------------------------

_SHARED_ROOT: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _shared_artefacts_root(tmp_path_factory) -> Path:
    """Where this pytest run's shared artefacts live: the parent of the workers' base temp directories under
    xdist (pytest-N/, one per run, holding popen-gw0/, popen-gw1/, ...), else this process's base temp."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-artefacts"
    root.mkdir(exist_ok=True)
    _SHARED_ROOT[:] = [root]
    return root


def _canonical_args(args: Sequence[str]) -> tuple[str, ...]:
    """The same arguments in one order when they are all `--flag value` pairs (what the tests pass), so that
    ("--max-bytes", "300000", "--vocab-size", "512") and the other order share one artefact."""
    pairs = list(zip(args[0::2], args[1::2], strict=False))
    if len(args) % 2 == 0 and all(f.startswith("--") and not v.startswith("--") for f, v in pairs):
        return tuple(x for pair in sorted(pairs) for x in pair)
    return tuple(args)


def shared_artefact(name: str, key: object, make: Callable[[Path], None]) -> Path:
    """The directory `make(directory)` fills, made once per pytest run for this (name, key) across all xdist
    workers, read-only by convention: copy what you change. A failed `make` leaves nothing behind (the next
    caller tries again, and fails the same way, with its own message)."""
    import fcntl
    import hashlib
    import shutil

    root = _SHARED_ROOT[0] if _SHARED_ROOT else Path(tempfile.gettempdir()) / f"autoresearch-shared-{os.getpid()}"
    root.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(repr((name, key)).encode()).hexdigest()[:16]
    done = root / f"{name}-{digest}"
    with open(root / f"{name}-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when its process dies
        if not done.exists():
            partial = root / f"{name}-{digest}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            make(partial)
            partial.rename(done)
    return done


def _pretrain_env(root: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "AUTORESEARCH_CACHE_DIR": str(root / "cache"),
        "AUTORESEARCH_TIME_BUDGET": "2",
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",  # the CPU path, even on a GPU machine
    }
    for var in ("AUTORESEARCH_DATASET", "AUTORESEARCH_RESULT_FILE", "AUTORESEARCH_CHECKPOINT", "ANTHROPIC_API_KEY",
                "AUTORESEARCH_TOKEN_BUDGET"):
        env.pop(var, None)
    return env


def _copy_into(src: Path, root: Path) -> None:
    import shutil

    root.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        if entry.is_dir():
            shutil.copytree(entry, root / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, root / entry.name)


def prepared_pretrain(root: Path, prepare_args: Sequence[str]):
    """A pretrain workspace under `root` (root/ws) and its data prepared with `prepare_args` in a private cache
    (root/cache), as `python prepare.py ARGS` leaves them. Returns root, ws, env (without the harness's per-run
    variables), data_dir and prepare_stdout (what that prepare printed: it ran once for the whole pytest run)."""
    args = _canonical_args(prepare_args)

    def make(directory: Path) -> None:
        ws = pretrain_workspace(directory / "ws")
        prepared = run_py(ws, _pretrain_env(directory), "prepare.py", *args)
        assert prepared.returncode == 0, prepared.stdout + prepared.stderr
        (directory / "prepare.stdout").write_text(prepared.stdout, encoding="utf-8")

    _copy_into(shared_artefact("prepared", args, make), root)
    return _prepared_namespace(root)


def _prepared_namespace(root: Path):
    from types import SimpleNamespace

    return SimpleNamespace(root=root, ws=root / "ws", env=_pretrain_env(root), data_dir=root / "cache" / "pretrain" / "local",
                           prepare_stdout=(root / "prepare.stdout").read_text(encoding="utf-8"))


def trained_pretrain(root: Path, prepare_args: Sequence[str]):
    """A pretrain workspace under `root`, data prepared with `prepare_args` in a private cache, and the
    checkpoint of a 2 s CPU run in `root/ckpt`. Returns root, ws, env (without the harness's per-run
    variables), ckpt, data_dir and train_stdout (the run's output; it was given AUTORESEARCH_RESULT_FILE =
    root/train.result.jsonl, which it must leave alone). Made once per pytest run (shared_artefact), copied here."""
    args = _canonical_args(prepare_args)

    def make(directory: Path) -> None:
        t = prepared_pretrain(directory, args)
        # with a result file named, as a run never is: train.py must not write it (test_pretrain_smoke checks)
        result = run_py(t.ws, {**t.env, "AUTORESEARCH_CHECKPOINT": str(directory / "ckpt"),
                               "AUTORESEARCH_RESULT_FILE": str(directory / "train.result.jsonl")}, "train.py")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        (directory / "train.stdout").write_text(result.stdout, encoding="utf-8")

    _copy_into(shared_artefact("trained", args, make), root)
    t = _prepared_namespace(root)
    t.ckpt, t.train_stdout = root / "ckpt", (root / "train.stdout").read_text(encoding="utf-8")
    return t


# ---------------------------------------------------------------------------
# Scheduling across xdist workers: the heaviest modules first
#
# scripts/test.sh runs `-n 2 --dist loadfile --no-loadscope-reorder`: each module runs whole on one worker
# (its module-scoped fixtures are made once, not once per worker), and modules are handed out in collection
# order, which this hook makes heaviest first: longest-processing-time-first scheduling, so the two workers
# finish within about one light module of each other instead of one finishing a 5-minute module alone.
# The weights are seconds per module (setup + call + teardown summed): those of the last full run on this
# machine when pytest's cache has them (recorded below), else MODULE_SECONDS, measured with
# `pytest -n 2 --durations=0` on a loaded 2-core machine (2026-12-01); a module in neither counts as
# DEFAULT_MODULE_SECONDS, so a new module starts early rather than last. Within a module the order is kept.
# ---------------------------------------------------------------------------

MODULE_SECONDS = {
    "test_pipeline.py": 395, "test_dpo.py": 287, "test_sft.py": 265, "test_pretrain_eval.py": 233,
    "test_loop.py": 159, "test_grpo.py": 134, "test_audit_corpus.py": 110, "test_adversarial.py": 99,
    "test_pretrain_heldout.py": 89, "test_api_offline.py": 80, "test_signals.py": 79, "test_mutate.py": 78,
    "test_pretrain_smoke.py": 77, "test_values.py": 71, "test_bases.py": 66, "test_cli.py": 63,
    "test_executor.py": 58, "test_finish_cli.py": 51, "test_hardening.py": 50, "test_noise_default.py": 43,
    "test_wheel.py": 43, "test_config_cmd.py": 30, "test_pi_compat.py": 25, "test_seed_compat.py": 25,
    "test_karpathy_compat.py": 24, "test_integrity.py": 24, "test_claude.py": 23, "test_report.py": 23,
    "test_noise.py": 22, "test_contention.py": 21, "test_ledger.py": 21, "test_pretrain_reference.py": 20,
    "test_chain.py": 20, "test_runner.py": 20, "test_arbase.py": 18, "test_loop_policy.py": 18,
    "test_arsample.py": 15, "test_judge.py": 15, "test_metrics.py": 13, "test_finalize.py": 13,
}
DEFAULT_MODULE_SECONDS = 30.0
_DURATIONS_KEY = "autoresearch/module_seconds"
_RUN_SECONDS: dict[str, float] = {}


def _module_seconds(config) -> dict[str, float]:
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    recorded = cache.get(_DURATIONS_KEY, None) if cache is not None else None
    return {**MODULE_SECONDS, **(recorded if isinstance(recorded, dict) else {})}


def pytest_collection_modifyitems(config, items) -> None:
    seconds = _module_seconds(config)
    items.sort(key=lambda item: -float(seconds.get(item.path.name, DEFAULT_MODULE_SECONDS)))  # stable


def pytest_runtest_logreport(report) -> None:
    # under xdist the controller sees every worker's reports; a worker's own sum is never written (below)
    module = report.nodeid.split("::")[0].rsplit("/", 1)[-1]
    _RUN_SECONDS[module] = _RUN_SECONDS.get(module, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus) -> None:
    """Record this run's seconds per module for the next run's order, from the controller (or a run without
    xdist) and only after a run of the whole suite: a `-k` or single-file run would record partial sums."""
    config = session.config
    cache = getattr(config, "cache", None)
    if cache is None or hasattr(config, "workerinput") or not _RUN_SECONDS:
        return
    if exitstatus not in (0, 1) or session.shouldstop or session.shouldfail:  # interrupted, or -x stopped it
        return
    if config.args and any(Path(a).resolve() != Path(__file__).parent for a in config.args):
        return  # not the whole tests/ folder (testpaths)
    if config.getoption("keyword", "") or config.getoption("markexpr", ""):
        return
    cache.set(_DURATIONS_KEY, {name: round(s, 1) for name, s in sorted(_RUN_SECONDS.items())})
