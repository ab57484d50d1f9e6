"""The recipe: one typed, validated TOML file that drives a whole run.

Every section is a dataclass; unknown keys, wrong types and out-of-range values are rejected by
:func:`edgedistill._schema.from_dict` with the dotted key, what was expected and the valid choices.
``load_recipe`` fills every default in, and the pipeline writes the resolved recipe to the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Literal, Optional, Union

from . import _schema
from ._schema import field
from .errors import ConfigError
from .quant.config import QATConfig

Optimizer = Literal["adamw", "sgd"]
Scheduler = Literal["cosine", "linear", "none"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass
class PreprocessConfig:
    """What is done to a raw sample before the model sees it, in order: decode to ``channels``, resize to
    ``size``, multiply by ``scale``, subtract ``mean`` and divide by ``std`` per channel. Applied a
    batch at a time and recorded in the bundle, so an app preprocesses exactly the same way."""

    size: Optional[list[int]] = field(None, help="[H, W] images are resized to (default: the first image's size)")
    channels: Optional[Literal["L", "RGB", "BGR"]] = field(None, help="image channel order (default RGB)")
    scale: Optional[float] = field(None, gt=0.0, help="multiply raw values first (default: 1/255 for images, 1 for arrays)")
    mean: Union[list[float], Literal["auto", "none"]] = field(
        "auto", help="per-channel mean to subtract; 'auto': the dataset's own constants, or measured on the training split")
    std: Union[list[float], Literal["auto", "none"]] = field("auto", help="per-channel std to divide by; as mean")
    stats_samples: int = field(10000, ge=1, help="training samples read (streaming) to measure an 'auto' mean/std")

    def _check(self, where: str) -> None:
        if self.size is not None and (len(self.size) != 2 or any(v < 1 for v in self.size)):
            raise ConfigError(f"{where}.size: {self.size} must be [height, width] with both >= 1.")


@dataclass
class DataConfig:
    dataset: str = "digits"
    path: Optional[str] = None
    options: dict = field(default_factory=dict, help="what is particular to the dataset (labels, factory, limit)")
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    workers: Optional[int] = field(None, ge=0, le=64, help="DataLoader worker processes (default: 0 for arrays, "
                                                           "up to 4 for sources that decode, like image folders)")
    cache_decoded: Union[bool, Literal["auto"]] = field(
        "auto", help="decode image files once into a raw .npy in the run folder (data_cache/, N x C x H x W bytes) and "
                     "read that afterwards; 'auto': when it fits a quarter of the free disk; false: decode at every read")
    val_fraction: float = field(0.1, ge=0.0, lt=0.5)
    test_fraction: float = field(0.2, gt=0.0, lt=0.9)
    batch_size: int = field(64, ge=1, le=65536)
    max_train_samples: Optional[int] = field(None, ge=1)
    max_test_samples: Optional[int] = field(None, ge=1)


@dataclass
class TeacherConfig:
    arch: str = "cnn"
    params: dict = field(default_factory=lambda: {"width": 64, "depth": 3})
    checkpoint: Optional[str] = field(None, help="a state_dict the teacher is loaded with (the one way to bring "
                                                  "trained weights, for any arch); used as it is unless epochs > 0")
    epochs: Optional[int] = field(None, ge=0, le=10000, help="training epochs; default: 0 for a teacher that comes with "
                                                           "trained weights (checkpoint, a pretrained classifier), "
                                                           "else 15")
    lr: float = field(2e-3, gt=0.0, le=10.0)
    weight_decay: float = field(1e-4, ge=0.0)
    optimizer: Optimizer = "adamw"
    scheduler: Scheduler = "cosine"
    train: Literal["all", "head"] = field("all", help="'head': train only the classification head on the frozen "
                                                      "encoder (a linear probe of a pretrained text teacher)")


@dataclass
class StudentConfig:
    arch: str = field("cnn", help="a registered architecture, or 'teacher': the teacher itself (its arch and trained "
                                   "weights), compressed with no smaller network (set distill.epochs = 0)")
    params: dict = field(default_factory=lambda: {"width": 8, "depth": 2})
    prune_vocab: bool = field(False, help="text students: keep only the tokens the run's texts use (a smaller "
                                          "embedding table); the pruned tokenizer travels with the model")
    size: Literal["params", "fit"] = field(
        "params", help="'fit': before any training, choose the family's knobs from its search space so the student "
                       "meets the target's budgets (measured untrained, FP32 and INT8); 'params': as given")
    fit_margin: float = field(0.1, ge=0.0, lt=1.0, help="size = 'fit': the share of each budget (size, p90, RAM) "
                                                        "the chosen candidate must leave free")

    def _check(self, where: str) -> None:
        if self.size == "fit" and self.arch == "teacher":
            raise ConfigError(f"{where}.size: 'fit' sizes a student family; the teacher itself has no knobs to "
                              "size (set size = \"params\" or name a family such as \"cnn\").")


@dataclass
class LossTerm:
    name: str = "kd"
    weight: float = field(1.0, ge=0.0)
    params: dict = field(default_factory=dict)
    warmup_epochs: int = field(0, ge=0)


@dataclass
class ExtraTeacher:
    """One more teacher for multi-teacher KD: an ONNX file or a Python callable (black boxes), or a
    PyTorch checkpoint."""

    path: str = field(help="the .onnx file (kind = 'onnx'), the PyTorch checkpoint (kind = 'torch'), or "
                           "'package.module:function' computing logits from a batch (kind = 'python')")
    kind: Literal["onnx", "torch", "python"] = "onnx"
    arch: Optional[str] = field(None, help="kind = 'torch' only: the registered architecture")
    params: dict = field(default_factory=dict, help="kind = 'torch' only: the architecture's parameters")
    output: Optional[str] = field(None, help="kind = 'onnx' only: the output holding the logits (default: the first)")
    weight: float = field(1.0, ge=0.0)

    def _check(self, where: str) -> None:
        if self.kind == "torch" and not self.arch:
            raise ConfigError(f"{where}.arch: a 'torch' teacher needs its architecture; add arch = \"...\".")


@dataclass
class DistillConfig:
    epochs: int = field(30, ge=0, le=10000)
    lr: float = field(3e-3, gt=0.0, le=10.0)
    weight_decay: float = field(1e-4, ge=0.0)
    optimizer: Optimizer = "adamw"
    scheduler: Scheduler = "cosine"
    alpha: Union[float, Literal["auto"]] = field(
        "auto", ge=0.0, le=1.0, help="weight of the hard-label cross-entropy term; auto: chosen on the validation "
                                     "split among 1 (labels only), 0.5 and 0.1")
    temperature: Union[float, Literal["auto"]] = field(
        "auto", gt=0.0, le=100.0, help="softmax temperature of the soft labels; auto: chosen on the validation split "
                                       "among 1 and 2")
    auto_budget: float = field(0.2, gt=0.0, le=1.0, help="share of the distill stage's training samples the search "
                                                         "for auto alpha / temperature may spend")
    losses: list[LossTerm] = field(default_factory=lambda: [LossTerm()])
    teachers: list[ExtraTeacher] = field(default_factory=list, help="extra teachers, mixed with weights (teacher_mix)")
    teacher_mix: Literal["logits", "losses"] = field(
        "logits", help="several teachers: 'logits' averages their logits with the weights; 'losses' computes each "
                       "output loss once per teacher and averages the losses (not with the cache)")
    teacher_weight: float = field(1.0, ge=0.0, help="weight of the [teacher] model among distill.teachers; 0 leaves it out")
    cache: bool = field(False, help="store the teacher's top-k soft labels once and reuse them every epoch")
    cache_top_k: int = field(50, ge=1, help="probabilities kept per sample by the teacher cache")
    cache_shard_size: int = field(1 << 20, ge=1, help="samples per teacher-cache shard: the unit a torchrun rank "
                                                      "builds and an interrupted build redoes")
    checkpoint_every: int = field(0, ge=0, help="steps between mid-epoch checkpoints (0: end of epoch only)")
    device: Device = field("auto", help="auto: cuda:LOCAL_RANK when CUDA is there (one GPU per torchrun process), else cpu")
    amp: Literal["off", "bf16", "fp16"] = field("off", help="mixed precision: bf16 (CPU or GPU) or fp16 (GPU, with loss "
                                                            "scaling); off keeps fp32")
    accumulate: int = field(1, ge=1, le=4096, help="batches whose gradients add up before each optimiser step "
                                                    "(a larger effective batch in the same memory)")
    augment: bool = field(False, help="random 2-pixel shifts and horizontal flips of image batches, the same view "
                                      "for teacher and student (refused with the cache)")
    warmup: float = field(0.0, ge=0.0, le=1.0, help="share of the steps over which the learning rate ramps up from 0")
    clip_grad_norm: Optional[float] = field(None, gt=0.0, help="clip the gradients to this total norm")


@dataclass
class ExportConfig:
    opset: Optional[int] = field(None, ge=13, le=23, help="ONNX opset (default: the task's; 18, or 17 for transformer "
                                                         "text models, whose graphs ONNX Runtime fuses fully at 17)")
    parity_atol: float = field(1e-4, gt=0.0)
    parity_rtol: float = field(1e-3, ge=0.0)
    parity_samples: int = field(256, ge=1)


@dataclass
class PTQConfig:
    enabled: bool = True
    mode: Literal["auto", "static", "dynamic"] = field(
        "auto", help="static QDQ (calibrated) or dynamic INT8; auto: the task's choice (static for "
                     "classification, dynamic for transformer text models)")
    calibration: Literal["minmax", "mse", "entropy", "percentile"] = field(
        "mse", help="activation ranges: minmax; mse (MinMax narrowed per tensor where that cuts the error); "
                       "entropy / percentile (ONNX Runtime's)")
    percentile: float = field(99.999, gt=50.0, le=100.0)
    samples: int = field(256, ge=1, le=100000)
    per_channel: bool = True
    activation_type: Literal["int8", "uint8"] = "int8"
    reduce_range: bool = False
    equalize: bool = field(True, help="cross-layer equalization of consecutive layers whose tensor a few "
                                      "channels dominate, before quantizing")
    bias_correction: bool = field(True, help="take the quantization error's mean shift out of each layer's bias")
    speed_rules: bool = field(True, help="keep in FP32 the layers whose INT8 kernels are slower on small models "
                                         "(few-channel stem and depthwise prefix, small classifier head)")
    max_drop: Optional[float] = field(None, ge=0.0, le=100.0, help="accuracy points the INT8 model may lose")
    max_fallback_nodes: int = field(10, ge=1, le=1000, help="most activation quantizers the accuracy-aware fallback removes")


@dataclass
class BenchConfig:
    seq_len: int = field(32, ge=1, le=4096, help="sequence length of token inputs (text models)")
    runs: int = field(100, ge=1)
    warmup: int = field(10, ge=0)
    min_seconds: float = field(1.0, ge=0.0)
    batch_size: int = field(1, ge=1)
    ci_tolerance: float = field(0.05, ge=0.0, help="go on until the 95% intervals of p50/p90 are within this fraction (0: off)")
    max_seconds: float = field(10.0, ge=0.0, help="time cap on going on for ci_tolerance, seconds")


@dataclass
class ReportConfig:
    tolerance: float = field(1.0, ge=0.0, le=100.0,
                             help="accuracy points the deliverable may lose against the FP32 student")
    favour: Literal["latency", "size"] = field(
        "latency", help="what the deliverable favours among the students within the budgets and the tolerance: "
                        "'latency' (fastest p90, ties within 5 % broken by size) or 'size' (smallest file, ties by p90)")


@dataclass
class Recipe:
    name: str = "run"
    seed: int = field(0, ge=0)
    target: str = "laptop-x86"
    task: str = field("classification", help="how the model meets every stage (see `edgedistill tasks`)")
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    qat: QATConfig = field(default_factory=QATConfig)
    ptq: PTQConfig = field(default_factory=PTQConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def _check(self, where: str) -> None:
        if not self.name or any(c in self.name for c in "/\\\0"):
            raise ConfigError("name: must be a non-empty string without slashes; it names the run folder.")
        if not self.distill.losses:
            raise ConfigError("distill.losses: the list is empty; add at least one loss, e.g. { name = \"kd\" }.")
        if self.distill.teacher_weight == 0 and not self.distill.teachers:
            raise ConfigError("distill.teacher_weight: 0 leaves no teacher; add [[distill.teachers]] or set it > 0.")

    def to_dict(self) -> dict:
        return _schema.to_dict(self)


def recipe_from_dict(data: dict, source: str = "recipe") -> Recipe:
    try:
        return _schema.from_dict(Recipe, data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_recipe(path: str | None = None) -> Recipe:
    """Load a recipe file (or the built-in digits default when ``path`` is None)."""
    if path is None:
        text = resources.files("edgedistill").joinpath("recipes/default.toml").read_text()
        return recipe_from_dict(_schema.tomllib.loads(text), "built-in default recipe")
    return recipe_from_dict(_schema.load_toml(path, "recipe"), str(path))


def dump_recipe(recipe: Recipe) -> str:
    return _schema.dump_toml(recipe.to_dict())
