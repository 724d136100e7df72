"""Perceptual distances for Stable Diffusion's autoencoder loss: two that need no download, and LPIPS.

Each is a module (x_hat, x) -> (B,) with x the reference, differentiable in x_hat, that
`autoencoder_loss` adds to every entry of the per-pixel reconstruction cost, as LDM adds LPIPS (a
spatial mean per image) to every entry of |x - x_hat|.

Watson's perceptual model in DFT space (Czolbe, Krause, Cox, Igel: "A Loss Function for
Generative Neural Networks Based on Watson's Perceptual Model", NeurIPS 2020), with the initial
parameters the paper starts its training from, so nothing is fitted or fetched:

    c = rfft2(8x8 block) / 64                  per block k of each YCbCr channel of x (target) and x_hat
    t_l[k, f] = t[f] * (|c_k0| / mean_k |c_k0|)^alpha           luminance masking (c_k0: the block's DC term)
    s[k, f]   = smoothmax(t_l, |c_kf|^w * t_l^(1 - w))         contrast masking
    D_amp     = (sum_k,f |(|c_hat| - |c|) / s|^beta)^(1/beta)   Minkowski pooling
    D_phase   = sum_k,f w_phase[f] * angle(c_hat, c)            phase term (the angle between the two)
    D         = sum over Y, Cb, Cr of (D_amp + D_phase) / 3, returned per pixel: D / (H W)

with t = 1 (a uniform table), alpha = 0.1, w = 0.2, beta = 1 and w_phase = exp(-2) (zero for the
real coefficients, whose phase is 0 or pi). smoothmax(a, b) = (a e^a + b e^b) / (e^a + e^b).
Images arrive in [-1, 1] and are mapped to [0, 1] first, as the paper's model expects. D is a sum
over the image's blocks; divided by the pixel count and added to each of the C H W entries, it
adds C D to the image's loss. Unlike the reference code, the mean DC amplitude is taken per image,
not over the batch, so an image's distance does not depend on the batch it is in (and on the
number of processes).

`FeatureDistance`: LPIPS's form (Zhang et al., "The Unreasonable Effectiveness of Deep Features
as a Perceptual Metric", CVPR 2018, eq. (1)) in the stages of a classifier trained here
(`sdlab-train-classifier`), without LPIPS's learned per-channel weights (its "baseline" variant):

    d(x_hat, x) = (1/L) sum_l mean_hw || u(f_l(x_hat))_hw - u(f_l(x))_hw ||^2,   u(v) = v / (||v|| + eps)

f_l the l-th stage's feature map and u the unit vector along its channels, so each stage
contributes 2 - 2 cos(angle) per location, in [0, 4]. A classifier used here must never be the
one that scores the autoencoder (`sdlab-eval-vae --classifier` refuses it).

`lpips_distance`: LPIPS itself (VGG16 with its calibrated weights, the `lpips` package), for
users who have torchvision's ImageNet VGG16 weights file; it cannot be downloaded offline.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .classifier import Classifier
from .errors import UserError, first_line

BLOCK = 8
EPS = 1e-10
PHASE_EPS = 1e-12     # atan2's gradient at (0, PHASE_EPS) stays finite in float32 (PHASE_EPS^2 is a normal float)
# rows of ITU-R BT.601 RGB -> YCbCr (the offsets do not change a difference and are left out)
YCBCR = ((0.299, 0.587, 0.114), (-0.1687, -0.3313, 0.5), (0.5, -0.4187, -0.0813))


def block_rfft(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> the real 2-D DFT of every non-overlapping 8x8 block, divided by 64:
    complex (B, C, K, 8, 5) with K = (H / 8) (W / 8) blocks."""
    B, C, H, W = x.shape
    if H % BLOCK or W % BLOCK:
        raise ValueError(f"Watson's distance needs sides divisible by {BLOCK} (got {H}x{W})")
    blocks = x.reshape(B, C, H // BLOCK, BLOCK, W // BLOCK, BLOCK).permute(0, 1, 2, 4, 3, 5)
    return torch.fft.rfft2(blocks.reshape(B, C, -1, BLOCK, BLOCK).float()) / BLOCK**2


def smoothmax(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a and b weighted by softmax(a, b): a smooth, differentiable max."""
    weights = torch.softmax(torch.stack([a, b]), dim=0)
    return a * weights[0] + b * weights[1]


class WatsonDFT(nn.Module):
    """D(x_hat, x) / (H W) per image (B,), x the reference; differentiable in x_hat, no trained weights."""

    def __init__(self):
        super().__init__()
        freq = (BLOCK, BLOCK // 2 + 1)
        self.register_buffer("ycbcr", torch.tensor(YCBCR))
        self.register_buffer("t", torch.ones(3, *freq))               # sensitivity table, per channel
        self.alpha, self.w, self.beta = 0.1, 0.2, 1.0
        phase = torch.full((3, *freq), torch.e ** -2)
        real = torch.zeros(freq, dtype=torch.bool)                    # coefficients without a phase
        real[0::BLOCK // 2, 0::BLOCK // 2] = True
        self.register_buffer("w_phase", phase.masked_fill(real, 0.0))

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        to_ycbcr = lambda im: torch.einsum("oc,bchw->bohw", self.ycbcr, (im.float() + 1) / 2)
        c_hat, c = block_rfft(to_ycbcr(x_hat)), block_rfft(to_ycbcr(x))
        amp_hat, amp = (v.abs().clamp_min(EPS) for v in (c_hat, c))
        dc = amp[..., 0, 0]                                           # (B, 3, K)
        t_l = self.t[None, :, None] * ((dc + EPS) / (dc.mean(-1, keepdim=True) + EPS)).pow(self.alpha)[..., None, None]
        s = smoothmax(t_l, amp.pow(self.w) * t_l.pow(1 - self.w))
        d_amp = ((amp_hat - amp) / s).abs().add(EPS).pow(self.beta).sum((2, 3, 4)).pow(1 / self.beta)
        # the angle between the two coefficients, in [0, pi]: 0 where either is zero (no phase;
        # a flat 8x8 block of the target, as JPEG makes them, has every AC coefficient exactly 0)
        prod = c_hat * c.conj()
        angle = torch.atan2(prod.imag.abs(), prod.real + PHASE_EPS)
        d_phase = (angle * self.w_phase[None, :, None]).sum((2, 3, 4))
        return (d_amp + d_phase).mean(1) / (x.shape[-2] * x.shape[-1])


class FeatureDistance(nn.Module):
    """d(x_hat, x) of the module docstring in a trained `Classifier`'s stages, per image (B,);
    the classifier is frozen (eval mode, no gradients into it)."""

    EPS = 1e-10

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.net = classifier.eval().requires_grad_(False)

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        unit = lambda f: f / (f.norm(dim=1, keepdim=True) + self.EPS)
        with torch.no_grad():
            targets = self.net.stage_outputs(x.float())
        stages = self.net.stage_outputs(x_hat.float())
        return sum((unit(a) - unit(b)).pow(2).sum(1).mean((1, 2)) for a, b in zip(stages, targets)) / len(stages)


VGG16_FILE = "vgg16-397923af.pth"


def default_vgg16_path() -> Path:
    """Where torchvision keeps its ImageNet VGG16 weights once downloaded (torch's hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


class LPIPSDistance(nn.Module):
    """The `lpips` package's LPIPS-VGG (calibrated weights from the package) as (x_hat, x) -> (B,)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.net = model.eval().requires_grad_(False)

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.net(x_hat.float(), x.float()).flatten()      # both in [-1, 1], as it expects


def lpips_distance(weights: str = "") -> LPIPSDistance:
    """LPIPS-VGG with the ImageNet VGG16 backbone read from `weights` (torchvision's
    vgg16-397923af.pth; default: torch's hub cache) and its linear weights from the `lpips` wheel.
    Nothing is downloaded: a missing package or file is a UserError naming it."""
    try:
        import lpips
    except ImportError:
        raise UserError("--perceptual lpips needs the lpips package: pip install lpips "
                        "(or use --perceptual watson or classifier, which need no download)") from None
    path = Path(weights) if weights else default_vgg16_path()
    if not path.is_file():
        raise UserError(f"--perceptual lpips: VGG16's ImageNet weights are not at {path}; copy torchvision's "
                        f"{VGG16_FILE} there or pass --perceptual-net FILE (it cannot be downloaded offline)")
    with warnings.catch_warnings():            # torchvision's notes on lpips' use of the old `pretrained` argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)   # pnet_rand: no download of the backbone
    source = lambda key: "features." + key.split(".", 1)[1]         # lpips' "slice<k>.<i>.weight"
    try:
        backbone = torch.load(path, map_location="cpu", weights_only=True)
        model.net.load_state_dict({key: backbone[source(key)] for key in model.net.state_dict()})
    except Exception as err:       # unreadable, or not VGG16's features (a missing key, a shape)
        raise UserError(f"--perceptual-net {path}: not torchvision's VGG16 weights ({first_line(err)})") from None
    return LPIPSDistance(model)
