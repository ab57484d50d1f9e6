"""``edgedistill bench``, ``bundle`` and ``inspect``: the runtime commands, thin click layers over bench.py,
bundle.py and onnx_inspect.py that need onnxruntime and no torch. ``cli.py`` adds them to the main CLI.

Progress goes to stderr, results to stdout; ``--json`` prints one JSON object. Expected failures
are a ``click.ClickException`` with one sentence; ``bench`` exits 3 when a budget is missed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import EXIT_BUDGET_MISSED, EdgeDistillError

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _target(name_or_path):
    if name_or_path is None:
        return None
    from .targets import load_target

    return load_target(name_or_path)


@click.command("bench", context_settings=CONTEXT)
@click.argument("models", nargs=-1, required=True)
@click.option("--target", help="Target name (see `edgedistill targets`) or path to a target .toml; adds a budget verdict.")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads (default: the target's, else 1).")
@click.option("--runs", type=click.IntRange(min=1), default=100, show_default=True, help="Least number of timed runs per model.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed runs before timing.")
@click.option("--min-seconds", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Least steady-state time per model, in seconds.")
@click.option("--ci-tolerance", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="Go on until the 95% intervals of p50 and p90 are within this fraction of them (0: stop at the minimum).")
@click.option("--max-seconds", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Time cap on going on for --ci-tolerance, in seconds.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Size of a dynamic batch dimension.")
@click.option("--seq-len", type=click.IntRange(min=1), default=32, show_default=True, help="Size of other dynamic dimensions (tokens).")
@click.option("--provider", "providers", multiple=True, help="Execution provider, in order of preference (repeatable).")
@click.option("--deliverable", help="Which MODEL the top-level verdict judges (default: the last one).")
@click.option("--remote", metavar="[USER@]HOST[:PORT]",
              help="Benchmark on this device over SSH (default: the target's `remote`, else this machine).")
@click.option("--ssh-option", "ssh_options", multiple=True, metavar="KEY=VALUE",
              help="Option for `ssh -o`, e.g. IdentityFile=~/.ssh/pi (repeatable; before the target's ssh_options).")
@click.option("--remote-python", metavar="CMD", help="The device's python with edgedistill (default: the target's, python3).")
@click.option("--gate-indicative", is_flag=True,
              help="Let a p90 verdict measured off the target set exit 3 too (by default it is indicative only).")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as one JSON object.")
def bench_cmd(models, target, threads, runs, warmup, min_seconds, ci_tolerance, max_seconds, batch_size, seq_len,
              providers, deliverable, remote, ssh_options, remote_python, gate_indicative, as_json):
    """Measure latency, memory and size of MODELS (.onnx through ONNX Runtime, .tflite through LiteRT) on this
    machine (or, with --remote, on a device over SSH), interleaved A B A B.

    With --target, every budget gets a verdict and the command exits 3 when the deliverable misses
    one. Figures are the measuring machine's; when it is not the target, the output says so and the p90
    verdict is indicative: it does not set exit 3 (size and RAM still do) unless --gate-indicative.
    """
    from .bench import benchmark

    try:
        t = _target(target)
        host = remote or (t.remote if t is not None else None)
        click.echo(f"benchmarking {len(models)} model(s){' on ' + host + ' over SSH' if host else ''}, interleaved, "
                   f"at least {runs} runs and {min_seconds:g} s each...", err=True)
        result = benchmark(list(models), target=t, threads=threads, runs=runs, warmup=warmup, min_seconds=min_seconds,
                           batch_size=batch_size, seq_len=seq_len, providers=list(providers) or None,
                           deliverable=deliverable or (models[-1] if t is not None else None),
                           remote=remote, ssh_options=list(ssh_options), remote_python=remote_python,
                           gate_indicative=gate_indicative, ci_tolerance=ci_tolerance, max_seconds=max_seconds)
    except EdgeDistillError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(result, indent=2) if as_json else _bench_text(result))
    if result.get("ok") is False:
        sys.exit(EXIT_BUDGET_MISSED)


def _bench_text(r: dict) -> str:
    m, s = r["machine"], r["settings"]
    isa = ", ".join(k for k, v in m["isa"].items() if v) or "none"
    where = f"remote {r['remote']['host']}: " if "remote" in r else ""
    lines = [f"machine: {where}{m['cpu']}, {m['cores']} cores, {m['architecture']}, ISA: {isa}, onnxruntime {m['onnxruntime']}",
             f"settings: {s['threads']} thread(s), {', '.join(s['providers'])}, batch {s['batch_size']}"]
    lines += [f"note: {s[k]}" for k in ("provider_note", "threads_note", "ci_note") if k in s]
    lines += [f"note: {r['remote']['note']}"] if "note" in r.get("remote", {}) else []
    lines += ["", f"{'model':<40} {'size MB':>9} {'create ms':>9} {'first ms':>9} {'p50 ms':>9} {'p90 ms':>9} "
                  f"{'p99 ms':>9} {'mean±std':>17} {'runs':>7} {'per s':>9} {'RSS MB':>7}"]
    for x in r["models"]:
        lat = x["latency_ms"]
        lines.append(f"{_short(x['path']):<40} {x['size_mb']:>9.4f} {x['session_create_ms']:>9.2f} "
                     f"{x['first_inference_ms']:>9.3f} {lat['p50']:>9.4f} {lat['p90']:>9.4f} {lat['p99']:>9.4f} "
                     f"{lat['mean']:>8.4f}±{lat['std']:<8.4f} {x['runs']:>7} {x['throughput_per_s']:>9.1f} "
                     f"{_num(x['peak_rss_mb'], '.1f'):>7}")
    for x in r["models"]:
        ci = x["latency_ms"].get("ci95")
        if ci:
            lines.append(f"95% CI {_short(x['path'])}: p50 [{ci['p50'][0]:.4f}, {ci['p50'][1]:.4f}] ms, "
                         f"p90 [{ci['p90'][0]:.4f}, {ci['p90'][1]:.4f}] ms")
    for q in r["ratios"]:
        lines.append(f"ratio {_short(q['model'])} / {_short(q['baseline'])}: p90 x{q['latency_p90']:.3f} "
                     f"(speed-up x{q['speedup_p90']:.2f}), mean x{q['latency_mean']:.3f}, size x{q['size_mb']:.3f}, "
                     f"peak RSS x{_num(q['peak_rss_mb'], '.3f')}")
    if "verdict" in r:
        lines += ["", f"target {r['target']['name']}, judging {_short(r['deliverable'])}:"]
        for k, v in r["verdict"].items():
            state = ("ok" if v["ok"] else ("MISSED" if v["ok"] is False else "unknown")) + \
                (" (indicative)" if v.get("indicative") else "")
            margin = f"margin {v['margin']:+.4g} ({v['margin_pct']:+.1f}%)" if "margin" in v else v.get("note", "")
            lines.append(f"  {k:<12} limit {v['limit']:<10g} measured {_num(v['measured'], '.4g'):<10} {state:<20} {margin}")
        lines.append(("WITHIN BUDGET" if r["ok"] else "BUDGET MISSED") + ("" if r["host_matches_target"]
                                                                          else f" -- note: {r['host_note']}"))
    return "\n".join(lines)


def _short(path: str, width: int = 40) -> str:
    return path if len(path) <= width else "..." + path[-(width - 3):]


def _num(v, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


@click.command("bundle", context_settings=CONTEXT)
@click.argument("model")
@click.option("--out", "out_dir", default="bundle", show_default=True, help="Folder to write the bundle into (replaced).")
@click.option("--name", help="Model name for metadata and the model card (default: the file's stem).")
@click.option("--labels", "labels_file", help="Text file with one class label per line.")
@click.option("--preprocessing", "prep_file", help="JSON file describing the preprocessing (mean, std, input size...).")
@click.option("--extra", "extra_files", multiple=True, help="File to ship beside the model, e.g. a tokenizer file (repeatable).")
@click.option("--target", help="Target name or .toml: its execution provider and architecture shape the bundle.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def bundle_cmd(model, out_dir, name, labels_file, prep_file, extra_files, target, as_json):
    """Write a mobile bundle for MODEL: model.onnx, model.ort, required_operators.config,
    metadata.json and MODEL_CARD.md, with ORT's NNAPI / CoreML usability check; for a .tflite MODEL, model.tflite
    with its inputs, outputs and int8 quantization parameters in metadata.json."""
    from .bundle import write_bundle

    try:
        t = _target(target)
        metadata = {"name": name or Path(model).stem}
        if labels_file:
            metadata["labels"] = [ln.strip() for ln in _read(labels_file, "labels file").splitlines() if ln.strip()]
        if prep_file:
            try:
                metadata["preprocessing"] = json.loads(_read(prep_file, "preprocessing file"))
            except json.JSONDecodeError as e:
                raise click.ClickException(f"{prep_file}: not valid JSON ({e.msg}, line {e.lineno}); fix the file.") from None
        if t is not None:
            metadata["target"] = t.name
            metadata["execution_provider"] = t.execution_provider
        platform = None if t is None else ("arm" if t.architecture in ("aarch64", "armv7l") else None)
        click.echo(f"writing the bundle for {model} into {out_dir}/ ...", err=True)
        result = write_bundle(model, out_dir, metadata=metadata, model_card={}, extra_files=list(extra_files),
                              target_platform=platform)
    except EdgeDistillError as e:
        raise click.ClickException(str(e)) from None
    for w in result["warnings"]:
        click.echo(f"warning: {w}", err=True)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for f in sorted(result["files"]) + ["metadata.json"]:
        click.echo(f"{out_dir}/{f}")
    for ep in ("nnapi", "coreml_neuralnetwork", "coreml_mlprogram"):
        u = result["usability"][ep]
        click.echo(f"{ep}: {u['supported_nodes']}/{u['nodes']} nodes in {u['partitions']} partition(s), "
                   f"worth trying: {u['suitability']}"
                   + (f" ({u['suitability_if_shapes_fixed']} with fixed input shapes)" if "suitability_if_shapes_fixed" in u else ""))


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise click.ClickException(f"{path}: cannot read the {what} ({e.strerror}); check the path.") from None


@click.command("inspect", context_settings=CONTEXT)
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as one JSON object.")
def inspect_cmd(model, as_json):
    """Show what is inside an ONNX MODEL: parameters, MACs, size, operators, quantized share, inputs/outputs."""
    from .onnx_inspect import inspect_model

    try:
        info = inspect_model(model)
    except EdgeDistillError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    lines = [f"{info['path']}: {info['size_mb']:.4f} MB, {info['params']:,} parameters, {info['macs']:,} MACs per sample",
             f"format {info['format']}: {info['quantized_ops']}/{info['compute_ops']} compute ops quantized "
             f"({info['quantized_share']:.0%}; {info['quantized_mac_share']:.0%} of MACs)",
             f"opset {json.dumps(info['opset'])}, IR {info['ir_version']}, producer {info['producer'] or '?'}"]
    lines += [f"input  {v['name']}: {v['dtype']} {v['shape']}" for v in info["inputs"]]
    lines += [f"output {v['name']}: {v['dtype']} {v['shape']}" for v in info["outputs"]]
    lines += ["operators: " + ", ".join(f"{op} x{n}" for op, n in info["op_histogram"].items())]
    click.echo("\n".join(lines))
