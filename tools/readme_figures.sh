#!/usr/bin/env bash
# Makes the README's pictures from real runs on the real 5k CIFAR-10 subset (../shared/data/cifar10-subset):
# three tiny-backbone classifiers trained here (standard training, end-to-end adversarial training, adversarial
# Rotation pretraining -> adversarial fine-tuning), each evaluated on the 508 real test images, then the SA-vs-RA
# scatter over the three. About 17 minutes on an idle 2-core CPU.
#
# Each classifier is evaluated from the export its objective selects: the best validation SA for standard
# training (its best-RA epoch is just an early, worse model), the best validation RA for the adversarial ones.
#
#   bash tools/readme_figures.sh [DATA_DIR] [RUNS_DIR]
#
# Writes the runs under RUNS_DIR (default runs/readme) and copies the figures to docs/images/.
set -euo pipefail
DATA=${1:-../shared/data/cifar10-subset}
RUNS=${2:-runs/readme}
COMMON=(--dataset=binary "--data_dir=$DATA" --backbone=tiny --batch_size=128 --quiet)
# The recipe of flags/paper/finetune_*.flags shortened to 12 epochs (milestones 60/80 of 100 -> 7/10 of 12).
RECIPE=(--epochs=12 --lr_boundaries=7,10 --warmup_steps=36 --val_attack_steps=10 --steps_per_loop=6)

python -m advss_tf.finetune --flagfile=flags/paper/finetune_end_to_end.flags "${COMMON[@]}" "${RECIPE[@]}" \
    --objective=standard --model_dir="$RUNS/standard"
python -m advss_tf.finetune --flagfile=flags/paper/finetune_end_to_end.flags "${COMMON[@]}" "${RECIPE[@]}" \
    --model_dir="$RUNS/adversarial"
python -m advss_tf.pretrain --flagfile=flags/paper/pretrain_rotation.flags "${COMMON[@]}" --epochs=8 \
    --warmup_steps=36 --steps_per_loop=6 --model_dir="$RUNS/rotation"
python -m advss_tf.finetune --flagfile=flags/paper/finetune_full_adversarial.flags "${COMMON[@]}" "${RECIPE[@]}" \
    --pretrained="$RUNS/rotation/export/pretrain" --model_dir="$RUNS/rotation_ft"

EVAL=(--flagfile=flags/paper/evaluate.flags --dataset=binary "--data_dir=$DATA" --quiet)
for run in standard adversarial rotation_ft; do
  export_name=best_ra; c10c=none
  if [ "$run" = standard ]; then export_name=best_sa; fi
  if [ "$run" = rotation_ft ]; then c10c=generate; fi
  python -m advss_tf.evaluate "${EVAL[@]}" --attacks=fgsm,pgd20,pgd100,pgd20_eps16,cw_linf,autoattack --cifar10c_source="$c10c" \
      --model="$RUNS/$run/export/$export_name" --model_name="$run" --output_dir="$RUNS/${run}_eval"
done
python tools/report.py "$RUNS/standard_eval" "$RUNS/adversarial_eval" "$RUNS/rotation_ft_eval" \
    --labels="standard training,adversarial training,rotation pretrain + adv. fine-tune" --output_dir="$RUNS/report"

mkdir -p docs/images
cp "$RUNS/rotation_ft_eval/figures/adversarial_examples.png" docs/images/adversarial_examples.png
cp "$RUNS/rotation_ft_eval/figures/cifar10c_heatmap.png" docs/images/cifar10c_heatmap.png
cp "$RUNS/report/sa_vs_ra.png" docs/images/sa_vs_ra.png
cp "$RUNS/report/comparison.md" docs/images/comparison.md
echo "figures in docs/images/"
