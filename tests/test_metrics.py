"""Tests for harness/metrics.py: METRIC lines and karpathy's summary block, on literal logs
plus hypothesis properties (round trip, never raises). About a second.

Run: /work/main/.venv/bin/python -m pytest tests/test_metrics.py -q
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.metrics import (
    MAX_ABS,
    MAX_LINE_CHARS,
    MAX_VALUES,
    MetricScanner,
    parse_metric_lines,
    parse_metrics,
    parse_number,
    parse_summary_block,
)

# The tail of a real karpathy/autoresearch train.py run (with a warning inside the block).
KARPATHY_LOG = """\
step 00950 (99.8%) | loss: 3.012345 | lrm: 0.05 | dt: 312ms | tok/sec: 1,679,812 | mfu: 39.8% | remaining: 1s
---
val_bpb:          0.997900
training_seconds: 300.1
total_seconds:    325.9
peak_vram_mb:     45060.2
mfu_percent:      39.80
total_tokens_M:   499.6
num_steps:        953
num_params_M:     50.3
depth:            8
"""


# ------------------------------------------------------------------ parse_number


def test_parse_number():
    assert parse_number("0.5") == 0.5
    assert parse_number("-1e-3") == -0.001
    assert parse_number("7") == 7.0
    for bad in ("nan", "NaN", "inf", "-inf", "Infinity", "1e999", "abc", "", "0.5x", "1.2.3"):
        assert parse_number(bad) is None, bad


def test_parse_number_is_ascii_finite_and_bounded():
    # float() takes all of these; none is a metric a run meant to print
    for bad in (
        "1_000",
        "١٢٣",
        "１２３",
        "1e308",
        "-1e308",
        "-1e15",
        "1e15",
        "1000000000000000",
        " 1",
        "1 ",
        "+nan",
        "0x10",
    ):
        assert parse_number(bad) is None, bad
    assert parse_number("999999999999999") == 999999999999999.0
    assert parse_number("-999999999999999.9") == -999999999999999.9
    assert parse_number("1e14") == 1e14 and parse_number(".5") == 0.5 and parse_number("5.") == 5.0
    assert parse_number("+1E-3") == 0.001 and MAX_ABS == 1e15
    assert parse_metrics("METRIC x=1e308\nMETRIC y=1_000\nMETRIC z=١٢٣\n---\nw: 1e300\n") == {}


# ------------------------------------------------------------------ METRIC lines


def test_metric_lines_basic_and_leading_spaces():
    text = "hello\nMETRIC loss=0.25\n    METRIC acc=0.9   \n\tMETRIC  step_ms=12\nnot METRIC x=1\n"
    assert parse_metric_lines(text) == {"loss": 0.25, "acc": 0.9, "step_ms": 12.0}


def test_metric_lines_reject_non_finite_and_garbage():
    text = "\n".join(
        [
            "METRIC a=nan",
            "METRIC b=inf",
            "METRIC c=-inf",
            "METRIC d=1.5abc",  # trailing garbage glued to the value
            "METRIC e=1.5 abc",  # trailing garbage after a space
            "METRIC f=",
            "METRIC g=0.125",
        ]
    )
    assert parse_metric_lines(text) == {"g": 0.125}


def test_metric_lines_duplicates_last_wins():
    text = "METRIC loss=3.0\nMETRIC loss=2.0\nMETRIC loss=nan\nMETRIC loss=1.0\n"
    assert parse_metric_lines(text) == {"loss": 1.0}
    # a non-finite later duplicate does not erase an earlier valid value
    assert parse_metric_lines("METRIC loss=2.0\nMETRIC loss=inf\n") == {"loss": 2.0}


def test_metric_lines_reject_bad_names():
    """Names are pi-autoresearch's set ([A-Za-z0-9_.µ]+: digits first, dots and µ allowed, as its
    documented `METRIC total_µs=15200`), never the JavaScript prototype names."""
    text = "\n".join(
        [
            "METRIC 1abc=1",  # pi's set: a leading digit is a name
            "METRIC a-b=1",  # dash: not in the set
            "METRIC a.b=1",  # pi-autoresearch allows dots
            "METRIC µs=1",  # and µ
            "METRIC =1",
            "METRIC __proto__=1",
            "METRIC constructor=1",
            "METRIC prototype=1",
            "METRIC ok_name2=2",
        ]
    )
    assert parse_metric_lines(text) == {"1abc": 1.0, "a.b": 1.0, "µs": 1.0, "ok_name2": 2.0}


# ------------------------------------------------------------------ summary block


def test_summary_block_karpathy():
    out = parse_summary_block(KARPATHY_LOG)
    assert out == {
        "val_bpb": 0.9979,
        "training_seconds": 300.1,
        "total_seconds": 325.9,
        "peak_vram_mb": 45060.2,
        "mfu_percent": 39.8,
        "total_tokens_M": 499.6,
        "num_steps": 953.0,
        "num_params_M": 50.3,
        "depth": 8.0,
    }


def test_summary_block_only_after_last_separator():
    text = "---\nval_bpb: 9.0\nold: 1\n---\nval_bpb:   0.5\n"
    assert parse_summary_block(text) == {"val_bpb": 0.5}


def test_summary_block_skips_non_numeric_and_noise_lines():
    text = (
        "---\nval_bpb: 1.25\nWARNING: something odd happened\nnote: fine\nmode: eval\ndepth: 4\nx:nospace\n"
    )
    assert parse_summary_block(text) == {"val_bpb": 1.25, "depth": 4.0}


def test_summary_block_without_separator_is_empty():
    assert parse_summary_block("val_bpb: 0.99\n") == {}
    assert parse_summary_block("") == {}


def test_metric_lines_override_summary_regardless_of_order():
    before = "METRIC val_bpb=0.5\n---\nval_bpb: 0.9\npeak_vram_mb: 100\n"
    after = "---\nval_bpb: 0.9\npeak_vram_mb: 100\nMETRIC val_bpb=0.5\n"
    for text in (before, after):
        assert parse_metrics(text) == {"val_bpb": 0.5, "peak_vram_mb": 100.0}


def test_parse_metrics_merges_both_contracts():
    text = KARPATHY_LOG + "METRIC extra_metric=3\n"
    out = parse_metrics(text)
    assert out["val_bpb"] == 0.9979
    assert out["extra_metric"] == 3.0
    assert len(out) == 10


# ------------------------------------------------------------------ properties

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True).filter(
    lambda n: n not in {"__proto__", "constructor", "prototype"}
)
finite = st.floats(min_value=-MAX_ABS, max_value=MAX_ABS, exclude_min=True, exclude_max=True)
# noise without line breaks (str.splitlines also splits on \x1c-\x1e, \x85, \u2028, ...) and
# without the word METRIC, so it cannot pose as a metric line
noise = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\x85"),
    max_size=40,
).filter(lambda s: "METRIC" not in s)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, finite, max_size=8), st.data())
def test_metric_lines_round_trip(values, data):
    lines: list[str] = []
    for name, value in values.items():
        lines += data.draw(st.lists(noise, max_size=3))
        lines.append(f"METRIC {name}={value!r}")
    lines += data.draw(st.lists(noise, max_size=3))
    parsed = parse_metric_lines("\n".join(lines))
    assert parsed == values
    # exact: repr round trips every finite float bit for bit (-0.0 included)
    for name, value in values.items():
        assert math.copysign(1.0, parsed[name]) == math.copysign(1.0, value)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_never_raises_on_arbitrary_text(text):
    out = parse_metrics(text)
    assert all(isinstance(k, str) and math.isfinite(v) for k, v in out.items())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["---", "METRIC a=1", "a: 2", "b:  x", "METRIC b=nan", "", "  ---  "])))
def test_parse_never_raises_on_contract_like_soup(lines):
    out = parse_metrics("\n".join(lines))
    assert set(out) <= {"a", "b"}


# ------------------------------------------------------------------ the incremental scanner


def scan(chunks: list[str]) -> MetricScanner:
    scanner = MetricScanner()
    for chunk in chunks:
        scanner.feed(chunk)
    return scanner


def test_scanner_every_split_point_agrees_with_the_whole_text():
    text = KARPATHY_LOG + "METRIC a=1\r\nMETRIC b=2\rprogress 10%\rMETRIC c=3\n---\nval_bpb: 0.5\n"
    whole = parse_metrics(text)
    assert whole == {"val_bpb": 0.5, "a": 1.0, "b": 2.0, "c": 3.0}
    for i in range(len(text) + 1):
        for j in range(i, min(len(text), i + 40) + 1):
            assert scan([text[:i], text[i:j], text[j:]]).close().result() == whole, (i, j)


def test_scanner_result_counts_the_unfinished_line_without_consuming_it():
    scanner = scan(["---\nval: 1\nMETRIC x=", "1"])
    assert scanner.result() == {"val": 1.0, "x": 1.0}
    scanner.feed("5\n")
    assert scanner.result() == {"val": 1.0, "x": 15.0} and scanner.metric_values() == {"x": (15.0,)}


def test_scanner_overlong_line_is_skipped_and_not_held():
    scanner = MetricScanner().feed("METRIC a=1\nMETRIC b=")
    for _ in range(200):  # 12.8 MB of one line, in pipe-sized chunks
        scanner.feed("9" * 2**16)
        assert len(scanner._partial) <= MAX_LINE_CHARS
    scanner.feed("\nMETRIC c=3")
    assert scanner.close().result() == {"a": 1.0, "c": 3.0}
    # the same rule inside one chunk, so the whole text and the stream agree
    assert parse_metrics("METRIC b=" + "9" * MAX_LINE_CHARS + "\nMETRIC c=3\n") == {"c": 3.0}


def test_scanner_metric_values_are_distinct_in_order_and_capped():
    lines = [f"METRIC loss={v}" for v in [3, 2, 3, 1, *range(10, 30)]]
    values = parse_values("\n".join([*lines, "METRIC acc=nan", "METRIC acc=0.5"]))
    assert values["loss"] == (3.0, 2.0, 1.0, *range(10, 10 + MAX_VALUES - 3))
    assert values["acc"] == (0.5,)


def parse_values(text: str) -> dict[str, tuple[float, ...]]:
    return MetricScanner().feed(text).close().metric_values()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(["---", "METRIC a=1", "a: 2", "b:  3", "METRIC b=4", "", "x", "\r", "METRIC a=5"])
    ),
    st.data(),
)
def test_scanner_any_chunking_agrees_with_the_whole_text(lines, data):
    text = "\n".join(lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert scan(chunks).close().result() == parse_metrics(text)
