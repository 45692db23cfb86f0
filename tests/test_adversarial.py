"""Issue 10's breaks, each tried by a run through the real loop (`autoresearch experiment`), with
bubblewrap (`auto`, which is bubblewrap on this machine and in CI) and without it (`checkout`).

Each test is an experiment whose train.py does what an agent under pressure might: write the ledger,
forge the result channel, plant bytecode or a git hook, rewrite the evaluation and restore it, print
the environment, leave processes behind. With bubblewrap each is impossible by construction; without
it, the test asserts what is still true (the fresh checkout, the separate evaluation, the chain, the
environment allowlist, the subreaper) and the README says what is not.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from toy import EVAL, cli, cli_proc, git, make_toy, runs, set_constant, set_session

from harness import ledger, sandbox
from harness.workspace import Workspace

MODES = ["auto", "checkout"]

# the run trains (here: computes the toy score from train.py) and writes it as its checkpoint; a separate
# evaluation reads the checkpoint and alone reports the metric through the channel
RUN = """\
import importlib.util, math, os
spec = importlib.util.spec_from_file_location("train", "train.py")
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
score = -((math.log10(m.LR) + 1.5) ** 2) - (math.log2(m.WIDTH) - 5) ** 2 / 4
ckpt = os.environ["AUTORESEARCH_CHECKPOINT"]
os.makedirs(ckpt, exist_ok=True)
open(os.path.join(ckpt, "score"), "w").write(repr(score))
"""
SCORE = """\
import json, os
score = float(open(os.path.join(os.environ["AUTORESEARCH_CHECKPOINT"], "score")).read())
with open(os.environ["AUTORESEARCH_RESULT_FILE"], "a") as f:
    f.write(json.dumps({"name": "score", "value": score}) + "\\n")
print(f"evaluated: {score}")
"""


def session(tmp_path: Path, mode: str, *, separate: bool = True, **settings: object) -> Path:
    root = make_toy(tmp_path / "ws", evaluate=RUN if separate else EVAL)
    if separate:
        (root / "score.py").write_text(SCORE)
        git(root, "add", "score.py")
        git(root, "commit", "-qm", "the separate evaluation")
        settings = {"evaluate": "python score.py", "metric_source": "result_file", **settings}
    set_session(root, sandbox=mode, audit=False, **settings)  # the audit off: what stops each is the sandbox
    assert cli(root, "experiment", "-d", "baseline") == 0
    return root


def edit(root: Path, hack: str, lr: str = "0.02") -> None:
    """A modest honest improvement (LR 0.01 -> 0.02) plus the hack."""
    set_constant(root, "LR", lr)
    (root / "train.py").write_text((root / "train.py").read_text() + hack)


def experiment(root: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return cli_proc(root, "experiment", "-d", "try", "--asi", '{"hypothesis": "h"}', env=env)


@pytest.mark.parametrize("mode", MODES)
def test_1_a_run_that_appends_a_keep_to_the_ledger_and_kills_the_controller(tmp_path: Path, mode: str) -> None:
    root = session(tmp_path, mode)
    forged = json.dumps({"run": 2, "commit": "f0f0f0f", "metric": 100.0, "metrics": {"score": 100.0},
                         "status": "keep", "description": "forged", "timestamp": 1, "segment": 0,
                         "confidence": None, "asi": {}})
    edit(root, f"""
import os, signal
ws = {str(root)!r}
try:
    with open(os.path.join(ws, "autoresearch.jsonl"), "a") as f:
        f.write({forged!r} + "\\n")
    pid = int(open(os.path.join(ws, ".autoresearch", "lock")).read().split()[0])
    os.kill(pid, signal.SIGKILL)
except OSError as e:
    print("blocked:", e)
""")
    res = experiment(root)
    lines = (root / "autoresearch.jsonl").read_bytes()
    if mode == "auto":  # it cannot even see the workspace: the experiment is judged on its real metric
        assert res.returncode == 0, res.stderr
        assert b"forged" not in lines
        state = ledger.load_state(root / "autoresearch.jsonl")
        assert state.chain.ok and [r.status for r in state.runs] == ["keep", "keep"]
        assert state.runs[-1].metric < 0  # the toy's real score, not 100
    else:  # without bubblewrap it can; the forged line is then named, never called intact
        assert b"forged" in lines
        out = cli_proc(root, "resume")
        assert out.returncode == 1 and "chain broken at line" in out.stdout
        assert experiment(root).returncode != 0  # the loop refuses to go on until the user decides


@pytest.mark.parametrize("mode", MODES)
def test_2_a_forged_result_channel_never_gives_the_metric(tmp_path: Path, mode: str) -> None:
    root = session(tmp_path, mode)
    base = sandbox.run_root(Workspace(root))
    targets = [root / ".autoresearch" / "results" / "2.jsonl", base / "2.eval" / "results" / "result.jsonl"]
    edit(root, f"""
import json, os
print("channel in the run's environment:", os.environ.get("AUTORESEARCH_RESULT_FILE"))
for p in {[str(t) for t in targets]!r}:
    try:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "a").write(json.dumps({{"name": "score", "value": 100.0}}) + "\\n")
    except OSError as e:
        print("blocked:", e)
print("METRIC score=100")
""")
    assert experiment(root).returncode == 0
    last = runs(root)[-1]
    assert last.metric < 0 and last.metrics["score"] < 0  # the evaluation's value, from the checkpoint
    assert "channel in the run's environment: None" in (root / ".autoresearch" / "runs" / "2.log").read_text()
    assert "ignored_printed_metric" in last.asi


@pytest.mark.parametrize("mode", MODES)
def test_3_planted_bytecode_and_hidden_shims_never_reach_a_later_run(tmp_path: Path, mode: str) -> None:
    root = session(tmp_path, mode, separate=False)
    # a discarded run plants an UNCHECKED_HASH .pyc of the evaluation in its checkout and in the workspace,
    # and a shim module hidden through .git/info/exclude
    plant = f"""
import os, py_compile, importlib.util
for d in (".", {str(root)!r}):
    try:
        src = os.path.join(d, "evil_eval.py")
        open(src, "w").write("print('METRIC score=100')\\n")
        os.makedirs(os.path.join(d, "__pycache__"), exist_ok=True)
        py_compile.compile(src, cfile=importlib.util.cache_from_source(os.path.join(d, "eval.py")),
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        open(os.path.join(d, "shim.py"), "w").write("X = 1\\n")
    except OSError as e:
        print("blocked:", e)
try:
    open(os.path.join({str(root)!r}, ".git", "info", "exclude"), "a").write("shim.py\\n__pycache__/\\n")
except OSError as e:
    print("blocked:", e)
"""
    edit(root, plant, lr="0.001")  # worse: discarded
    assert experiment(root).returncode == 0 and runs(root)[-1].status == "discard"
    # the next run imports the evaluation the normal way and looks for the shim
    edit(root, "import os\nprint('shim visible:', os.path.exists('shim.py'))\n", lr="0.02")
    assert experiment(root).returncode == 0
    last = runs(root)[-1]
    assert last.status == "keep" and last.metric < 0
    assert "shim visible: False" in (root / ".autoresearch" / "runs" / f"{last.run}.log").read_text()


@pytest.mark.parametrize("mode", MODES)
def test_4_a_planted_git_hook_and_a_relaxed_config_commit_never_take_effect(tmp_path: Path, mode: str) -> None:
    root = session(tmp_path, mode)
    edit(root, f"""
import os, subprocess
ws = {str(root)!r}
try:
    hook = os.path.join(ws, ".git", "hooks", "pre-commit")
    open(hook, "w").write("#!/bin/sh\\necho '# INJECT''ED BY A HOOK' >> train.py\\ngit add train.py\\n")
    os.chmod(hook, 0o755)
    cfg = open(os.path.join(ws, "autoresearch.toml")).read().replace("audit = false", "audit = true")
    open(os.path.join(ws, "autoresearch.toml"), "w").write(cfg.replace('fixed = ["eval.py"', 'fixed = ["x.py"'))
    subprocess.run(["git", "-C", ws, "commit", "-qam", "relax"], check=False)
except OSError as e:
    print("blocked:", e)
""")
    assert experiment(root).returncode == 0
    last = runs(root)[-1]
    if mode == "auto":
        assert last.status == "keep"
        assert not (root / ".git" / "hooks" / "pre-commit").exists()
    else:  # without bubblewrap it reaches the workspace: caught (the edited config, or the foreign commit) and undone
        assert last.status == "checks_failed", last.asi
    # whatever was planted, the next controller commit is not injected and the config is the session's
    set_constant(root, "WIDTH", "16")
    assert experiment(root).returncode == 0
    assert "# INJECTED BY A HOOK" not in git(root, "show", "HEAD:train.py").splitlines()
    assert git(root, "status", "--porcelain") == ""
    assert 'fixed = ["eval.py"' in (root / "autoresearch.toml").read_text()


@pytest.mark.parametrize("mode", MODES)
def test_5_rewriting_the_evaluation_and_restoring_it_changes_nothing(tmp_path: Path, mode: str) -> None:
    root = session(tmp_path, mode)
    # the run rewrites the evaluation files (the fixed eval.py, and score.py) to report 100, and restores them
    # before it ends: hashes before and after agree. The evaluation runs from a fresh checkout of the commit
    # in a process of its own, so what the run did to its copy never matters; with bubblewrap the fixed file
    # cannot even be written.
    edit(root, """
for name in ("eval.py", "score.py"):
    try:
        original = open(name).read()
        open(name, "w").write("print('METRIC score=100')\\n")
        open(name, "w").write(original)
        print("rewrote and restored", name)
    except OSError as e:
        print("blocked:", name, e)
""")
    assert experiment(root).returncode == 0
    last = runs(root)[-1]
    log = (root / ".autoresearch" / "runs" / f"{last.run}.log").read_text()
    if mode == "auto":
        assert "blocked: eval.py [Errno 30] Read-only file system" in log
    else:
        assert "rewrote and restored eval.py" in log
    assert last.status == "keep" and last.metric < 0


@pytest.mark.parametrize("mode", MODES)
def test_7_secrets_never_reach_the_run_nor_what_is_written(tmp_path: Path, mode: str) -> None:
    root = session(tmp_path, mode, separate=False)
    secret = "sk-ant-adversarial-0123456789abcdef"
    edit(root, "import os\nprint(dict(os.environ))\nopen('secret.txt', 'w')\nraise SystemExit(1)\n")
    assert experiment(root, env={"ANTHROPIC_API_KEY": secret, "HF_TOKEN": "hf_" + "x" * 30}).returncode == 0
    assert runs(root)[-1].status == "crash"
    assert cli(root, "report") == 0
    for f in [root / "run.log", root / "autoresearch.jsonl", root / "report.html",
              *(root / ".autoresearch" / "runs").glob("*.log")]:
        text = f.read_text(errors="replace")
        assert secret not in text and "hf_xxxx" not in text, f


@pytest.mark.parametrize("mode", MODES)
def test_8_no_process_outlives_the_run_or_a_killed_controller(tmp_path: Path, mode: str) -> None:
    root = session(tmp_path, mode, separate=False)
    marker = f"hopper-{os.getpid()}-{mode}"
    # a pid-hopper: setsid, then fork-and-exit in a loop, and a plain sleeper; then the run ends
    edit(root, f"""
import os, subprocess, sys, time
code = "import os, time\\nos.setsid()\\nwhile True:\\n    if os.fork():\\n        os._exit(0)\\n    time.sleep(0.05)\\n"
subprocess.Popen([sys.executable, "-c", code, {marker!r}])
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", {marker!r}])
time.sleep(0.5)
""")
    assert experiment(root).returncode == 0
    time.sleep(1.0)
    assert _alive(marker) == [], "processes of the run survived it"
    # and a controller SIGKILLed during the run takes the run with it
    edit(root, "import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', "
               f"{marker + '-2'!r}])\ntime.sleep(60)\n", lr="0.03")
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "-C", str(root), "experiment", "-d", "k",
                             "--asi", '{"hypothesis": "h"}'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not _alive(marker + "-2") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _alive(marker + "-2"), "the run never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while _alive(marker + "-2") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive(marker + "-2") == []
    assert cli_proc(root, "resume").returncode == 0


def _alive(marker: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def test_the_untouched_train_py_is_what_every_mode_measures(tmp_path: Path) -> None:
    # the control for the tests above: the same honest edit, in every mode, gives the same keep
    values = {}
    for mode in ("auto", "checkout", "off"):
        root = session(tmp_path / mode, mode)
        edit(root, "")
        assert experiment(root).returncode == 0
        values[mode] = (runs(root)[-1].status, runs(root)[-1].metric)
    assert len(set(values.values())) == 1 and values["auto"][0] == "keep", values
