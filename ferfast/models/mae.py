"""MAE's masked autoencoder (``models_mae.py`` names) built on ferfast's fused ops.

The encoder embeds only the visible patches (``random_masking`` -> ``patchify_gather`` -> the
patch embedding as a Linear), the decoder input is assembled by ``unshuffle_tokens``, and the
loss is ``masked_patch_mse`` (or ``fused_head_masked_mse``, which runs ``decoder_pred`` on the
masked tokens only). Same weights and same noise give MAE's loss and gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ferfast.models.pos_embed import get_2d_sincos_pos_embed
from ferfast.models.vit import Block, LayerNorm, PatchEmbed
from ferfast.ops import fused_head_masked_mse, masked_patch_mse, patchify_gather, random_masking, unshuffle_tokens

__all__ = ["MaskedAutoencoderViT"]


class MaskedAutoencoderViT(nn.Module):
    """Masked autoencoder with a ViT encoder and a light ViT decoder (MAE's parameter names and init).

    Args:
        img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio: the encoder (as ViT).
        decoder_embed_dim, decoder_depth, decoder_num_heads: the decoder.
        norm_pix_loss: normalise each target patch by its mean and variance (MAE's flag).
        fused_head: compute ``decoder_pred`` and the loss together on masked tokens only
            (``fused_head_masked_mse``; eager mode only, ``forward`` then returns ``pred=None``).
        backend: ferfast backend for the ops (``None`` = the global choice).

    ``pos_embed`` and ``decoder_pos_embed`` are fixed 2-D sin-cos tables (parameters with
    ``requires_grad=False``, as in MAE, so they are in the state dict).
    """

    num_prefix_tokens = 1

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
        fused_head: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.norm = LayerNorm(embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True) for _ in range(decoder_depth)
        )
        self.decoder_norm = LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size * patch_size * in_chans, bias=True)

        self.norm_pix_loss = bool(norm_pix_loss)
        self.fused_head = bool(fused_head)
        self.backend = backend
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE's init: sin-cos position tables, xavier-uniform Linears and patch embedding, normal(0.02) tokens."""
        grid = self.patch_embed.grid_size
        pos = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], grid, cls_token=True)
        self.pos_embed.data.copy_(torch.from_numpy(pos).float().unsqueeze(0))
        dec = get_2d_sincos_pos_embed(self.decoder_pos_embed.shape[-1], grid, cls_token=True)
        self.decoder_pos_embed.data.copy_(torch.from_numpy(dec).float().unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def no_weight_decay(self) -> set[str]:
        """Parameters kept out of weight decay (the position tables are frozen anyway)."""
        return {"pos_embed", "cls_token", "mask_token", "decoder_pos_embed"}

    def unpatchify(self, x: Tensor) -> Tensor:
        """``[B, L, p*p*C]`` patches (``nhwpqc``) back to images ``[B, C, H, W]`` (e.g. to show ``pred``)."""
        p, (gh, gw), c = self.patch_size, self.patch_embed.grid_size, self.patch_embed.in_chans
        x = x.reshape(x.shape[0], gh, gw, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, gh * p, gw * p)

    def draw_noise(self, imgs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """MAE's masking noise ``torch.rand(B, L)`` on the images' device (from ``generator`` when given)."""
        return torch.rand(imgs.shape[0], self.num_patches, device=imgs.device, generator=generator)

    def forward_encoder(self, imgs: Tensor, mask_ratio: float, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Encode the visible patches: ``latent`` [B, 1+K, D] (after ``norm``), ``mask`` [B, L], ``ids_restore``."""
        self.patch_embed.check_images(imgs)
        if not isinstance(noise, Tensor) or tuple(noise.shape) != (imgs.shape[0], self.num_patches):
            shape = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
            raise ValueError(f"noise must have shape [{imgs.shape[0]}, {self.num_patches}] ([B, L]), got {shape}")
        ids_keep, mask, ids_restore = random_masking(noise, mask_ratio, backend=self.backend)
        patches = patchify_gather(imgs, ids_keep, self.patch_size, backend=self.backend)
        x = self.patch_embed.embed_patches(patches.to(self.patch_embed.proj.weight.dtype))
        x = x + self.pos_embed[0, 1:][ids_keep]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def decoder_tokens(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Decoder output tokens ``[B, L, decoder_dim]`` after ``decoder_norm``, cls token removed."""
        x = self.decoder_embed(latent)
        x = unshuffle_tokens(x, self.mask_token, ids_restore, self.num_prefix_tokens, backend=self.backend)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_norm(x)[:, self.num_prefix_tokens :]

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """MAE's ``forward_decoder``: the reconstruction ``[B, L, p*p*C]`` in ``nhwpqc`` order."""
        return self.decoder_pred(self.decoder_tokens(latent, ids_restore))

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """MAE's ``forward_loss`` (``masked_patch_mse``): mean over masked patches of the per-patch MSE."""
        return masked_patch_mse(imgs, pred, mask, self.patch_size, self.norm_pix_loss, backend=self.backend)

    def forward(
        self,
        imgs: Tensor,
        mask_ratio: float = 0.75,
        noise: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """``(loss, pred, mask)`` as MAE's forward; ``pred`` is ``None`` with ``fused_head``.

        ``noise`` [B, L] decides the masking (patches with the smallest noise stay visible); when
        omitted it is drawn with ``torch.rand`` (from ``generator`` when given).
        """
        if noise is None:
            noise = self.draw_noise(imgs, generator)
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        if self.fused_head:
            h = self.decoder_tokens(latent, ids_restore)
            num_masked = mask.shape[1] - (latent.shape[1] - 1)  # latent: the cls token + the visible patches
            loss = fused_head_masked_mse(
                h,
                self.decoder_pred.weight,
                self.decoder_pred.bias,
                imgs,
                mask,
                self.patch_size,
                self.norm_pix_loss,
                num_masked=num_masked,
            )
            return loss, None, mask
        pred = self.decoder_pred(self.decoder_tokens(latent, ids_restore))
        return self.forward_loss(imgs, pred, mask), pred, mask
