#!/usr/bin/env bash
# The main job on real thyroid ultrasound (DDTI; Pedraza et al., Proc. SPIE 9287, 2015):
# import the cohort, train perturbers for sex and age on the train split, evaluate on
# the test split, for LiteMedSAM and for a U-Net trained here. A step whose output
# exists is skipped, so the script can be rerun after an interruption.
#
# Usage: scripts/ddti_main_job.sh DDTI_FOLDER WORK_FOLDER
set -euo pipefail
DDTI=${1:?give the DDTI folder (N.xml + N_k.jpg)}
WORK=${2:?give a work folder}
EPOCHS=${APPLE_EPOCHS:-10}
UNET_EPOCHS=${APPLE_UNET_EPOCHS:-25}
APPLE=${APPLE_PERTURB:-apple-perturb}
BACKBONES=${APPLE_BACKBONES:-unet litemedsam}
export APPLE_PERTURB_CACHE=${APPLE_PERTURB_CACHE:-$WORK/cache}
mkdir -p "$WORK"
TIMES="$WORK/step_seconds.tsv"

step() {  # step NAME OUTPUT COMMAND...: run COMMAND unless OUTPUT exists, log its wall time
    local name=$1 output=$2; shift 2
    if [[ -e $output ]]; then echo "skip $name ($output exists)"; return; fi
    echo "== $name: $*"
    local start=$SECONDS
    "$@"
    printf '%s\t%d\n' "$name" $((SECONDS - start)) >> "$TIMES"
}

M=$WORK/ddti/manifest.csv
step import-ddti "$M" $APPLE import-ddti "$DDTI" "$WORK/ddti"
[[ " $BACKBONES " == *" unet "* ]] && step unet-train-base "$WORK/unet.safetensors" \
    $APPLE train-base --cohort "$M" --out "$WORK/unet.safetensors" --epochs "$UNET_EPOCHS" --progress none
for backbone in $BACKBONES; do
    checkpoint=()
    [[ $backbone == unet ]] && checkpoint=(--checkpoint "$WORK/unet.safetensors")
    for attribute in sex age; do
        p=$WORK/$backbone-$attribute.safetensors
        step "$backbone-train-$attribute" "$p" $APPLE train --cohort "$M" --backbone $backbone "${checkpoint[@]}" \
            --attribute $attribute --epochs "$EPOCHS" --out "$p" --progress none
        step "$backbone-evaluate-$attribute" "$WORK/eval-$backbone-$attribute/metrics.json" \
            $APPLE evaluate --cohort "$M" --backbone $backbone "${checkpoint[@]}" --perturber "$p" \
            --split test --out "$WORK/eval-$backbone-$attribute" --save-masks --progress none
    done
done
cat "$TIMES"
