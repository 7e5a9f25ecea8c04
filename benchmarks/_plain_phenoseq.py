"""A plain PhenoSeq, written the way the public code is, as the speed baseline of ``phenoseq.py``.

Same architecture and the same weights as :class:`morphomu.module._phenoseq.PhenoSeqModule` (load them with
:meth:`PlainPhenoSeq.load_from`), computed naively: ``nn.MultiheadAttention`` in sequence-first layout
(transposes), a full softmax self-attention over the single RNA token, cross-attention key/value
projections over the context at every call, the context encoder and the time MLP / AdaLN modulations
evaluated for every item at every denoising step; a per-item Python ``Dataset`` with ``np.random.choice``
for the 16 context cells and the default collate; AdamW stepping one parameter at a time; a Python loop
over parameters for the EMA. Differences to the public code that would change the function are left
out so that outputs can be compared: dropout placement (irrelevant in eval mode) and the public
feed-forward's extra LayerNorm after AdaLN (a known weak point; morphomu drops it).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def _sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class PlainAdaLN(nn.Module):
    def __init__(self, dim, n_time):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.proj = nn.Linear(n_time, 2 * dim)

    def forward(self, x, t_emb):
        gamma, beta = self.proj(F.mish(t_emb)).chunk(2, dim=-1)
        return self.norm(x) * (1 + gamma) + beta


class PlainFF(nn.Module):
    def __init__(self, dim, mult, dropout):
        super().__init__()
        self.w1 = nn.Linear(dim, 2 * mult * dim)
        self.drop = nn.Dropout(dropout)
        self.w2 = nn.Linear(mult * dim, dim)

    def forward(self, x):
        a, g = self.w1(x).chunk(2, dim=-1)
        return self.w2(self.drop(a * F.gelu(g)))


class PlainEncoderLayer(nn.Module):
    def __init__(self, dim, heads, mult, dropout):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = PlainFF(dim, mult, dropout)

    def forward(self, x):  # (n_cells, batch, dim)
        a = self.norm1(x)
        x = x + self.attn(a, a, a, need_weights=False)[0]
        return x + self.ff(self.norm2(x))


class PlainBlock(nn.Module):
    def __init__(self, dim, heads, n_time, mult, dropout):
        super().__init__()
        self.norm_cross = PlainAdaLN(dim, n_time)
        self.norm_context = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.norm_self = PlainAdaLN(dim, n_time)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.norm_ff = PlainAdaLN(dim, n_time)
        self.ff = PlainFF(dim, mult, dropout)

    def forward(self, h, t_emb, context):  # h (1, batch, dim), context (n, batch, dim)
        q = self.norm_cross(h, t_emb)
        c = self.norm_context(context)
        h = h + self.cross_attn(q, c, c, need_weights=False)[0]
        s = self.norm_self(h, t_emb)
        h = h + self.self_attn(s, s, s, need_weights=False)[0]
        return h + self.ff(self.norm_ff(h, t_emb))


class PlainPhenoSeq(nn.Module):
    def __init__(
        self,
        n_image,
        n_rna,
        *,
        n_hidden,
        n_layers,
        n_heads,
        n_encoder_layers,
        n_encoder_heads,
        n_time,
        ff_mult,
        dropout,
        **_,
    ):
        super().__init__()
        d = n_hidden
        self.n_time = n_time
        self.proj = nn.Sequential(nn.Linear(n_image, d), nn.Mish(), nn.LayerNorm(d), nn.Dropout(dropout))
        self.encoder = nn.ModuleList(
            PlainEncoderLayer(d, n_encoder_heads, ff_mult, dropout) for _ in range(n_encoder_layers)
        )
        self.time_mlp = nn.Sequential(nn.Linear(n_time, d), nn.Mish(), nn.Linear(d, n_time))
        self.query = nn.Sequential(nn.Linear(n_rna, d), nn.Mish(), nn.LayerNorm(d))
        self.blocks = nn.ModuleList(PlainBlock(d, n_heads, n_time, ff_mult, dropout) for _ in range(n_layers))
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.Mish(), nn.Linear(d, n_rna))

    def forward(self, x_t, t, img):  # img (batch, n_cells, n_image)
        context = self.proj(img).transpose(0, 1).contiguous()
        for layer in self.encoder:
            context = layer(context)
        t_emb = self.time_mlp(_sinusoid(t, self.n_time))[None]
        h = self.query(x_t)[None]
        for block in self.blocks:
            h = block(h, t_emb, context)
        return self.head(h[0])

    @torch.no_grad()
    def load_from(self, module):
        """Copy the weights of a ``PhenoSeqModule`` (same sizes)."""

        def mha(dst, src):
            dst.in_proj_weight.copy_(torch.cat([src.to_q.weight, src.to_k.weight, src.to_v.weight]))
            dst.in_proj_bias.copy_(torch.cat([src.to_q.bias, src.to_k.bias, src.to_v.bias]))
            dst.out_proj.weight.copy_(src.to_out.weight)
            dst.out_proj.bias.copy_(src.to_out.bias)

        def ff(dst, src):
            dst.w1.load_state_dict(src.proj_in.state_dict())
            dst.w2.load_state_dict(src.proj_out.state_dict())

        self.proj.load_state_dict(module.encoder.proj.state_dict())
        for dst, src in zip(self.encoder, module.encoder.layers, strict=True):
            dst.norm1.load_state_dict(src.norm_attn.state_dict())
            mha(dst.attn, src.attn)
            dst.norm2.load_state_dict(src.norm_ff.state_dict())
            ff(dst.ff, src.ff)
        self.time_mlp.load_state_dict(module.time_embed.mlp.state_dict())
        self.query.load_state_dict(module.query.state_dict())
        for dst, src in zip(self.blocks, module.blocks, strict=True):
            for name in ("norm_cross", "norm_self", "norm_ff"):
                getattr(dst, name).proj.load_state_dict(getattr(src, name).to_scale_shift.state_dict())
            dst.norm_context.load_state_dict(src.norm_context.state_dict())
            mha(dst.cross_attn, src.cross_attn)
            mha(dst.self_attn, src.self_attn)
            ff(dst.ff, src.ff)
        self.head.load_state_dict(module.head.state_dict())
        return self


class PlainItems(torch.utils.data.Dataset):
    """One item per RNA cell: the cell and 16 imaging cells of its sample drawn with ``np.random.choice``."""

    def __init__(self, rna, rna_sample, img, img_sample, n_context=16):
        self.rna, self.rna_sample, self.img, self.n_context = rna, rna_sample, img, n_context
        self.rows = {s: np.flatnonzero(img_sample == s) for s in np.unique(img_sample)}

    def __len__(self):
        return len(self.rna)

    def __getitem__(self, i):
        idx = np.random.choice(self.rows[self.rna_sample[i]], self.n_context, replace=True)  # noqa: NPY002 - as the public code
        return torch.from_numpy(self.rna[i]), torch.from_numpy(self.img[idx])


def plain_train_step(
    model, ema_params, optimizer, scheduler, batch, alphas_cumprod, ema_decay=0.9999, step=0
):
    x0, img = batch
    t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],))
    noise = torch.randn_like(x0)
    ab = alphas_cumprod[t][:, None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    loss = F.mse_loss(model(x_t, t, img), noise)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    decay = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema_params, model.parameters(), strict=True):
            e.mul_(decay).add_(p.detach(), alpha=1 - decay)
    return loss.detach()


@torch.no_grad()
def plain_generate(model, mean_img, noise, scheduler, n_steps=50):
    """DDIM with the whole network (context encoder included) at every step."""
    scheduler.set_timesteps(n_steps)
    x = noise
    img = mean_img[:, None, :]
    for t in scheduler.timesteps:
        eps = model(x, t.expand(x.shape[0]), img)
        x = scheduler.step(eps, t, x).prev_sample
    return x
