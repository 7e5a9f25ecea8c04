"""TRIDENT's network and joint loss (no AnnData here).

Two parts trained together (Peng et al., TRIDENT, eq. 10: ``L = L_VAE + L_LDM``):

- the transcription-drug condition module, a VAE (:class:`ConditionVAE`): an RNA encoder of the
  pre-perturbation expression ``G_pre`` and a drug encoder of the compound features ``D`` are
  concatenated and mapped to a diagonal Gaussian ``q(z | G_pre, D)``; a decoder maps ``z`` to a Gaussian
  over the post-perturbation expression ``G_post`` (mean and log-variance);
- the morphology generation module, a diffusion transformer (:class:`TridentDiT`) over image-VAE
  latents that predicts the noise (epsilon) given the condition ``z`` and the timestep: either by
  cross-attention to condition tokens ``proj(z) + time embedding`` (the paper) or by adaLN-Zero (DiT).

Without RNA (``use_rna=False``, the paper's ablation) there is no condition VAE at all: a drug encoder
alone gives the condition vector. A learned null condition (``classifier_free``) replaces the condition
of a random fraction of training items, enabling classifier-free guidance.

The module also holds the image VAE (``image_vae``, trained separately first), so that one state dict
carries the whole model; it stays frozen while the two parts above train.

Scale of the two losses: ``L_VAE`` is the negative ELBO divided by the number of genes (mean Gaussian
NLL per gene + ``beta`` KL / n_genes) and ``L_LDM`` the mean squared error per latent element, so neither
term swamps the other's gradients through the shared ``z`` whatever the gene count or image size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from scvi.module.base import BaseModuleClass, LossOutput
from torch import nn

from ..nn._dit import (
    AdaLNZeroDiTBlock,
    CrossAttentionDiTBlock,
    FinalAdaLNLayer,
    PatchEmbed,
    sincos_pos_embed_2d,
    unpatchify,
)
from ..nn._time import TimeEmbedding
from ._diffusion import sampler_scheduler, scheduler_step, training_alphas_cumprod

__all__ = ["IMAGE_VAE", "TRIDENT_PRESETS", "ConditionVAE", "TridentDiT", "TridentModule"]

#: Name of the image VAE's submodule: its tensors are ``image_vae.*`` in the module's state dict.
IMAGE_VAE = "image_vae"

#: Network sizes per preset. ``paper`` is the paper's DiT-XL/2 (28 layers, width 1152, 16 heads, patch 2
#: over 64 x 64 x 4 latents of 512 px images); the paper does not give the condition VAE's sizes, so
#: ``n_latent`` / ``n_cond_hidden`` there are ours. ``n_cond_tokens``: condition tokens the patches attend
#: to (``z`` is projected to that many tokens; one token would make cross-attention a constant bias).
#: ``prediction_type``: ``paper`` predicts the noise (epsilon) as the paper; the small presets predict ``v``
#: (Salimans & Ho, 2022), as PhenoSeq's small presets and for the same reason: DDIM divides an epsilon
#: network's error by sqrt(alpha_bar) (1/0.03 at t = 980), which small networks after short training do
#: not make small enough (see :data:`morphomu.module._phenoseq.PHENOSEQ_PRESETS`).
TRIDENT_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "n_hidden": 1152,
        "n_layers": 28,
        "n_heads": 16,
        "patch_size": 2,
        "ff_mult": 4,
        "dropout": 0.0,
        "n_latent": 256,
        "n_cond_hidden": 1024,
        "n_cond_tokens": 8,
        "prediction_type": "epsilon",
    },
    "fast": {
        "n_hidden": 256,
        "n_layers": 6,
        "n_heads": 4,
        "patch_size": 2,
        "ff_mult": 4,
        "dropout": 0.0,
        "n_latent": 64,
        "n_cond_hidden": 256,
        "n_cond_tokens": 4,
        "prediction_type": "v_prediction",
    },
    "tiny": {
        "n_hidden": 64,
        "n_layers": 2,
        "n_heads": 4,
        "patch_size": 2,
        "ff_mult": 2,
        "dropout": 0.0,
        "n_latent": 16,
        "n_cond_hidden": 64,
        "n_cond_tokens": 4,
        "prediction_type": "v_prediction",
    },
}
#: Bounds of the decoder's per-gene log-variance: with few distinct (compound, round) targets a free
#: variance would collapse towards zero and the NLL towards minus infinity.
_LOGVAR_MIN, _LOGVAR_MAX = -7.0, 7.0


def _mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, n_hidden), nn.LayerNorm(n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_out)
    )


class ConditionVAE(nn.Module):
    """TRIDENT's transcription-drug condition module (paper eqs. 1-3).

    ``X_rna = E_rna(G_pre)``, ``X_drug = E_drug(D)``, ``[mu, log sigma^2] = E_perturb([X_rna, X_drug])``,
    ``[mu_G, log sigma_G^2] = D_perturb(z)``.

    Parameters
    ----------
    n_genes
        Features of ``G_pre`` / ``G_post``.
    n_drug
        Compound features.
    n_latent
        Size of ``z``.
    n_hidden
        Width of the encoders and the decoder.
    """

    def __init__(self, n_genes: int, n_drug: int, n_latent: int, n_hidden: int) -> None:
        super().__init__()
        self.rna_encoder = _mlp(n_genes, n_hidden, n_hidden)
        self.drug_encoder = _mlp(n_drug, n_hidden, n_hidden)
        self.perturb_encoder = _mlp(2 * n_hidden, n_hidden, 2 * n_latent)
        self.decoder = _mlp(n_latent, n_hidden, 2 * n_genes)

    def encode(self, g_pre: torch.Tensor, drug: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of ``z``."""
        h = torch.cat([self.rna_encoder(g_pre), self.drug_encoder(drug)], dim=-1)
        mu, logvar = self.perturb_encoder(h).chunk(2, dim=-1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (bounded) log-variance of ``G_post`` given ``z``."""
        mean, logvar = self.decoder(z).chunk(2, dim=-1)
        return mean, logvar.clamp(_LOGVAR_MIN, _LOGVAR_MAX)


class TridentDiT(nn.Module):
    """Noise predictor over image latents ``(C, H, W)``, conditioned on a vector and the timestep.

    Parameters
    ----------
    latent_channels
        Channels of the image latent.
    latent_height, latent_width
        Spatial size of the latent (multiples of ``patch_size``).
    n_cond
        Width of the condition vector (``z`` or the drug embedding).
    n_hidden, n_layers, n_heads, patch_size, ff_mult, dropout
        Transformer sizes.
    n_cond_tokens
        Condition tokens for cross-attention.
    conditioning
        ``'cross_attention'`` (TRIDENT: tokens ``proj(c) + t_emb``) or ``'adaln_zero'`` (DiT: ``proj(c) +
        t_emb`` modulates every block).
    """

    def __init__(
        self,
        latent_channels: int,
        latent_height: int,
        latent_width: int,
        n_cond: int,
        *,
        n_hidden: int,
        n_layers: int,
        n_heads: int,
        patch_size: int,
        ff_mult: int,
        dropout: float,
        n_cond_tokens: int,
        conditioning: str,
    ) -> None:
        super().__init__()
        if conditioning not in ("cross_attention", "adaln_zero"):
            msg = f"conditioning={conditioning!r}: choose 'cross_attention' (TRIDENT) or 'adaln_zero' (DiT)."
            raise ValueError(msg)
        if latent_height % patch_size or latent_width % patch_size:
            msg = f"patch_size={patch_size} must divide the latent size {latent_height} x {latent_width}."
            raise ValueError(msg)
        self.conditioning = conditioning
        self.channels, self.patch_size = latent_channels, patch_size
        self.grid = (latent_height // patch_size, latent_width // patch_size)
        self.n_hidden, self.n_cond_tokens = n_hidden, n_cond_tokens
        self.patch_embed = PatchEmbed(latent_channels, n_hidden, patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(n_hidden, *self.grid)[None], persistent=False)
        self.time_embed = TimeEmbedding(n_hidden, n_hidden)
        self.cond_embed = nn.Linear(n_cond, n_hidden)  # the condition vector of adaLN layers
        if conditioning == "cross_attention":
            self.cond_tokens = nn.Linear(n_cond, n_cond_tokens * n_hidden)
            self.blocks = nn.ModuleList(
                CrossAttentionDiTBlock(n_hidden, n_heads, ff_mult=ff_mult, dropout=dropout)
                for _ in range(n_layers)
            )
        else:
            self.cond_tokens = None
            self.blocks = nn.ModuleList(
                AdaLNZeroDiTBlock(n_hidden, n_heads, n_hidden, ff_mult=ff_mult, dropout=dropout)
                for _ in range(n_layers)
            )
        self.final = FinalAdaLNLayer(n_hidden, n_hidden, patch_size, latent_channels)

    def condition(self, cond: torch.Tensor, t_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Condition vector ``(b, n_hidden)`` and, for cross-attention, tokens ``(b, n_tokens, n_hidden)``."""
        vec = self.cond_embed(cond) + t_emb
        if self.cond_tokens is None:
            return vec, None
        tokens = self.cond_tokens(cond).view(-1, self.n_cond_tokens, self.n_hidden) + t_emb[:, None]
        return vec, tokens

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predict the noise in latents ``x_t`` ``(b, C, H, W)`` at timesteps ``t`` ``(b,)``."""
        t_emb = self.time_embed(t).to(x_t.dtype)
        vec, tokens = self.condition(cond, t_emb)
        h = self.patch_embed(x_t) + self.pos_embed.to(x_t.dtype)
        for block in self.blocks:
            h = block(h, tokens) if tokens is not None else block(h, vec)
        out = self.final(h, vec)
        return unpatchify(
            out, patch_size=self.patch_size, channels=self.channels, height=self.grid[0], width=self.grid[1]
        )


class TridentModule(BaseModuleClass):
    """TRIDENT: condition VAE (optional) + diffusion transformer over standardised image latents.

    Parameters
    ----------
    n_genes
        Features of the expression profiles (0 with ``use_rna=False``).
    n_drug
        Compound features.
    latent_channels, latent_height, latent_width
        Shape of the image latents.
    use_rna
        Build the condition VAE (``G_pre`` + drug -> ``z`` -> ``G_post``); ``False``: drug encoder only.
    classifier_free
        Learn a null condition for classifier-free guidance.
    conditioning
        ``'cross_attention'`` or ``'adaln_zero'``.
    beta
        Weight of the KL term in ``L_VAE``.
    vae_weight
        Weight of ``L_VAE`` in the total loss (1: the paper's sum).
    image_vae
        The image autoencoder whose latents the transformer generates (an
        :class:`~morphomu.module._image_vae.ImageVAEModule`), held as a submodule so that one state dict
        carries it. It is trained separately first and frozen here: :meth:`trainable_parameters` leaves it
        out, and nothing in :meth:`loss` or :meth:`sample` calls it (latents are encoded beforehand).
    **sizes
        ``n_hidden, n_layers, n_heads, patch_size, ff_mult, dropout, n_latent, n_cond_hidden, n_cond_tokens``
        (see :data:`TRIDENT_PRESETS`).
    """

    def __init__(
        self,
        n_genes: int,
        n_drug: int,
        latent_channels: int,
        latent_height: int,
        latent_width: int,
        *,
        use_rna: bool = True,
        classifier_free: bool = True,
        conditioning: str = "cross_attention",
        beta: float = 1.0,
        vae_weight: float = 1.0,
        image_vae: nn.Module | None = None,
        n_hidden: int = 1152,
        n_layers: int = 28,
        n_heads: int = 16,
        patch_size: int = 2,
        ff_mult: int = 4,
        dropout: float = 0.0,
        n_latent: int = 256,
        n_cond_hidden: int = 1024,
        n_cond_tokens: int = 8,
        prediction_type: str = "epsilon",
    ) -> None:
        super().__init__()
        alphas_cumprod = training_alphas_cumprod(prediction_type)  # checks prediction_type first
        self.prediction_type = prediction_type
        self.use_rna = bool(use_rna)
        self.n_genes, self.n_drug = int(n_genes), int(n_drug)
        self.beta, self.vae_weight = float(beta), float(vae_weight)
        if self.use_rna:
            self.condition_vae = ConditionVAE(n_genes, n_drug, n_latent, n_cond_hidden)
            self.drug_encoder = None
            n_cond = n_latent
        else:  # the ablation: no RNA path, no VAE; the drug embedding is the condition
            self.condition_vae = None
            self.drug_encoder = _mlp(n_drug, n_cond_hidden, n_cond_hidden)
            n_cond = n_cond_hidden
        self.n_cond = n_cond
        self.dit = TridentDiT(
            latent_channels,
            latent_height,
            latent_width,
            n_cond,
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_heads=n_heads,
            patch_size=patch_size,
            ff_mult=ff_mult,
            dropout=dropout,
            n_cond_tokens=n_cond_tokens,
            conditioning=conditioning,
        )
        self.null_condition = nn.Parameter(torch.zeros(n_cond)) if classifier_free else None
        # standardisation statistics saved with the weights: expression (train RNA cells), latents (per channel)
        self.register_buffer("gene_mean", torch.zeros(max(self.n_genes, 0)))
        self.register_buffer("gene_std", torch.ones(max(self.n_genes, 0)))
        self.register_buffer("latent_mean", torch.zeros(latent_channels))
        self.register_buffer("latent_std", torch.ones(latent_channels))
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)
        # registered last, so the parameters of the parts trained here keep their order (optimiser, EMA)
        self.image_vae = image_vae

    @property
    def classifier_free(self) -> bool:
        """Whether a null condition was learned (classifier-free guidance is available)."""
        return self.null_condition is not None

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters Trident trains (and averages): every one but the frozen image VAE's."""
        return [p for name, p in self.named_parameters() if not name.startswith(f"{IMAGE_VAE}.")]

    # ------------------------------------------------------------------ condition
    def encode_condition(
        self, drug: torch.Tensor, g_pre: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Posterior ``(mu, logvar)`` of ``z`` (``use_rna``), or ``(drug embedding, None)``."""
        if self.condition_vae is None:
            return self.drug_encoder(drug), None
        return self.condition_vae.encode(g_pre, drug)

    def apply_null(self, cond: torch.Tensor, uncond: torch.Tensor | None) -> torch.Tensor:
        """Replace the condition of the rows flagged ``uncond`` by the learned null condition."""
        if uncond is None or self.null_condition is None:
            return cond
        return torch.where(uncond[:, None], self.null_condition.to(cond.dtype), cond)

    def predict_expression(self, drug: torch.Tensor, g_pre: torch.Tensor) -> torch.Tensor:
        """Decoder mean of ``G_post`` at the posterior mean of ``z`` (standardised units)."""
        if self.condition_vae is None:
            msg = "this model was built with use_rna=False: it has no expression decoder."
            raise ValueError(msg)
        mu, _ = self.condition_vae.encode(g_pre, drug)
        return self.condition_vae.decode(mu)[0]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process ``sqrt(ab_t) x0 + sqrt(1 - ab_t) noise`` (paper eq. 6)."""
        ab = self.alphas_cumprod[t].to(x0.dtype).view(-1, 1, 1, 1)
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network predicts: the noise, or ``v = sqrt(ab) noise - sqrt(1 - ab) x0``."""
        if self.prediction_type == "epsilon":
            return noise
        ab = self.alphas_cumprod[t].to(x0.dtype).view(-1, 1, 1, 1)
        return ab.sqrt() * noise - (1.0 - ab).sqrt() * x0

    # ------------------------------------------------------------------ scvi-tools interface
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, Any]:
        return {"drug": tensors["drug"], "g_pre": tensors.get("g_pre"), "eps_z": tensors.get("eps_z")}

    def inference(
        self, drug: torch.Tensor, g_pre: torch.Tensor | None = None, eps_z: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | None]:
        """The condition: ``z = mu + sigma * eps_z`` (reparameterisation) or the drug embedding."""
        mu, logvar = self.encode_condition(drug, g_pre)
        if logvar is None:
            return {"cond": mu, "mu": None, "logvar": None}
        z = mu + torch.exp(0.5 * logvar) * eps_z
        return {"cond": z, "mu": mu, "logvar": logvar}

    def _get_generative_input(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict[str, Any], **kwargs: Any
    ) -> dict[str, Any]:
        return {
            "x0": tensors["latent"],
            "noise": tensors["noise"],
            "t": tensors["t"],
            "cond": inference_outputs["cond"],
            "uncond": tensors.get("uncond"),
        }

    def generative(
        self,
        x0: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Noise the clean latents and predict the noise (the condition dropped for ``uncond`` rows)."""
        cond = self.apply_null(cond, uncond)
        return {"noise_pred": self.dit(self.add_noise(x0, noise, t), t, cond)}

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, Any],
        generative_outputs: dict[str, torch.Tensor],
    ) -> LossOutput:
        """``L_LDM`` (MSE of the prediction per latent element) + ``vae_weight * L_VAE`` (negative ELBO per gene)."""
        target = self.target(tensors["latent"], tensors["noise"], tensors["t"])
        err = (generative_outputs["noise_pred"].float() - target.float()).square()
        loss_ldm = err.mean()
        n = err.shape[0]
        extra: dict[str, torch.Tensor] = {"loss_ldm": loss_ldm.detach()}
        total = loss_ldm
        if self.condition_vae is not None:
            mu, logvar = inference_outputs["mu"].float(), inference_outputs["logvar"].float()
            mean, g_logvar = self.condition_vae.decode(inference_outputs["cond"])
            target = tensors["g_post"].float()
            nll = 0.5 * (
                g_logvar.float()
                + (target - mean.float()).square() * torch.exp(-g_logvar.float())
                + math.log(2 * math.pi)
            )
            recon = nll.sum(-1)
            kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)
            loss_vae = ((recon + self.beta * kl) / self.n_genes).mean()
            total = total + self.vae_weight * loss_vae
            extra.update(
                {
                    "loss_vae": loss_vae.detach(),
                    "reconstruction": (recon / self.n_genes).mean().detach(),
                    "kl": kl.mean().detach(),
                    "expression_mse": (target - mean.float()).square().mean().detach(),
                }
            )
        return LossOutput(loss=total, n_obs_minibatch=n, extra_metrics=extra)

    # ------------------------------------------------------------------ sampling
    @torch.inference_mode()
    def sample(
        self,
        noise: torch.Tensor,
        cond: torch.Tensor,
        *,
        n_steps: int = 50,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
        variance_noise: Callable[[int], torch.Tensor] | None = None,
        sampler: str = "ddim",
    ) -> torch.Tensor:
        """Denoise ``noise`` ``(b, C, H, W)`` to standardised latents under conditions ``cond`` ``(b, n_cond)``.

        ``sampler`` is ``'ddim'`` (``eta``: its stochasticity) or a deterministic multistep solver,
        ``'dpmsolver++'`` or ``'unipc'`` (``eta`` must be 0), with a fresh scheduler per call. With
        ``guidance_scale != 1``: ``eps = eps_null + s (eps_cond - eps_null)`` (classifier-free guidance).
        """
        scheduler = sampler_scheduler(sampler, prediction_type=self.prediction_type, eta=eta)
        scheduler.set_timesteps(n_steps, device=noise.device)
        guided = guidance_scale != 1.0
        if guided:
            if self.null_condition is None:
                msg = "classifier-free guidance needs a model trained with p_uncond > 0."
                raise ValueError(msg)
            null = self.null_condition.to(cond.dtype).expand_as(cond)
            cond = torch.cat([cond, null])
        x = noise
        for i, t in enumerate(scheduler.timesteps.tolist()):
            x_in = torch.cat([x, x]) if guided else x
            tt = torch.full((x_in.shape[0],), t, device=x.device, dtype=torch.long)
            eps = self.dit(x_in, tt, cond)
            if guided:
                eps_c, eps_u = eps.chunk(2)
                eps = eps_u + guidance_scale * (eps_c - eps_u)
            vn = variance_noise(i) if eta > 0 and variance_noise is not None else None
            x = scheduler_step(scheduler, eps, t, x, eta=eta, variance_noise=vn)
        return x
