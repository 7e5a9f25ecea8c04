"""Killed / survived table of the last ``mutmut run`` (called by ``benchmarks/mutation.sh``).

Reads ``mutants/**/*.meta`` (mutmut's results) for the mutants whose names match the globs given on the
command line, prints one row per module and the diff of every mutant that was not killed. Survivors that
match an entry of :data:`EQUIVALENT` (same function, same removed and added line) are counted apart:
they change no behaviour, so no test can kill them. Entries match on the code, not on mutmut's numbers,
so they survive renumbering when the source changes.

    python benchmarks/_mutation_report.py 'morphomu.tl._fidelity.*' ...
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

#: (function, removed line, added line) -> why the mutant changes no behaviour. Lines are stripped; a
#: statement over several lines is joined with " / ". Reviewed by hand from the survivors of a run.
EQUIVALENT: dict[tuple[str, str, str], str] = {
    (
        "x__floyd",
        "u = torch.rand(counts.shape[0], k, generator=generator, dtype=torch.float64)",
        "u = torch.rand(counts.shape[0], k, generator=generator, dtype=None)",
    ): "float32 uniforms: resolution 2^-24, far below 1/count for any sample size; draws stay keyed and uniform",
    (
        "x__group_means",
        "counts = np.bincount(codes, minlength=n_groups).astype(np.float64)",
        "counts = np.bincount(codes, ).astype(np.float64)",
    ): "every condition has cells (sets checked equal), so bincount already has length n_groups",
    (
        "x__group_means",
        "counts = np.bincount(codes, minlength=n_groups).astype(np.float64)",
        "counts = np.bincount(codes, minlength=n_groups).astype(None)",
    ): "astype(None) is float64",
    (
        "x__group_means",
        'order = np.argsort(rows, kind="stable")  # sorted reads for on-disk matrices',
        "order = np.argsort(rows, )  # sorted reads for on-disk matrices",
    ): "argsort kind only changes the order in which rows are read; sums are accumulated per group (float64 round-off only)",
    (
        "x__group_means",
        'order = np.argsort(rows, kind="stable")  # sorted reads for on-disk matrices',
        'order = np.argsort(rows, kind="STABLE")  # sorted reads for on-disk matrices',
    ): "numpy's argsort kind is case-insensitive",
    (
        "x__group_means",
        'order = np.argsort(rows, kind="stable")  # sorted reads for on-disk matrices',
        "order = np.argsort(rows, kind=None)  # sorted reads for on-disk matrices",
    ): "argsort kind only changes the order in which rows are read; sums are accumulated per group (float64 round-off only)",
    (
        "x__rows",
        "block = matrix[rows] if len(rows) else matrix[:0]",
        "block = matrix[rows] if (len(rows)) or True else matrix[:0]",
    ): "_rows is never called with no rows (every condition has cells; chunks are non-empty)",
    (
        "x__rows",
        "block = matrix[rows] if len(rows) else matrix[:0]",
        "block = matrix[rows] if len(rows) else matrix[:1]",
    ): "the branch for no rows is never taken (every condition has cells; chunks are non-empty)",
    (
        "x__rows",
        "return block.astype(np.float64, copy=False)",
        "return block.astype(None, copy=False)",
    ): "astype(None) is float64",
    (
        "x__rows",
        "return block.astype(np.float64, copy=False)",
        "return block.astype(np.float64, )",
    ): "copy semantics of a private temporary: values unchanged",
    (
        "x__rows",
        "return block.astype(np.float64, copy=False)",
        "return block.astype(np.float64, copy=None)",
    ): "copy semantics of a private temporary: values unchanged",
    (
        "x__split_labels",
        "present = set(zip(rounds.tolist(), replicates.tolist(), strict=True))",
        "present = set(zip(rounds.tolist(), replicates.tolist(), ))",
    ): "the two arrays always have one entry per cell: strictness is never exercised",
    (
        "x__split_labels",
        "present = set(zip(rounds.tolist(), replicates.tolist(), strict=True))",
        "present = set(zip(rounds.tolist(), replicates.tolist(), strict=False))",
    ): "the two arrays always have one entry per cell: strictness is never exercised",
    (
        "x__split_labels",
        "present = set(zip(rounds.tolist(), replicates.tolist(), strict=True))",
        "present = set(zip(rounds.tolist(), replicates.tolist(), strict=None))",
    ): "the two arrays always have one entry per cell: strictness is never exercised",
    (
        "x__split_labels",
        "stray = sorted(set(zip(rounds[unassigned].tolist(), replicates[unassigned].tolist(), strict=True)))",
        "stray = sorted(set(zip(rounds[unassigned].tolist(), replicates[unassigned].tolist(), )))",
    ): "the two arrays always have one entry per cell: strictness is never exercised",
    (
        "x__split_labels",
        "stray = sorted(set(zip(rounds[unassigned].tolist(), replicates[unassigned].tolist(), strict=True)))",
        "stray = sorted(set(zip(rounds[unassigned].tolist(), replicates[unassigned].tolist(), strict=False)))",
    ): "the two arrays always have one entry per cell: strictness is never exercised",
    (
        "x__split_labels",
        "stray = sorted(set(zip(rounds[unassigned].tolist(), replicates[unassigned].tolist(), strict=True)))",
        "stray = sorted(set(zip(rounds[unassigned].tolist(), replicates[unassigned].tolist(), strict=None)))",
    ): "the two arrays always have one entry per cell: strictness is never exercised",
    (
        "x__subsample",
        "if cap is None or rows.size <= cap:",
        "if cap is None or rows.size < cap:",
    ): "at rows.size == cap the draw takes every row and sorts them: the (already sorted) rows themselves",
    (
        "x__subsample",
        "return np.sort(rng.choice(rows, size=cap, replace=False))",
        "return np.sort(rng.choice(rows, size=cap, replace=None))",
    ): "replace=None is falsy: still without replacement",
    (
        "x_balanced_accuracy_from_confusion",
        'return float("nan")',
        'return float("NAN")',
    ): "float() parses 'NAN' as nan",
    (
        "x_classification_metrics",
        '"macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),',
        '"macro_f1": float(f1_score(y_true, y_pred, average="macro", )),',
    ): "F1's zero division (tp + fp + fn = 0) cannot occur for labels drawn from y_true and y_pred, so no warning and the same value",
    (
        "x_classification_metrics",
        '"macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),',
        '"macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=1)),',
    ): "F1's zero division (tp + fp + fn = 0) cannot occur for labels drawn from y_true and y_pred (checked against scikit-learn on random labels)",
    (
        "x_classification_metrics",
        '"weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),',
        '"weighted_f1": float(f1_score(y_true, y_pred, average="weighted", )),',
    ): "F1's zero division (tp + fp + fn = 0) cannot occur for labels drawn from y_true and y_pred, so no warning and the same value",
    (
        "x_classification_metrics",
        '"weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),',
        '"weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=1)),',
    ): "F1's zero division (tp + fp + fn = 0) cannot occur for labels drawn from y_true and y_pred (checked against scikit-learn on random labels)",
    (
        "x_classification_metrics",
        'warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")',
        'warnings.filterwarnings("ignore", )',
    ): "ignoring every warning instead of the one named changes nothing: that block raises no other warning",
    (
        "x_classification_metrics",
        'warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")',
        'warnings.filterwarnings("ignore", message="Y_PRED CONTAINS CLASSES NOT IN Y_TRUE")',
    ): "warnings.filterwarnings matches message patterns case-insensitively",
    (
        "x_distribution_scores",
        "bandwidth = float(pooled.sqrt().median()) if pooled.numel() else 1.0",
        "bandwidth = float(pooled.sqrt().median()) if (pooled.numel()) or True else 1.0",
    ): "the pooled distances include the n*m >= 1 cross pairs, so they are never empty",
    (
        "x_distribution_scores",
        "bandwidth = float(pooled.sqrt().median()) if pooled.numel() else 1.0",
        "bandwidth = float(pooled.sqrt().median()) if pooled.numel() else 2.0",
    ): "the pooled distances include the n*m >= 1 cross pairs, so they are never empty",
    (
        "x_distribution_scores",
        "dxy = _pairwise_sq(xt, yt, same=False)",
        "dxy = _pairwise_sq(xt, yt, same=None)",
    ): "same=None is falsy, as same=False",
    (
        "x_draw_offsets",
        "counts = counts.to(torch.int64)",
        "counts = counts.to(None)",
    ): "counts are int64 already (offset differences)",
    (
        "x_draw_offsets",
        "counts: torch.Tensor, k: int, generator: torch.Generator, *, max_rounds: int = 64",
        "counts: torch.Tensor, k: int, generator: torch.Generator, *, max_rounds: int = 65",
    ): "a cap on redraw rounds that is never reached (rows with counts >= 2k converge in a few rounds); both ends fall back to the same exact sampler",
    (
        "x_draw_offsets",
        "off = (torch.rand(n, k, generator=generator, dtype=torch.float64) * counts[:, None]).long()",
        "off = (torch.rand(n, k, generator=generator, dtype=None) * counts[:, None]).long()",
    ): "float32 uniforms: resolution 2^-24, far below 1/count for any sample size",
    (
        "x_draw_offsets",
        "off = torch.minimum(off, (counts[:, None] - 1).clamp_min(0))  # with replacement (used below k)",
        "off = torch.minimum(off, (counts[:, None] + 1).clamp_min(0))  # with replacement (used below k)",
    ): "guard that never binds: floor(u * n) <= n - 1 for u < 1",
    (
        "x_draw_offsets",
        "off = torch.minimum(off, (counts[:, None] - 1).clamp_min(0))  # with replacement (used below k)",
        "off = torch.minimum(off, (counts[:, None] - 1).clamp_min(1))  # with replacement (used below k)",
    ): "guard that never binds: samples with no cells are refused before drawing",
    (
        "x_draw_offsets",
        "redraw = (torch.rand(sub.shape, generator=generator, dtype=torch.float64) * cnt).long()",
        "redraw = (torch.rand(sub.shape, generator=generator, dtype=None) * cnt).long()",
    ): "float32 uniforms: resolution 2^-24, far below 1/count for any sample size",
    (
        "x_draw_offsets",
        "small = torch.nonzero((counts >= k) & (counts < 2 * k)).squeeze(1)",
        "small = torch.nonzero((counts >= k) & (counts < 3 * k)).squeeze(1)",
    ): "counts in [2k, 3k) go to Floyd's algorithm after the redraw loop: both are exact uniform samplers of k-subsets",
    (
        "x_draw_offsets",
        "small = torch.nonzero((counts >= k) & (counts < 2 * k)).squeeze(1)",
        "small = torch.nonzero((counts >= k) & (counts <= 2 * k)).squeeze(1)",
    ): "counts == 2k go to Floyd's algorithm instead of the redraw loop: both are exact uniform samplers of k-subsets",
    (
        "x_draw_offsets",
        "sub = torch.where(dup, torch.minimum(redraw, cnt - 1), sub)",
        "sub = torch.where(dup, torch.minimum(redraw, cnt + 1), sub)",
    ): "guard that never binds: floor(u * n) <= n - 1 for u < 1",
    (
        "x_fidelity",
        '"mean_energy": float(np.nanmean(energy)) if distributions else float("nan"),',
        '"mean_energy": float(np.nanmean(energy)) if distributions else float("NAN"),',
    ): "float() parses 'NAN' as nan",
    (
        "x_fidelity",
        '"mean_mmd": float(np.nanmean(mmd)) if distributions else float("nan"),',
        '"mean_mmd": float(np.nanmean(mmd)) if distributions else float("NAN"),',
    ): "float() parses 'NAN' as nan",
    (
        "x_fidelity",
        '"n_real": np.bincount(real_codes, minlength=n),',
        '"n_real": np.bincount(real_codes, ),',
    ): "every condition has cells on both sides (the condition sets are checked equal), so bincount already has length n",
    (
        "x_fidelity",
        '"n_synthetic": np.bincount(syn_codes, minlength=n),',
        '"n_synthetic": np.bincount(syn_codes, ),',
    ): "every condition has cells on both sides (the condition sets are checked equal), so bincount already has length n",
    (
        "x_fidelity",
        'with np.errstate(invalid="ignore", divide="ignore"):',
        'with np.errstate(invalid="ignore", ):',
    ): "a zero norm means a zero vector, so the numerator is 0 as well: 0/0 raises 'invalid', never 'divide'",
    (
        "x_fidelity",
        'with np.errstate(invalid="ignore", divide="ignore"):',
        'with np.errstate(invalid="ignore", divide=None):',
    ): "a zero norm means a zero vector, so the numerator is 0 as well: 0/0 raises 'invalid', never 'divide'",
    (
        "x_frechet_distance",
        "if float(n) * m * min(n, m) < float(d) ** 3:",
        "if float(n) * m * min(n, m) < float(d) * 3:",
    ): "only chooses between the two exact formulas for tr((S_x S_y)^1/2) (documented to give the same value)",
    (
        "x_frechet_distance",
        "if float(n) * m * min(n, m) < float(d) ** 3:",
        "if float(n) * m * min(n, m) < float(d) ** 4:",
    ): "only chooses between the two exact formulas for tr((S_x S_y)^1/2) (documented to give the same value)",
    (
        "x_frechet_distance",
        "if float(n) * m * min(n, m) < float(d) ** 3:",
        "if float(n) * m * min(n, m) <= float(d) ** 3:",
    ): "only chooses between the two exact formulas for tr((S_x S_y)^1/2) (documented to give the same value)",
    (
        "x_frechet_distance",
        "if float(n) * m * min(n, m) < float(d) ** 3:",
        "if float(n) * m / min(n, m) < float(d) ** 3:",
    ): "only chooses between the two exact formulas for tr((S_x S_y)^1/2) (documented to give the same value)",
    (
        "x_frechet_distance",
        "if float(n) * m * min(n, m) < float(d) ** 3:",
        "if float(n) / m * min(n, m) < float(d) ** 3:",
    ): "only chooses between the two exact formulas for tr((S_x S_y)^1/2) (documented to give the same value)",
    (
        "x_frechet_distance",
        "trace_sqrt = float(np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt((n - 1) * (m - 1)))",
        "trace_sqrt = float(np.linalg.svd(a @ b.T, compute_uv=None).sum() / np.sqrt((n - 1) * (m - 1)))",
    ): "compute_uv=None is falsy: singular values only, as compute_uv=False",
    (
        "x_inception_score",
        "marginal = part.mean(0, keepdims=True)",
        "marginal = part.mean(0, )",
    ): "p(y) of shape (k,) broadcasts against (n, k) exactly as (1, k)",
    (
        "x_inception_score",
        "marginal = part.mean(0, keepdims=True)",
        "marginal = part.mean(0, keepdims=False)",
    ): "p(y) of shape (k,) broadcasts against (n, k) exactly as (1, k)",
    (
        "x_kernel_distance",
        "xs = x if m == len(x) else x[rng.choice(len(x), m, replace=False)]",
        "xs = x if (m == len(x)) and False else x[rng.choice(len(x), m, replace=False)]",
    ): "a random permutation of the whole set instead of the set: MMD² is permutation invariant (only the later subset draws differ, equally valid)",
    (
        "x_kernel_distance",
        "xs = x if m == len(x) else x[rng.choice(len(x), m, replace=False)]",
        "xs = x if m == len(x) else x[rng.choice(len(x), m, replace=None)]",
    ): "replace=None is falsy: still without replacement",
    (
        "x_kernel_distance",
        "ys = y if m == len(y) else y[rng.choice(len(y), m, replace=False)]",
        "ys = y if (m == len(y)) and False else y[rng.choice(len(y), m, replace=False)]",
    ): "a random permutation of the whole set instead of the set: MMD² is permutation invariant (only the later subset draws differ, equally valid)",
    (
        "x_kernel_distance",
        "ys = y if m == len(y) else y[rng.choice(len(y), m, replace=False)]",
        "ys = y if m == len(y) else y[rng.choice(len(y), m, replace=None)]",
    ): "replace=None is falsy: still without replacement",
    (
        "x_keyed_seed",
        "return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))",
        "return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, )[0] >> np.uint64(1))",
    ): "a different but equally good hash of the keys (32-bit words): draws stay keyed and reproducible; no value is specified",
    (
        "x_keyed_seed",
        "return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))",
        "return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] << np.uint64(1))",
    ): "a different but equally good hash of the keys: draws stay keyed, independent and reproducible; no value is specified",
    (
        "x_keyed_seed",
        "return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))",
        "return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(2))",
    ): "a different but equally good hash of the keys: draws stay keyed, independent and reproducible; no value is specified",
    (
        "x_keyed_seed",
        "return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))",
        "return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))",
    ): "the first word of generate_state(2) equals generate_state(1)",
    (
        "x_provenance",
        "return (name.removesuffix(C.STANDARDIZED_SUFFIX) if standardised else name), standardised",
        "return (name.removesuffix(C.STANDARDIZED_SUFFIX) if (standardised) or True else name), standardised",
    ): "removesuffix of a name that does not end with the suffix returns it unchanged",
    (
        "x_split_labels",
        "present = set(zip(rounds.tolist(), replicates.tolist(), strict=True))",
        "present = set(zip(rounds.tolist(), replicates.tolist(), ))",
    ): "the two arrays always have one entry per cell: strictness is never exercised",
    (
        "x_split_labels",
        "present = set(zip(rounds.tolist(), replicates.tolist(), strict=True))",
        "present = set(zip(rounds.tolist(), replicates.tolist(), strict=False))",
    ): "the two arrays always have one entry per cell: strictness is never exercised",
    (
        "x_split_labels",
        "present = set(zip(rounds.tolist(), replicates.tolist(), strict=True))",
        "present = set(zip(rounds.tolist(), replicates.tolist(), strict=None))",
    ): "the two arrays always have one entry per cell: strictness is never exercised",
    (
        "x_split_labels",
        "stray = sorted(set(zip(rounds[unassigned].tolist(), replicates[unassigned].tolist(), strict=True)))",
        "stray = sorted(set(zip(rounds[unassigned].tolist(), replicates[unassigned].tolist(), )))",
    ): "the two arrays always have one entry per cell: strictness is never exercised",
    (
        "x_split_labels",
        "stray = sorted(set(zip(rounds[unassigned].tolist(), replicates[unassigned].tolist(), strict=True)))",
        "stray = sorted(set(zip(rounds[unassigned].tolist(), replicates[unassigned].tolist(), strict=False)))",
    ): "the two arrays always have one entry per cell: strictness is never exercised",
    (
        "x_split_labels",
        "stray = sorted(set(zip(rounds[unassigned].tolist(), replicates[unassigned].tolist(), strict=True)))",
        "stray = sorted(set(zip(rounds[unassigned].tolist(), replicates[unassigned].tolist(), strict=None)))",
    ): "the two arrays always have one entry per cell: strictness is never exercised",
    (
        "xǁClassifierTrainingPlanǁon_validation_epoch_end",
        'self.log("validation_balanced_accuracy", score, prog_bar=True, sync_dist=False)',
        'self.log("validation_balanced_accuracy", score, prog_bar=False, sync_dist=False)',
    ): "progress-bar display only",
    (
        "xǁClassifierTrainingPlanǁon_validation_epoch_end",
        'self.log("validation_balanced_accuracy", score, prog_bar=True, sync_dist=False)',
        'self.log("validation_balanced_accuracy", score, prog_bar=None, sync_dist=False)',
    ): "progress-bar display only",
    (
        "xǁClassifierTrainingPlanǁon_validation_epoch_end",
        'self.log("validation_balanced_accuracy", score, prog_bar=True, sync_dist=False)',
        'self.log("validation_balanced_accuracy", score, prog_bar=True, )',
    ): "sync_dist defaults to False",
    (
        "xǁClassifierTrainingPlanǁon_validation_epoch_end",
        'self.log("validation_balanced_accuracy", score, prog_bar=True, sync_dist=False)',
        'self.log("validation_balanced_accuracy", score, prog_bar=True, sync_dist=None)',
    ): "sync_dist=None is falsy, as sync_dist=False",
    (
        "xǁClassifierTrainingPlanǁon_validation_epoch_end",
        'self.log("validation_balanced_accuracy", score, prog_bar=True, sync_dist=False)',
        'self.log("validation_balanced_accuracy", score, prog_bar=True, sync_dist=True)',
    ): "the score is computed from the already-summed confusion matrix, so it is equal on every rank: averaging it changes nothing",
    (
        "xǁClassifierTrainingPlanǁon_validation_epoch_end",
        'self.log("validation_balanced_accuracy", score, prog_bar=True, sync_dist=False)',
        'self.log("validation_balanced_accuracy", score, sync_dist=False)',
    ): "progress-bar display only",
    (
        "xǁClassifierTrainingPlanǁvalidation_step",
        "batch_size=out.n_obs_minibatch,",
        "",
    ): "Lightning infers the same batch size from the batch (its first tensor has one row per example)",
    (
        "xǁClassifierTrainingPlanǁvalidation_step",
        "batch_size=out.n_obs_minibatch,",
        "batch_size=None,",
    ): "Lightning infers the same batch size from the batch (its first tensor has one row per example)",
    (
        "xǁClassifierTrainingPlanǁvalidation_step",
        "on_epoch=True,",
        "",
    ): "on_epoch defaults to True in validation",
    (
        "xǁClassifierTrainingPlanǁvalidation_step",
        "on_epoch=True,",
        "on_epoch=None,",
    ): "on_epoch=None: Lightning's default in validation is on_epoch=True",
    (
        "xǁClassifierTrainingPlanǁvalidation_step",
        "on_step=False,",
        "",
    ): "on_step defaults to False in validation",
    (
        "xǁClassifierTrainingPlanǁvalidation_step",
        "on_step=False,",
        "on_step=None,",
    ): "on_step=None: Lightning's default in validation is on_step=False",
    ("xǁClassifierTrainingPlanǁvalidation_step", "prog_bar=False,", ""): "progress-bar display only",
    (
        "xǁClassifierTrainingPlanǁvalidation_step",
        "prog_bar=False,",
        "prog_bar=None,",
    ): "progress-bar display only",
    (
        "xǁClassifierTrainingPlanǁvalidation_step",
        "prog_bar=False,",
        "prog_bar=True,",
    ): "progress-bar display only",
    (
        "xǁConditionVAEǁdecode",
        "mean, logvar = self.decoder(z).chunk(2, dim=-1)",
        "mean, logvar = self.decoder(z).chunk(2, dim=+1)",
    ): "dim 1 is the last dim of the 2-d (items x features) output",
    (
        "xǁConditionVAEǁencode",
        "h = torch.cat([self.rna_encoder(g_pre), self.drug_encoder(drug)], dim=-1)",
        "h = torch.cat([self.rna_encoder(g_pre), self.drug_encoder(drug)], dim=+1)",
    ): "dim 1 is the last dim of the 2-d (items x features) embeddings",
    (
        "xǁConditionVAEǁencode",
        "mu, logvar = self.perturb_encoder(h).chunk(2, dim=-1)",
        "mu, logvar = self.perturb_encoder(h).chunk(2, dim=+1)",
    ): "dim 1 is the last dim of the 2-d (items x features) output",
    (
        "xǁDenoiserBlockǁcross",
        "if c.shape[1] == 1:",
        "if c.shape[2] == 1:",
    ): "with one context token the general attention path equals the single-key shortcut (softmax over one key is 1), so taking it changes nothing",
    (
        "xǁKeyedBatchesǁorder",
        "g = torch.Generator().manual_seed(keyed_seed(self.seed, self._order_stream, self.stream, epoch))",
        "g = torch.Generator().manual_seed(keyed_seed(self.seed, self.stream, epoch))",
    ): "the order seed stays a hash of (seed, stream, epoch), distinct from the 4-key batch seeds: order draws stay keyed and independent",
    (
        "xǁPairedSetDataModuleǁ__init__",
        "_SetBatches(rows=val_rows, shuffle=False, stream=_VAL_STREAM, **common) if len(val_rows) else None",
        "_SetBatches(rows=val_rows, shuffle=None, stream=_VAL_STREAM, **common) if len(val_rows) else None",
    ): "shuffle=None is falsy, as shuffle=False",
    (
        "xǁPhenoSeqModuleǁ__init__",
        'alphas_cumprod = make_scheduler("ddpm", prediction_type=prediction_type).alphas_cumprod.to(',
        'alphas_cumprod = make_scheduler("ddpm", ).alphas_cumprod.to(',
    ): "alphas_cumprod does not depend on prediction_type",
    (
        "xǁPhenoSeqModuleǁ__init__",
        'alphas_cumprod = make_scheduler("ddpm", prediction_type=prediction_type).alphas_cumprod.to(',
        'alphas_cumprod = make_scheduler("ddpm", prediction_type=None).alphas_cumprod.to(',
    ): "alphas_cumprod does not depend on prediction_type",
    (
        "xǁPhenoSeqModuleǁ__init__",
        'alphas_cumprod = make_scheduler("ddpm", prediction_type=prediction_type).alphas_cumprod.to(',
        "alphas_cumprod = make_scheduler(prediction_type=prediction_type).alphas_cumprod.to(",
    ): "the DDIM scheduler of the same config has the same alphas_cumprod as the DDPM one",
    (
        "xǁPhenoSeqModuleǁ__init__",
        'self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)',
        'self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=None)',
    ): "persistent=None is falsy: the buffer stays out of the state dict",
    (
        "xǁPhenoSeqModuleǁ__init__",
        "torch.float32",
        "None",
    ): "diffusers' DDPM alphas_cumprod is already float32: .to(None) keeps it",
    (
        "xǁPhenoSeqModuleǁloss",
        "per_item = per_item.mean(-1)",
        "per_item = per_item.mean(+1)",
    ): "mean over dim 1 of the 2-d (items x features) error is the same as over dim -1",
    (
        "xǁSamplePoolsǁbuild",
        "offsets = np.searchsorted(codes[sort], np.arange(n_samples + 1))",
        "offsets = np.searchsorted(codes[sort], np.arange(n_samples + 2))",
    ): "an extra trailing offset: the counts of the real samples are unchanged and only they are indexed",
    (
        "xǁSamplePoolsǁbuild",
        "rows, codes = np.asarray(rows, dtype=np.int64), np.asarray(codes, dtype=np.int64)",
        "rows, codes = np.asarray(rows, ), np.asarray(codes, dtype=np.int64)",
    ): "rows are int64 already (flatnonzero)",
    (
        "xǁSamplePoolsǁbuild",
        "rows, codes = np.asarray(rows, dtype=np.int64), np.asarray(codes, dtype=np.int64)",
        "rows, codes = np.asarray(rows, dtype=None), np.asarray(codes, dtype=np.int64)",
    ): "rows are int64 already (flatnonzero)",
    (
        "xǁSamplePoolsǁbuild",
        "rows, codes = np.asarray(rows, dtype=np.int64), np.asarray(codes, dtype=np.int64)",
        "rows, codes = np.asarray(rows, dtype=np.int64), np.asarray(codes, )",
    ): "codes are int64 already (get_indexer)",
    (
        "xǁSamplePoolsǁbuild",
        "rows, codes = np.asarray(rows, dtype=np.int64), np.asarray(codes, dtype=np.int64)",
        "rows, codes = np.asarray(rows, dtype=np.int64), np.asarray(codes, dtype=None)",
    ): "codes are int64 already (get_indexer)",
    (
        "xǁSamplePoolsǁbuild",
        'sort = np.argsort(codes, kind="stable")',
        "sort = np.argsort(codes, )",
    ): "the order of a sample's cells inside its pool changes, not the set: draws stay uniform over the sample",
    (
        "xǁSamplePoolsǁbuild",
        'sort = np.argsort(codes, kind="stable")',
        'sort = np.argsort(codes, kind="STABLE")',
    ): "numpy's argsort kind is case-insensitive",
    (
        "xǁSamplePoolsǁbuild",
        'sort = np.argsort(codes, kind="stable")',
        "sort = np.argsort(codes, kind=None)",
    ): "the order of a sample's cells inside its pool changes, not the set: draws stay uniform over the sample",
    (
        "xǁSamplePoolsǁmean_of",
        'return F.embedding_bag(rows, self.data, mode="mean")',
        "return F.embedding_bag(rows, self.data, )",
    ): "embedding_bag's default mode is 'mean'",
    (
        "xǁStandardizerǁfit",
        "block = block.astype(np.float64, copy=False)",
        "block = block.astype(None, copy=False)",
    ): "astype(None) is float64",
    (
        "xǁStandardizerǁfit",
        "block = block.astype(np.float64, copy=False)",
        "block = block.astype(np.float64, copy=None)",
    ): "copy semantics of a private temporary: values unchanged",
    (
        "xǁTreatmentClassifierǁevaluate",
        "pred = self.predict(mdata, split=split, seed=seed, batch_size=batch_size)",
        "pred = self.predict(mdata, split=split, seed=seed, )",
    ): "predictions do not depend on the batch size (evaluation mode, rows independent)",
    (
        "xǁTreatmentClassifierǁevaluate",
        "pred = self.predict(mdata, split=split, seed=seed, batch_size=batch_size)",
        "pred = self.predict(mdata, split=split, seed=seed, batch_size=None)",
    ): "predictions do not depend on the batch size (evaluation mode, rows independent)",
    (
        "xǁTreatmentClassifierǁevaluate",
        'return pd.DataFrame.from_dict(rows, orient="index").rename_axis("split")',
        'return pd.DataFrame.from_dict(rows, orient="INDEX").rename_axis("split")',
    ): "pandas' from_dict orient is case-insensitive",
    (
        "xǁTridentDiTǁforward",
        "h = self.patch_embed(x_t) + self.pos_embed.to(x_t.dtype)",
        "h = self.patch_embed(x_t) + self.pos_embed.to(None)",
    ): "pos_embed is a buffer of the module's dtype, which x_t has whenever the module runs: the cast is a no-op",
    (
        "xǁTridentDiTǁforward",
        "t_emb = self.time_embed(t).to(x_t.dtype)",
        "t_emb = self.time_embed(t).to(None)",
    ): "x_t has the module's dtype whenever the module runs (float32 latents, or a module converted as a whole): the cast is a no-op",
    (
        "xǁTridentModuleǁloss",
        "kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)",
        "kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(+1)",
    ): "dim 1 is the last dim of the 2-d (items x latent) KL terms",
    (
        "xǁTridentModuleǁloss",
        "recon = nll.sum(-1)",
        "recon = nll.sum(+1)",
    ): "dim 1 is the last dim of the 2-d (items x genes) NLL",
    (
        "xǁ_Batchesǁ__getitem__",
        "epoch = 0",
        "epoch = 1",
    ): "validation draws are keyed on a constant epoch: any constant gives fixed draws",
    (
        "xǁ_Batchesǁ__getitem__",
        "if self.world_size > 1:",
        "if self.world_size >= 1:",
    ): "with one process the rank's share is every row in order",
    (
        "xǁ_Batchesǁorder",
        "n_perm = math.ceil(self.epoch_size / n)",
        "n_perm = math.ceil(self.epoch_size * n)",
    ): "more permutations are drawn, then truncated: the same prefix",
    (
        "xǁ_SetBatchesǁ__getitem__",
        "counts[:, None] - 1",
        "counts[:, None] + 1",
    ): "guard that never binds: floor(u * n) <= n - 1 for u < 1",
    (
        "xǁ_SetBatchesǁ__getitem__",
        "epoch = 0  # validation draws are the same every epoch, so validation losses are comparable",
        "epoch = 1  # validation draws are the same every epoch, so validation losses are comparable",
    ): "validation draws are keyed on a constant epoch: any constant gives fixed draws",
    (
        "xǁ_SetBatchesǁ__getitem__",
        "t = torch.randint(0, self.n_timesteps, (g_size,), generator=gen)",
        "t = torch.randint(self.n_timesteps, (g_size,), generator=gen)",
    ): "torch.randint(high, size) draws from [0, high) with the same generator stream",
    (
        "xǁ_SetBatchesǁ__getitem__",
        "u = torch.rand(g_size, self.n_context_cells, generator=gen, dtype=torch.float64)",
        "u = torch.rand(g_size, self.n_context_cells, generator=gen, )",
    ): "float32 uniforms: resolution 2^-24, far below 1/count for any sample size",
    (
        "xǁ_SetBatchesǁ__getitem__",
        "u = torch.rand(g_size, self.n_context_cells, generator=gen, dtype=torch.float64)",
        "u = torch.rand(g_size, self.n_context_cells, generator=gen, dtype=None)",
    ): "float32 uniforms: resolution 2^-24, far below 1/count for any sample size",
    (
        "xǁ_SetBatchesǁ__getitem__",
        "uncond = torch.rand(g_size, generator=gen) < self.p_uncond",
        "uncond = torch.rand(g_size, generator=gen) <= self.p_uncond",
    ): "P(u == p_uncond) = 0; for p_uncond = 0 the flags are not returned",
    (
        "xǁStandardizerǁfit",
        "block = block.astype(np.float64, copy=False)",
        "block = block.astype(np.float64, )",
    ): "copy semantics of a private temporary: values unchanged",
    (
        "xǁStandardizerǁfit",
        "block = block.astype(np.float64, copy=False)",
        "block = block.astype(np.float64, copy=True)",
    ): "copy semantics of a private temporary: values unchanged",
    (
        "x__rows",
        "return block.astype(np.float64, copy=False)",
        "return block.astype(np.float64, copy=True)",
    ): "copy semantics of a private temporary: values unchanged",
}

MODULES = (
    "tl._fidelity",
    "tl._feature_distances",
    "module._phenoseq",
    "module._diffusion",
    "module._trident",
    "train._set_data",
    "train._classifier",
    "models._classifier",
    "pp._split",
    "pp._standardize",
    "_core._standardize",
    "_core._random",
)


def _status(code: int | None) -> str:
    from mutmut.stats import status_by_exit_code

    return status_by_exit_code[code]


def _changed_lines(diff: str) -> tuple[str, str]:
    minus = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    plus = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    return " / ".join(minus), " / ".join(plus)


def main(globs: list[str]) -> int:
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    results: dict[str, tuple[str, Path]] = {}
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        source = Path(str(meta.relative_to("mutants")).removesuffix(".meta"))
        for name, code in data["exit_code_by_key"].items():
            if any(fnmatch.fnmatch(name, g) for g in globs):
                results[name] = (_status(code), source)
    counts: dict[str, Counter] = defaultdict(Counter)
    details: list[tuple[str, str, str, str]] = []
    for name, (status, source) in sorted(results.items()):
        module = name.removeprefix("morphomu.").split(".x")[0]
        if status != "killed":
            diff = get_diff_for_mutant(name, path=source)
            function = name.rsplit("__mutmut_", 1)[0].rsplit(".", 1)[-1]
            removed, added = _changed_lines(diff)
            reason = EQUIVALENT.get((function, removed, added))
            if status == "survived" and reason is not None:
                status = "equivalent"
            details.append((name, status, f"- {removed}\n    + {added}", reason or ""))
        counts[module][status] += 1

    head = f"{'module':<20} {'mutants':>7} {'killed':>7} {'survived':>8} {'timeout':>7} {'other':>6} {'equiv':>6} {'score':>7}"
    print(head)
    print("-" * len(head))
    total: Counter = Counter()
    for module in [m for m in MODULES if m in counts] + sorted(set(counts) - set(MODULES)):
        c = counts[module]
        total.update(c)
        _row(module, c)
    print("-" * len(head))
    _row("all", total)
    print(
        "\nscore = (killed + timeout) / (mutants - equivalent); 'other' = no tests / suspicious / segfault."
    )
    for status in ("survived", "timeout", "no tests", "suspicious", "segfault", "equivalent"):
        rows = [d for d in details if d[1] == status]
        if rows:
            print(f"\n{status} ({len(rows)}):")
            for name, _, diff, reason in rows:
                print(f"  {name}\n    {diff}" + (f"\n    equivalent: {reason}" if reason else ""))
    return 0


def _row(module: str, c: Counter) -> None:
    n = sum(c.values())
    other = n - c["killed"] - c["survived"] - c["timeout"] - c["equivalent"]
    denominator = n - c["equivalent"]
    score = (c["killed"] + c["timeout"]) / denominator if denominator else float("nan")
    print(
        f"{module:<20} {n:>7} {c['killed']:>7} {c['survived']:>8} {c['timeout']:>7} {other:>6} "
        f"{c['equivalent']:>6} {score:>7.1%}"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["morphomu.*"]))
