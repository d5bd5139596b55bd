"""bench_torch: PyTorch Langevin image-steps/s on the same network as the C
engine (langdaug.torch.EBM, reference widths, random weights).

    bench_torch.py [--sizes 64,128] [--batches 1,8,16] [--threads 1,2]
                   [--widths 32,64,128,128,256] [--seconds 4] [--steps K] [--tsv]

One Langevin step per image, as the engine does it: forward, then
torch.autograd.grad to the image only (parameters do not require gradients;
inference mode cannot be used, it forbids the input gradient), then
x <- clamp(x - eta/2 g + sqrt(eta) sigma z, -1, 1). PyTorch at its best on
this CPU: each configuration runs in both memory formats, contiguous (NCHW)
and channels-last (NHWC, oneDNN's preferred layout for CPU convolutions),
after 3 warm-up steps each (oneDNN builds its kernels on first use), and the
faster counts. Timed as bench_engine: windows of --steps steps (default:
enough for 32 image-steps, at least 2), at least 3 and until --seconds have
passed, best window counts. Each thread count runs in its own child process
with torch.set_num_threads(T) and OMP_NUM_THREADS = MKL_NUM_THREADS =
OPENBLAS_NUM_THREADS = T set before torch is imported. --tsv prints
"torch<TAB>S<TAB>batch<TAB>threads<TAB>img_steps_per_s<TAB>format".
"""
import argparse
import os
import subprocess
import sys
import time

WINDOW_IMAGE_STEPS = 32  # image-steps per timed window (default --steps)
MIN_RUNS = 3
WARM_UP_STEPS = 3


def int_list(s):
    return [int(x) for x in s.split(",") if x]


def best_rate(model, x, mask, target, batch, args):
    """Best image-steps/s of Langevin steps on x (in the memory format it comes in) over the timed windows."""
    import torch
    eta, sigma = 0.01, 0.005

    def step(x):
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model(x, mask, target).sum(), x)
        with torch.no_grad():
            return (x - 0.5 * eta * g + (eta ** 0.5) * sigma * torch.randn_like(x)).clamp_(-1, 1)

    for _ in range(WARM_UP_STEPS):
        x = step(x)
    steps = args.steps or max(2, -(-WINDOW_IMAGE_STEPS // batch))
    best, start, runs = 0.0, time.perf_counter(), 0
    while runs < MIN_RUNS or time.perf_counter() - start < args.seconds:
        t0 = time.perf_counter()
        for _ in range(steps):
            x = step(x)
        best = max(best, batch * steps / (time.perf_counter() - t0))
        runs += 1
    return best


def measure(args):
    import torch
    from langdaug.torch import EBM

    torch.set_num_threads(args.threads[0])
    widths = int_list(args.widths)
    for size in args.sizes:
        for batch in args.batches:
            results = []
            for fmt, memory_format in (("nchw", torch.contiguous_format), ("nhwc", torch.channels_last)):
                torch.manual_seed(0)
                model = EBM(3, 2, size, widths, 3).to(memory_format=memory_format)
                for p in model.parameters():
                    p.requires_grad_(False)
                x = (torch.rand(batch, 3, size, size) * 2 - 1).to(memory_format=memory_format)
                mask = torch.randint(0, 2, (batch, size, size))
                target = torch.arange(batch) % 3
                results.append((best_rate(model, x, mask, target, batch, args), fmt))
            rate, fmt = max(results)
            if args.tsv:
                print("torch\t%d\t%d\t%d\t%.3f\t%s" % (size, batch, args.threads[0], rate, fmt), flush=True)
            else:
                print("%5d %6d %8d %16.2f %7s" % (size, batch, args.threads[0], rate, fmt), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int_list, default=[64, 128])
    ap.add_argument("--batches", type=int_list, default=[1, 8, 16])
    ap.add_argument("--threads", type=int_list, default=[1, 2])
    ap.add_argument("--widths", default="32,64,128,128,256")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--tsv", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        measure(args)
        return
    if not args.tsv:
        print("%5s %6s %8s %16s %7s" % ("S", "batch", "threads", "image-steps/s", "format"), flush=True)
    for t in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(t), MKL_NUM_THREADS=str(t), OPENBLAS_NUM_THREADS=str(t))
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--threads", str(t),
               "--sizes", ",".join(map(str, args.sizes)), "--batches", ",".join(map(str, args.batches)),
               "--widths", args.widths, "--seconds", str(args.seconds), "--steps", str(args.steps)]
        if args.tsv:
            cmd.append("--tsv")
        rc = subprocess.call(cmd, env=env)
        if rc:
            sys.exit(rc)


if __name__ == "__main__":
    main()
