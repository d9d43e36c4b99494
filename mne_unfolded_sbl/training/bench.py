"""Time training steps of a configuration (seconds per step, peak memory).

::

    python -m mne_unfolded_sbl.training.bench --config configs/deep-cb_joint.toml \\
        --device cpu --batch-size 64 --steps 3 [--no-checkpointing] [--phase 0] \\
        [--set train_leadfield='a.npz' --set val_leadfield='b.npz']

Runs a few real optimiser steps (after one warm-up step) of the fine-tuning
phase (or of progressive phase ``--phase k``) from the zero (classical) start and
reports the median wall and CPU time per step and the peak memory: CUDA
``max_memory_allocated`` on a GPU, else the process's peak resident set
size, to compare with the RSS before the first step (measure each setting
in a fresh process). Nothing is written.
"""

import argparse
import resource
import statistics
import sys
import tempfile
import time

import torch


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def profile_steps(config, n_steps=3, phase=None):
    """Time ``n_steps`` steps after a warm-up step.

    Returns a dict with ``s_per_step`` (median wall time), ``cpu_s_per_step``
    (median process CPU time, less sensitive to other load on a shared
    machine), ``peak_mib`` (CUDA peak allocated, or the process's peak RSS on
    the CPU) and ``rss_before_mib`` (RSS before the first step).
    """
    from .trainer import Trainer

    cfg = config.replace(out_dir=tempfile.mkdtemp(prefix="bench_"), progress=False)
    tr = Trainer(cfg)
    ph = tr.phases[-1] if phase is None else tr.phases[int(phase)]
    tr.setup_phase(ph, fresh=False)
    cuda = tr.device.type == "cuda"
    rss0 = _rss_mib()
    tr.train_step(ph)  # warm-up
    if cuda:
        torch.cuda.synchronize(tr.device)
        torch.cuda.reset_peak_memory_stats(tr.device)
    times, cpu = [], []
    for _ in range(int(n_steps)):
        t0, c0 = time.perf_counter(), time.process_time()
        tr.train_step(ph)
        if cuda:
            torch.cuda.synchronize(tr.device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = torch.cuda.max_memory_allocated(tr.device) / 2**20 if cuda else \
        _peak_rss_mib()
    s_step = statistics.median(times)
    return dict(s_per_step=s_step, samples_per_min=60 * cfg.batch_size / s_step,
                steps=times,
                cpu_s_per_step=statistics.median(cpu), peak_mib=peak,
                rss_before_mib=None if cuda else rss0, phase=ph.name,
                data_mode=cfg.data_mode, model=cfg.model,
                batch_size=cfg.batch_size, device=str(tr.device),
                threads=torch.get_num_threads(),
                gradient_checkpointing=cfg.gradient_checkpointing)


def main(argv=None):
    from .cli import overrides_from_args
    from .config import load_config

    p = argparse.ArgumentParser(prog="python -m mne_unfolded_sbl.training.bench")
    p.add_argument("--config", required=True)
    p.add_argument("--device")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--phase", type=int, help="progressive phase index")
    p.add_argument("--threads", type=int)
    p.add_argument("--no-checkpointing", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    over = overrides_from_args(argparse.Namespace(
        set=args.set, device=None, max_minutes=None, threads=None,
        no_progress=False, out=None))
    if args.device:
        over["device"] = args.device
    if args.batch_size:
        over["batch_size"] = args.batch_size
    if args.threads:
        over["num_threads"] = args.threads
    if args.no_checkpointing:
        over["gradient_checkpointing"] = False
    res = profile_steps(load_config(args.config, **over), args.steps, args.phase)
    print(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
