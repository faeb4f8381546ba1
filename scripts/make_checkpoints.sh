#!/usr/bin/env bash
# Train the small digits classifiers in checkpoints/ with the project's own config
# (configs/standard_digits.yaml: Adam 3e-3, cosine schedule, 15 epochs, seed 0, 16x16 grayscale digits)
# and export the best-validation checkpoint of each as a weights-only file (< 1 MB):
#
#     bash scripts/make_checkpoints.sh                  # all six architectures
#     ARCHS="small_cnn lenet" bash scripts/make_checkpoints.sh
#
# Sources of the transfer experiments: small_cnn, resnet8 (ResNet: IR's λ=1, SGM γ=0.2), densenet_small
# (DenseNet: SGM γ=0.5). Targets: lenet, mlp, vgg_small. Runs on CPU in a few minutes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-$ROOT/runs/make_checkpoints}"
OUT="${OUT:-$ROOT/checkpoints}"
ARCHS="${ARCHS:-small_cnn resnet8 densenet_small lenet mlp vgg_small}"
mkdir -p "$OUT"
for arch in $ARCHS; do
  dir="$WORK/$arch"
  rm -rf "$dir" && mkdir -p "$dir"
  # each architecture trains in its own folder (the config's runs/standard_digits/... paths are relative)
  (cd "$dir" && python -m lit_advgame fit --config "$ROOT/configs/standard_digits.yaml" \
      --model.init_args.arch "$arch" --trainer.accelerator cpu --trainer.enable_progress_bar false \
      --trainer.enable_model_summary false)
  best="$(ls "$dir"/runs/standard_digits/version_0/checkpoints/epoch*.ckpt | head -n 1)"
  python -m lit_advgame.predict.export "$best" "$OUT/digits_$arch.pt"
done
