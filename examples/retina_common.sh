# examples/retina_common.sh: what examples/retina_experiment and examples/retina_study
# share (sourced, not run): the settings of the retinal-vessel protocol, a sampler on
# loopback that is always stopped, and the EBM training, pull and U-Net steps.
# Environment: LD_BUILD, LD_PY, RETINA (data folder), OUT (default retina-experiment),
# SEEDS (0,1,2), SEG_ITERS (500), JOBS (2), EBM_ITERS (1500).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
B=${LD_BUILD:-build}
PY=${LD_PY:-/usr/bin/python3}
RETINA=${RETINA:-../shared/data/retina}
OUT=${OUT:-retina-experiment}
SEEDS=${SEEDS:-0,1,2}
SEG_ITERS=${SEG_ITERS:-500}
JOBS=${JOBS:-2}
EBM_ITERS=${EBM_ITERS:-1500}
SCALE=0.5
SIZE=32
ALL=(DRIVE CHASEDB1 STARE HRF)

daemon_pid=
stop_daemon() {
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid"
        wait "$daemon_pid" || true
    fi
    daemon_pid=
}
trap stop_daemon EXIT INT TERM

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# sources_of H: the other domains, comma-separated.
sources_of() {
    printf '%s\n' "${ALL[@]}" | grep -vx "$1" | paste -sd,
}

# train_ebm OUT_MODEL SOURCES WIDTHS [langdaug train options]: the protocol's EBM.
train_ebm() {
    local model=$1 sources=$2 widths=$3
    shift 3
    "$B/langdaug" train --data "$RETINA" --domains "$sources" --scale $SCALE --size $SIZE --widths "$widths" \
        --batch 8 --langevin-steps 20 --step-size 5 --noise 0.005 --iters "$EBM_ITERS" --checkpoint-every 250 \
        --out "$model" --threads 2 "$@"
}

# train_ae OUT_AE SOURCES: the protocol's autoencoder for latent mode (crops as the EBM's; the
# gradient-difference term keeps the thin vessels; held-out PSNR/SSIM in OUT_AE.eval.csv).
train_ae() {
    "$B/langdaug" train-ae --data "$RETINA" --domains "$2" --scale $SCALE --size $SIZE --widths 16,32,64 \
        --latent-channels 8 --grad-diff 1 --batch 16 --iters "${AE_ITERS:-3000}" --eval-every 500 \
        --checkpoint-every 500 --eval-curve "$1.eval.csv" --out "$1" --threads 2
}

# pull_samples MODEL SOURCES FOLDER N STEPS STEP_SIZE NOISE [langdaug pull options]:
# serves MODEL on loopback with 2 workers, pulls N samples into FOLDER (toward every source,
# or only the pairs in PULL_PAIRS, e.g. A:B,B:A), stops it.
pull_samples() {
    local model=$1 sources=$2 folder=$3 n=$4 steps=$5 eta=$6 noise=$7 port request=(--targets "$2")
    [ -z "${PULL_PAIRS:-}" ] || request=(--pairs "$PULL_PAIRS")
    shift 7
    port=$(free_port)
    "$B/langdaugd" --model "$model" --data "$RETINA" --domains "$sources" --scale $SCALE \
        --bind "tcp://127.0.0.1:$port" --status "tcp://127.0.0.1:$(free_port)" --workers 2 --steps "$steps" \
        --step-size "$eta" --noise "$noise" --log-level warning &
    daemon_pid=$!
    "$B/langdaug" pull --from "tcp://127.0.0.1:$port" -n "$n" "${request[@]}" --steps "$steps" \
        --out "$folder" "$@"
    stop_daemon
}

# segment_runs H SAMPLES OUT_DIR [train_segmenter.py options]: the protocol's U-Net runs for held-out H.
segment_runs() {
    local holdout=$1 samples=$2 out=$3
    shift 3
    "$PY" examples/train_segmenter.py --data "$RETINA" --domains DRIVE,CHASEDB1,STARE,HRF --holdout "$holdout" \
        --scale $SCALE --size $SIZE --batch 16 --iters "$SEG_ITERS" --seeds "$SEEDS" --threads 1 --jobs "$JOBS" \
        --langdaug-dir "$samples" --out "$out" "$@"
}
