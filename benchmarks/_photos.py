"""Real photographs that install offline, as EfficientNet-Lite0 views (N x 3 x 224 x 224 float32, normalised).

    from benchmarks._photos import photo_sets, views
    sets = photo_sets()                           # {"calibration": [(name, HxWx3 uint8)], "evaluation": [...]}
    x_cal, names_cal = views(sets["calibration"], per_photo=10)
    x_eval, names_eval = views(sets["evaluation"], per_photo=50)
    PYTHONPATH=$PWD python benchmarks/_photos.py  # lists the photos found and the view counts

Sources (a photo's name says where it comes from; none downloads anything):

- scikit-learn ``load_sample_images()``: china, flower (427x640). Always there.
- scikit-image 0.26 (``pip install scikit-image``; required): the colour photographs shipped inside the
  wheel: astronaut, chelsea, coffee, rocket, motorcycle_left (``stereo_motorcycle()[0]``),
  immunohistochemistry, hubble_deep_field, retina. (``cat`` is chelsea again; brain, kidney, lily, skin
  and eagle need a pooch download and are not used; camera, page, ... are greyscale.)
- Debian wallpapers (optional, skipped with a note when absent):
  ``apt-get install -y --no-install-recommends lomiri-wallpapers-16.04 plasma-workspace-wallpapers``.
  lomiri-wallpapers-16.04 puts 13 photographs in /usr/share/backgrounds (the Ubuntu 16.04 community
  wallpapers: Bridge, Dragonfly, Kleiber, Picture_0B, Picture_1A, Wine, aitzgorri, friends, free, life,
  picosdeeuropa, seeding, sunset); plasma-workspace-wallpapers has 10 photographs among its renders
  (BytheWater, ColdRipple, ColorfulCups, EveningGlow, FallenLeaf, Grey, Kite, OneStandsOut, Path,
  summer_1am). gnome-backgrounds 43.1 (Debian 12) has no photographs, only renders and SVG, so it is
  not a source.

Calibration and evaluation never share a photo: ``CALIBRATION`` names the calibration photos, every
other photo evaluates. With all sources: 33 photos, 12 calibrate and 21 evaluate (50 views per
photo: 600 and 1,050 views); without the wallpapers: 4 and 6 (200 and 300 views). Photos are shrunk
so their short side is at most ``MAX_SIDE`` (800) before cropping.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgedistill.models.efficientnet import IMAGE_SIZE, MEAN_RGB, STD_RGB  # noqa: E402

SCALES = (1.0, 0.85, 0.7, 0.55, 0.4)
POSITIONS = {"c": (0.5, 0.5), "tl": (0.0, 0.0), "br": (1.0, 1.0), "bl": (1.0, 0.0), "tr": (0.0, 1.0)}  # name: (fy, fx)
MAX_SIDE = 800
SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "immunohistochemistry",
           "hubble_deep_field", "retina")
LOMIRI = {"Bridge": "Bridge_by_Sander_Klootwijk", "Dragonfly": "Dragonfly_by_Bolly", "Kleiber": "Kleiber_by_Lukas_Baubkus",
          "Picture_0B": "Picture_0B_by_freespace", "Picture_1A": "Picture_1A_by_freespace", "Wine": "Wine_by_Jakkub_Mede",
          "aitzgorri": "aitzgorri_by_Aitzol_Berasategi", "friends": "friends_by_Aitzol_Berasategi",
          "free": "free_by_Peter_Nerlich", "life": "life_by_Aitzol_Berasategi",
          "picosdeeuropa": "picosdeeuropa_by_Aitzol_Berasategi", "seeding": "seeding_by_Clements_Engelhardt",
          "sunset": "sunset_by_Aitzol_Berasategi"}  # name: file stem in /usr/share/backgrounds (.jpg)
PLASMA = ("BytheWater", "ColdRipple", "ColorfulCups", "EveningGlow", "FallenLeaf", "Grey", "Kite", "OneStandsOut",
          "Path", "summer_1am")  # /usr/share/wallpapers/NAME/contents/images/
CALIBRATION = frozenset({"china", "coffee", "immunohistochemistry", "motorcycle_left", "Bridge", "Kleiber", "Wine",
                         "life", "seeding", "EveningGlow", "Grey", "OneStandsOut"})


def _shrink(img) -> np.ndarray:
    from PIL import Image

    img = img.convert("RGB")
    if min(img.size) > MAX_SIDE:
        k = MAX_SIDE / min(img.size)
        img = img.resize((round(img.width * k), round(img.height * k)), Image.BILINEAR)
    return np.asarray(img, np.uint8)


def sklearn_photos() -> list[tuple[str, np.ndarray]]:
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    return [(Path(f).stem, img) for img, f in zip(data.images, data.filenames)]


def skimage_photos() -> list[tuple[str, np.ndarray]]:
    try:
        from skimage import data
    except ImportError:
        raise SystemExit("benchmarks/_photos.py needs scikit-image for its bundled photos: "
                         "pip install scikit-image (into the project venv).") from None
    load = lambda n: data.stereo_motorcycle()[0] if n == "motorcycle_left" else getattr(data, n)()  # noqa: E731
    return [(n, load(n)) for n in SKIMAGE]


def wallpaper_photos(notes: list[str]) -> list[tuple[str, np.ndarray]]:
    """The Debian wallpapers that are photographs; a missing package adds a line to ``notes``."""
    from PIL import Image

    files = {n: Path(f"/usr/share/backgrounds/{stem}.jpg") for n, stem in LOMIRI.items()}
    for n in PLASMA:
        d = Path(f"/usr/share/wallpapers/{n}/contents/images")
        files[n] = d / "1280x800.jpg" if (d / "1280x800.jpg").exists() else next(iter(sorted(d.glob("*.jpg"))), d)
    out = []
    for pkg, names in (("lomiri-wallpapers-16.04", LOMIRI), ("plasma-workspace-wallpapers", PLASMA)):
        missing = [n for n in names if not files[n].is_file()]
        if missing:
            notes.append(f"skipped {len(missing)} photos of {pkg} ({', '.join(missing[:3])}...): "
                         f"apt-get install -y --no-install-recommends {pkg}")
        out += [(n, _shrink(Image.open(files[n]))) for n in names if files[n].is_file()]
    return out


def photo_sets(notes: list[str] | None = None) -> dict[str, list[tuple[str, np.ndarray]]]:
    """All photos found, split by name: ``{"calibration": [...], "evaluation": [...]}`` (HxWx3 uint8)."""
    notes = [] if notes is None else notes
    photos = sklearn_photos() + skimage_photos() + wallpaper_photos(notes)
    for line in notes:
        print(f"_photos: {line}", file=sys.stderr)
    return {"calibration": [p for p in photos if p[0] in CALIBRATION],
            "evaluation": [p for p in photos if p[0] not in CALIBRATION]}


def views(photos: list[tuple[str, np.ndarray]], per_photo: int = 50) -> tuple[np.ndarray, list[str]]:
    """Square crops of each photo (``SCALES`` x ``POSITIONS`` x mirror = 50; ``per_photo`` < 50 takes an evenly
    spread subset of them), resized to 224, normalised as EfficientNet-Lite0 expects: (N x 3 x 224 x 224, names)."""
    from PIL import Image

    grid = [(s, p, f) for s in SCALES for p in POSITIONS for f in (False, True)]
    keep = grid if per_photo >= len(grid) else [grid[i] for i in np.linspace(0, len(grid) - 1, per_photo).round().astype(int)]
    mean, std = np.array(MEAN_RGB, np.float32), np.array(STD_RGB, np.float32)
    out, names = [], []
    for name, photo in photos:
        h, w, _ = photo.shape
        for scale, pos, flip in keep:
            side = int(min(h, w) * scale)
            top, left = int((h - side) * POSITIONS[pos][0]), int((w - side) * POSITIONS[pos][1])
            crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
            a = np.asarray(crop, np.float32) / 255.0
            a = a[:, ::-1] if flip else a
            out.append(((a - mean) / std).transpose(2, 0, 1))
            names.append(f"{name}-s{scale}-{pos}{'-flip' if flip else ''}")
    return np.ascontiguousarray(np.stack(out).astype(np.float32)), names


if __name__ == "__main__":
    for split, photos in photo_sets().items():
        print(f"{split}: {len(photos)} photos, {50 * len(photos)} views at 50 per photo: "
              + ", ".join(f"{n} {p.shape[1]}x{p.shape[0]}" for n, p in photos))


def split_views(per_photo: int, notes: list[str] | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """``(photo_sets, calibration views, evaluation views)``: all 50 views of each calibration photo (callers take
    their calibration and validation subsets from them), ``per_photo`` views of each photo calibration never sees."""
    sets = photo_sets(notes)
    return sets, views(sets["calibration"], per_photo=50)[0], views(sets["evaluation"], per_photo=per_photo)[0]
