"""autoresearch: a git-driven harness for overnight ML research by an agent."""

__version__ = "0.1.0"
