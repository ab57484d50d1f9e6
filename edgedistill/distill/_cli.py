"""The ``edgedistill losses`` command (attached to the main CLI by ``cli.py``)."""

from __future__ import annotations

import json

import click

from .losses import LOSSES
from .losses.base import loss_params


def _kind(cls) -> str:
    return cls.__module__.rsplit(".", 1)[-1]


@click.command("losses", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Also list each loss's parameters and their defaults.")
def losses_cmd(as_json: bool, verbose: bool) -> None:
    """List the distillation losses a recipe can name in [[distill.losses]]."""
    rows = [{"name": n, "kind": _kind(LOSSES.get(n)), "description": LOSSES.describe(n),
             "params": loss_params(LOSSES.get(n))} for n in LOSSES.names()]
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    w, k = max(len(r["name"]) for r in rows), max(len(r["kind"]) for r in rows)
    for r in rows:
        click.echo(f"{r['name']:<{w}}  {r['kind']:<{k}}  {r['description']}")
        if verbose and r["params"]:
            click.echo(" " * (w + k + 4) + ", ".join(f"{k}={v!r}" for k, v in r["params"].items()))
