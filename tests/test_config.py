"""Tests for harness/config.py: autoresearch.toml round trips and every validation error,
on real files in tmp_path (milliseconds).

Run: /work/main/.venv/bin/python -m pytest tests/test_config.py -q
"""

from __future__ import annotations

import math
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.config import (
    CONFIG_NAME,
    Config,
    ConfigError,
    Guard,
    MetricSpec,
    dumps,
    load,
    loads,
    save,
    with_overrides,
)

MINIMAL = '[session]\nname = "speedrun"\ncommand = "bash autoresearch.sh"\n'


def full_config() -> Config:
    return Config(
        name='nanochat "speedrun"\twith tabs\\and slashes',
        command="uv run train.py > run.log 2>&1",
        metric=MetricSpec(name="val_bpb", unit="bpb", direction="lower"),
        editable=("train.py", "model/gpt.py"),
        fixed=("prepare.py",),
        fixed_hashes={"prepare.py": "ab" * 32, "data/shard 1.bin": "cd" * 32},
        target="pretrain",
        time_budget_s=300.0,
        timeout_s=None,
        checks_command="bash autoresearch.checks.sh",
        agent="claude",
        model="claude-sonnet",
        seed=7,
        tolerance=0.0005,
        guards=(
            Guard(metric="peak_vram_mb", max_worse_pct=20.0, unless_gain=0.002),
            Guard(metric="mfu_percent", max_worse_pct=10.0, direction="higher"),  # unless_gain inf
        ),
        revert="reset",
        max_failure_streak=15,
        branch="autoresearch/mar5",
    )


def test_dumps_loads_round_trip():
    cfg = full_config()
    text = dumps(cfg)
    assert "\ntimeout_s" not in text and "\nprepare_command" not in text  # None is omitted
    assert "unless_gain = inf" in text
    tomllib.loads(text)  # valid TOML on its own
    back = loads(text)
    assert back == cfg
    assert back.guards[1].unless_gain == math.inf
    assert back.timeout_s is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30).filter(lambda s: s.strip()), st.text(max_size=30))
def test_any_strings_round_trip(command, name):
    # control characters, quotes, backslashes, DEL: what dumps writes, loads reads back
    cfg = Config(name=name, command=command, fixed_hashes={name: command})
    assert loads(dumps(cfg)) == cfg


def test_round_trip_with_timeout_and_defaults():
    cfg = Config(name="x", command="python train.py", timeout_s=42.5, tolerance=1e-05)
    assert loads(dumps(cfg)) == cfg


def test_save_and_load_real_file(tmp_path):
    cfg = full_config()
    save(tmp_path, cfg)
    assert (tmp_path / CONFIG_NAME).exists()
    assert not (tmp_path / (CONFIG_NAME + ".tmp")).exists()
    assert load(tmp_path) == cfg


def test_minimal_file_takes_defaults():
    cfg = loads(MINIMAL)
    assert cfg.metric == MetricSpec()
    assert cfg.editable == ("train.py",)
    assert cfg.guards == () and cfg.fixed_hashes == {}


def test_load_without_file_says_how_to_create_one(tmp_path):
    with pytest.raises(ConfigError, match="autoresearch init"):
        load(tmp_path)


def errors(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        loads(text)
    return str(info.value)


def test_unknown_keys():
    assert "unknown key(s) comand" in errors(MINIMAL + 'comand = "x"\n')
    assert "[metric]: unknown key(s) goal" in errors(MINIMAL + '[metric]\ngoal = "min"\n')
    assert "[[guards]]: unknown key(s) max_worse" in errors(
        MINIMAL + '[[guards]]\nmetric = "m"\nmax_worse = 3\n'
    )


def test_unknown_or_misshapen_tables():
    # a misspelt table must not silently fall back to the defaults (val_bpb, lower)
    assert "unknown table(s) or key(s) outside [session]: metrics" in errors(
        MINIMAL + '[metrics]\ndirection = "higher"\n'
    )
    assert "outside [session]: editable" in errors("editable = []\n" + MINIMAL)
    assert "[[guards]]" in errors(MINIMAL + '[guards]\nmetric = "m"\nmax_worse_pct = 2\n')
    assert "[[guards]]" in errors(MINIMAL.replace("[session]", "guards = [1]\n[session]"))
    assert "[metric]" in errors('metric = "val_bpb"\n' + MINIMAL)


def test_missing_required_keys():
    assert "name" in errors('[session]\ncommand = "x"\n')
    assert "max_worse_pct" in errors(MINIMAL + '[[guards]]\nmetric = "m"\n')


def test_invalid_direction():
    msg = errors(MINIMAL + '[metric]\ndirection = "down"\n')
    assert "metric.direction must be lower or higher, not 'down'" in msg


def test_empty_editable_and_command():
    assert "editable lists no files" in errors(MINIMAL + "editable = []\n")
    assert "command is empty" in errors('[session]\nname = "x"\ncommand = "  "\n')


def test_overlapping_editable_and_fixed():
    msg = errors(MINIMAL + 'editable = ["train.py", "prepare.py"]\nfixed = ["prepare.py"]\n')
    assert "both editable and fixed: ['prepare.py']" in msg


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.py", "sub/../../x.py"])
def test_paths_must_stay_inside_the_workspace(path):
    assert "paths must be relative" in errors(MINIMAL + f'editable = ["{path}"]\n')
    assert "paths must be relative" in errors(MINIMAL + f'fixed = ["{path}"]\n')


def test_other_invalid_values_are_all_reported():
    msg = errors(
        MINIMAL
        + 'time_budget_s = 0\ntolerance = -1\nrevert = "undo"\nagent = "gpt"\nmax_failure_streak = 0\n'
    )
    for part in (
        "time_budget_s must be > 0",
        "tolerance must be >= 0",
        "revert must be revert or reset",
        "agent must be",
        "max_failure_streak must be >= 1",
    ):
        assert part in msg


def test_bad_toml():
    msg = errors('[session\nname = "x"\n')
    assert msg.startswith(f"{CONFIG_NAME}: not valid TOML")


@pytest.mark.parametrize(
    "line, field",
    [
        ('time_budget_s = "300"', "time_budget_s"),
        ('timeout_s = "600"', "timeout_s"),
        ('tolerance = "0.1"', "tolerance"),
        ("command = 5", "command"),
        ('editable = "train.py"', "editable"),  # a string, not a list of files
        ("editable = [1, 2]", "editable"),
        ('max_failure_streak = "20"', "max_failure_streak"),
        ("seed = 1.5", "seed"),
        ("time_budget_s = true", "time_budget_s"),
    ],
)
def test_wrong_types_are_config_errors(line, field):
    text = MINIMAL.replace('command = "bash autoresearch.sh"\n', "") if field == "command" else MINIMAL
    msg = errors(text + line + "\n")
    assert field in msg


def test_wrong_types_in_metric_and_guards():
    assert "metric.name" in errors(MINIMAL + "[metric]\nname = 3\n")
    assert "max_worse_pct" in errors(MINIMAL + '[[guards]]\nmetric = "m"\nmax_worse_pct = "20%"\n')
    assert "direction" in errors(MINIMAL + '[[guards]]\nmetric = "m"\nmax_worse_pct = 2\ndirection = "up"\n')


def test_error_names_the_file(tmp_path):
    (tmp_path / CONFIG_NAME).write_text(MINIMAL + "editable = []\n")
    with pytest.raises(ConfigError, match=str(tmp_path / CONFIG_NAME)):
        load(tmp_path)


def test_effective_timeout():
    assert Config(name="x", command="c").effective_timeout_s == 600  # 300 -> max(600, 600)
    assert Config(name="x", command="c", time_budget_s=10).effective_timeout_s == 310
    assert Config(name="x", command="c", time_budget_s=1000).effective_timeout_s == 2000
    assert Config(name="x", command="c", time_budget_s=10, timeout_s=15).effective_timeout_s == 15


def test_with_overrides_ignores_none():
    cfg = full_config()
    out = with_overrides(cfg, time_budget_s=60.0, model=None, seed=None, agent="mutate")
    assert out.time_budget_s == 60.0 and out.agent == "mutate"
    assert out.model == "claude-sonnet" and out.seed == 7
    assert with_overrides(cfg, timeout_s=None) == cfg


def test_a_token_budget_needs_its_count_and_round_trips():
    """budget = "tokens" (README "Noise-aware keeps") is only valid with a positive token_budget."""
    assert 'budget = "tokens" needs token_budget' in errors(MINIMAL + 'budget = "tokens"\n')
    assert 'budget = "tokens" needs token_budget' in errors(MINIMAL + 'budget = "tokens"\ntoken_budget = 0\n')
    assert "budget must be time or tokens" in errors(MINIMAL + 'budget = "steps"\n')
    assert "token_budget must be an integer or absent" in errors(MINIMAL + 'budget = "tokens"\ntoken_budget = 1.5\n')
    cfg = loads(MINIMAL + 'budget = "tokens"\ntoken_budget = 4096\n')
    assert (cfg.budget, cfg.token_budget) == ("tokens", 4096)
    assert loads(dumps(cfg)) == cfg


def test_under_a_token_budget_the_wall_time_rule_does_not_apply(tmp_path):
    """A token-budget run on a busy machine is slower, not over budget: within_budget leaves it to the
    token check (and the hard timeout)."""
    from types import SimpleNamespace

    from harness import checks

    over = SimpleNamespace(train_s=None, res=SimpleNamespace(wall_s=10_000.0))
    timed = loads(MINIMAL + "time_budget_s = 10\n")
    assert checks.within_budget(SimpleNamespace(cfg=timed, sample=over)) is not None  # type: ignore[arg-type]
    tokens = with_overrides(timed, budget="tokens", token_budget=4096)
    assert checks.within_budget(SimpleNamespace(cfg=tokens, sample=over)) is None  # type: ignore[arg-type]
