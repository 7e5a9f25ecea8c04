#!/usr/bin/env bash
# Mutation testing of morphomu's core logic with mutmut (a test extra; not part of CI: minutes, not seconds).
#
#   bash benchmarks/mutation.sh                      # every core function below
#   bash benchmarks/mutation.sh 'morphomu.tl._fidelity.*'   # a subset (mutant-name globs)
#   MUTATION_JOBS=4 bash benchmarks/mutation.sh      # parallel workers (default 2)
#
# mutmut copies src/ and tests/ into mutants/ (git-ignored; rebuilt here on every run, so the snapshot is
# the working tree's), rewrites every function of the files in pyproject's [tool.mutmut] only_mutate into
# its mutants, records which of the selected fast tests (pytest_add_cli_args_test_selection) call each
# function, and runs each mutant against those tests only (-x, no xdist, no random order). Lines that build
# or raise an error message are not mutated (do_not_mutate_patterns). Of the mutants, those of the
# functions named below (the core logic: formulas, draws, schedules, metrics, splits, statistics) are run;
# argument checks, construction of network layers and result bookkeeping are left out.
# The table at the end counts per module; benchmarks/_mutation_report.py lists the equivalent mutants.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MUTMUT=${MUTMUT:-$(dirname "$PY")/mutmut}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg

CORE=(
  # tl/_fidelity.py: centroid metrics, rank, specificity, energy distance, MMD, subsampling
  'morphomu.tl._fidelity.x_provenance__*'
  'morphomu.tl._fidelity.x__rows__*'
  'morphomu.tl._fidelity.x__group_means__*'
  'morphomu.tl._fidelity.x__pairwise_sq__*'
  'morphomu.tl._fidelity.x_distribution_scores__*'
  'morphomu.tl._fidelity.x__subsample__*'
  'morphomu.tl._fidelity.x_fidelity__*'
  # tl/_feature_distances.py: FID, KID, IS
  'morphomu.tl._feature_distances.x_as_feature_matrix__*'
  'morphomu.tl._feature_distances.x_check_pair__*'
  'morphomu.tl._feature_distances.x__psd_sqrt__*'
  'morphomu.tl._feature_distances.x_frechet_distance__*'
  'morphomu.tl._feature_distances.x__poly_mmd__*'
  'morphomu.tl._feature_distances.x_kernel_distance__*'
  'morphomu.tl._feature_distances.x_inception_score__*'
  # module/_diffusion.py: the pinned schedule
  'morphomu.module._diffusion.x_make_scheduler__*'
  # module/_phenoseq.py: forward process, targets, loss, null context, network forward passes
  'morphomu.module._phenoseq.xǁPhenoSeqModuleǁ*'
  'morphomu.module._phenoseq.xǁDenoiserBlockǁcross__*'
  'morphomu.module._phenoseq.xǁDenoiserBlockǁforward__*'
  'morphomu.module._phenoseq.xǁContextEncoderǁforward__*'
  'morphomu.module._phenoseq.xǁCrossCacheǁtake__*'
  # module/_trident.py: condition VAE, conditioning, forward process, targets, joint loss
  'morphomu.module._trident.xǁConditionVAEǁencode__*'
  'morphomu.module._trident.xǁConditionVAEǁdecode__*'
  'morphomu.module._trident.xǁTridentDiTǁcondition__*'
  'morphomu.module._trident.xǁTridentDiTǁforward__*'
  'morphomu.module._trident.xǁTridentModuleǁ[!_]*'
  'morphomu.module._trident.xǁTridentModuleǁ_get_*'
  # train/_set_data.py: keyed epoch order, global batches, context draws, timesteps, null-context flags
  'morphomu.train._set_data.xǁKeyedBatchesǁorder__*'
  'morphomu.train._set_data.xǁKeyedBatchesǁglobal_items__*'
  'morphomu.train._set_data.xǁKeyedBatchesǁ__len____*'
  'morphomu.train._set_data.xǁ_SetBatchesǁ__getitem____*'
  'morphomu.train._set_data.xǁPairedSetDataModuleǁ__init____*'
  'morphomu.train._set_data.xǁPairedSetDataModuleǁset_rank__*'
  # train/_classifier.py: distinct draws, populations, example batches, balanced accuracy
  'morphomu.train._classifier.x__floyd__*'
  'morphomu.train._classifier.x_draw_offsets__*'
  'morphomu.train._classifier.xǁSamplePoolsǁ*'
  'morphomu.train._classifier.xǁExampleSetǁbatch__*'
  'morphomu.train._classifier.xǁExampleSetǁlabels__*'
  'morphomu.train._classifier.xǁ_Batchesǁorder__*'
  'morphomu.train._classifier.xǁ_Batchesǁ__getitem____*'
  'morphomu.train._classifier.xǁ_Batchesǁ__len____*'
  'morphomu.train._classifier.x_balanced_accuracy_from_confusion__*'
  'morphomu.train._classifier.xǁClassifierTrainingPlanǁvalidation_step__*'
  'morphomu.train._classifier.xǁClassifierTrainingPlanǁon_validation_epoch_end__*'
  # train/_classifier.py and models/_classifier.py: the benchmark's metrics
  'morphomu.train._classifier.x_classification_metrics__*'
  'morphomu.models._classifier.xǁTreatmentClassifierǁevaluate__*'
  # pp/_split.py: replicate-level split
  'morphomu.pp._split.*'
  # pp/_standardize.py and the Standardizer it wraps (_core/_standardize.py): train-only statistics
  'morphomu.pp._standardize.*'
  'morphomu._core._standardize.*'
  # the keyed seeds of every draw (_core/_random.py)
  'morphomu._core._random.x_keyed_seed__*'
)
if [ "$#" -gt 0 ]; then CORE=("$@"); fi

if ! "$PY" -c "import mutmut" 2>/dev/null; then
  echo "mutmut is not installed: pip install -e '.[test]'" >&2
  exit 1
fi
rm -rf mutants
mkdir -p mutants
start=$(date +%s)
# mutmut exits non-zero when a mutant survives; the table below is the result
nice -n 19 "$MUTMUT" run --max-children "${MUTATION_JOBS:-2}" "${CORE[@]}" >mutants/run.log 2>&1 || {
  status=$?
  if ! grep -q "mutations/second" mutants/run.log; then
    tr '\r' '\n' <mutants/run.log | grep -v '^⠀\|^[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]' | tail -40 >&2
    echo "mutmut failed (exit $status); full log: mutants/run.log" >&2
    exit "$status"
  fi
}
end=$(date +%s)
echo "mutmut run: $((end - start)) s wall ($(tr '\r' '\n' <mutants/run.log | grep 'mutations/second' | tail -1))"
echo
"$PY" benchmarks/_mutation_report.py "${CORE[@]}"
