"""Shared fixtures and test seams.

Git identity: tests commit with plain `git` (tests/toy.py) as well as through the harness. A
machine without a global identity (CI, a fresh container) must pass exactly like a developer's,
so every test process and its children read one private global config with an identity, and
never the user's or the system's.
"""

from __future__ import annotations

import os
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
