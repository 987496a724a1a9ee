#!/usr/bin/env bash
# The fairness study on real thyroid ultrasound (DDTI; Pedraza et al., Proc. SPIE 9287,
# 2015). It compares U-Net, TransUNet and LiteMedSAM, for sex and for age, each as base,
# +APPLE, +FEBS and +InD, over several seeds. FEBS applies to the trained models only,
# and LiteMedSAM's InD fine-tunes one mask decoder per group. Two beta sweeps and a
# report follow. Every step writes one file or folder. A step whose output exists is
# skipped, so the study can be stopped and resumed, or run in pieces. Seeds are the outer loop:
# after the first seed every method has one complete result. LiteMedSAM's encoder, the
# slowest step on a CPU, runs once per image: training and evaluation share the
# float16 latent cache.
#
# Usage: scripts/ddti_study.sh DDTI_FOLDER WORK_FOLDER
# Settings (environment): APPLE_SEEDS ("0 1 2"), APPLE_INPUT_SIZE (128),
# APPLE_BASE_EPOCHS (10), APPLE_EPOCHS (10, perturbers of trained models),
# APPLE_LITE_EPOCHS (3), APPLE_IND_EPOCHS (3), APPLE_LITE_IND_EPOCHS (2),
# APPLE_SWEEP_EPOCHS (10),
# APPLE_SWEEP_SEEDS (the first seed),
# APPLE_PERTURB (apple-perturb), APPLE_PERTURB_CACHE (WORK/cache).
set -euo pipefail
DDTI=${1:?give the DDTI folder (N.xml + N_k.jpg)}
WORK=${2:?give a work folder}
SEEDS=${APPLE_SEEDS:-0 1 2}
SIZE=${APPLE_INPUT_SIZE:-128}
BASE_EPOCHS=${APPLE_BASE_EPOCHS:-10}
EPOCHS=${APPLE_EPOCHS:-10}
LITE_EPOCHS=${APPLE_LITE_EPOCHS:-3}
IND_EPOCHS=${APPLE_IND_EPOCHS:-3}
LITE_IND_EPOCHS=${APPLE_LITE_IND_EPOCHS:-2}
SWEEP_EPOCHS=${APPLE_SWEEP_EPOCHS:-10}
first=$(set -- $SEEDS; echo "$1")
SWEEP_SEEDS=${APPLE_SWEEP_SEEDS:-$first}
APPLE=${APPLE_PERTURB:-apple-perturb}
export APPLE_PERTURB_CACHE=${APPLE_PERTURB_CACHE:-$WORK/cache}
TRAINED="unet transunet"
ATTRIBUTES="sex age"
mkdir -p "$WORK"
TIMES="$WORK/step_seconds.tsv"

step() {  # step NAME OUTPUT COMMAND...: run COMMAND unless OUTPUT exists; log its wall time
    local name=$1 output=$2; shift 2
    if [[ -e $output ]]; then echo "skip $name ($output exists)"; return; fi
    echo "== $(date +%H:%M:%S) $name"
    local start=$SECONDS
    "$@" --progress none
    printf '%s\t%d\n' "$name" $((SECONDS - start)) >> "$TIMES"
}

M=$WORK/ddti/manifest.csv
if [[ ! -e $M ]]; then $APPLE import-ddti "$DDTI" "$WORK/ddti"; fi

for seed in $SEEDS; do
    S=$WORK/seed$seed
    mkdir -p "$S"
    for arch in $TRAINED; do
        base=$S/$arch-base.safetensors
        step "$arch-base-s$seed" "$base" $APPLE train-base --cohort "$M" --architecture $arch \
            --input-size "$SIZE" --epochs "$BASE_EPOCHS" --seed "$seed" --out "$base"
        for attribute in $ATTRIBUTES; do
            tag=$arch-$attribute
            step "$tag-apple-s$seed" "$S/$tag-apple.safetensors" $APPLE train --cohort "$M" --backbone $arch \
                --checkpoint "$base" --attribute $attribute --epochs "$EPOCHS" --seed "$seed" \
                --out "$S/$tag-apple.safetensors"
            step "$tag-evaluate-apple-s$seed" "$S/eval-$tag-apple/metrics.json" $APPLE evaluate --cohort "$M" \
                --backbone $arch --checkpoint "$base" --perturber "$S/$tag-apple.safetensors" --split test \
                --out "$S/eval-$tag-apple" --save-masks
            step "$tag-febs-s$seed" "$S/$tag-febs.safetensors" $APPLE train-base --cohort "$M" --architecture $arch \
                --loss febs --attribute $attribute --input-size "$SIZE" --epochs "$BASE_EPOCHS" --seed "$seed" \
                --out "$S/$tag-febs.safetensors"
            step "$tag-evaluate-febs-s$seed" "$S/eval-$tag-febs/metrics.json" $APPLE evaluate --cohort "$M" \
                --backbone $arch --checkpoint "$S/$tag-febs.safetensors" --attribute $attribute --split test \
                --out "$S/eval-$tag-febs" --save-masks
            step "$tag-ind-s$seed" "$S/$tag-ind/ind.json" $APPLE train-ind --cohort "$M" --base "$base" \
                --attribute $attribute --epochs "$IND_EPOCHS" --seed "$seed" --out "$S/$tag-ind"
            step "$tag-evaluate-ind-s$seed" "$S/eval-$tag-ind/metrics.json" $APPLE evaluate-ind --cohort "$M" \
                --ind "$S/$tag-ind" --split test --out "$S/eval-$tag-ind" --save-masks
        done
    done
    for attribute in $ATTRIBUTES; do
        tag=litemedsam-$attribute
        step "$tag-apple-s$seed" "$S/$tag-apple.safetensors" $APPLE train --cohort "$M" --backbone litemedsam \
            --attribute $attribute --epochs "$LITE_EPOCHS" --seed "$seed" --out "$S/$tag-apple.safetensors"
        step "$tag-evaluate-apple-s$seed" "$S/eval-$tag-apple/metrics.json" $APPLE evaluate --cohort "$M" \
            --backbone litemedsam --perturber "$S/$tag-apple.safetensors" --split test \
            --out "$S/eval-$tag-apple" --save-masks --cached-latents
        step "$tag-ind-s$seed" "$S/$tag-ind/ind.json" $APPLE train-ind --cohort "$M" --backbone litemedsam \
            --attribute $attribute --epochs "$LITE_IND_EPOCHS" --seed "$seed" --out "$S/$tag-ind"
        step "$tag-evaluate-ind-s$seed" "$S/eval-$tag-ind/metrics.json" $APPLE evaluate-ind --cohort "$M" \
            --ind "$S/$tag-ind" --split test --out "$S/eval-$tag-ind" --save-masks --cached-latents
    done
done

step "unet-sweep-beta-sex" "$WORK/sweep-unet-sex/sweep.csv" $APPLE sweep-beta --cohort "$M" --backbone unet \
    --checkpoint "$WORK/seed$first/unet-base.safetensors" --attribute sex --epochs "$SWEEP_EPOCHS" \
    --seeds $SWEEP_SEEDS --out "$WORK/sweep-unet-sex"
step "litemedsam-sweep-beta-sex" "$WORK/sweep-litemedsam-sex/sweep.csv" $APPLE sweep-beta --cohort "$M" \
    --backbone litemedsam --attribute sex --epochs "$LITE_EPOCHS" --seeds $SWEEP_SEEDS --cached-latents \
    --out "$WORK/sweep-litemedsam-sex"

# One report of the first seed: every APPLE and InD evaluation against its base model.
evaluations=()
for method in apple ind; do
    for arch in $TRAINED litemedsam; do
        for attribute in $ATTRIBUTES; do
            evaluations+=("$WORK/seed$first/eval-$arch-$attribute-$method")
        done
    done
done
step "report" "$WORK/report/report.md" $APPLE report "${evaluations[@]}" --cohort "$M" --out "$WORK/report"
cat "$TIMES"
