#!/usr/bin/env bash
# What `python -m advss_tf.study --jobs=K` gains by sharing the cores out (advss_tf/study/runner.py
# job_environment): the same short adversarial fine-tuning (tiny backbone, batch 128, PGD-10, 24 steps on the real
# 5k subset) once alone, K at once with TensorFlow's default threads (every run uses every core), and K at once
# with cores // K threads each (TF_NUM_INTRAOP_THREADS, TF_NUM_INTEROP_THREADS, OMP_NUM_THREADS). Prints each run's
# img/s over steps 1-6 (tracing included), 7-12, 13-18 and 19-24. Run it on an idle machine (check `uptime`):
# about 6 minutes on 2 cores.
#
#   bash tools/benchmark_study_jobs.sh [DATA_DIR] [K]
set -euo pipefail
DATA=${1:-../shared/data/cifar10-subset}
K=${2:-2}
CORES=$(nproc)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

run() {  # $1: run name; prints the img/s of each loop of 6 steps
    python -m advss_tf.finetune --quiet --flagfile=flags/paper/finetune_end_to_end.flags --backbone=tiny --batch_size=128 \
        --train_steps=24 --lr_boundaries= --warmup_steps=0 --val_attack_steps=1 --val_examples=128 \
        --steps_per_loop=6 --checkpoint_every=1000 --seed=1 --dataset=binary "--data_dir=$DATA" \
        --model_dir="$WORK/$1" 2>&1 | grep -o "[0-9.]* img/s" | paste -sd' ' | sed "s/^/$1: /"
}

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $CORES cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== one run alone, default threads"
run alone
echo "== $K runs at once, default threads"
for i in $(seq "$K"); do run "default_$i" & done
wait
THREADS=$((CORES / K > 0 ? CORES / K : 1))
echo "== $K runs at once, $THREADS thread(s) each"
for i in $(seq "$K"); do
    TF_NUM_INTRAOP_THREADS=$THREADS TF_NUM_INTEROP_THREADS=$THREADS OMP_NUM_THREADS=$THREADS run "shared_$i" &
done
wait
