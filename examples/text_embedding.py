"""Distil all-mpnet-base-v2 into a small sentence encoder: python examples/text_embedding.py [recipe] [out_dir]."""

import json
import sys

from edgedistill.text.flow import distill_text_recipe, load_text_recipe

if __name__ == "__main__":
    recipe = load_text_recipe(sys.argv[1] if len(sys.argv) > 1 else "examples/text_embedding.toml")
    out = sys.argv[2] if len(sys.argv) > 2 else f"runs/{recipe.name}"
    print(json.dumps(distill_text_recipe(recipe, out, threads=1), indent=1, default=str))
