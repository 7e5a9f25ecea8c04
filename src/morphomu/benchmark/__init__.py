"""The ``morphomu benchmark`` tasks: what the command line runs, callable from Python.

- :func:`run_rna_benchmark` (``morphomu benchmark rna``): PhenoSeq on the scGeneScope
  treatment-identification benchmark, the PhenoSeq paper's Tables 1–2, fidelity and ablations.
- :func:`run_morphology_benchmark` (``morphomu benchmark morphology``): TRIDENT's image metrics per
  in- / out-of-distribution compound split, with and without RNA, beside a control-tile floor.

Each writes ``report.md``, ``results.json`` and plots into an existing directory, and on failure still
writes ``results.json`` with the stages it finished.
"""

from __future__ import annotations

from ._morphology import DEFAULT_MORPHOLOGY_DATA, MorphologyBenchmarkConfig, run_morphology_benchmark
from ._report import PAPER_MORPHOLOGY, render_morphology_report, render_rna_report
from ._rna import RnaBenchmarkConfig, fidelity_scores, imaging_separability, run_rna_benchmark

# DEFAULT_MORPHOLOGY_DATA and PAPER_MORPHOLOGY stay importable here (tables, not API)
__all__ = [
    "MorphologyBenchmarkConfig",
    "RnaBenchmarkConfig",
    "fidelity_scores",
    "imaging_separability",
    "render_morphology_report",
    "render_rna_report",
    "run_morphology_benchmark",
    "run_rna_benchmark",
]
