"""The torch models ``hardscore-export`` builds: torchvision's ResNet50 in the ImageNet or the
CIFAR layout, randomly initialised, and each layout's defaults for the model directory (class
count, input size in pixels, per-channel mean/std in pixel/255 units, resize rule); and any
classifier wrapped to return its embedding (the input of its final ``Linear``) beside its
logits.

torch and torchvision are imported inside the functions (the ``export`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hardscore_server.model.model_dir import RESIZE_EXACT, RESIZE_SHORTER_CENTER_CROP
from hardscore_server.tools.export_extra import ExportError, import_torch, import_torchvision

if TYPE_CHECKING:
    import torch

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

LAYOUTS = ("imagenet", "cifar")
CIFAR_MAXPOOL_CHOICES = ("keep", "identity")
LAYOUT_DEFAULTS: dict[str, dict[str, Any]] = {
    "imagenet": {
        "num_classes": 1000,
        "input_size": (224, 224),
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "resize": RESIZE_SHORTER_CENTER_CROP,
    },
    "cifar": {
        "num_classes": 10,
        "input_size": (32, 32),
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "resize": RESIZE_EXACT,
    },
}
"""Per layout: ``num_classes``, ``input_size`` (height, width), ``mean``, ``std``, ``resize``."""


def build_resnet50(
    layout: str, num_classes: int, *, cifar_maxpool: str = "keep"
) -> torch.nn.Module:
    """A randomly initialised torchvision ResNet50 (never downloads weights).

    ``layout="imagenet"``: torchvision's resnet50 as is. ``layout="cifar"``: conv1 replaced by a
    3x3 stride-1 padding-1 convolution without bias, the layout of huyvnphan/PyTorch_CIFAR10;
    ``cifar_maxpool="keep"`` keeps the stem max-pool as that repository does (its checkpoints
    need it), ``"identity"`` removes it (the other common CIFAR variant). Parameter names are
    torchvision's either way.
    """
    torch = import_torch()
    torchvision = import_torchvision()
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if cifar_maxpool not in CIFAR_MAXPOOL_CHOICES:
        raise ExportError(
            f"unknown cifar maxpool option {cifar_maxpool!r}; "
            f"expected one of {', '.join(CIFAR_MAXPOOL_CHOICES)}"
        )
    if num_classes < 2:
        raise ExportError(f"num_classes must be at least 2, got {num_classes}")
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if layout == "cifar":
        model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        torch.nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        if cifar_maxpool == "identity":
            model.maxpool = torch.nn.Identity()
    return model


def classifier_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model's final classifier layer: its ``fc`` attribute when that is a ``Linear``
    (torchvision ResNets), else the last ``Linear`` it registers (``classifier`` heads of
    other torchvision models, ``nn.Sequential`` models); None when it has no ``Linear``."""
    torch = import_torch()
    fc = getattr(model, "fc", None)
    if isinstance(fc, torch.nn.Linear):
        return fc
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return linears[-1] if linears else None


def with_embedding(model: torch.nn.Module, head: torch.nn.Module) -> torch.nn.Module:
    """``model`` wrapped to return (logits, embedding): the embedding is what ``head`` (its
    final classifier layer, see :func:`classifier_head`) receives, flattened to [N, D]: for
    ResNets the global-average-pooled features (2048 for ResNet50). A forward pre-hook on
    ``head`` catches it; call the wrapper's ``remove()`` to take the hook off ``model``."""
    torch = import_torch()

    class WithEmbedding(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self._features: list[Any] = []
            self._handle = head.register_forward_pre_hook(self._catch)

        def _catch(self, _module: Any, args: tuple[Any, ...]) -> None:
            self._features.append(args[0])

        def forward(self, x: Any) -> tuple[Any, Any]:
            self._features.clear()
            logits = self.model(x)
            if not self._features:
                raise ExportError("the classifier layer did not run: no embedding to export")
            features = self._features[-1]
            self._features.clear()
            return logits, torch.flatten(features, 1)

        def remove(self) -> None:
            self._handle.remove()

    return WithEmbedding().eval()
