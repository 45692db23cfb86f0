"""Tests for harness/executor.py's SandboxExecutor: what a run can and cannot reach, through the real
executor with real git workspaces, real processes, real signals and real bubblewrap; each behaviour
with bubblewrap ("bwrap") and without it ("checkout": a fresh checkout and the subreaper, no namespaces).

Run:  .venv/bin/python -m pytest tests/test_executor.py -q      (about 10 s on 2 cores)

Without bubblewrap a run is not contained, and the tests say so: it can still write the workspace by its
absolute path, signal the controller, open the network and write its inputs. What the fresh checkout
gives there is that its relative writes, planted files and edits of fixed files land in a throwaway
directory (and edits are reported in `Sample.tampered`), and that none of its processes outlives it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from toy import git, make_toy

from harness import sandbox
from harness.config import Config, load
from harness.executor import LocalExecutor, SandboxExecutor, make_executor
from harness.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
BWRAP_PROBLEM = sandbox.probe(shutil.which("bwrap"))


@pytest.fixture(params=["bwrap", "checkout"])
def mode(request: pytest.FixtureRequest) -> str:
    if request.param == "bwrap" and BWRAP_PROBLEM is not None:
        pytest.skip(f"bubblewrap: {BWRAP_PROBLEM}")
    return str(request.param)


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory outside /tmp, which the sandbox replaces as a whole: hiding the workspace itself is
    what the bwrap tests must show. The workspace's run directories go with it."""
    where = "/var/tmp" if os.access("/var/tmp", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="autoresearch-test-", dir=where))
    yield path
    shutil.rmtree(path, ignore_errors=True)
    sandbox.sweep_run_roots()  # this workspace's run directories, now that it is gone


def workspace(base: Path, files: dict[str, str] | None = None, **changes: object) -> tuple[Workspace, Config]:
    """The toy workspace (tests/toy.py) plus `files`, committed; its config with `changes`."""
    root = make_toy(base / "ws")
    for rel, text in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    if files:
        git(root, "add", "-A")
        git(root, "commit", "-qm", "test files")
    return Workspace(root), dataclasses.replace(load(root), **changes)


def executor(ws: Workspace, cfg: Config, mode: str) -> SandboxExecutor:
    ex = SandboxExecutor(ws, cfg, bwrap="bwrap" if mode == "bwrap" else None, progress=False)
    assert ex.sandboxed == (mode == "bwrap") and ex.mode == mode
    return ex


def env_of(ws: Workspace, run: int = 1) -> dict[str, str]:
    """What Controller._env gives a run."""
    return {"AUTORESEARCH_TIME_BUDGET": "5", "AUTORESEARCH_SEED": "42", "AUTORESEARCH_RUN": str(run),
            "AUTORESEARCH_WORKSPACE": str(ws.root),
            "AUTORESEARCH_CHECKPOINT": str(ws.state_dir / "checkpoints" / f"run-{run}")}


def run(ex: SandboxExecutor, ws: Workspace, command: str, key: str = "1"):
    ex.cfg = dataclasses.replace(ex.cfg, command=command)
    return ex.run(ws.head(), 42, env_of(ws), key=key, label=f"run {key}")


def log_of(ws: Workspace, key: str = "1") -> str:
    return (ws.state_dir / "runs" / f"{key}.log").read_text()


def marked(marker: str) -> list[int]:
    """Live processes (not zombies) whose command line holds `marker`."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
                state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker.encode() in cmdline and state not in "ZXx":
                found.append(int(name))
    return found


def unique(tag: str) -> str:
    return f"{tag}-{os.getpid()}-{time.monotonic_ns()}"


# ---- the workspace, the ledger, git ----

EVIL_WRITES = """
import os, sys
ws = sys.argv[1]
print("sees the ledger:", os.path.exists(os.path.join(ws, "autoresearch.jsonl")))
for t in ["autoresearch.jsonl", "../autoresearch.jsonl", "../../autoresearch.jsonl", "../../../autoresearch.jsonl",
          os.path.join(ws, "autoresearch.jsonl"), os.path.join(ws, ".autoresearch", "state.json"),
          os.path.join(ws, ".git", "hooks", "pre-commit")]:
    try:
        os.makedirs(os.path.dirname(os.path.abspath(t)), exist_ok=True)
        with open(t, "a") as f:
            f.write('{"run": 99, "status": "keep", "metric": 1e9}\\n')
    except OSError as e:
        print("refused", t, e.strerror)
"""


def test_run_cannot_write_the_workspace(base: Path, mode: str):
    ws, cfg = workspace(base, {"evil.py": EVIL_WRITES})
    ledger = (ws.root / "autoresearch.jsonl").read_bytes()
    x = run(executor(ws, cfg, mode), ws, f"python evil.py {ws.root}")
    assert x.failure is None, x.res.tail
    now = (ws.root / "autoresearch.jsonl").read_bytes()
    hook, state = ws.root / ".git" / "hooks" / "pre-commit", ws.state_dir / "state.json"
    if mode == "bwrap":  # it cannot even see the workspace: its writes went to a tmpfs that is gone
        assert "sees the ledger: False" in x.res.tail
        assert now == ledger and not hook.exists() and not state.exists()
        assert git(ws.root, "status", "--porcelain") == ""
    else:  # the relative paths land in the throwaway checkout; the absolute path is the workspace's own
        assert now == ledger + b'{"run": 99, "status": "keep", "metric": 1e9}\n'
        assert hook.exists() and state.exists()
        (sandbox.runs_base() / "autoresearch.jsonl").unlink(missing_ok=True)  # its ../../../ landed here


# ---- the environment ----

PRINT_ENV = """
import os, sys
for k, v in sorted(os.environ.items()):
    print(f"{k}={v}")
try:
    print(open(sys.argv[1]).read())
except OSError as e:
    print("ssh key:", e.strerror)
"""
FAKE = {"ANTHROPIC_API_KEY": "sk-ant-api03-FAKEFAKEFAKE-0001", "HF_TOKEN": "hf_FAKEFAKEFAKE0002",
        "AWS_SECRET_ACCESS_KEY": "FAKE/aws/secret/0003"}


def test_secrets_never_reach_the_run(base: Path, mode: str, monkeypatch: pytest.MonkeyPatch):
    home = base / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    monkeypatch.setenv("HOME", str(home))
    for k, v in FAKE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MY_SETTING", "on")
    # a committed file that holds a secret's value: what the run prints of it is masked (the second line)
    ws, cfg = workspace(base, {"printenv.py": PRINT_ENV, "leak.txt": FAKE["ANTHROPIC_API_KEY"] + "\n"},
                        env=("HF_TOKEN", "MY_SETTING"))
    ex = executor(ws, cfg, mode)
    x = run(ex, ws, f"python printenv.py {home}/.ssh/id_ed25519; cat leak.txt")
    assert x.failure is None, x.res.tail
    texts = [log_of(ws), (ws.root / "run.log").read_text(), x.res.tail]
    for text in texts:
        for name, value in FAKE.items():
            assert value not in text and f"\n{name}=" not in text
    out = dict(line.split("=", 1) for line in log_of(ws).splitlines() if "=" in line and line[:1].isupper())
    assert out["MY_SETTING"] == "on" and out["HOME"].endswith("/1/home") and out["HF_HUB_OFFLINE"] == "1"
    assert out["AUTORESEARCH_WORKSPACE"].endswith("/1/src") and "AUTORESEARCH_RESULT_FILE" not in out
    assert "[redacted ANTHROPIC_API_KEY]" in log_of(ws)
    if mode == "bwrap":
        assert "ssh key: No such file or directory" in log_of(ws)  # HOME is hidden
    else:
        assert "PRIVATE KEY" in log_of(ws)  # by absolute path, without bubblewrap


# ---- the controller's processes ----

KILL = """
import os, signal, sys
try:
    os.kill(int(sys.argv[1]), signal.SIGKILL)
    print("killed it")
except OSError as e:
    print("could not:", e.strerror)
"""


def test_run_cannot_signal_the_controller(base: Path, mode: str):
    ws, cfg = workspace(base, {"kill.py": KILL})
    victim = subprocess.Popen(["sleep", "30"])  # stands in for the controller, whose pid is in .autoresearch/lock
    try:
        x = run(executor(ws, cfg, mode), ws, f"python kill.py {victim.pid}")
        if mode == "bwrap":  # its own PID namespace: that pid is no process there
            assert "could not: No such process" in x.res.tail and victim.poll() is None
        else:
            assert "killed it" in x.res.tail and victim.wait(5) == -signal.SIGKILL
    finally:
        victim.kill()
        victim.wait()


HOPPER = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    while True:  # a new pid every 20 ms, its parent gone each time
        if os.fork():
            os._exit(0)
        time.sleep(0.02)
print("hopping", flush=True)
time.sleep(0.3)
"""


def test_pid_hopper_is_gone_after_the_run(base: Path, mode: str):
    ws, cfg = workspace(base, {"hopper.py": HOPPER})
    marker = unique("hopper")
    x = run(executor(ws, cfg, mode), ws, f"python hopper.py {marker}")
    assert x.failure is None and "hopping" in x.res.tail, x.res.tail
    assert marked(marker) == []
    if mode == "checkout":  # the subreaper says what it killed; in bwrap's namespace they die with its init
        assert "[sandbox] killed" in x.res.tail


def test_timeout_kills_everything(base: Path, mode: str):
    ws, cfg = workspace(base, {"hopper.py": HOPPER}, timeout_s=1.0)
    marker = unique("slow")
    t0 = time.monotonic()
    x = run(executor(ws, cfg, mode), ws, f"python hopper.py {marker}; sleep 30 # {marker}")
    assert x.failure is not None and x.failure.startswith("timed out after 1s"), x.failure
    assert marked(marker) == [] and time.monotonic() - t0 < 5


CONTROLLER = """
import dataclasses, sys
from pathlib import Path
from harness.config import load
from harness.executor import SandboxExecutor
from harness.workspace import Workspace
root, mode, command = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
ws = Workspace(root)
cfg = dataclasses.replace(load(root), command=command)
ex = SandboxExecutor(ws, cfg, bwrap="bwrap" if mode == "bwrap" else None, progress=False)
ex.run(ws.head(), 42, {"AUTORESEARCH_CHECKPOINT": str(ws.state_dir / "checkpoints" / "run-1")}, key="1", label="x")
"""


def test_controller_sigkill_takes_the_run_with_it(base: Path, mode: str, tmp_path: Path):
    """A controller killed with SIGKILL cannot clean up: the run must die on its own, grandchildren too
    (the training is not the process the controller started)."""
    ws, cfg = workspace(base)
    marker = unique("training")
    command = f"python -c 'import time; print(\"READ\" + \"Y\", flush=True); time.sleep(60)' {marker}; echo after"
    (tmp_path / "controller.py").write_text(CONTROLLER)
    ctl = subprocess.Popen([sys.executable, str(tmp_path / "controller.py"), str(ws.root), mode, command], cwd=REPO)
    log = ws.state_dir / "runs" / "1.log"
    deadline = time.monotonic() + 20
    while not (log.exists() and "\nREADY\n" in log.read_text()):  # printed by the training, not the header
        assert time.monotonic() < deadline and ctl.poll() is None, "the run did not start"
        time.sleep(0.02)
    assert marked(marker)
    ctl.kill()
    t0 = time.monotonic()
    ctl.wait()
    while marked(marker) and time.monotonic() - t0 < 10:
        time.sleep(0.01)
    gone_after = time.monotonic() - t0
    assert marked(marker) == [], f"the training outlived the controller by {gone_after:.1f} s"
    assert gone_after < 2.0


# ---- fixed files and planted files ----


def test_fixed_file_is_read_only_or_reported(base: Path, mode: str):
    ws, cfg = workspace(base)
    x = run(executor(ws, cfg, mode), ws, "echo 'print(\"METRIC score=100\")' >> eval.py; python eval.py")
    assert (ws.root / "eval.py").read_text() == (base / "ws" / "eval.py").read_text()
    if mode == "bwrap":
        assert "eval.py: Read-only file system" in x.res.tail and x.tampered == ()
        assert x.metrics["score"] == -1.25
    else:
        assert x.tampered == ("eval.py",) and x.metrics["score"] == 100  # the post-run check sees `tampered`


def test_planted_bytecode_does_not_reach_the_next_run(base: Path, mode: str):
    ws, cfg = workspace(base)
    ex = executor(ws, cfg, mode)
    plant = "mkdir -p __pycache__ && echo poison > __pycache__/eval.cpython-311.pyc && ls __pycache__"
    assert "eval.cpython-311.pyc" in run(ex, ws, plant, key="1").res.tail
    x = run(ex, ws, "python -c 'import train' && ls -a", key="2")  # importing writes no bytecode either
    assert x.failure is None and "__pycache__" not in x.res.tail and "train.py" in x.res.tail, x.res.tail
    assert not (ws.root / "__pycache__").exists()


# ---- the network ----


@pytest.mark.parametrize("network", [False, True])
def test_network_only_when_switched_on(base: Path, mode: str, network: bool):
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    port, got = server.getsockname()[1], []

    def accept() -> None:
        try:
            conn, _ = server.accept()
            got.append(conn.recv(16))
            conn.close()
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    client = ("import socket, sys\ntry:\n    s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5)\n"
              "    s.sendall(b'hello'); s.close(); print('connected')\nexcept OSError as e:\n    print('no network:', e)\n")
    ws, cfg = workspace(base, {"client.py": client}, network=network)
    x = run(executor(ws, cfg, mode), ws, f"python client.py {port}")
    if mode == "bwrap" and not network:
        assert "no network:" in x.res.tail and got == []
    else:  # network = true; and without bubblewrap the network is always there
        thread.join(10)
        assert "connected" in x.res.tail and got == [b"hello"], x.res.tail
    server.close()


# ---- the separate evaluation ----

TRAIN = """
import os
ck = os.environ["AUTORESEARCH_CHECKPOINT"]
os.makedirs(ck, exist_ok=True)
with open(os.path.join(ck, "model.txt"), "w") as f:
    f.write("0.75")
print("channel in the run:", "AUTORESEARCH_RESULT_FILE" in os.environ)
print("METRIC score=999")
print("METRIC train_loss=1.5")
"""
EVALUATE = """
import os
import arkit
ck = os.environ["AUTORESEARCH_CHECKPOINT"]
value = float(open(os.path.join(ck, "model.txt")).read())
try:
    open(os.path.join(ck, "model.txt"), "a").close()
    print("checkpoint writable")
except OSError as e:
    print("checkpoint:", e.strerror)
arkit.report("score", value)
print("METRIC eval_tokens=64")
"""


def eval_workspace(base: Path, **changes: object) -> tuple[Workspace, Config]:
    files = {"train.py": TRAIN, "evaluate.py": EVALUATE, "arkit.py": (REPO / "assets" / "arkit.py").read_text()}
    ws, cfg = workspace(base, files, evaluate="python evaluate.py", **changes)
    return ws, dataclasses.replace(cfg, fixed=(*cfg.fixed, "evaluate.py", "arkit.py"))


def test_metric_comes_from_the_separate_evaluation(base: Path, mode: str):
    ws, cfg = eval_workspace(base)
    ex = executor(ws, cfg, mode)
    assert ex.metric_origin == "evaluation"
    x = run(ex, ws, "python train.py")
    assert x.failure is None and x.channel_failure is None, x.res.tail
    assert x.metrics["score"] == 0.75  # from the evaluation's channel: the run's 999 is not the metric
    assert x.metrics["train_loss"] == 1.5 and x.metrics["eval_tokens"] == 64
    assert "score=999 was printed" in str(x.notes["ignored_printed_metric"])
    assert "channel in the run: False" in log_of(ws)
    evaluation = (ws.state_dir / "runs" / "1.eval.log").read_text()
    assert ("checkpoint: Read-only file system" if mode == "bwrap" else "checkpoint writable") in evaluation
    assert x.train_s is not None and x.eval_s is not None and x.train_s == x.res.wall_s
    assert "[evaluation]" in (ws.root / "run.log").read_text()
    held = ex.evaluate("python evaluate.py", env_of(ws), key="1.heldout", label="held-out", commit=ws.head())
    assert held.failure is None and held.metrics["score"] == 0.75 and held.eval_s is not None


ANSWERING = """
import os
d = os.environ.get("AUTORESEARCH_ANSWERS_DIR")
print("answers dir in the run:", d)
ck = os.environ["AUTORESEARCH_CHECKPOINT"]
os.makedirs(ck, exist_ok=True)
open(os.path.join(ck, "model.txt"), "w").write("0.75")
if d:  # a run that found the directory would plant answers there
    open(os.path.join(d, "answers.jsonl"), "w").write('{"id": "planted"}\\n')
"""
EVALUATE_ANSWERS = EVALUATE + """
d = os.environ["AUTORESEARCH_ANSWERS_DIR"]
with open(os.path.join(d, "answers.jsonl"), "w") as f:
    f.write('{"id": "q1", "prompt": "1+1", "answer": "2"}\\n')
open(os.path.join(d, "base_answers.jsonl"), "w").write('{"id": "q1", "prompt": "1+1", "answer": "3"}\\n')
open(os.path.join(d, "notes.txt"), "w").write("not an answers file")
"""


def test_the_evaluations_answers_are_kept_for_the_judge_and_the_run_has_no_way_in(base: Path, mode: str):
    from harness.executor import answers_dir

    files = {"train.py": ANSWERING, "evaluate.py": EVALUATE_ANSWERS,
             "arkit.py": (REPO / "assets" / "arkit.py").read_text()}
    ws, cfg = workspace(base, files, evaluate="python evaluate.py")
    cfg = dataclasses.replace(cfg, fixed=(*cfg.fixed, "evaluate.py", "arkit.py"))
    ex = executor(ws, cfg, mode)
    stale = answers_dir(ws.state_dir, "1.eval")
    stale.mkdir(parents=True)
    (stale / "answers.jsonl").write_text('{"id": "from an earlier attempt"}\n')
    x = run(ex, ws, "python train.py")
    assert x.failure is None, x.res.tail
    assert "answers dir in the run: None" in log_of(ws)
    kept = answers_dir(ws.state_dir, "1.eval")
    assert sorted(p.name for p in kept.iterdir()) == ["answers.jsonl", "base_answers.jsonl"]
    assert '"q1"' in (kept / "answers.jsonl").read_text() and '"3"' in (kept / "base_answers.jsonl").read_text()
    held = ex.evaluate("python evaluate.py", env_of(ws), key="1.heldout", label="held-out", commit=ws.head())
    assert held.failure is None and (answers_dir(ws.state_dir, "1.heldout") / "answers.jsonl").is_file()


REPLACE = """
import os, shutil
ck = os.environ["AUTORESEARCH_CHECKPOINT"]
print("checkpoints in sight:", sorted(os.listdir(os.path.dirname(ck))))
print("stale one there:", os.path.exists(os.path.join(ck, "model.txt")))
os.makedirs(ck + ".new")
with open(os.path.join(ck + ".new", "model.txt"), "w") as f:
    f.write("0.5")
shutil.rmtree(ck)  # a mount point would refuse this (EBUSY): the run gets the directory's parent instead
os.rename(ck + ".new", ck)
"""
FORGE = """
import os
ck = os.environ["AUTORESEARCH_CHECKPOINT"]
os.rmdir(ck)
os.symlink(os.path.join(os.path.dirname(ck), "run-0"), ck)  # the best run's checkpoint, scored as ours
"""


def test_checkpoint_written_whole_and_never_borrowed(base: Path, mode: str):
    ws, cfg = eval_workspace(base)
    best, ours = ws.state_dir / "checkpoints" / "run-0", ws.state_dir / "checkpoints" / "run-1"
    for d, value in ((best, "0.1"), (ours, "stale")):
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.txt").write_text(value)
    (ws.root / "replace.py").write_text(REPLACE)
    (ws.root / "forge.py").write_text(FORGE)
    git(ws.root, "add", "-A")
    git(ws.root, "commit", "-qm", "scripts")
    ex = executor(ws, cfg, mode)
    x = run(ex, ws, "python replace.py")
    assert x.failure is None and x.metrics["score"] == 0.5, x.res.tail
    assert "stale one there: False" in x.res.tail  # emptied before the run: its output is what it wrote
    seen = "['run-1']" if mode == "bwrap" else "['run-0', 'run-1']"
    assert f"checkpoints in sight: {seen}" in x.res.tail
    assert sorted(p.name for p in best.parent.iterdir()) == ["run-0", "run-1"] and (ours / "model.txt").read_text() == "0.5"
    x = run(ex, ws, "python forge.py", key="2")
    assert x.failure == "the evaluation failed (exit 1)" and not ours.is_symlink() and list(ours.iterdir()) == []
    assert (best / "model.txt").read_text() == "0.1"


def test_a_failed_evaluation_is_a_crash(base: Path, mode: str):
    ws, cfg = eval_workspace(base)
    ex = executor(ws, dataclasses.replace(cfg, evaluate="echo no checkpoint here; exit 3"), mode)
    x = run(ex, ws, "python train.py")
    assert x.failure == "the evaluation failed (exit 3)" and "no checkpoint here" in x.res.tail
    assert "score" not in x.metrics and x.eval_s is not None
    x = run(ex, ws, "exit 4", key="2")  # a failed run is not evaluated
    assert x.failure == "exit code 4" and not (ws.state_dir / "runs" / "2.eval.log").exists() and x.eval_s is None


def test_legacy_target_takes_the_metric_from_the_run_itself(base: Path, mode: str):
    report = "import arkit\narkit.report('score', 0.5)\nprint('METRIC score=7')\n"
    ws, cfg = workspace(base, {"report.py": report, "arkit.py": (REPO / "assets" / "arkit.py").read_text()},
                        metric_source="result_file")
    ex = executor(ws, cfg, mode)
    assert ex.metric_origin == "run"
    x = run(ex, ws, "python report.py")
    assert x.metrics["score"] == 0.5 and "ignored_printed_metric" in x.notes


# ---- inputs, the cache, the preparation, the checks command ----


def test_inputs_are_visible_read_only(base: Path, mode: str):
    ws, cfg = workspace(base, {".gitignore": "data/\n"}, inputs=("data",))
    (ws.root / "data").mkdir()
    (ws.root / "data" / "shard.txt").write_text("tokens\n")
    x = run(executor(ws, cfg, mode), ws, "cat data/shard.txt; echo more > data/new.txt")
    assert "tokens" in x.res.tail
    if mode == "bwrap":
        assert "Read-only file system" in x.res.tail and not (ws.root / "data" / "new.txt").exists()
    else:  # a link to the workspace's directory
        assert (ws.root / "data" / "new.txt").exists()


def test_prepare_writes_the_cache_and_runs_only_read_it(base: Path, mode: str, monkeypatch: pytest.MonkeyPatch):
    cache = base / "cache"
    monkeypatch.setenv("AUTORESEARCH_CACHE_DIR", str(cache))
    ws, cfg = workspace(base)
    ex = executor(ws, cfg, mode)
    res = ex.prepare('echo "offline=${HF_HUB_OFFLINE:-no}"; echo shards > "$AUTORESEARCH_CACHE_DIR/data.txt"',
                     env_of(ws), log="prepare.log", timeout_s=30)
    assert res.ok and "offline=no" in res.tail and (cache / "data.txt").read_text() == "shards\n"
    x = run(ex, ws, 'cat "$AUTORESEARCH_CACHE_DIR/data.txt"; echo x >> "$AUTORESEARCH_CACHE_DIR/data.txt"')
    assert "shards" in x.res.tail
    assert (cache / "data.txt").read_text() == ("shards\n" if mode == "bwrap" else "shards\nx\n")
    checks = ex.command("ls", env_of(ws), log="runs/1.checks.log", timeout_s=30, label="checks")
    assert checks.ok and "eval.py" in checks.tail  # in the run's checkout


# ---- modes and housekeeping ----


def test_bwrap_required_but_missing(base: Path):
    ws, cfg = workspace(base, sandbox="bwrap")
    ex = SandboxExecutor(ws, cfg, bwrap=None, progress=False)
    assert not ex.sandboxed and ex.describe().startswith('not runnable: sandbox = "bwrap", but bwrap not found')
    with pytest.raises(sandbox.SandboxError, match='bwrap not found .*apt install bubblewrap.*Install bubblewrap, or set sandbox = "auto"'):
        run(ex, ws, "true")


def test_modes(base: Path, monkeypatch: pytest.MonkeyPatch):
    ws, cfg = workspace(base)
    monkeypatch.setenv("PATH", "/nonexistent")  # bwrap is looked up on PATH
    ex = SandboxExecutor(ws, cfg, progress=False)
    assert ex.mode == "checkout" and ex.describe().startswith("unsandboxed: bwrap not found")
    monkeypatch.undo()
    assert SandboxExecutor(ws, dataclasses.replace(cfg, sandbox="checkout"), progress=False).mode == "checkout"
    assert isinstance(make_executor(ws, dataclasses.replace(cfg, sandbox="off")), LocalExecutor)
    assert isinstance(make_executor(ws, cfg), SandboxExecutor)
    if BWRAP_PROBLEM is None:
        assert make_executor(ws, cfg).describe().startswith("sandboxed: bubblewrap")


def test_leftovers_go_when_the_first_command_starts(base: Path):
    ws, cfg = workspace(base)
    left = sandbox.run_root(ws) / "7" / "src"
    left.mkdir(parents=True)
    ex = executor(ws, cfg, "checkout")
    assert left.exists()  # building an executor (as `status` does) removes nothing
    assert ex.prepare("true", env_of(ws), log="prepare.log", timeout_s=30).ok  # whichever command comes first
    assert not left.exists()
    run(ex, ws, "true")
    root = sandbox.run_root(ws)
    assert (root / "1" / "src" / "train.py").exists()
    ex.close()  # the end of a session
    assert not root.exists()
    assert run(ex, ws, "true").failure is None  # and a later run starts afresh


def test_local_executor_runs_the_evaluation_too(base: Path):
    ws, cfg = eval_workspace(base, sandbox="off", command="python train.py")
    ex = make_executor(ws, cfg, progress=False)
    x = ex.run(ws.head(), 42, env_of(ws), key="1", label="run 1")
    assert x.failure is None and x.metrics["score"] == 0.75 and x.eval_s is not None, x.res.tail
    assert "channel in the run: False" in log_of(ws)
