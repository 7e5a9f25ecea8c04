"""The reference of ``phenoseq.py``: the public PhenoSeq model, written the straightforward way with torch.

Architecture of the public training code (``shared/REFERENCES.md``): an imaging encoder (Linear -> Mish
-> LayerNorm -> dropout, then pre-norm ``nn.TransformerEncoderLayer`` with a GELU feed-forward
d -> 4d -> d), a sinusoidal time MLP, a one-token RNA query and blocks of AdaLN cross-attention,
AdaLN self-attention and an AdaLN GEGLU feed-forward (d -> 8d -> 4d -> d) that starts with a second
LayerNorm; 168.5 M parameters at the paper's sizes. Written as fast as plain torch allows, so that it
stands for a competent implementation rather than a slow one: ``nn.MultiheadAttention`` with
``batch_first`` (no layout copies), a batched tensor dataset (every context cell of a batch drawn by
one indexing call), torch's default AdamW and an EMA of one ``foreach`` call.

It keeps what the public code computes: the whole network at every denoising step (context encoder,
time MLP, cross-attention over the context, the full self-attention of the single RNA token).

``encoder_ff="geglu", ff_norm=False`` builds morphomu's variant (the paper's GEGLU encoder, no second
LayerNorm), whose weights :meth:`PlainPhenoSeq.load_from` copies from a ``PhenoSeqModule``: the tests
use it to check that morphomu's shortcuts compute the same function as this plain code.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def _geglu(x: torch.Tensor) -> torch.Tensor:
    a, g = x.chunk(2, dim=-1)
    return a * F.gelu(g)


class PlainAdaLN(nn.Module):
    def __init__(self, dim, n_time):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.proj = nn.Linear(n_time, 2 * dim)

    def forward(self, x, t_emb):  # x (b, tokens, dim), t_emb (b, n_time)
        gamma, beta = self.proj(F.mish(t_emb))[:, None].chunk(2, dim=-1)
        return self.norm(x) * (1 + gamma) + beta


class PlainGEGLU(nn.Module):
    """The denoiser's feed-forward; the public code starts it with a LayerNorm (``norm``)."""

    def __init__(self, dim, mult, dropout, *, norm):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()
        self.w1 = nn.Linear(dim, 2 * mult * dim)
        self.drop = nn.Dropout(dropout)
        self.w2 = nn.Linear(mult * dim, dim)

    def forward(self, x):
        return self.w2(self.drop(_geglu(self.w1(self.norm(x)))))


def encoder_layer(dim, heads, mult, dropout, ff):
    """A pre-norm ``nn.TransformerEncoderLayer``: GELU feed-forward (public code) or GEGLU (the paper)."""
    if ff == "gelu":
        return nn.TransformerEncoderLayer(
            dim, heads, mult * dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
    layer = nn.TransformerEncoderLayer(
        dim, heads, mult * dim, dropout, activation=_geglu, batch_first=True, norm_first=True
    )
    layer.linear1 = nn.Linear(dim, 2 * mult * dim)  # value and gate
    return layer


class PlainBlock(nn.Module):
    def __init__(self, dim, heads, n_time, mult, dropout, *, ff_norm):
        super().__init__()
        self.norm_cross = PlainAdaLN(dim, n_time)
        self.norm_context = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_self = PlainAdaLN(dim, n_time)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_ff = PlainAdaLN(dim, n_time)
        self.ff = PlainGEGLU(dim, mult, dropout, norm=ff_norm)

    def forward(self, h, t_emb, context):  # h (b, 1, dim), context (b, n, dim)
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
        encoder_ff="gelu",
        ff_norm=True,
        **_,
    ):
        super().__init__()
        d = n_hidden
        self.n_time, self.encoder_ff, self.ff_norm = n_time, encoder_ff, ff_norm
        self.proj = nn.Sequential(nn.Linear(n_image, d), nn.Mish(), nn.LayerNorm(d), nn.Dropout(dropout))
        self.encoder = nn.ModuleList(
            encoder_layer(d, n_encoder_heads, ff_mult, dropout, encoder_ff) for _ in range(n_encoder_layers)
        )
        self.time_mlp = nn.Sequential(nn.Linear(n_time, d), nn.Mish(), nn.Linear(d, n_time))
        self.query = nn.Sequential(nn.Linear(n_rna, d), nn.Mish(), nn.LayerNorm(d))
        self.blocks = nn.ModuleList(
            PlainBlock(d, n_heads, n_time, ff_mult, dropout, ff_norm=ff_norm) for _ in range(n_layers)
        )
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.Mish(), nn.Linear(d, n_rna))
        with torch.no_grad():
            self.head[-1].weight.mul_(1e-2)
            self.head[-1].bias.zero_()

    def forward(self, x_t, t, img):  # img (b, n_cells, n_image)
        context = self.proj(img)
        for layer in self.encoder:
            context = layer(context)
        t_emb = self.time_mlp(_sinusoid(t, self.n_time))
        h = self.query(x_t)[:, None]
        for block in self.blocks:
            h = block(h, t_emb, context)
        return self.head(h[:, 0])

    @torch.no_grad()
    def load_from(self, module):
        """Copy the weights of a ``PhenoSeqModule`` of the same sizes (needs ``encoder_ff="geglu", ff_norm=False``)."""
        if self.encoder_ff != "geglu" or self.ff_norm:
            msg = "load_from needs morphomu's architecture: encoder_ff='geglu', ff_norm=False."
            raise ValueError(msg)

        def mha(dst, src):
            dst.in_proj_weight.copy_(torch.cat([src.to_q.weight, src.to_k.weight, src.to_v.weight]))
            dst.in_proj_bias.copy_(torch.cat([src.to_q.bias, src.to_k.bias, src.to_v.bias]))
            dst.out_proj.weight.copy_(src.to_out.weight)
            dst.out_proj.bias.copy_(src.to_out.bias)

        self.proj.load_state_dict(module.encoder.proj.state_dict())
        for dst, src in zip(self.encoder, module.encoder.layers, strict=True):
            dst.norm1.load_state_dict(src.norm_attn.state_dict())
            mha(dst.self_attn, src.attn)
            dst.norm2.load_state_dict(src.norm_ff.state_dict())
            dst.linear1.load_state_dict(src.ff.proj_in.state_dict())
            dst.linear2.load_state_dict(src.ff.proj_out.state_dict())
        self.time_mlp.load_state_dict(module.time_embed.mlp.state_dict())
        self.query.load_state_dict(module.query.state_dict())
        for dst, src in zip(self.blocks, module.blocks, strict=True):
            for name in ("norm_cross", "norm_self", "norm_ff"):
                getattr(dst, name).proj.load_state_dict(getattr(src, name).to_scale_shift.state_dict())
            dst.norm_context.load_state_dict(src.norm_context.state_dict())
            mha(dst.cross_attn, src.cross_attn)
            mha(dst.self_attn, src.self_attn)
            dst.ff.w1.load_state_dict(src.ff.proj_in.state_dict())
            dst.ff.w2.load_state_dict(src.ff.proj_out.state_dict())
        self.head.load_state_dict(module.head.state_dict())
        return self


class TensorSets:
    """Training batches: RNA cells in a random order, each with ``n_context`` imaging cells of its sample.

    The imaging cells are sorted by sample once; a batch's context rows are then
    ``offset[sample] + floor(u * count[sample])`` for uniform ``u`` (drawn with replacement, as the
    public code's ``np.random.choice``), one indexing call for the whole batch.
    """

    def __init__(self, rna, rna_sample, img, img_sample, *, n_context, batch_size):
        order = torch.argsort(img_sample, stable=True)
        self.img = img[order]
        self.counts = torch.bincount(img_sample, minlength=int(rna_sample.max()) + 1)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts
        self.rna, self.rna_sample = rna, rna_sample
        self.n_context, self.batch_size = n_context, batch_size

    def __iter__(self):
        order = torch.randperm(len(self.rna))
        for start in range(0, len(order) - self.batch_size + 1, self.batch_size):  # full batches only
            rows = order[start : start + self.batch_size]
            s = self.rna_sample[rows]
            u = torch.rand(len(rows), self.n_context)
            ctx = self.offsets[s, None] + (u * self.counts[s, None]).long()
            yield self.rna[rows], self.img[ctx]


def plain_train_step(
    model, ema_params, optimizer, scheduler, batch, alphas_cumprod, *, ema_decay=0.9999, step=0, autocast=None
):
    """One step: noise -> MSE -> backward -> clip 1.0 -> AdamW -> LR schedule -> EMA (with warm-up)."""
    x0, img = batch
    t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), device=x0.device)
    noise = torch.randn_like(x0)
    ab = alphas_cumprod[t][:, None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    with autocast or torch.autocast(x0.device.type, enabled=False):
        pred = model(x_t, t, img)
    loss = F.mse_loss(pred.float(), noise)
    optimizer.zero_grad()
    loss.backward()
    params = list(model.parameters())
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    scheduler.step()
    decay = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(ema_params, params, 1 - decay)
    return loss.detach()


@torch.no_grad()
def plain_generate(model, mean_img, noise, scheduler, n_steps=50):
    """DDIM with the whole network (context encoder included) at every step, as the public model runs."""
    scheduler.set_timesteps(n_steps, device=noise.device)
    x = noise
    img = mean_img[:, None, :]
    for t in scheduler.timesteps:
        eps = model(x, t.expand(x.shape[0]), img)
        x = scheduler.step(eps, t, x).prev_sample
    return x
