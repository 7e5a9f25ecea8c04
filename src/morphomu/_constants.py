"""Default names of the MuData contract (see the design docs): the one place they are spelled.

Every function takes these as keyword-argument defaults, so a user's own names work too.
"""

from __future__ import annotations

from typing import Final

# --- modalities -------------------------------------------------------------------------------
IMAGE_MOD: Final = "img"
RNA_MOD: Final = "rna"
RNA_SYNTHETIC_MOD: Final = "rna_synthetic"
IMAGE_SYNTHETIC_MOD: Final = "img_synthetic"

# --- representations (.obsm keys) --------------------------------------------------------------
IMAGE_REP: Final = "X_vit"
RNA_REP: Final = "X_scgpt"
SCVI_REP: Final = "X_scvi"
PCA_REP: Final = "X_pca"
IMAGES_KEY: Final = "images"
SPATIAL_KEY: Final = "spatial"
STANDARDIZED_SUFFIX: Final = "_std"

# --- obs columns -------------------------------------------------------------------------------
SAMPLE_KEY: Final = "sample"
TREATMENT_KEY: Final = "treatment"
REPLICATE_KEY: Final = "replicate"
ROUND_KEY: Final = "round"
SPLIT_KEY: Final = "split"
COMPOUND_SPLIT_KEY: Final = "compound_split"
SMILES_KEY: Final = "smiles"
SYNTHETIC_KEY: Final = "synthetic"

CONTROL: Final = "DMSO"

# --- split labels ------------------------------------------------------------------------------
TRAIN: Final = "train"
VAL: Final = "val"
TEST_WE: Final = "test_we"
TEST_HE: Final = "test_he"
SPLITS: Final = (TRAIN, VAL, TEST_WE, TEST_HE)
HELD_OUT_SPLITS: Final = (TEST_WE, TEST_HE)
COMPOUND_SPLITS: Final = ("id", "ood")

# --- uns ---------------------------------------------------------------------------------------
UNS_KEY: Final = "morphomu"

# --- scGeneScope -------------------------------------------------------------------------------
STAINS: Final = ("DNA", "RNA", "AGP", "Mito", "ER")
N_STAINS: Final = len(STAINS)
VIT_L_DIM: Final = 1024
IMAGE_DIM: Final = N_STAINS * VIT_L_DIM  # 5120
SCGPT_DIM: Final = 512

#: The 28 scGeneScope compounds (the release's treatment strings) followed by the control.
SCGENESCOPE_COMPOUNDS: Final = (
    "Thapsigargin",
    "DBeQ",
    "Cycloheximide",
    "Vorinostat / SAHA",
    "GW-843682X",
    "CGK-733",
    "Colchicine",
    "BAY 11-7082",
    "(R)-Roscovitine",
    "AMG-900",
    "PQ401",
    "Caffeine",
    "Phenacetin",
    "Quinidine",
    "Daporinad / FK-866",
    "Aloxistatin / E-64d",
    "Splitomicin",
    "Benzbromarone",
    "HARMAN",
    "Wy 14643 / Pirinixic Acid",
    "Fluocinonide",
    "SKII",
    "Pantoprazole",
    "PD-98059",
    "(R)-MG132",
    "Simvastatin",
    "LY303511 (hydrochloride)",
    "12-O-tetradecanoylphorbol-13-acetate",
)
SCGENESCOPE_CONDITIONS: Final = (*SCGENESCOPE_COMPOUNDS, CONTROL)

#: (round, replicate) layout of the scGeneScope release.
SCGENESCOPE_REPLICATES: Final = {1: (3, 4, 5), 2: (1, 2)}
