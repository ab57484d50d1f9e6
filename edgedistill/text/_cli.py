"""``edgedistill text RECIPE``: the text-embedding flow, then one mobile bundle per variant."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("text", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: runs/<recipe name>).")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True,
              help="PyTorch threads for encoding and training.")
def text_cmd(recipe, out_dir, threads):
    """Distill a sentence encoder (teacher embeddings cached), export, INT8, and bundle it with its tokenizer."""
    from .bundle import bundle_text_variant
    from .flow import distill_text_recipe, load_text_recipe

    rec = load_text_recipe(recipe)
    out = Path(out_dir or Path("runs") / rec.name)
    summary = distill_text_recipe(rec, out, threads=threads, log=sys.stderr)
    for name, meta in summary["variants"].items():
        metric = {"name": "stsb_dev_spearman_torch", "value": round(float(meta["best_dev_spearman_torch"]), 4)}
        bundle_text_variant(out / name, out / name / "bundle", name=f"{rec.name}-{name}-int8", metric=metric,
                            teacher=rec.teacher.name)
        click.echo(f"{name}: STS-B dev Spearman {metric['value']:.4f}  INT8 {meta['int8']['size_mb']:.1f} MB  "
                   f"bundle {out / name / 'bundle'}")
