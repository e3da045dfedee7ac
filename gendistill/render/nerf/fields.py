"""Radiance fields from nerfstudio's field components: one encoder and two small MLP heads.

A field lives in the axis-aligned cube ``[-bound, bound]^3`` of the world. Positions are normalised into it
(``u = x / bound`` in [-1, 1]) and encoded by one of four encoders:

==============  =====================================================  ==========================
architecture    encoder (``nerfstudio.field_components.encodings``)    encoder input
==============  =====================================================  ==========================
``mlp``         NeRFEncoding (sin/cos of 2^k 2 pi x, plus x)            ``(u + 1) / 2`` in [0, 1]
``tensorf-vm``  TensorVMEncoding (3 planes x 3 lines)                   ``u`` in [-1, 1]
``tensorf-cp``  TensorCPEncoding (3 lines, product)                     ``u`` in [-1, 1]
``hashgrid``    HashEncoding(implementation="torch") (Instant-NGP)      ``(u + 1) / 2`` in [0, 1]
==============  =====================================================  ==========================

The encoder output (:meth:`RadianceField.features`) feeds a density MLP whose first output is the raw
density and whose other ``geo_feat_dim`` outputs feed a colour MLP (with the view direction's SH encoding
when ``view_dependent``). Density is ``trunc_exp(raw - 1)``, zero outside the cube; colour is a sigmoid.

nerfstudio is an optional dependency (``pip install gendistill[nerf]``); it is imported when a field is built.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gendistill.errors import UserError, check_choice, check_range

ARCHITECTURES = ("mlp", "tensorf-vm", "tensorf-cp", "hashgrid")
"""The field architectures :func:`build_field` knows."""


@dataclass
class MLPEncodingSizes:
    """Sizes of the ``mlp`` architecture (NeRF's positional encoding)."""

    num_frequencies: int = 6
    """Frequencies per axis: 2^0 ... 2^(n-1) times 2 pi."""
    head_lr: float = 1e-2
    """Suggested Adam learning rate of the heads, in place of FieldConfig.head_lr: this encoder has no
    parameters, so the heads learn everything."""


@dataclass
class TensorVMSizes:
    """Sizes of the ``tensorf-vm`` architecture (TensoRF vector-matrix decomposition)."""

    resolution: int = 64
    """Grid cells per axis of each plane and line."""
    num_components: int = 8
    """Components per plane/line pair; the encoder outputs 3 x this."""
    encoder_lr: float = 2e-2
    """Suggested Adam learning rate of the planes and lines."""


@dataclass
class TensorCPSizes:
    """Sizes of the ``tensorf-cp`` architecture (TensoRF CANDECOMP/PARAFAC decomposition)."""

    resolution: int = 64
    """Grid cells per line."""
    num_components: int = 48
    """Rank-one components; the encoder outputs this many features."""
    init_scale: float = 0.2
    """Standard deviation of the initial line values (a feature is a product of three of them)."""
    encoder_lr: float = 5e-2
    """Suggested Adam learning rate of the lines."""


@dataclass
class HashGridSizes:
    """Sizes of the ``hashgrid`` architecture (Instant-NGP multiresolution hash encoding, torch version)."""

    num_levels: int = 8
    """Grid levels from min_res to max_res (geometric)."""
    min_res: int = 16
    """Coarsest grid resolution per axis."""
    max_res: int = 256
    """Finest grid resolution per axis."""
    log2_hashmap_size: int = 15
    """Each level's table has 2^this entries."""
    features_per_level: int = 2
    """Features stored per entry; the encoder outputs num_levels x this."""
    encoder_lr: float = 3e-2
    """Suggested Adam learning rate of the hash tables."""


@dataclass
class FieldConfig:
    """What a radiance field is: its architecture, the cube it lives in and its sizes."""

    architecture: str = "hashgrid"
    """One of ARCHITECTURES: mlp, tensorf-vm, tensorf-cp, hashgrid."""
    bound: float = 1.5
    """Half the side of the axis-aligned cube, centred at the origin, that holds the scene."""
    hidden_width: int = 64
    """Width of the hidden layers of both heads."""
    density_layers: int = 2
    """Layers of the density head (the last one is linear)."""
    color_layers: int = 2
    """Layers of the colour head (the last one is linear, then a sigmoid)."""
    geo_feat_dim: int = 15
    """Features the density head passes to the colour head."""
    view_dependent: bool = False
    """Feed the view direction (SH degree 3) to the colour head; the shapes world is Lambertian, so off."""
    head_lr: float = 1e-2
    """Suggested Adam learning rate of the MLP heads."""
    mlp: MLPEncodingSizes = field(default_factory=MLPEncodingSizes)
    """Sizes used when architecture is mlp."""
    tensorf_vm: TensorVMSizes = field(default_factory=TensorVMSizes)
    """Sizes used when architecture is tensorf-vm."""
    tensorf_cp: TensorCPSizes = field(default_factory=TensorCPSizes)
    """Sizes used when architecture is tensorf-cp."""
    hashgrid: HashGridSizes = field(default_factory=HashGridSizes)
    """Sizes used when architecture is hashgrid."""

    def __post_init__(self) -> None:
        check_choice("architecture", self.architecture, ARCHITECTURES)
        check_range("bound", self.bound, 1e-6, None)
        for name in ("hidden_width", "density_layers", "color_layers", "geo_feat_dim"):
            check_range(name, getattr(self, name), 1, None)

    @property
    def sizes(self):
        """The sizes section of the chosen architecture."""
        return getattr(self, self.architecture.replace("-", "_"))


class _TruncExp(torch.autograd.Function):
    """exp whose gradient uses exp(min(x, 15)): Instant-NGP's density activation, stable under big logits."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    """exp(x) with a gradient clipped at x = 15."""
    return _TruncExp.apply(x)


def _nerfstudio():
    """The nerfstudio modules fields need, or a UserError that says how to install them."""
    from gendistill.compat.torchvision_ops import define_missing_torchvision_ops

    define_missing_torchvision_ops()  # nerfstudio imports torchvision, which needs it under CPU torch
    try:
        from nerfstudio.field_components import encodings, mlp
    except ImportError:
        raise UserError("radiance fields need nerfstudio's field components: pip install 'gendistill[nerf]'") from None
    return encodings, mlp


class RadianceField(nn.Module):
    """Density and colour at world positions in the cube ``[-bound, bound]^3`` (see the module docstring)."""

    def __init__(self, config: FieldConfig) -> None:
        super().__init__()
        encodings, mlp = _nerfstudio()
        self.config = config
        self.encoder = _build_encoder(config, encodings)
        width = config.hidden_width
        self.density_head = mlp.MLP(self.encoder.get_out_dim(), config.density_layers, width,
                                    out_dim=1 + config.geo_feat_dim, implementation="torch")
        self.direction_encoder = encodings.SHEncoding(levels=4, implementation="torch") if config.view_dependent else None
        direction_dim = self.direction_encoder.get_out_dim() if self.direction_encoder is not None else 0
        self.color_head = mlp.MLP(config.geo_feat_dim + direction_dim, config.color_layers, width, out_dim=3,
                                  out_activation=nn.Sigmoid(), implementation="torch")

    @property
    def feature_dim(self) -> int:
        """F, the width of :meth:`features`."""
        return self.encoder.get_out_dim()

    def normalise(self, x: Tensor) -> Tensor:
        """World positions (N, 3) to cube coordinates in [-1, 1] (outside the cube: beyond, not clamped)."""
        return x / self.config.bound

    def features(self, x: Tensor) -> Tensor:
        """Encoder output (N, F) at world positions (N, 3); positions outside the cube are clamped onto it."""
        u = self.normalise(x).clamp(-1.0, 1.0)
        if self.config.architecture in ("mlp", "hashgrid"):
            u = (u + 1.0) / 2.0
        return self.encoder(u)

    def _density_and_geometry(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raw = self.density_head(self.features(x))
        inside = (self.normalise(x).abs() <= 1.0).all(dim=-1)
        density = torch.where(inside, trunc_exp(raw[..., 0] - 1.0), torch.zeros((), dtype=raw.dtype))
        return density, raw[..., 1:]

    def density(self, x: Tensor) -> Tensor:
        """Volume density (N,) >= 0 at world positions (N, 3); 0 outside the cube."""
        return self._density_and_geometry(x)[0]

    def forward(self, x: Tensor, directions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Density (N,) and RGB (N, 3) in [0, 1] at world positions (N, 3), seen along ``directions`` (N, 3).

        Directions matter only for a ``view_dependent`` field; None there means "no direction" (SH input 0).
        """
        density, geometry = self._density_and_geometry(x)
        head_input = geometry
        if self.direction_encoder is not None:
            if directions is None:
                sh = geometry.new_zeros(geometry.shape[0], self.direction_encoder.get_out_dim())
            else:
                unit = torch.nn.functional.normalize(directions, dim=-1)
                sh = self.direction_encoder((unit + 1.0) / 2.0)
            head_input = torch.cat([geometry, sh], dim=-1)
        return density, self.color_head(head_input)

    def parameter_groups(self) -> list[dict]:
        """torch.optim groups with the suggested learning rates: the encoder's grids, then the heads."""
        encoder = [p for p in self.encoder.parameters() if p.requires_grad]
        heads = [p for name, p in self.named_parameters() if not name.startswith("encoder.")]
        head_lr = getattr(self.config.sizes, "head_lr", self.config.head_lr)
        groups = [{"params": heads, "lr": head_lr, "name": "heads"}]
        if encoder:
            groups.insert(0, {"params": encoder, "lr": self.config.sizes.encoder_lr, "name": "encoder"})
        return groups


def _build_encoder(config: FieldConfig, encodings) -> nn.Module:
    sizes = config.sizes
    if config.architecture == "mlp":
        return encodings.NeRFEncoding(3, sizes.num_frequencies, 0.0, sizes.num_frequencies - 1.0,
                                      include_input=True, implementation="torch")
    if config.architecture == "tensorf-vm":
        return encodings.TensorVMEncoding(sizes.resolution, sizes.num_components)
    if config.architecture == "tensorf-cp":
        return encodings.TensorCPEncoding(sizes.resolution, sizes.num_components, init_scale=sizes.init_scale)
    return encodings.HashEncoding(sizes.num_levels, sizes.min_res, sizes.max_res, sizes.log2_hashmap_size,
                                  sizes.features_per_level, hash_init_scale=1e-3, implementation="torch")


def build_field(config: FieldConfig | None = None, seed: int | None = None) -> RadianceField:
    """A freshly initialised field; with ``seed``, the initialisation is reproducible and leaves the global RNG
    alone. An unknown architecture is a UserError naming the choices."""
    config = config or FieldConfig()
    check_choice("architecture", config.architecture, ARCHITECTURES)  # a config mutated after creation
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        return RadianceField(config)
