"""Vision Transformer for fine-tuning, with the parameter names of MAE's ``models_vit.py`` (timm's ViT).

Attention runs through ``F.scaled_dot_product_attention``. With ``global_pool=False`` (SSFER's fine-tuning, and
ferfast's recipes' default through ``ModelConfig.global_pool``) the feature is the [CLS] token after the encoder's
final ``norm``, which loads from the pretraining checkpoint; with ``global_pool=True`` (MAE's ``main_finetune.py``
default, and this class's default when built directly) the patch tokens are averaged and normalised by a fresh
``fc_norm`` and there is no ``norm``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ferfast.models.pos_embed import to_grid

__all__ = [
    "Attention",
    "Block",
    "DropPath",
    "Mlp",
    "PatchEmbed",
    "VisionTransformer",
    "conv_to_linear_patch_weight",
    "drop_path",
    "linear_to_conv_patch_weight",
]

#: MAE's (and timm's ViT) LayerNorm.
LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def conv_to_linear_patch_weight(weight: Tensor) -> Tensor:
    """``[D, C, p, p]`` Conv2d patch-embedding weight -> ``[D, p*p*C]`` Linear weight for MAE's ``nhwpqc`` patches."""
    if weight.dim() != 4:
        raise ValueError(f"weight must be a Conv2d weight [D, C, p, p], got shape {tuple(weight.shape)}")
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def linear_to_conv_patch_weight(weight: Tensor, in_chans: int, patch_size: int) -> Tensor:
    """Inverse of :func:`conv_to_linear_patch_weight`: ``[D, p*p*C]`` -> ``[D, C, p, p]``."""
    if weight.dim() != 2 or weight.shape[1] != patch_size * patch_size * in_chans:
        raise ValueError(
            f"weight must be a Linear weight [D, {patch_size * patch_size * in_chans}] for patch_size={patch_size}, "
            f"in_chans={in_chans}, got shape {tuple(weight.shape)}"
        )
    return weight.reshape(weight.shape[0], patch_size, patch_size, in_chans).permute(0, 3, 1, 2)


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False) -> Tensor:
    """Stochastic depth (timm's ``drop_path``): zero a whole residual branch per sample, rescale the rest."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    return x * x.new_empty(shape).bernoulli_(keep_prob).div_(keep_prob)


class DropPath(nn.Module):
    """Module form of :func:`drop_path` (per-sample stochastic depth of a residual branch)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob!r}")
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class PatchEmbed(nn.Module):
    """Image to patch tokens, stored as timm's ``proj`` Conv2d (``[D, C, p, p]``, the checkpoints' layout).

    :meth:`forward` embeds all patches; :meth:`embed_patches` embeds already-cut ``nhwpqc`` patches
    (e.g. only MAE's visible ones) with the same weight viewed as a Linear.
    """

    def __init__(
        self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768
    ) -> None:
        super().__init__()
        if not isinstance(patch_size, int) or patch_size <= 0:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
        if not isinstance(in_chans, int) or in_chans <= 0:
            raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
        self.img_size = to_grid(img_size, "img_size")
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(f"img_size {self.img_size} must be a multiple of patch_size={patch_size}")
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def check_images(self, x: Tensor) -> None:
        """Raise a ValueError naming ``imgs`` unless ``x`` is ``[B, in_chans, *img_size]``."""
        if x.dim() != 4 or x.shape[1] != self.in_chans or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"imgs must have shape [B, {self.in_chans}, {self.img_size[0]}, {self.img_size[1]}] "
                f"(the model's img_size), got {tuple(x.shape)}"
            )

    def linear_weight(self) -> Tensor:
        """The Conv2d weight as the ``[D, p*p*C]`` Linear weight for ``nhwpqc`` patches (differentiable view)."""
        return conv_to_linear_patch_weight(self.proj.weight)

    def embed_patches(self, patches: Tensor) -> Tensor:
        """Embed ``[B, K, p*p*C]`` patches in ``nhwpqc`` order (``patchify_gather``'s output) -> ``[B, K, D]``."""
        return F.linear(patches, self.linear_weight(), self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        self.check_images(x)
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention (timm's ``qkv``/``proj`` names) on ``F.scaled_dot_product_attention``."""

    def __init__(
        self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """Transformer MLP: ``fc1`` -> GELU -> ``fc2`` (timm's names)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + drop_path(attn(norm1(x)))``, then ``x + drop_path(mlp(norm2(x)))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = LayerNorm,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_vit_weights(module: nn.Module) -> None:
    """timm's ViT init: truncated normal (std 0.02) Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class VisionTransformer(nn.Module):
    """ViT classifier with MAE fine-tuning's names: ``cls_token``, learnable ``pos_embed``, ``patch_embed.proj``,
    ``blocks.{i}``, ``norm`` or (``global_pool``) ``fc_norm``, ``head``.

    Args:
        img_size: input size, an int or ``(H, W)``, each a multiple of ``patch_size``.
        patch_size: side of the square patches.
        in_chans: image channels.
        num_classes: classes of ``head``; 0 gives an identity head (features).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the transformer's size.
        drop_rate: dropout after the position embedding, in the blocks and before the head.
        attn_drop_rate: attention-probability dropout.
        drop_path_rate: stochastic depth, rising linearly from 0 to this value over the blocks.
        global_pool: False (SSFER's fine-tuning, the recipes' default): the [CLS] token after ``norm``; True
            (MAE's fine-tuning default, kept here): the mean of the patch tokens, then ``fc_norm``.
    """

    num_prefix_tokens = 1

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.global_pool = bool(global_pool)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # timm's rule
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rate) for rate in rates
        )
        if self.global_pool:
            self.fc_norm = LayerNorm(embed_dim)
        else:
            self.norm = LayerNorm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        self.apply(init_vit_weights)

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size

    @property
    def img_size(self) -> tuple[int, int]:
        return self.patch_embed.img_size

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.patch_embed.grid_size

    def no_weight_decay(self) -> set[str]:
        """Parameters kept out of weight decay (timm/MAE's ``param_groups_lrd`` convention)."""
        return {"pos_embed", "cls_token"}

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``head`` by a fresh ``Linear(embed_dim, num_classes)`` (identity for 0)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            init_vit_weights(self.head)

    def forward_features(self, x: Tensor) -> Tensor:
        """All tokens ``[B, 1 + L, D]`` after the blocks (before pooling and its norm)."""
        x = self.patch_embed(x)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x + self.pos_embed[:, 1:]], dim=1)
        x = self.pos_drop(x)
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool the tokens ([CLS] after ``norm``, or mean + ``fc_norm``) and apply ``head`` unless ``pre_logits``."""
        x = self.fc_norm(x[:, 1:].mean(dim=1)) if self.global_pool else self.norm(x)[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of images ``[B, in_chans, H, W]``."""
        return self.forward_head(self.forward_features(x))
