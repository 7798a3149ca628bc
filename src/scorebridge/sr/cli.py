"""CLI entry points of the super-resolution stage (see scorebridge.cli)."""

from __future__ import annotations

__all__ = ["train_cli", "sample_cli", "evaluate_cli"]


def train_cli(argv: list[str]) -> int:
    from .train import train_cli as run

    return run(argv)


def sample_cli(argv: list[str]) -> int:
    from .posterior import sample_cli as run

    return run(argv)


def evaluate_cli(argv: list[str]) -> int:
    from .evaluate import evaluate_cli as run

    return run(argv)
