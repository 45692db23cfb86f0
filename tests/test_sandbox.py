"""Tests for harness/sandbox.py: the allowlisted environment and the bubblewrap command line on literal
inputs, then the real thing: bubblewrap running that command line, fresh checkouts from a real git
repository, run directories, and the subreaper with a real pid-hopper.

Run:  .venv/bin/python -m pytest tests/test_sandbox.py -q      (a few seconds)

Tests that need bubblewrap skip where `sandbox.probe` says it cannot run (tests/test_executor.py covers
the same behaviours without it).
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness import sandbox
from harness.sandbox import SandboxError, Spec, bwrap_argv, child_env, describe, materialize, resolve_mode
from harness.workspace import Workspace

BWRAP = shutil.which("bwrap")
needs_bwrap = pytest.mark.skipif(sandbox.probe(BWRAP) is not None, reason=f"bubblewrap: {sandbox.probe(BWRAP)}")
needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc and prctl")


# ---- the environment ----

PARENT = {
    "PATH": "/usr/local/bin:/usr/bin", "HOME": "/home/me", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TERM": "xterm",
    "USER": "me", "CUDA_VISIBLE_DEVICES": "0", "NCCL_DEBUG": "WARN", "OMP_NUM_THREADS": "4",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "HF_HOME": "/data/hf",
    "ANTHROPIC_API_KEY": "sk-ant-fake-0123456789", "HF_TOKEN": "hf_fake_0123456789",
    "AWS_SECRET_ACCESS_KEY": "aws-fake-0123456789", "GITHUB_TOKEN": "ghp_fake", "SSH_AUTH_SOCK": "/tmp/ssh-x/agent",
    "EDITOR": "vim", "VIRTUAL_ENV": "/work/.venv", "MY_FLAG": "1", "CUDA_API_KEY": "not-a-cuda-setting",
    "AUTORESEARCH_DATASET": "local", "AUTORESEARCH_RESULT_FILE": "/tmp/forged.jsonl", "AUTORESEARCH_FAULT": "after_run",
}
RUN = {"AUTORESEARCH_SEED": "42", "AUTORESEARCH_RUN": "3", "AUTORESEARCH_CHECKPOINT": "/ws/.autoresearch/ck/run-3"}


def test_child_env_is_an_allowlist():
    env = child_env(PARENT, RUN, extra=["MY_FLAG", "HF_TOKEN", "MISSING"], home="/sandbox/home",
                    path_dirs=["/venv/bin"], network=False)
    assert env == {
        "PATH": "/venv/bin:/usr/local/bin:/usr/bin", "HOME": "/sandbox/home", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "TERM": "xterm", "USER": "me", "CUDA_VISIBLE_DEVICES": "0", "NCCL_DEBUG": "WARN", "OMP_NUM_THREADS": "4",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "HF_HOME": "/data/hf", "MY_FLAG": "1",
        "AUTORESEARCH_DATASET": "local", "AUTORESEARCH_SEED": "42", "AUTORESEARCH_RUN": "3",
        "AUTORESEARCH_CHECKPOINT": "/ws/.autoresearch/ck/run-3",
        "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    }
    # a credential is dropped even when [session] env names it, or a passed-through family holds it
    # (CUDA_API_KEY); the harness's channel and fault hook never come from the controller's environment


def test_child_env_network_on_and_the_run_channel():
    env = child_env(PARENT, {**RUN, "AUTORESEARCH_RESULT_FILE": "/run/results/r.jsonl"}, extra=[], home="/h",
                    path_dirs=["/venv/bin", "/usr/bin"], network=True)
    assert "HF_HUB_OFFLINE" not in env
    assert env["AUTORESEARCH_RESULT_FILE"] == "/run/results/r.jsonl"  # set by the executor, for the evaluation
    assert env["PATH"] == "/venv/bin:/usr/bin:/usr/local/bin"  # ours first, no duplicates


# ---- the command line ----


def _pairs(args: list[str], op: str) -> list[tuple[str, str]]:
    return [(args[i + 1], args[i + 2]) for i, a in enumerate(args) if a == op]


def _index(args: list[str], *seq: str) -> int:
    for i in range(len(args) - len(seq) + 1):
        if tuple(args[i:i + len(seq)]) == seq:
            return i
    raise AssertionError(f"{seq} not in {args}")


def test_bwrap_argv_order_and_hiding():
    spec = Spec(
        argv=("/bin/bash", "-c", "python train.py"), chdir="/runs/1/src",
        hidden=("/home/me", "/home/me/ws", "/tmp/pytest/ws", "/", "/usr", "/srv/ws"),
        ro=("/home/me/.pyenv/versions/3.11", "/home/me/.cache/autoresearch"),
        rw=("/runs/1", "/srv/ws/.autoresearch/checkpoints/run-1"),
        ro_at=(("/srv/ws/data", "/runs/1/src/data"),), ro_files=("/runs/1/src/prepare.py",),
        masked=("/run/docker.sock",), devices=("/dev/nvidia0", "/dev/dri"), bwrap="/usr/bin/bwrap",
    )
    args = bwrap_argv(spec)
    assert args[:12] == ["/usr/bin/bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                         "--tmpfs", "/tmp", "--tmpfs", "/dev/shm"]
    # HOME and the workspace hidden; one inside HOME, one under /tmp, and system directories are not
    tmpfs = [args[i + 1] for i, a in enumerate(args) if a == "--tmpfs"]
    assert tmpfs == ["/tmp", "/dev/shm", "/home/me", "/srv/ws"]
    # every bind after the tmpfs mounts; the checkout before what lies inside it
    last_tmpfs = _index(args, "--tmpfs", "/srv/ws")
    assert all(_index(args, op, a, b) > last_tmpfs for op in ("--ro-bind", "--bind")
               for a, b in _pairs(args, op) if a != "/")
    checkout = _index(args, "--bind", "/runs/1", "/runs/1")
    assert _index(args, "--ro-bind", "/runs/1/src/prepare.py", "/runs/1/src/prepare.py") > checkout
    assert _index(args, "--ro-bind", "/srv/ws/data", "/runs/1/src/data") > checkout
    assert _index(args, "--bind", "/srv/ws/.autoresearch/checkpoints/run-1",
                  "/srv/ws/.autoresearch/checkpoints/run-1") > last_tmpfs
    assert ("/dev/null", "/run/docker.sock") in _pairs(args, "--ro-bind")
    assert _pairs(args, "--dev-bind") == [("/dev/nvidia0", "/dev/nvidia0"), ("/dev/dri", "/dev/dri")]
    tail = args[_index(args, "--unshare-user"):]
    assert tail == ["--unshare-user", "--cap-drop", "ALL", "--unshare-pid", "--unshare-ipc", "--unshare-net",
                    "--die-with-parent", "--new-session", "--chdir", "/runs/1/src", "--",
                    "/bin/bash", "-c", "python train.py"]
    assert "--unshare-net" not in bwrap_argv(Spec(argv=("true",), chdir="/", network=True))


@needs_bwrap
def test_bwrap_argv_runs(tmp_path: Path):
    """The command line, run: hidden directories are empty, the fixed file and the input are read-only,
    the run directory and the checkpoint are writable, /tmp and /dev/shm are private and writable."""
    ws, rd = _outside_tmp("ws"), tmp_path / "run"
    (ws / "data").mkdir(parents=True)
    (ws / "data" / "x.txt").write_text("input\n")
    (ws / "autoresearch.jsonl").write_text("ledger\n")
    ckpt = ws / ".autoresearch" / "checkpoints" / "run-1"
    ckpt.mkdir(parents=True)
    src = rd / "src"
    (src / "data").mkdir(parents=True)
    (src / "prepare.py").write_text("fixed\n")
    script = f"""
ls -A {ws}
cat data/x.txt
echo nope > data/y.txt || echo input-read-only
echo nope > prepare.py || echo fixed-read-only
echo ok > {ckpt}/model.txt && echo checkpoint-written
echo ok > {rd}/out.txt && echo run-dir-written
echo shm > /dev/shm/t && echo tmp > /tmp/t && echo private-tmp-written
"""
    spec = Spec(argv=("/bin/sh", "-c", script), chdir=str(src), hidden=(str(ws),), rw=(str(rd), str(ckpt)),
                ro_at=((str(ws / "data"), str(src / "data")),), ro_files=(str(src / "prepare.py"),), bwrap=BWRAP or "")
    res = subprocess.run(bwrap_argv(spec), capture_output=True, text=True, timeout=30)
    try:
        out = res.stdout.split("\n")
        assert out[0] == ".autoresearch", res.stdout + res.stderr  # the workspace: only the checkpoint's mount point
        assert out[1:] == ["input", "input-read-only", "fixed-read-only", "checkpoint-written", "run-dir-written",
                           "private-tmp-written", ""], res.stdout + res.stderr
        assert res.stderr.count("Read-only file system") == 2
        assert (ckpt / "model.txt").read_text() == "ok\n" and (rd / "out.txt").exists()
        assert (src / "prepare.py").read_text() == "fixed\n" and not (ws / "data" / "y.txt").exists()
        assert (ws / "autoresearch.jsonl").read_text() == "ledger\n"
    finally:
        shutil.rmtree(ws.parent, ignore_errors=True)


@needs_bwrap
def test_bwrap_as_root_cannot_remount():
    """--unshare-user --cap-drop ALL: without them a root controller's run keeps CAP_SYS_ADMIN and can
    remount the read-only system writable (measured: it can)."""
    spec = Spec(argv=("/bin/sh", "-c", "mount -o remount,rw / && echo REMOUNTED; grep CapEff /proc/self/status"),
                chdir="/", bwrap=BWRAP or "")
    res = subprocess.run(bwrap_argv(spec), capture_output=True, text=True, timeout=30)
    assert "REMOUNTED" not in res.stdout and "CapEff:\t0000000000000000" in res.stdout, res.stdout + res.stderr


def _outside_tmp(name: str) -> Path:
    """A directory outside /tmp (which the sandbox replaces wholesale), so that hiding it is what is tested."""
    base = Path(tempfile.mkdtemp(prefix="autoresearch-test-", dir="/var/tmp" if os.access("/var/tmp", os.W_OK)
                                 else None))
    return base / name


# ---- probing and describing ----


def test_probe_says_why(tmp_path: Path):
    assert sandbox.probe(None) == f"bwrap not found ({sandbox.INSTALL_HINT})"
    assert "cannot run" in (sandbox.probe(str(tmp_path / "no-such-bwrap")) or "")
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    said = sandbox.probe(str(fake)) or ""
    assert said.startswith("bwrap cannot create namespaces here (bwrap: No permissions to create new namespace)")
    if BWRAP and sandbox.probe(BWRAP) is None:
        assert sandbox.version(BWRAP).startswith("bubblewrap ")


def test_describe_and_mode():
    assert describe("bwrap", None, False, bwrap_version="bubblewrap 0.8.0") == (
        "sandboxed: bubblewrap 0.8.0, network off, fixed files read-only")
    assert describe("bwrap", None, True).startswith("sandboxed: bubblewrap, network on")
    missing = sandbox.probe(None)
    assert describe("checkout", missing, False) == (
        f"unsandboxed: bwrap not found ({sandbox.INSTALL_HINT}); runs use a fresh checkout and die with the controller")
    assert describe("checkout", None, False, requested="checkout").startswith('unsandboxed: sandbox = "checkout"')
    assert describe("bwrap", missing, False, requested="bwrap").startswith('not runnable: sandbox = "bwrap", but bwrap')
    assert describe("off", None, False).startswith('unsandboxed: sandbox = "off"')
    assert [resolve_mode(m, None) for m in ("auto", "bwrap", "checkout", "off")] == ["bwrap", "bwrap", "checkout", "off"]
    assert [resolve_mode(m, "no") for m in ("auto", "bwrap", "checkout", "off")] == ["checkout", "bwrap", "checkout", "off"]


# ---- fresh checkouts ----


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def repo(root: Path, files: dict[str, str], links: dict[str, str] | None = None) -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for rel, target in (links or {}).items():
        (root / rel).symlink_to(target)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "files")
    return Workspace(root)


def test_materialize_writes_the_commit_exactly(tmp_path: Path):
    ws = repo(tmp_path / "ws", {"train.py": "LR = 1\n", "lib/deep/mod.py": "x = 1\n", "run.sh": "echo hi\n",
                                "data.bin": "\x00\x01" * 300_000}, links={"lib/link.py": "deep/mod.py"})
    os.chmod(ws.root / "run.sh", 0o755)
    git(ws.root, "add", "run.sh")
    git(ws.root, "commit", "-qm", "exec")
    (ws.root / "train.py").write_text("LR = 2  # uncommitted\n")  # the work tree is not what is checked out
    (ws.root / "untracked.txt").write_text("not in the commit\n")
    index = (ws.root / ".git" / "index").read_bytes()
    dest = tmp_path / "runs" / "1" / "src"
    materialize(ws, ws.head(), dest)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == [
        "data.bin", "lib", "lib/deep", "lib/deep/mod.py", "lib/link.py", "run.sh", "train.py"]
    assert (dest / "train.py").read_text() == "LR = 1\n"
    assert (dest / "data.bin").read_bytes() == ("\x00\x01" * 300_000).encode()
    assert os.readlink(dest / "lib" / "link.py") == "deep/mod.py"
    assert (dest / "run.sh").stat().st_mode & stat.S_IXUSR and not (dest / "train.py").stat().st_mode & stat.S_IXUSR
    assert (ws.root / ".git" / "index").read_bytes() == index  # the workspace's index untouched
    assert (ws.root / "train.py").read_text() == "LR = 2  # uncommitted\n"


def test_materialize_refuses_submodules_and_escaping_links(tmp_path: Path):
    sub = repo(tmp_path / "sub", {"a.py": "a = 1\n"})
    ws = repo(tmp_path / "ws", {"train.py": "x\n"})
    subprocess.run(["git", "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub.root), "vendor"],
                   cwd=ws.root, check=True, capture_output=True)
    git(ws.root, "commit", "-qm", "submodule")
    with pytest.raises(SandboxError, match="vendor is a git submodule"):
        materialize(ws, ws.head(), tmp_path / "d1")
    ws2 = repo(tmp_path / "ws2", {"a/b/x.py": "x\n"}, links={"abs": "/etc/passwd"})
    with pytest.raises(SandboxError, match="abs is a symlink to /etc/passwd, outside the checkout"):
        materialize(ws2, ws2.head(), tmp_path / "d2")
    # each link alone looks inside; through the other it leads one level out
    ws3 = repo(tmp_path / "ws3", {"a/b/x.py": "x\n"}, links={"a/b/up": "../..", "a/b/l": "up/../x"})
    with pytest.raises(SandboxError, match="a/b/l is a symlink to up/../x, outside the checkout"):
        materialize(ws3, ws3.head(), tmp_path / "d3")
    assert issubclass(SandboxError, sandbox.RunnerError)  # the controller's environment-error policy applies


# ---- run directories ----


def test_run_root_is_private_and_per_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    a, b = repo(tmp_path / "a", {"x": "1"}), repo(tmp_path / "b", {"x": "1"})
    ra, rb = sandbox.run_root(a), sandbox.run_root(b)
    assert ra.parent == rb.parent == tmp_path / "tmp" / f"autoresearch-{os.getuid()}" and ra != rb
    assert sandbox.run_root(a) == ra and len(ra.name) == 12
    assert stat.S_IMODE(ra.stat().st_mode) == 0o700 and stat.S_IMODE(ra.parent.stat().st_mode) == 0o700
    (ra / "1" / "src").mkdir(parents=True)
    (ra / "1" / "src" / "f").write_text("x")
    os.chmod(ra / "1" / "src", 0o500)  # what a run may leave
    sandbox.clear_dir(ra)
    assert list(ra.iterdir()) == []
    shutil.rmtree(b.root)  # a deleted session: its run directories go at the next sweep, the others stay
    assert sandbox.sweep_run_roots() == [b.root] and not rb.exists() and ra.exists()
    shutil.rmtree(ra.parent)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "tmp" / f"autoresearch-{os.getuid()}").symlink_to(tmp_path / "elsewhere")  # planted
    with pytest.raises(SandboxError, match="is not a directory of ours"):
        sandbox.run_root(a)


# ---- without bubblewrap: the subreaper ----

HOPPER = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    while True:  # a new pid every 20 ms, its parent gone each time
        if os.fork():
            os._exit(0)
        time.sleep(0.02)
print("hopping", flush=True)
"""


def marked(marker: str) -> list[int]:
    """Live processes (not zombies) whose command line holds `marker`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state not in "ZXx":
            found.append(int(name))
    return found


@needs_linux
def test_reaper_leaves_nothing_and_exits_as_the_command(tmp_path: Path):
    hopper = tmp_path / "hopper.py"
    hopper.write_text(HOPPER)
    marker = f"hop-{os.getpid()}-{time.monotonic_ns()}"
    argv = sandbox.reaper_argv(["/bin/sh", "-c", f"{sys.executable} {hopper} {marker}; exit 3"], os.environ)
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert res.returncode == 3 and "hopping" in res.stdout, res.stdout + res.stderr
    assert marked(marker) == []  # without the subreaper: the hopper lives on, re-parented to init
    killed = subprocess.run(sandbox.reaper_argv(["/bin/sh", "-c", "kill -TERM $$"], os.environ), timeout=30)
    assert killed.returncode == -signal.SIGTERM
