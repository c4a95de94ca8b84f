"""A decoding step's GEMMs alone: rlft's streaming fp32 kernel against MKL's packed GEMM and `F.linear`.

    python benchmarks/decode_gemm.py --model smollm2 --rows 4 8 16 32 --threads 2
    python benchmarks/decode_gemm.py --model smollm2 --rows 8 --repeats 3 --out /tmp/gemm.md   # smoke

What is timed: one decoding step's linear layers in order, every layer with its own weights of the model's shapes
(random: the values do not change the time), so that they stream from memory as in a step: per layer q, k, v, o,
gate, up, down, then the LM head. `mkl`: `torch.ops.mkl._mkl_linear` on weights MKL packed for that row count
(rlft's path before the kernel, and where it cannot run); `stream`: `rlft.rollout.stream_gemm` with q|k|v and
gate|up merged, as `LlamaStep` calls it; `F.linear`: unpacked. Median of `--repeats` timed passes per side, sides
alternating twice in one process; GB/s = the fp32 weight bytes of a pass / its time, beside `torch.sum`'s read
rate over 512 MiB measured in the same process (`ceilings.memory_bandwidth`). The model's own weights are not
loaded: `--model smollm2` reads only the config of the converted GGUF (`rlft.models.smollm.convert_smollm2`).
Timings mean something only on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ceilings  # noqa: E402
from peers import build_model  # noqa: E402


def step_shapes(config, merged: bool) -> list[tuple[int, int]]:
    """(out, in) of one step's GEMMs in order; `merged`: q|k|v and gate|up as one each (the kernel's path)."""
    q, k, v, o, gate, up, down = ceilings.decoder_linear_shapes(config)
    layer = [(q[0] + k[0] + v[0], q[1]), o, (gate[0] + up[0], gate[1]), down] if merged else [q, k, v, o, gate,
                                                                                                up, down]
    return layer * config.num_hidden_layers + [(config.vocab_size, config.hidden_size)]


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(config, rows: int, repeats: int, kernel) -> dict:
    generator = torch.Generator().manual_seed(0)
    inputs = {}

    def x_for(in_features):
        if in_features not in inputs:
            inputs[in_features] = torch.randn(rows, in_features, generator=generator)
        return inputs[in_features]

    sides = {}
    plain = [torch.randn(shape, generator=generator) / shape[1] ** 0.5 for shape in step_shapes(config, False)]
    mkl = [torch.ops.mkl._mkl_reorder_linear_weight(w, rows) for w in plain]
    sides["mkl"] = lambda: [torch.ops.mkl._mkl_linear(x_for(w.shape[1]), p, w, None, rows) for w, p in zip(plain, mkl)]
    sides["F.linear"] = lambda: [F.linear(x_for(w.shape[1]), w) for w in plain]
    if kernel is not None:
        merged = [torch.randn(shape, generator=generator) / shape[1] ** 0.5 for shape in step_shapes(config, True)]
        packed = [(kernel.pack(w), w.shape) for w in merged]
        del merged
        sides["stream"] = lambda: [kernel.linear(x_for(shape[1]), p, shape[0]) for p, shape in packed]
    seconds = {name: [] for name in sides}
    for _ in range(2):  # alternating: a drift of the machine shows as a spread, not as a difference
        for name, fn in sides.items():
            seconds[name].append(median_seconds(fn, repeats))
    weight_bytes = sum(o * i for o, i in step_shapes(config, False)) * 4
    return {name: {"ms": [s * 1e3 for s in values], "gb_s": weight_bytes / min(values) / 1e9}
            for name, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--rows", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--run-dir", default="runs/bench_decode_gemm")
    parser.add_argument("--out", default="docs/benchmarks_decode_gemm.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoConfig

    from rlft.rollout import stream_gemm

    config = AutoConfig.from_pretrained(build_model(args.model, Path(args.run_dir), seed=0))
    kernel = stream_gemm.load()
    read = ceilings.memory_bandwidth()["read"]
    lines = [
        "# A decoding step's GEMMs: rlft's streaming kernel vs MKL's packed GEMM",
        "",
        f"- command: `python benchmarks/decode_gemm.py {' '.join(sys.argv[1:])}`",
        f"- machine: {ceilings.cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{datetime.now():%Y-%m-%d %H:%M}; `torch.sum` read rate {read / 1e9:.1f} GB/s",
        f"- model shapes: {args.model} ({config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab "
        f"{config.vocab_size}); streaming kernel: "
        + ("built" if kernel is not None else f"unavailable ({stream_gemm.unavailable_reason() or 'build failed'})"),
        "",
        "| rows | side | ms per step's GEMMs (two alternating medians) | GB/s (best) | of torch.sum's rate |",
        "|---|---|---|---|---|",
    ]
    for rows in args.rows:
        for name, result in measure(config, rows, args.repeats, kernel).items():
            ms = " / ".join(f"{m:.2f}" for m in result["ms"])
            lines.append(f"| {rows} | {name} | {ms} | {result['gb_s']:.1f} | {result['gb_s'] * 1e9 / read:.2f} |")
            print(lines[-1], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
