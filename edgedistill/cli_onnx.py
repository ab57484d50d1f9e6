"""``edgedistill quantize`` and ``evaluate``: a user's own ONNX model, without a recipe (thin click commands
over :mod:`edgedistill.onnx_model`). Progress goes to stderr, results to stdout; ``--json`` prints one object.
Exit 0 on success, 1 on an error (one sentence, no output file left), 2 on bad usage.
"""

from __future__ import annotations

import json

import click

from .errors import EdgeDistillError

CONTEXT = {"help_option_names": ["-h", "--help"]}
DATA_HELP = ("An .npz with x (fed as stored) and y (labels; without y: calibration only), a folder of .npy arrays "
             "(x.npy, y.npy), an image folder (resized to the model's input, pixel / 255), or a .toml with a [data] "
             "table as in a recipe (any source and preprocessing).")


def _result(fn, as_json: bool, *args, **kwargs) -> dict | None:
    """``fn``'s result, or None once printed as JSON; its EdgeDistillError is the command's one-sentence error."""
    try:
        r = fn(*args, **kwargs)
    except EdgeDistillError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return None
    return r


def _metric(entry: dict) -> str:
    m = entry["metric"]
    return f"{m['name']} {m['value']:.4f}" if m else "no labels"


@click.command("evaluate", context_settings=CONTEXT)
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--data", "data", required=True, help=DATA_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def evaluate_cmd(models, data, as_json):
    """The accuracy of each ONNX MODELS file on --data, through ONNX Runtime (every labelled sample of one set;
    the test split of data that comes with its own)."""
    from .onnx_model import evaluate_onnx

    r = _result(evaluate_onnx, as_json, list(models), data)
    if r is None:
        return
    click.echo(f"data: {r['data']}; {r['samples']:,} labelled samples ({r['split']})")
    width = max(len(m["path"]) for m in r["models"])
    for m in r["models"]:
        click.echo(f"{m['path']:<{width}}  {_metric(m)}  size {m['size_mb']:.3f} MB")


@click.command("quantize", context_settings=CONTEXT)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", "data", required=True, help=DATA_HELP)
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Where the INT8 .onnx goes.")
@click.option("--method", type=click.Choice(["mse", "minmax", "entropy", "percentile"]), default="mse", show_default=True,
              help="Calibration method.")
@click.option("--samples", type=click.IntRange(1, 100000), default=256, show_default=True,
              help="Calibration samples, drawn from the data's training part.")
@click.option("--max-drop", type=click.FloatRange(0, 100), help="Accuracy points the INT8 model may lose on the "
              "validation part; nodes are kept in FP32, most harmful first, until it holds.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split and the calibration sample.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def quantize_cmd(model, data, out, method, samples, max_drop, seed, as_json):
    """INT8 post-training quantization (static QDQ, S8S8 per channel) of an ONNX MODEL, calibrated on --data,
    with the FP32 and INT8 accuracy on the data's test part when it has labels."""
    from .onnx_model import quantize_onnx

    click.echo(f"quantizing {model} ({method}, {samples} calibration samples"
               f"{f', at most {max_drop:g} points lost' if max_drop is not None else ''})...", err=True)
    r = _result(quantize_onnx, as_json, model, data, out, method=method, samples=samples, max_drop=max_drop, seed=seed)
    if r is None:
        return
    click.echo(f"data: {r['data']}")
    for name in ("fp32", "int8"):
        e = r[name]
        click.echo(f"{name}  {e['path']}  {_metric(e)}  size {e['size_mb']:.3f} MB")
    if r["drop_points"] is not None:
        click.echo(f"drop: {r['drop_points']:.2f} points on {r['splits']['test_samples']:,} test samples")
    if r["kept_fp32"]:
        click.echo(f"kept in FP32: {', '.join(r['kept_fp32'])}")
