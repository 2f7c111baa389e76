"""LPIPS (AlexNet, v0.1) via the `lpips` package, with torchvision's ImageNet AlexNet as its backbone.

`lpips.LPIPS(net='alex')` asks torchvision for the ImageNet AlexNet, which torch.hub downloads into its cache on first
use. We do the same, in steps we control: build lpips with pnet_rand=True (random backbone, nothing fetched), let it
load its linear heads (they ship inside the package), and copy the backbone weights in from torchvision's file:
an explicit path (`--lpips-weights`, for machines without a network), else torch's hub cache, downloaded there on
first use with torch.hub's downloader and hash check (not when MAGVIT3D_OFFLINE is set). When none of that works,
LPIPS is reported unavailable with a one-line reason, never a made-up number.
It lives in training (the perceptual loss) and evaluation imports it from here (the metric).

    metric = load_lpips()              # or load_lpips("/data/alexnet-owt-7be5be79.pth")
    if metric.available:
        d = metric.per_clip(a, b)      # uint8 (N, T, H, W, 3) -> (N,)
    else:
        print("LPIPS unavailable:", metric.reason)
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch

MIN_SIDE = 31  # AlexNet's first five layers (as lpips slices them) need at least 31x31 inputs
OFFLINE_ENV = "MAGVIT3D_OFFLINE"   # set (e.g. to 1): never download; the test suite sets it


def alexnet_weights_name() -> str:
    """File name torchvision caches AlexNet_Weights.IMAGENET1K_V1 under (alexnet-owt-7be5be79.pth)."""
    from torchvision.models import AlexNet_Weights

    return AlexNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]


def alexnet_weights_url() -> str:
    from torchvision.models import AlexNet_Weights

    return AlexNet_Weights.IMAGENET1K_V1.url


def default_weights_path() -> Path:
    """Where torch.hub (and so torchvision) caches the AlexNet weights: <torch hub dir>/checkpoints/<name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / alexnet_weights_name()


def download_weights(path: Path, log=lambda message: None) -> str | None:
    """Download torchvision's AlexNet weights to `path` as torchvision would (torch.hub's downloader, checking the
    SHA-256 prefix in the file name; it writes a temp file and renames it, so nothing half-written stays).
    None when the file is there, else the one-line reason it is not."""
    url = alexnet_weights_url()
    if os.environ.get(OFFLINE_ENV):
        return f"{OFFLINE_ENV} is set, so they are not downloaded from {url}"
    log(f"downloading the AlexNet weights for LPIPS (233 MB, once) from {url} to {path}")
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), torch.hub.HASH_REGEX.search(path.name).group(1),
                                       progress=False)
    except (OSError, RuntimeError, ValueError) as e:   # no network, HTTP error, disk full, wrong hash
        for folder in made:   # the cache folders this attempt created, innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        return f"the download from {url} failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return None


class LpipsMetric:
    """LPIPS with its backbone provenance. `available` False means `reason` says why and per_clip refuses."""

    def __init__(self, net=None, backbone: str = "", reason: str = ""):
        self.net, self.backbone, self.reason = net, backbone, reason

    @property
    def available(self) -> bool:
        return self.net is not None

    def __repr__(self) -> str:
        return f"LpipsMetric({self.backbone})" if self.available else f"LpipsMetric(unavailable: {self.reason})"

    @torch.no_grad()
    def per_clip(self, a: np.ndarray, b: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """a, b: uint8 (N, T, H, W, 3) -> (N,) LPIPS per frame on [-1, 1], averaged over frames."""
        if not self.available:
            raise RuntimeError(f"LPIPS unavailable: {self.reason}")
        if a.shape != b.shape or a.ndim != 5 or a.shape[-1] != 3:
            raise ValueError(f"expected two uint8 (N, T, H, W, 3) arrays of one shape, got {a.shape} and {b.shape}")
        if a.dtype != np.uint8 or b.dtype != np.uint8:
            raise ValueError(f"expected uint8 clips, got {a.dtype} and {b.dtype}")
        N, T, H, W, _ = a.shape
        if min(H, W) < MIN_SIDE:
            raise ValueError(f"LPIPS (AlexNet) needs frames of at least {MIN_SIDE}x{MIN_SIDE} px, got {W}x{H}")
        device = next(self.net.parameters()).device
        fa, fb = a.reshape(N * T, H, W, 3), b.reshape(N * T, H, W, 3)
        out = []
        for i in range(0, N * T, batch_size):
            x, y = (torch.from_numpy(np.ascontiguousarray(f[i:i + batch_size])).to(device)
                    .permute(0, 3, 1, 2).float() / 127.5 - 1.0 for f in (fa, fb))
            out.append(self.net(x, y).flatten().double().cpu())
        return torch.cat(out).numpy().reshape(N, T).mean(axis=1)


def _build(seed: int):
    """lpips.LPIPS with the package's linear heads and a random AlexNet backbone (nothing downloaded)."""
    import lpips

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)  # the random backbone is reproducible and the caller's RNG is untouched
        warnings.filterwarnings("ignore", message=".*deprecated.*")  # lpips still passes pretrained= to torchvision
        net = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    # lpips loads its heads with strict=False, so a key mismatch (e.g. use_dropout=False) would silently leave
    # them random: check they really are the shipped ones.
    heads_file = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    heads = torch.load(heads_file, map_location="cpu", weights_only=True)
    state = net.state_dict()
    if not all(k in state and torch.equal(state[k], v) for k, v in heads.items()):
        raise RuntimeError(f"lpips did not load its linear heads from {heads_file}")
    return net.eval().requires_grad_(False)


def _load_backbone(net, path: Path) -> None:
    """Copy torchvision AlexNet `features` weights from `path` into lpips' slices (strict: keys and shapes)."""
    from torchvision.models import alexnet

    ref = alexnet(weights=None)
    ref.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    for s in (net.net.slice1, net.net.slice2, net.net.slice3, net.net.slice4, net.net.slice5):
        for name, layer in s.named_children():  # lpips names each layer by its index in alexnet.features
            layer.load_state_dict(ref.features[int(name)].state_dict())


def load_lpips(weights_path: str | Path | None = None, *, random_backbone: bool = False, device="cpu",
               seed: int = 0, log=lambda message: None) -> LpipsMetric:
    """LPIPS-AlexNet with the ImageNet backbone from `weights_path`, else torch's hub cache, downloaded there when it
    is not yet (see download_weights); unavailable, with the reason, when the file is absent or unreadable. An
    explicit path is used alone, never silently replaced. `log` gets a line before a download starts.

    random_backbone=True is for tests only: the backbone stays randomly initialised (seeded), so the values are
    NOT LPIPS and must never be reported as such; `backbone` says so.
    """
    if random_backbone:
        net = _build(seed)
        return LpipsMetric(net.to(device), backbone=f"RANDOM AlexNet backbone (seed {seed}); test only, not LPIPS")
    name, how = alexnet_weights_name(), "from"
    path = Path(weights_path) if weights_path is not None else default_weights_path()
    if weights_path is not None and not path.is_file():
        return LpipsMetric(reason=f"AlexNet weights {name} not found at {path}")
    if weights_path is None and not path.is_file():
        failed = download_weights(path, log)
        if failed:
            return LpipsMetric(reason=f"AlexNet weights {name} are not in the torch hub cache ({path}) and {failed}; "
                                      f"pass --lpips-weights PATH with a copy of the file")
        how = "downloaded to"
    net = _build(seed)
    try:
        _load_backbone(net, path)
    except Exception as e:  # unreadable, truncated, or not an AlexNet state dict
        msg = " ".join(str(e).split())[:300]
        return LpipsMetric(reason=f"cannot load AlexNet weights from {path}: {type(e).__name__}: {msg}")
    return LpipsMetric(net.to(device), backbone=f"ImageNet AlexNet {how} {path}")
