"""Feature extractors for FID / KID / precision-recall, and the class-accuracy classifier.

Two kinds, one interface (:class:`FeatureExtractor`: images in [-1, 1] NCHW -> N x D features):

* a small domain classifier (3 conv blocks, 128-d embedding) trained on the evaluation dataset with
  ``vqldm evaluate train-features`` (:mod:`.feature_training`); its logits give ``classify``. Its
  features are the embedding, and in the detail-sensitive version (what ``train-features`` trains now)
  also the spatial spread of each channel of the first block's two conv activations, every feature
  standardised by its spread over the training images. The first version, the embedding alone, cannot
  tell a 0.5 px blur from real images at a few hundred samples; the detail-sensitive one puts it ~12x
  above the real-vs-real floor at 500 images. Saved as ``model.safetensors`` + ``config.json``. The
  package ships two trained on Fashion-MNIST in ``evaluation/networks/``, one folder per name:
  ``fashion-mnist-detail`` (``DEFAULT_FEATURES``, the default of every ``vqldm evaluate``) and
  ``fashion-mnist-classifier`` (the first version, kept because archived figures were measured with it
  and say so). Numbers are comparable only between measurements with the *same* file.
* Inception-v3 with the standard FID weights (pool3, 2048-d), through torchmetrics / torch-fidelity, when
  torch-fidelity is installed and its weights are in the torch hub cache or downloadable. Offline without
  them it is a one-line error — never a silent switch to other features.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..plumbing.checkpoint import AtomicDir, load_safetensors
from ..plumbing.errors import UserError
from ..plumbing.runs import bar_disable

NETWORKS_DIR = Path(__file__).resolve().parent / "networks"  # the shipped feature networks, one folder per name
DEFAULT_FEATURES = "fashion-mnist-detail"  # detail-sensitive: sees a 0.5 px blur (the default since issue 11)
SHIPPED_FEATURES = (DEFAULT_FEATURES, "fashion-mnist-classifier")  # the second: the first version, for archived figures
INCEPTION = "inception"
FEATURE_NAMES = (*SHIPPED_FEATURES, INCEPTION)
TRAIN_FEATURES_HINT = "train one with `vqldm evaluate train-features`"
FID_INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception weights


# ----------------------------------------------------------------------------- domain classifier
@dataclass
class DomainClassifierConfig:
    """Shape of the domain classifier; saved beside its weights."""

    image_size: int = 32
    channels: int = 1
    num_classes: int = 10
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    feature_dim: int = 128
    class_names: list[str] = field(default_factory=list)
    # Detail-sensitive features (0 / False: the first shipped classifier's 128-d embedding alone). The
    # per-channel spatial standard deviation of the first ``detail_layers`` conv activations (edge and
    # texture energy, which blur lowers and noise raises) joins the embedding, and ``standardize`` puts every
    # feature in units of its spread over the training images (stored with the weights), so the few detail
    # features are not drowned by the embedding's larger scale in a Frechet distance.
    detail_layers: int = 0
    standardize: bool = False


class DomainClassifier(nn.Module):
    """conv-BN-ReLU x2 + 2x2 max-pool per block, global average pool, 128-d embedding, class logits.

    ``features``: the embedding, plus the detail statistics and standardisation the config asks for."""

    def __init__(self, cfg: DomainClassifierConfig):
        super().__init__()
        self.cfg = cfg
        blocks, c_in = [], cfg.channels
        relu_widths = []
        for width in cfg.widths:
            blocks += [
                nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            relu_widths += [width, width]
            c_in = width
        if not 0 <= cfg.detail_layers <= len(relu_widths):
            raise ValueError(f"detail_layers must be between 0 and {len(relu_widths)}, got {cfg.detail_layers}")
        self.body = nn.Sequential(*blocks)
        self.embed = nn.Linear(c_in, cfg.feature_dim)
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)
        self.feature_size = cfg.feature_dim + sum(relu_widths[: cfg.detail_layers])
        if cfg.standardize:  # filled in after training (set_feature_statistics)
            self.register_buffer("feature_mean", torch.zeros(self.feature_size))
            self.register_buffer("feature_std", torch.ones(self.feature_size))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images of any size / channel count -> the classifier's size and channels."""
        x = images.float()
        if x.shape[1] != self.cfg.channels:
            if self.cfg.channels == 1:  # ITU-R 601 luma
                x = (x[:, :3] * torch.tensor([0.299, 0.587, 0.114], device=x.device)[None, :, None, None]).sum(1, keepdim=True)
            else:
                x = x.repeat(1, self.cfg.channels, 1, 1)
        if x.shape[-1] != self.cfg.image_size or x.shape[-2] != self.cfg.image_size:
            x = F.interpolate(x, size=(self.cfg.image_size, self.cfg.image_size), mode="bilinear", align_corners=False, antialias=True)
        return x

    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B x feature_dim embedding, [B x C detail statistic of each of the first detail_layers activations])"""
        h, details = self.prepare(images), []
        for layer in self.body:
            h = layer(h)
            if isinstance(layer, nn.ReLU) and len(details) < self.cfg.detail_layers:
                details.append(h.flatten(2).std(dim=2))  # B x C: spatial spread of each channel
        return F.relu(self.embed(h.mean(dim=(2, 3)))), details  # global average pool -> embedding

    def raw_features(self, images: torch.Tensor) -> torch.Tensor:
        embedding, details = self._embed(images)
        return torch.cat([embedding, *details], dim=1)  # B x feature_size

    def features(self, images: torch.Tensor) -> torch.Tensor:
        f = self.raw_features(images)
        return (f - self.feature_mean) / self.feature_std if self.cfg.standardize else f

    @torch.no_grad()
    def set_feature_statistics(self, raw: torch.Tensor) -> None:
        """Standardise with the mean and spread of ``raw`` (N x feature_size raw features of training images)."""
        std = raw.std(0)
        # a unit that barely varies on real images (a ReLU that is almost never on) is left in its own units:
        # divided by its tiny spread, any activation of it on other images would swamp every other feature
        std = torch.where(std > 1e-3 * std.max(), std, torch.ones_like(std))
        self.feature_mean.copy_(raw.mean(0))
        self.feature_std.copy_(std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self._embed(images)[0])  # B x num_classes


class FeatureExtractor:
    """Batched, no-grad wrapper: ``extractor(images) -> N x D`` for [-1, 1] NCHW images (any N)."""

    name: str = ""
    dim: int = 0
    num_classes: int | None = None

    def __init__(self, batch_size: int = 250, device: torch.device | str = "cpu"):
        self.batch_size = batch_size
        self.device = torch.device(device)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, progress: bool = False, desc: str = "features") -> torch.Tensor:
        out = []
        for start in tqdm(range(0, images.shape[0], self.batch_size), desc=desc, disable=bar_disable(progress), leave=False):
            out.append(self._features(images[start : start + self.batch_size].to(self.device)).double().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim, dtype=torch.float64)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        raise UserError(f"the {self.name} features have no class head; use a domain classifier's features")


class DomainFeatures(FeatureExtractor):
    def __init__(self, model: DomainClassifier, name: str, batch_size: int = 250, device="cpu"):
        super().__init__(batch_size, device)
        self.model = model.to(self.device).eval()
        self.name = name
        self.dim = model.feature_size
        self.num_classes = model.cfg.num_classes
        self.class_names = list(model.cfg.class_names)

    def _features(self, x):
        return self.model.features(x)

    @torch.inference_mode()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted class per image (LongTensor N) for [-1, 1] images."""
        out = []
        for start in range(0, images.shape[0], self.batch_size):
            out.append(self.model(images[start : start + self.batch_size].to(self.device)).argmax(dim=1).cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def save_domain_classifier(model: DomainClassifier, out: str | Path, extra: dict | None = None) -> Path:
    """Write ``out/model.safetensors`` + ``out/config.json`` as one atomic folder swap."""
    from safetensors.torch import save_file

    out = Path(out)
    with AtomicDir(out) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        meta = {"kind": "vqldm-domain-classifier", "config": asdict(model.cfg), **(extra or {})}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def load_domain_classifier(folder: str | Path) -> DomainClassifier:
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file() or not (folder / "model.safetensors").is_file():
        raise UserError(f"{str(folder)!r} is not a feature-network folder (needs config.json + model.safetensors); {TRAIN_FEATURES_HINT}")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg = DomainClassifierConfig(**meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{str(cfg_path)!r} is not a valid classifier config ({err}); {TRAIN_FEATURES_HINT}") from None
    model = DomainClassifier(cfg)
    try:
        model.load_state_dict(load_safetensors(folder / "model.safetensors"))
    except RuntimeError as err:
        raise UserError(f"weights in {str(folder)!r} do not match its config.json ({str(err).splitlines()[0][:100]}); retrain it") from None
    return model.eval()


@torch.inference_mode()
def classifier_accuracy(model: DomainClassifier, data, batch_size: int = 500, max_images: int | None = None) -> float:
    """Share of the first ``max_images`` images of ``data`` (a split) the classifier labels correctly."""
    model.eval()
    n = len(data) if max_images is None else min(len(data), max_images)
    correct = 0
    for x, y in data.batches(batch_size, n):
        correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / max(n, 1)


# ----------------------------------------------------------------------------- Inception (FID standard)
class InceptionFeatures(FeatureExtractor):
    name = "inception-v3-fid"
    dim = 2048

    def __init__(self, module: nn.Module, batch_size: int = 100, device="cpu"):
        super().__init__(batch_size, device)
        self.module = module.to(self.device).eval()

    def _features(self, x):
        x = x.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        uint8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # the FID network expects uint8 RGB
        return self.module(uint8).reshape(x.shape[0], -1)


def load_inception(batch_size: int = 100, device="cpu") -> InceptionFeatures:
    """torchmetrics' FID Inception-v3 (torch-fidelity weights); a UserError when unavailable."""
    hint = f"or use the {DEFAULT_FEATURES} features (or a folder from `vqldm evaluate train-features`)"
    try:
        import torch_fidelity  # noqa: F401
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError:
        raise UserError(f"the inception features need torch-fidelity (pip install torch-fidelity) and the FID Inception weights; {hint}") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / FID_INCEPTION_WEIGHTS
    try:
        module = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
    except Exception as err:  # offline: the weights cannot be downloaded
        raise UserError(f"FID Inception weights unavailable ({type(err).__name__}); put {FID_INCEPTION_WEIGHTS} in {cached.parent} (downloaded once when online), {hint}") from None
    return InceptionFeatures(module, batch_size, device)


# ----------------------------------------------------------------------------- entry point
def load_feature_extractor(name_or_path: str | None = None, batch_size: int = 250, device="cpu") -> FeatureExtractor:
    """``None``: the default network (``DEFAULT_FEATURES``); a shipped network by its name
    (``fashion-mnist-detail``, ``fashion-mnist-classifier``); ``inception``: FID Inception-v3; otherwise a folder
    written by ``vqldm evaluate train-features``."""
    name = DEFAULT_FEATURES if name_or_path is None else str(name_or_path)
    if name == INCEPTION:
        return load_inception(min(batch_size, 100), device)
    if name in SHIPPED_FEATURES:
        folder = NETWORKS_DIR / name
        if not (folder / "config.json").is_file():
            raise UserError(f"no shipped feature network in {folder}; {TRAIN_FEATURES_HINT} and use its folder")
        return DomainFeatures(load_domain_classifier(folder), name, batch_size, device)
    path = Path(name).expanduser()
    if not path.exists():
        raise UserError(f"feature network {name!r} not found: neither {', '.join(FEATURE_NAMES)} nor a folder; {TRAIN_FEATURES_HINT}")
    return DomainFeatures(load_domain_classifier(path), f"domain-classifier:{path.resolve()}", batch_size, device)
