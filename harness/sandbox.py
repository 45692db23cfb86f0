"""Where a run cannot reach: a fresh checkout of its commit, under bubblewrap when it works here.

The pieces, pure where they can be (README "The sandbox"; the executor that puts them together is
`harness.executor.SandboxExecutor`):

* `probe` / `describe`: whether bubblewrap can make its namespaces on this machine, and the one line
  `status` and `init` print about it;
* `child_env`: the run's environment, an allowlist: never a credential (`harness.secrets`);
* `Spec` -> `bwrap_argv`: the bubblewrap command line. The system read-only, the workspace, HOME and
  our other run directories hidden under empty tmpfs mounts, then bound back only what a run needs:
  the interpreter and the data cache read-only, its own checkout and checkpoint read-write, the
  fixed files read-only over themselves;
* `materialize`: the fresh checkout, straight from git's objects, never touching the workspace's
  index, hooks or work tree;
* `run_root`: where checkouts live, outside the workspace;
* `reaper_argv`: without bubblewrap, a small supervisor that is the run's subreaper, so a run's
  processes die with the controller even when they `setsid()` and double-fork.

How the anchors invoke bubblewrap, and what is taken from them:
- Codex's Linux sandbox (openai/codex, codex-rs/linux-sandbox/src/bwrap.rs `create_filesystem_args`):
  `--ro-bind / /` first, `--dev /dev`, then `--bind` the writable roots, then `--ro-bind` protected
  subpaths over them "so protected subpaths win"; `--new-session --die-with-parent --unshare-pid`
  and a fresh `--proc /proc`; `--unshare-net` for no network.
- Claude Code's sandbox-runtime (anthropic-experimental/sandbox-runtime, src/sandbox/
  linux-sandbox-utils.ts `wrapCommandWithSandboxLinux`): `--unshare-user --cap-drop ALL` always,
  because "bwrap only auto-creates a userns when EUID != 0, so a root parent would otherwise leave
  the sandboxed command with full caps ... remount rw over --ro-bind / /". Measured here as root:
  without them `mount -o remount,rw /` succeeds inside the sandbox; with them it is refused.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from harness.procgroup import HELPER_GROUP
from harness.runner import RunnerError
from harness.secrets import is_secret_name
from harness.workspace import Workspace

# What a run executes under: bubblewrap, a fresh checkout without it, or the workspace itself
Mode = Literal["bwrap", "checkout", "off"]
INSTALL_HINT = "Debian/Ubuntu: sudo apt install bubblewrap; Fedora: sudo dnf install bubblewrap"
PROBE_TIMEOUT_S = 10.0
# git, with nothing configured in the repository able to run a program on our behalf
GIT_SAFE = ("-c", f"core.hooksPath={os.devnull}", "-c", "core.fsmonitor=false")
# Never hidden under a tmpfs, whatever HOME or the workspace say: the system a run needs
_SYSTEM_DIRS = frozenset({"/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/opt", "/proc",
                          "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var"})
_PRIVATE = ("/tmp", "/dev/shm")  # each a fresh tmpfs in the sandbox: whatever was under them is gone
# Daemon sockets: a read-only mount does not stop connect() on a socket, and a container runtime's
# socket is root on the host. Masked with /dev/null where they exist.
DAEMON_SOCKETS = ("/run/docker.sock", "/run/containerd/containerd.sock", "/run/podman/podman.sock",
                  "/run/dbus/system_bus_socket")


class SandboxError(RunnerError):
    """A run cannot be set up as configured (bubblewrap missing while required, a checkout that
    cannot be materialized); the message says what to do."""


# ------------------------------------------------------------------ probing and describing


@functools.cache
def probe(bwrap: str | None) -> str | None:
    """None when `bwrap` makes the namespaces a run gets (user, PID, network; a fresh /proc and /dev);
    else one line why not. Cached per process and per path: the answer does not change under us."""
    if bwrap is None:
        return f"bwrap not found ({INSTALL_HINT})"
    argv = [bwrap, "--ro-bind", "/", "/", "--unshare-user", "--cap-drop", "ALL", "--unshare-pid",
            "--unshare-net", "--die-with-parent", "--dev", "/dev", "--proc", "/proc", "true"]
    try:
        res = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL, process_group=HELPER_GROUP)
    except OSError as e:
        return f"cannot run {bwrap}: {e.strerror or e}"
    except subprocess.TimeoutExpired:
        return f"{bwrap} did not start a sandbox within {PROBE_TIMEOUT_S:g} s"
    if res.returncode == 0:
        return None
    said = res.stderr.decode(errors="replace").strip().splitlines()
    return (f"bwrap cannot create namespaces here ({said[-1] if said else f'exit {res.returncode}'}); "
            "user namespaces may be disabled (sysctl user.max_user_namespaces, or Ubuntu's "
            "kernel.apparmor_restrict_unprivileged_userns)")


@functools.cache
def version(bwrap: str) -> str:
    """`bubblewrap 0.8.0`, or just `bubblewrap` when it does not say."""
    try:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, process_group=HELPER_GROUP)
    except (OSError, subprocess.TimeoutExpired):
        return "bubblewrap"
    return out.stdout.strip() or "bubblewrap"


def resolve_mode(requested: str, problem: str | None) -> Mode:
    """The mode runs get for `[session] sandbox`: "auto" is bubblewrap when the probe passed, else a
    checkout; "bwrap" stays "bwrap" even when it cannot work (the executor then refuses to run)."""
    if requested == "off":
        return "off"
    if requested == "checkout":
        return "checkout"
    return "bwrap" if requested == "bwrap" or problem is None else "checkout"


def describe(mode: Mode, probe_result: str | None, network: bool, *, bwrap_version: str = "bubblewrap",
             requested: str = "auto") -> str:
    """One line for `status` and `init`: what a run can reach here."""
    net = "network on" if network else "network off"
    if mode == "off":
        return 'unsandboxed: sandbox = "off": runs execute in the workspace itself, as the controller\'s user'
    if mode == "bwrap":
        if probe_result is not None:
            return f'not runnable: sandbox = "bwrap", but {probe_result}'
        return f"sandboxed: {bwrap_version}, {net}, fixed files read-only"
    why = probe_result if probe_result is not None and requested != "checkout" else 'sandbox = "checkout"'
    return f"unsandboxed: {why}; runs use a fresh checkout and die with the controller"


# ------------------------------------------------------------------ the environment

# Passed through from the controller's environment when set, by exact name or by prefix
PASS_NAMES = frozenset({"LANG", "LANGUAGE", "TZ", "TERM", "USER", "LOGNAME", "HF_HOME", "HF_HUB_CACHE",
                        "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE"})
PASS_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "NCCL_", "HIP_", "ROCR_", "ROCM_", "OMP_", "MKL_", "OPENBLAS_",
                 "TORCH_", "PYTORCH_")
# The harness's own variables that a run must never inherit from the controller's environment: the
# channel is handed to the evaluation alone, the token and the fault hook belong to the controller
HARNESS_ONLY = frozenset({"AUTORESEARCH_RESULT_FILE", "AUTORESEARCH_RUN_TOKEN", "AUTORESEARCH_FAULT"})


def child_env(parent: Mapping[str, str], run_env: Mapping[str, str], *, extra: Sequence[str], home: str,
              path_dirs: Sequence[str], network: bool) -> dict[str, str]:
    """The run's whole environment (the allowlist; README "The sandbox").

    From `parent` (the controller's): locale, terminal, user name, the GPU and thread-count families,
    the Hugging Face cache paths, `AUTORESEARCH_*` a user set (AUTORESEARCH_DATASET) but not the
    harness's own, and the names in `extra` (`[session] env`). From `run_env`: every `AUTORESEARCH_*`
    the controller set for this run. Then PATH (`path_dirs` first: our interpreter), HOME = `home`,
    PYTHONUNBUFFERED and PYTHONDONTWRITEBYTECODE (no .pyc is written, so none can be planted for a
    later process to load), and without network HF_HUB_OFFLINE. A name `is_secret_name` calls a
    credential is dropped whoever asked for it."""
    wanted = set(extra)
    env = {k: v for k, v in parent.items()
           if k in PASS_NAMES or k.startswith(PASS_PREFIXES) or k in wanted
           or (k.startswith("AUTORESEARCH_") and k not in HARNESS_ONLY)}
    env.update({k: v for k, v in run_env.items() if k.startswith("AUTORESEARCH_")})
    dirs = [*path_dirs, *parent.get("PATH", os.defpath).split(os.pathsep)]
    env["PATH"] = os.pathsep.join(dict.fromkeys(d for d in dirs if d))
    env["HOME"] = home
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if not network:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return {k: v for k, v in env.items() if not is_secret_name(k)}


# ------------------------------------------------------------------ the bubblewrap command line


@dataclass(frozen=True)
class Spec:
    """What one sandboxed process sees. Paths are absolute host paths; a bind keeps its path inside
    unless `ro_at` maps it elsewhere."""

    argv: tuple[str, ...]  # the command, inside
    chdir: str  # its working directory (the checkout)
    hidden: tuple[str, ...] = ()  # empty tmpfs over each: the workspace, HOME, our run directories
    ro: tuple[str, ...] = ()  # bound back read-only: the interpreter, the data cache
    rw: tuple[str, ...] = ()  # read-write: the run's own directory (checkout, HOME), its checkpoint
    ro_at: tuple[tuple[str, str], ...] = ()  # (host path, path inside) read-only: `[session] inputs`
    rw_at: tuple[tuple[str, str], ...] = ()  # the same, read-write (the preparation's inputs)
    ro_files: tuple[str, ...] = ()  # fixed files inside the checkout, read-only over themselves
    masked: tuple[str, ...] = ()  # /dev/null over each (daemon sockets)
    devices: tuple[str, ...] = ()  # passed through as they are (GPUs)
    network: bool = False
    bwrap: str = "bwrap"


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _depth(path: str) -> int:
    return len(PurePosixPath(path).parts)


def bwrap_argv(spec: Spec) -> list[str]:
    """The full bubblewrap command line for `spec` (pure: no file is looked at).

    Order matters, as each mount covers what is under it: the system read-only with a fresh /dev and
    /proc, private /tmp and /dev/shm (torch's DataLoader workers share memory there), tmpfs over each
    hidden directory that is not already inside another (or inside /tmp), then every bind from the
    shallowest path to the deepest, so that a fixed file bound read-only inside the read-write
    checkout, or an input inside it, wins over the checkout. Then devices, then the namespaces."""
    args = [spec.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", "/tmp", "--tmpfs", "/dev/shm"]
    hidden = [h for h in dict.fromkeys(spec.hidden) if h not in _SYSTEM_DIRS]
    for h in hidden:
        covered = [o for o in (*hidden, *_PRIVATE) if o != h and _under(h, o)]
        if not covered:
            args += ["--tmpfs", h]
    binds: list[tuple[str, str, str]] = [("--ro-bind", p, p) for p in spec.ro]
    binds += [("--bind", p, p) for p in spec.rw]
    binds += [("--ro-bind", src, dest) for src, dest in spec.ro_at]
    binds += [("--bind", src, dest) for src, dest in spec.rw_at]
    binds += [("--ro-bind", f, f) for f in spec.ro_files]
    for op, src, dest in sorted(binds, key=lambda b: _depth(b[2])):  # stable: equal depths keep their order
        args += [op, src, dest]
    for sock in spec.masked:
        args += ["--ro-bind", os.devnull, sock]
    for dev in spec.devices:
        args += ["--dev-bind", dev, dev]
    args += ["--unshare-user", "--cap-drop", "ALL", "--unshare-pid", "--unshare-ipc"]
    if not spec.network:
        args.append("--unshare-net")
    args += ["--die-with-parent", "--new-session", "--chdir", spec.chdir, "--", *spec.argv]
    return args


def gpu_devices() -> tuple[str, ...]:
    """The GPU device nodes of this machine: NVIDIA's (/dev/nvidia0, nvidiactl, nvidia-uvm, the
    nvidia-caps directory), the DRM render nodes and AMD's KFD."""
    found = sorted(str(p) for p in Path("/dev").glob("nvidia*"))
    found += [d for d in ("/dev/dri", "/dev/kfd") if os.path.exists(d)]
    return tuple(found)


def masked_sockets() -> tuple[str, ...]:
    return tuple(s for s in DAEMON_SOCKETS if os.path.exists(s))


# ------------------------------------------------------------------ fresh checkouts


def _safe_relpath(raw: bytes) -> str:
    path = raw.decode("utf-8", errors="surrogateescape")
    parts = path.split("/")
    if any(p in ("", ".", "..") or p.lower() == ".git" for p in parts):
        raise SandboxError(f"the commit's tree holds a path no checkout may have: {path!r}")
    return path


def materialize(ws: Workspace, commit: str, dest: Path) -> None:
    """Write the tree of `commit` into the empty or missing directory `dest`: the exact committed
    bytes, the executable bit, symlinks that stay inside `dest`.

    It reads git's objects only (`ls-tree` then one `cat-file --batch`), never the workspace's index,
    work tree or attributes (no smudge filter, no export-ignore), with hooks and fsmonitor off.
    Measured against `git archive | tarfile` and `checkout-index` with a temporary index (53 files,
    1.4 MB, median of 20): 9.6 ms, 10.5 ms and 12.2 ms. A submodule (gitlink) is refused: its files
    are not in this repository. A symlink that leads outside `dest` is refused, checked with the real
    path once all of them exist (a lexical check misses a link through another link)."""
    git = ["git", *GIT_SAFE, "-C", str(ws.root)]
    listing = subprocess.run([*git, "ls-tree", "-r", "-z", "--full-tree", commit], capture_output=True, process_group=HELPER_GROUP)
    if listing.returncode != 0:
        raise SandboxError(f"cannot list commit {commit}: {listing.stderr.decode(errors='replace').strip()}")
    entries: list[tuple[str, str, str]] = []  # (mode, object, path)
    for record in listing.stdout.split(b"\0"):
        if not record:
            continue
        meta, _, raw_path = record.partition(b"\t")
        mode, _kind, sha = meta.decode().split()
        path = _safe_relpath(raw_path)
        if mode == "160000":
            raise SandboxError(f"{path} is a git submodule; runs check out one repository only: make its files "
                               "part of the workspace, or name the directory in [session] inputs")
        entries.append((mode, sha, path))
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    links: list[tuple[Path, bytes]] = []
    with subprocess.Popen([*git, "cat-file", "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, process_group=HELPER_GROUP) as cat:
        assert cat.stdin is not None and cat.stdout is not None
        # one request per line, written all at once: the answers are read in the same order below
        cat.stdin.write(b"".join(sha.encode() + b"\n" for _, sha, _ in entries))
        cat.stdin.close()
        for mode, sha, path in entries:
            header = cat.stdout.readline().split()
            if len(header) != 3 or header[0].decode() != sha:
                raise SandboxError(f"git cat-file did not give object {sha} ({path}): {b' '.join(header)!r}")
            size = int(header[2])
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if mode == "120000":
                links.append((target, cat.stdout.read(size)))
            else:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o755 if mode == "100755" else 0o644)
                with os.fdopen(fd, "wb") as f:
                    left = size
                    while left:
                        chunk = cat.stdout.read(min(left, 1 << 20))
                        if not chunk:
                            raise SandboxError(f"git cat-file ended early in {path}")
                        f.write(chunk)
                        left -= len(chunk)
            cat.stdout.read(1)  # the newline after each object
    if cat.returncode != 0:
        raise SandboxError(f"git cat-file failed (exit {cat.returncode}) while checking out {commit}")
    # symlinks last, so that no file above was written through one
    for link, target_bytes in links:
        os.symlink(target_bytes, link)
    for link, target_bytes in links:
        real = os.path.realpath(link)
        if not _under(real, str(root)):
            raise SandboxError(f"{link.relative_to(root)} is a symlink to {target_bytes.decode(errors='replace')}, "
                               "outside the checkout: a run sees only its own files (and [session] inputs)")


def file_digests(root: Path, paths: Sequence[str]) -> dict[str, str | None]:
    """sha256 of each regular file `paths` names under `root` (None: missing, or not a plain file)."""
    out: dict[str, str | None] = {}
    for rel in paths:
        p = root / rel
        try:
            st = p.lstat()
        except FileNotFoundError:
            out[rel] = None
            continue
        if not stat.S_ISREG(st.st_mode):
            out[rel] = None
            continue
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out[rel] = h.hexdigest()
    return out


# ------------------------------------------------------------------ run directories


def runs_base() -> Path:
    """`$TMPDIR/autoresearch-<uid>`: every workspace's run directories of this user."""
    return Path(tempfile.gettempdir()) / f"autoresearch-{os.getuid()}"


def _private_dir(path: Path) -> None:
    """Create `path` (0700) or accept it if it is already a real directory of ours, 0700; in a shared
    /tmp another user could have made it first, or planted a symlink there."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise SandboxError(f"{path} exists but is not a directory of ours; remove it, or set TMPDIR elsewhere")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def run_root(ws: Workspace) -> Path:
    """`$TMPDIR/autoresearch-<uid>/<sha256 of the workspace path, 12 hex>/`, 0700: one subdirectory
    per run key, outside the workspace, so nothing a run writes there lands in it. Beside it,
    `<sha>.workspace` names the workspace, for `sweep_run_roots`."""
    base = runs_base()
    _private_dir(base)
    root = base / hashlib.sha256(str(ws.root).encode()).hexdigest()[:12]
    _private_dir(root)
    marker = root.with_name(root.name + ".workspace")
    if not marker.is_file():
        marker.write_text(str(ws.root), encoding="utf-8")
    return root


def sweep_run_roots() -> list[Path]:
    """Remove the run directories of workspaces that no longer exist (a deleted session's last
    checkout would otherwise stay in $TMPDIR for good); returns the workspaces they belonged to."""
    gone = []
    base = runs_base()
    for marker in base.glob("*.workspace") if base.is_dir() else ():
        try:
            workspace = Path(marker.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
        if workspace.exists():
            continue
        root = marker.with_suffix("")
        clear_dir(root)
        with contextlib.suppress(FileNotFoundError):
            root.rmdir()
        marker.unlink(missing_ok=True)
        gone.append(workspace)
    return gone


def clear_dir(path: Path) -> None:
    """Remove everything inside `path` (a run may have left read-only directories behind)."""
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, onerror=_force_remove)
        else:
            child.unlink(missing_ok=True)


def _force_remove(func: object, path: str, _exc: object) -> None:
    os.chmod(os.path.dirname(path), 0o700)
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, 0o700)
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.unlink(path)


# ------------------------------------------------------------------ without bubblewrap: a subreaper

# Run as `python -I -S -c REAPER CONTROLLER_PID LC_CTYPE ARGV...` (exec'd by the runner's
# parent-death helper). It makes itself the run's child subreaper, so every process of the run that
# loses its parent is re-parented to it, setsid() or not; it switches the parent-death signal the
# helper set from SIGKILL to SIGTERM, which it can wait for; it runs ARGV and waits (SIGCHLD and
# SIGTERM blocked and taken with sigtimedwait: a handler that raises can lose a reaped status). When ARGV ends,
# or the controller dies, it SIGKILLs every process below it until none is left (saying how many
# in the log when ARGV had ended), then exits as ARGV did. The runner's own SIGTERM at a timeout is left to the runner, which signals each process.
# LC_CTYPE: as the runner's helper, since Python's locale coercion would change the run's.
REAPER = """\
import ctypes, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
controller, me = int(sys.argv[1]), os.getpid()
wake = {signal.SIGCHLD, signal.SIGTERM}
signal.pthread_sigmask(signal.SIG_BLOCK, wake)  # taken by sigtimedwait below: no handler races waitpid
if libc.prctl(36, 1, 0, 0, 0) != 0 or libc.prctl(1, signal.SIGTERM, 0, 0, 0) != 0:
    print("[sandbox] prctl:", os.strerror(ctypes.get_errno()), file=sys.stderr)
    os._exit(126)
if sys.argv[2] == "-":
    os.environ.pop("LC_CTYPE", None)
else:
    os.environ["LC_CTYPE"] = sys.argv[2][1:]
def below():
    parents, live = {}, set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/" + name + "/stat", "rb") as f:
                    text = f.read()
            except OSError:
                continue
            fields = text[text.rindex(b")") + 2:].split()
            parents[int(name)] = int(fields[1])
            if fields[0] not in b"ZXx":
                live.add(int(name))
    found, frontier = set(), [me]
    while frontier:
        p = frontier.pop()
        for q, pp in parents.items():
            if pp == p and q not in found:
                found.add(q)
                frontier.append(q)
    return found, found & live
def reap():
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
def kill_all():
    deadline, killed = time.monotonic() + 5.0, set()
    while time.monotonic() < deadline:
        reap()
        procs, live = below()
        if not procs:  # zombies count until reaped: one that just forked may have a child not listed yet
            break
        for p in live:
            try:
                os.kill(p, signal.SIGKILL)
                killed.add(p)
            except OSError:
                pass
        time.sleep(0.01)
    return len(killed)
status = None
if os.getppid() == controller:
    child = os.fork()
    if child == 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        try:
            os.execvp(sys.argv[3], sys.argv[3:])
        except OSError as e:
            print(sys.argv[3] + ":", e.strerror, file=sys.stderr)
            os._exit(127)
    while status is None:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == child:
            status = st
        elif pid == 0:
            if os.getppid() != controller:
                break  # the controller is gone (its death sent SIGTERM): nobody else will clean up
            signal.sigtimedwait(wake, 1.0)  # a child changed, or a SIGTERM: the runner signals each process itself
n = kill_all()
if status is None:
    os._exit(137)
if n:
    print("[sandbox] killed %d leftover process%s after the command exited" % (n, "" if n == 1 else "es"),
          file=sys.stderr, flush=True)
if os.WIFSIGNALED(status):
    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    os.kill(me, os.WTERMSIG(status))
os._exit(os.waitstatus_to_exitcode(status))
"""


def reaper_argv(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """`argv` under the subreaper (Linux; elsewhere `argv` itself); `env` is the run's environment."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    lc_ctype = "-" if "LC_CTYPE" not in env else "=" + env["LC_CTYPE"]
    return [sys.executable, "-I", "-S", "-c", REAPER, str(os.getpid()), lc_ctype, *argv]

