"""Switching from the seed plugin (proyecto26/autoresearch-ai-plugin): its documented invocations of
parse-metrics.sh and log-experiment.sh, run against our scripts in skills/autoresearch/scripts/ (where
its `${CLAUDE_SKILL_DIR}/scripts/...` paths point), with and without our package installed; and the
Claude Code plugin's commands (their names, and experiments run in the background). Issue 13, items
11, 12, 15 and 20. Real bash, real python3, real git. About 15 s.

The invocations are the seed's own, from its skills/autoresearch/SKILL.md and the header of its
scripts/log-experiment.sh (the `--config` setup call, the full result call, `--file`).

Run: /work/main/.venv/bin/python -m pytest tests/test_seed_compat.py -q
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import ledger
from harness.cli import main
from harness.metrics import parse_metrics
from tests.toy import make_toy

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "skills" / "autoresearch" / "scripts"
VENV_BIN = Path(sys.executable).parent

# The seed's SKILL.md, "Config Header" and "Experiment Results", as log-experiment.sh calls.
SEED_CONFIG = ["--config", "--name", "Optimize unit test runtime", "--metric-name", "total_ms", "--metric-unit", "ms",
               "--direction", "lower"]
SEED_RESULT = ["--run", "5", "--commit", "abc1234", "--metric", "4230", "--status", "keep", "--description",
               "parallelized test suites", "--metrics", '{"compile_ms":1200,"memory_mb":512}', "--segment", "0",
               "--confidence", "2.3", "--asi", '{"hypothesis":"parallel tests reduce wall time"}']


def sh(script: Path, *args: str, cwd: Path, stdin: str = "", env: dict[str, str] | None = None,
       ) -> subprocess.CompletedProcess[str]:
    base = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(cwd)}
    if "PYTHONPATH" in os.environ:  # a harness checkout other than the installed one (python3 -I ignores it)
        base["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run(["bash", str(script), *args], cwd=cwd, input=stdin, capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=60)


def parse(text: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return sh(SCRIPTS / "parse-metrics.sh", *args, cwd=cwd, stdin=text)


def state_of(path: Path) -> ledger.LedgerState:
    return ledger.load_state(path)


def git_repo(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for cmd in (["init", "-q"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty",
                                  "-m", "init"]):
        subprocess.run(["git", *cmd], cwd=root, check=True, capture_output=True)
    return root


# --------------------------------------------------------------------------- parse-metrics.sh (11, 20)


def test_parse_metrics_reads_the_seeds_examples_and_annotated_lines(tmp_path: Path) -> None:
    out = "METRIC total_ms=4230        # primary\nMETRIC compile_ms=1200      # secondary — helps\n" \
          "METRIC memory_mb=512\nMETRIC cache_hit_rate=0.85  # secondary\nnoise\n"
    res = parse(out, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["total_ms=4230", "compile_ms=1200", "memory_mb=512", "cache_hit_rate=0.85"]
    assert parse(out, "total_ms", cwd=tmp_path).stdout == "4230\n"


def test_parse_metrics_absent_name_exits_0_silently_for_set_e_callers(tmp_path: Path) -> None:
    res = parse("METRIC other=1\n", "val_bpb", cwd=tmp_path)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    # the seed's own pattern: a strict-mode caller that goes on to print a fallback
    caller = tmp_path / "caller.sh"
    caller.write_text(f'set -euo pipefail\nv=$(printf "x\\n" | bash {SCRIPTS / "parse-metrics.sh"} val_bpb)\n'
                      'echo "got:${v:-none}"\n')
    res = subprocess.run(["bash", str(caller)], capture_output=True, text=True, timeout=30)
    assert (res.returncode, res.stdout) == (0, "got:none\n")


def test_parse_metrics_never_prints_what_the_harness_rejects(tmp_path: Path) -> None:
    out = "\n".join(["METRIC __proto__=1", "METRIC constructor=2", "METRIC prototype=3", "METRIC big=1e999",
                     "METRIC huge=1e15", "METRIC nan=nan", "METRIC inf=inf", "METRIC under=1_000",
                     "METRIC glued=1.5abc", "METRIC spaced=1.5 abc", "METRIC ok=0.5", ""])
    assert parse(out, cwd=tmp_path).stdout == "ok=0.5\n"
    assert parse(out, "big", cwd=tmp_path).stdout == ""


def test_parse_metrics_reads_karpathys_summary_block(tmp_path: Path) -> None:
    """Item 20: `key:  value` lines after the last `---` line, as train.py prints them; METRIC lines win."""
    log = ("step 00950 (99.8%) | loss: 3.012345 | dt: 312ms\nval_bpb: 9.9\n---\nval_bpb:          0.997900\n"
           "training_seconds: 300.1\nWARNING something: odd\npeak_vram_mb:     45060.2\nnum_steps:        953\n")
    res = parse(log, cwd=tmp_path)
    assert res.stdout.splitlines() == ["val_bpb=0.997900", "training_seconds=300.1", "peak_vram_mb=45060.2",
                                       "num_steps=953"]
    assert parse(log, "val_bpb", cwd=tmp_path).stdout == "0.997900\n"
    assert parse(log + "METRIC val_bpb=0.5\n", "val_bpb", cwd=tmp_path).stdout == "0.5\n"


# A corpus the bash script and harness/metrics.py must read alike: names (pi's set), values near the
# limits, whitespace, \r line ends, duplicates, blocks.
CORPUS = [
    "METRIC total_µs=15200\nMETRIC compile.ms=4200\nMETRIC 1abc=3\nMETRIC a-b=1\nMETRIC =1\nMETRIC μs=2\n"
    "METRIC total_ms=4230   # primary\nMETRIC glued=1#x\nMETRIC after=2 # a # b\n",
    "METRIC x=999999999999999.9\nMETRIC y=999999999999999.9375\nMETRIC z=999999999999999.93749\n"
    "METRIC w=-99999999999999.99999\nMETRIC v=0.000001e20\nMETRIC u=1e-99999999\nMETRIC t=00000.5e+0014\n"
    "METRIC s=+.5\nMETRIC r=5.\nMETRIC q=0e999999999\nMETRIC p=1e0000000000000000000014\n",
    "  METRIC lead=1  \n\tMETRIC tab=2\nMETRIC loss=3.0\nMETRIC loss=2.0\nMETRIC loss=nan\nprogress\rMETRIC cr=4\r\n",
    "---\nval_bpb: 1.0\n---\nval_bpb: 0.9\ndepth: 8\nMETRIC depth=9\nbad key: 1\nx:1\n",
]


@pytest.mark.parametrize("text", CORPUS)
def test_parse_metrics_agrees_with_the_harness(tmp_path: Path, text: str) -> None:
    res = parse(text, cwd=tmp_path)
    got = {k: float(v) for k, v in (line.split("=", 1) for line in res.stdout.splitlines())}
    assert list(got.items()) == list(parse_metrics(text).items())


# Constructs bash 3.2 (macOS's /bin/bash) does not have; each one as a regex over the script's code.
BASH4 = {
    "associative arrays": r"\b(declare|local|typeset)\s+-[a-zA-Z]*A",
    "namerefs": r"\b(declare|local|typeset)\s+-[a-zA-Z]*n\b",
    "mapfile/readarray": r"\b(mapfile|readarray)\b",
    "case modification": r"\$\{[^}]*(,,|\^\^|,\}|\^\})",
    "${x@op}": r"\$\{[^}]*@[QEPAaUuLK]\}",
    "negative array index": r"\$\{[A-Za-z_]+\[-[0-9]+\]\}",
    "case fall-through": r";;&|;&",
    "|& and &>>": r"\|&|&>>",
    "coproc": r"\bcoproc\b",
    "[[ -v ]] / test -v": r"(\[\[|\btest)\s+-v\b",
    "read -N/-i": r"\bread\b[^\n|]*\s-[a-zA-Z]*[Ni]\b",
    "wait -n": r"\bwait\s+-n\b",
    "globstar": r"globstar",
    "EPOCHSECONDS": r"EPOCH(SECONDS|REALTIME)",
}


def test_the_scripts_use_nothing_bash_3_2_lacks() -> None:
    for script in [*SCRIPTS.glob("*.sh"), REPO / "scripts" / "parse-metrics.sh", REPO / "scripts" / "log-experiment.sh"]:
        code = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
        found = {what: m.group(0) for what, rx in BASH4.items() if (m := re.search(rx, code))}
        assert not found, f"{script.name}: {found}"
        res = subprocess.run(["bash", "--posix", "-n", str(script)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    # the checker catches what the old script used
    assert re.search(BASH4["associative arrays"], "declare -A value=()")


# ------------------------------------------------------------------------ log-experiment.sh (11)


def test_seed_setup_and_result_calls_write_the_ledger_the_harness_reads(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "ws")
    res = sh(SCRIPTS / "log-experiment.sh", *SEED_CONFIG, cwd=root)
    assert res.returncode == 0, res.stderr
    for run, metric in (("1", "5000"), ("2", "4700")):
        res = sh(SCRIPTS / "log-experiment.sh", "--run", run, "--commit", "abc1234", "--metric", metric,
                 "--status", "keep", "--description", f"run {run}", cwd=root)
        assert res.returncode == 0, res.stderr
    res = sh(SCRIPTS / "log-experiment.sh", *SEED_RESULT, cwd=root)
    assert res.returncode == 0, res.stderr
    st = state_of(root / "autoresearch.jsonl")
    assert st.chain.ok and not st.bad_lines
    h = st.current.header
    assert (h.name, h.metric_name, h.metric_unit, h.direction) == ("Optimize unit test runtime", "total_ms", "ms", "lower")
    r = st.runs[-1]
    assert (r.run, r.commit, r.metric, r.status, r.segment, r.confidence) == (5, "abc1234", 4230.0, "keep", 0, 2.3)
    assert r.metrics == {"compile_ms": 1200.0, "memory_mb": 512.0} and r.asi == {"hypothesis": "parallel tests reduce wall time"}


def test_empty_optional_values_are_omitted_and_file_is_honoured(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "ws")
    assert sh(SCRIPTS / "log-experiment.sh", *SEED_CONFIG, "--file", "custom.jsonl", cwd=root).returncode == 0
    res = sh(SCRIPTS / "log-experiment.sh", "--metric", "4230", "--status", "keep", "--description", "baseline",
             "--asi", "", "--metrics", "", "--confidence", "", "--segment", "", "--run", "", "--commit", "",
             "--file", "custom.jsonl", cwd=root)
    assert res.returncode == 0, res.stderr
    assert not (root / "autoresearch.jsonl").exists()
    st = state_of(root / "custom.jsonl")
    (r,) = st.runs
    head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=root, capture_output=True, text=True).stdout
    assert (r.run, r.commit, r.metrics, r.asi, r.confidence, r.segment) == (1, head.strip(), {}, {}, None, 0)
    assert st.current.header.metric_name == "total_ms" and st.chain.ok


def test_bad_values_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    """The seed's script writes these lines as JSON nobody can parse; ours refuses them, exit 2."""
    root = git_repo(tmp_path / "ws")
    for bad in (["--metric", "abc"], ["--metric", "1e999"], ["--metric", "nan"], ["--asi", "{bad"],
                ["--metrics", "[1]"], ["--run", "x"]):
        args = {"--metric": "1", "--status": "keep", "--description": "d"}
        args.update(dict(zip(bad[::2], bad[1::2], strict=True)))
        res = sh(SCRIPTS / "log-experiment.sh", *[x for kv in args.items() for x in kv], cwd=root)
        assert res.returncode == 2 and "error:" in res.stderr.strip().splitlines()[-1], (bad, res.stderr)
    res = sh(SCRIPTS / "log-experiment.sh", "--config", "--name", "n", "--metric-name", "a-b", "--direction",
             "lower", cwd=root)
    assert res.returncode == 2 and "METRIC line cannot carry it" in res.stderr
    assert not (root / "autoresearch.jsonl").exists() or state_of(root / "autoresearch.jsonl").runs == ()


# --------------------------------------------------------------------- drop-in without the package (12)


def bare_python(tmp_path: Path) -> Path:
    """A bin directory whose python3 cannot import harness or orjson: the system's, isolated."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    system = shutil.which("python3", path="/usr/bin:/bin")
    interp = system if system and subprocess.run([system, "-I", "-c", "import orjson"], capture_output=True).returncode \
        else sys.executable
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {interp} -I -S "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    probe = subprocess.run([str(bin_dir / "python3"), "-c", "import harness"], capture_output=True)
    assert probe.returncode != 0, "the bare python3 must not see the harness"
    return bin_dir


def drop_in(tmp_path: Path) -> Path:
    """The scripts copied alone into a skill directory, as the seed's install copies its skill."""
    skill = tmp_path / "skill" / "scripts"
    skill.mkdir(parents=True)
    for f in SCRIPTS.iterdir():
        if f.is_file():
            shutil.copy2(f, skill / f.name)
    return skill


SEQUENCE = [
    SEED_CONFIG,
    ["--metric", "5000", "--status", "keep", "--description", "baseline", "--asi", "", "--metrics", ""],
    ["--metric", "5100", "--status", "discard", "--description", "worse", "--confidence", "",
     "--asi", '{"hypothesis":"h","rollback_reason":"slower","note":null}'],
    ["--metric", "4700", "--status", "keep", "--description", "better", "--metrics", '{"compile_ms":1200}'],
    ["--metric", "0", "--status", "crash", "--description", "oom"],
    ["--metric", "4600", "--status", "keep", "--description", "best"],
    ["--config", "--name", "phase 2", "--metric-name", "total_µs", "--metric-unit", "µs", "--direction", "higher"],
    ["--metric", "10", "--status", "keep", "--description", "new baseline"],
    ["--run", "20", "--commit", "abc1234", "--metric", "12", "--status", "checks_failed", "--description", "tests"],
    ["--metric", "13.5", "--status", "keep", "--description", "after a gap"],
]


def fields(st: ledger.LedgerState) -> list[tuple[object, ...]]:
    return [(r.run, r.metric, r.status, r.description, r.segment, r.confidence, r.metrics, r.asi) for r in st.runs]


def test_drop_in_scripts_work_with_only_python3_and_write_what_the_harness_writes(tmp_path: Path) -> None:
    skill, bin_dir = drop_in(tmp_path), bare_python(tmp_path)
    bare, ours = git_repo(tmp_path / "bare"), git_repo(tmp_path / "ours")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}  # no `autoresearch`, no harness, no orjson
    for args in SEQUENCE:
        res = sh(skill / "log-experiment.sh", *args, cwd=bare, env=env)
        assert res.returncode == 0, (args, res.stderr)
        assert main(["-C", str(ours), "log-experiment", *args]) == 0, args  # the harness's writer, in process
    a, b = state_of(bare / "autoresearch.jsonl"), state_of(ours / "autoresearch.jsonl")
    assert a.chain.ok and a.chain.chained == a.chain.lines == len(SEQUENCE) and not a.bad_lines
    assert fields(a) == fields(b)
    assert [s.header for s in a.segments] == [s.header for s in b.segments]
    assert [r.run for r in a.runs] == [1, 2, 3, 4, 5, 6, 20, 21]
    assert a.runs[4].confidence is not None  # the MAD rule ran
    # parse-metrics.sh needs no python at all
    out = sh(skill / "parse-metrics.sh", "total_µs", cwd=bare, stdin="METRIC total_µs=15200\n", env=env)
    assert out.stdout == "15200\n"
    # and a used run number is refused by both writers alike
    for script, cwd, e in ((skill / "log-experiment.sh", bare, env), (SCRIPTS / "log-experiment.sh", ours, None)):
        res = sh(script, "--run", "3", "--metric", "1", "--status", "keep", "--description", "x", cwd=cwd, env=e)
        assert res.returncode == 2 and "run 3 is taken" in res.stderr


def test_drop_in_without_python3_says_what_to_install(tmp_path: Path) -> None:
    skill = drop_in(tmp_path)
    bin_dir = tmp_path / "nopy"
    bin_dir.mkdir()
    for tool in ("dirname",):
        os.symlink(shutil.which(tool) or f"/usr/bin/{tool}", bin_dir / tool)
    res = subprocess.run([shutil.which("bash") or "/bin/bash", str(skill / "log-experiment.sh"), "--metric", "1",
                          "--status", "keep", "--description", "x"], cwd=git_repo(tmp_path / "ws"),
                         capture_output=True, text=True, env={"PATH": str(bin_dir)}, timeout=30)
    assert res.returncode == 127 and "needs python3" in res.stderr and "pip install" in res.stderr


# ---------------------------------------------------------------------- the Claude Code plugin (15)


def test_plugin_commands_are_named_as_claude_code_registers_them() -> None:
    """Claude Code calls a plugin's command /<plugin>:<file stem>; the plugin is `autoresearch`."""
    import json

    assert json.loads((REPO / ".claude-plugin" / "plugin.json").read_text())["name"] == "autoresearch"
    assert sorted(p.stem for p in (REPO / "commands").glob("*.md")) == ["start", "status", "stop"]
    docs = [REPO / "README.md", REPO / "program.md", *(REPO / "skills").rglob("*.md"), *(REPO / "commands").glob("*.md"),
            *(REPO / "session").glob("*")]
    stale = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in docs if p.is_file()
             for m in re.finditer(r"(?<![\w:])/autoresearch-(start|status|stop)\b", p.read_text())]
    assert not stale, stale
    named = {m for p in docs if p.is_file() for m in re.findall(r"/autoresearch:(\w+)", p.read_text())}
    assert named and named <= {"start", "status", "stop"}


def test_plugin_runs_experiments_in_the_background_and_says_why() -> None:
    for p in (REPO / "commands" / "start.md", REPO / "skills" / "autoresearch" / "SKILL.md"):
        text = p.read_text()
        assert "run_in_background: true" in text and "timeout: 600000" in text, p
        assert "2-minute" in text and "crash" in text, p  # why: the default timeout kills it, logged as a crash


def test_the_background_recipe_runs_one_experiment_to_its_result(tmp_path: Path) -> None:
    """The commands' recipe on a real workspace: started in the background with its output in
    .autoresearch/experiment.out (no new file for the harness's checks to refuse), polled with short calls."""
    root = make_toy(tmp_path / "ws")
    out = root / ".autoresearch" / "experiment.out"
    (recipe,) = [ln.strip() for ln in (REPO / "commands" / "start.md").read_text().splitlines()
                 if "autoresearch experiment" in ln and "experiment.out" in ln]
    cmd = recipe.replace('"<what changed>"', "baseline").replace("'{...}'", "'{}'")
    assert not (root / ".autoresearch").exists()  # a fresh workspace: the recipe must make the directory
    proc = subprocess.Popen(["bash", "-c", cmd], cwd=root, start_new_session=True,
                            env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"})
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # a poll: short, whatever the experiment's length
    assert proc.wait(timeout=5) == 0, out.read_text()
    (r,) = state_of(root / "autoresearch.jsonl").runs
    assert r.status == "keep" and r.description == "baseline", out.read_text()
