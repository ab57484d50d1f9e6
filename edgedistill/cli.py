"""The command line: a thin click layer over the stage verbs. Docstrings are the help.

Exit codes: 0 success (and, for ``run``, the deliverable meets every budget); 3 the run finished
but a budget is missed, or no sized student can meet one (before training); 1 an error, reported in
one sentence; 2 bad usage.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

import click

from ._signals import interrupt_message
from .cli_onnx import evaluate_cmd, quantize_cmd
from .cli_runtime import bench_cmd, bundle_cmd, inspect_cmd
from .errors import EXIT_BUDGET_MISSED, EdgeDistillError, missing_pipeline
from .pipeline import stage_names

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _err(msg: str) -> None:
    click.echo(msg, err=True)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="edgedistill")
def cli() -> None:
    """edgedistill: distill, quantize, export and benchmark a model for an edge device budget."""


@cli.command(context_settings=CONTEXT)
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("--run-dir", type=click.Path(file_okay=False), help="Run folder (default: runs/<recipe name>).")
@click.option("--target", "target", help="Target name (see `edgedistill targets`) or path to a target .toml.")
@click.option("--from", "from_stage", type=click.Choice(stage_names()), help="Re-run from this stage on.")
@click.option("--resume", is_flag=True, help="Continue an interrupted stage from its last checkpoint.")
@click.option("--trust-checkpoint", is_flag=True,
              help="Allow full unpickling (which can run code) of a teacher checkpoint weights_only refuses; only for files you trust.")
@click.option("--refit", is_flag=True, help="After a run with student.size = \"fit\": train the next fitting "
                                           "candidate down (from the student stage on), e.g. when the delivered "
                                           "model missed a budget.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout.")
def run(recipe, run_dir, target, from_stage, resume, trust_checkpoint, refit, as_json):
    """Run the whole pipeline from RECIPE (a TOML file; the built-in digits recipe when omitted).

    Exits 0 when the deliverable meets every budget of the target, 3 when the run finished but a
    budget is missed (or, with student.size = "fit", no student candidate can meet one: before any
    training), 1 on an error.
    """
    from .pipeline import run as run_pipeline
    from .recipe import load_recipe
    from .report import deliverable_entry

    rec = load_recipe(recipe)
    try:
        report = run_pipeline(rec, run_dir=run_dir, target=target, from_stage=from_stage, resume=resume,
                              trust_checkpoint=trust_checkpoint, refit=refit)
    except KeyboardInterrupt as e:  # say exactly how to continue this run
        args = [recipe] if recipe else []
        for flag, value in (("--run-dir", run_dir), ("--target", target)):
            args += [flag, value] if value else []
        e.resume_command = shlex.join(["edgedistill", "run", *args] + ["--trust-checkpoint"] * trust_checkpoint + ["--resume"])
        raise
    from .distributed import is_main

    if not is_main():  # under torchrun rank 0 alone reports
        return
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        width = max(len(m["name"]) for m in report["models"])
        for m in report["models"]:
            verdict = "within budget" if m["within_budget"] else "MISSES " + "; ".join(m["violations"])
            verdict += "".join(f"; {x} (indicative: not measured on the target)" for x in m.get("indicative_misses", []))
            star = "*" if m["name"] == report["deliverable"] else " "
            click.echo(f"{star} {m['name']:<{width}}  {m['metric']['name']} {m['metric']['value']:.4f}  "
                       f"size {m['size_mb']:.3f} MB  p90 {m['latency_ms']['p90']:.3f} ms  {verdict}")
        rd = run_dir or os.path.join("runs", rec.name)
        click.echo(f"report: {os.path.join(rd, 'report', 'report.md')}  (* = deliverable, target {report['target']['name']})")
        click.echo(f"deliverable: {report.get('deliverable_reason', report['deliverable'])}")
        for w in report.get("warnings", []):
            click.echo(f"warning: {w}")
    if not deliverable_entry(report)["within_budget"]:
        sys.exit(EXIT_BUDGET_MISSED)


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the targets as JSON.")
def targets(as_json):
    """List the built-in device targets and their budgets."""
    from .targets import list_targets

    ts = list_targets()
    if as_json:
        click.echo(json.dumps([t.to_dict() for t in ts], indent=2))
        return
    for t in ts:
        b = t.budgets
        budgets = f"size<={b.size_mb:g}MB" + (f" p90<={b.p90_ms:g}ms" if b.p90_ms else "") + \
                  (f" ram<={b.peak_ram_mb:g}MB" if b.peak_ram_mb else "")
        click.echo(f"{t.name:<20} {t.architecture:<8} threads={t.threads:<2} {budgets:<40} {t.description}")


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the tasks as JSON.")
def tasks(as_json):
    """List the tasks a recipe can name (`task = "..."`): how a kind of model meets every stage."""
    from .tasks import TASKS

    rows = [{"name": n, "description": TASKS.describe(n)} for n in TASKS.names()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['name']:<20} {r['description']}")


def _kind(cls) -> str:
    return cls.__module__.rsplit(".", 1)[-1]


@cli.command("losses", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Also list each loss's parameters and their defaults.")
def losses_cmd(as_json: bool, verbose: bool) -> None:
    """List the distillation losses a recipe can name in [[distill.losses]]."""
    from .distill.losses import LOSSES
    from .distill.losses.base import loss_params

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


# The commands that live beside their modules: the runtime ones need no torch (a board runs them).
cli.add_command(bench_cmd, "bench")
cli.add_command(bundle_cmd, "bundle")
cli.add_command(inspect_cmd, "inspect")
cli.add_command(evaluate_cmd, "evaluate")
cli.add_command(quantize_cmd, "quantize")


def main() -> None:
    """Entry point: expected failures become one sentence on stderr and exit code 1, never a traceback."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort as e:  # click turns KeyboardInterrupt into Abort
        _err(interrupt_message(e.__cause__) if isinstance(e.__cause__, KeyboardInterrupt) else "Aborted.")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        _err(interrupt_message(e))
        sys.exit(130)
    except EdgeDistillError as e:
        _err(f"Error: {e}")
        sys.exit(getattr(e, "exit_code", 1))  # 3 for a budget no student can meet (student.size = "fit")
    except SystemExit:
        raise
    except ImportError as e:  # on the light install, a command (or a data source) that needs the training pipeline
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
        missing = missing_pipeline(e, f"edgedistill {command}".strip())
        if missing is None:
            _unexpected(e)
        _err(f"Error: {missing}")
        sys.exit(1)
    except Exception as e:
        _unexpected(e)
    sys.exit(0)


def _unexpected(e: Exception) -> None:
    """An unexpected failure still gets one sentence (exit 1); the traceback on request."""
    if os.environ.get("EDGEDISTILL_DEBUG"):
        raise e
    _err(f"Error: unexpected {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''} "
         "(set EDGEDISTILL_DEBUG=1 for the traceback, and please report it).")
    sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
