"""This machine's ceilings (issue 10): matmul FLOP/s (fp32, bf16) and memory bandwidth, measured with torch.

    python benchmarks/ceilings.py                 # prints a markdown table (docs/benchmarks_ceilings.md, runs/bench_ceilings.json)
    python benchmarks/ceilings.py --threads 1

Every other benchmark imports `measure_ceilings()` and states its results as a fraction of these numbers:
training as model FLOPs utilisation (6 * N * tokens / time / matmul FLOP/s), generation against the
memory-bandwidth bound (bytes of weights + KV cache read per decoding step / bandwidth).

- matmul: square GEMMs of a few sizes (torch.mm, i.e. oneDNN/MKL), best of several repeats after a warm-up;
  the ceiling is the best size. 2 * n^3 FLOPs per product.
- bandwidth: `torch.sum` over a 512 MiB fp32 tensor (read-only stream, the access pattern of decoding:
  weights and KV cache are read, little is written) and `copy_` between two 256 MiB tensors (read + write),
  best of several repeats. Far larger than any cache.
- cpu flags: whether the CPU advertises avx512_bf16 / amx_bf16 (without them bf16 GEMMs are emulated).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocation, oneDNN primitive creation
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_flops(dtype: torch.dtype, sizes: tuple[int, ...] = (512, 1024, 2048), repeats: int = 5) -> dict:
    """Best GEMM FLOP/s over `sizes` (square n x n @ n x n) in `dtype`; per-size numbers too."""
    per_size = {}
    for n in sizes:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        inner = max(1, int(2e9 // (2 * n**3)))  # ~2 GFLOP per timed call so small sizes are not timer noise
        seconds = _best_seconds(lambda a=a, b=b, inner=inner: [torch.mm(a, b) for _ in range(inner)], repeats)
        per_size[n] = inner * 2 * n**3 / seconds
    return {"flops": max(per_size.values()), "per_size": per_size}


def memory_bandwidth(read_mib: int = 512, repeats: int = 5) -> dict:
    """Read-only (sum) and read+write (copy) bandwidth in bytes/s."""
    x = torch.ones(read_mib * 2**20 // 4)
    read = x.numel() * 4 / _best_seconds(lambda: x.sum(), repeats)
    src = torch.ones(read_mib * 2**20 // 8)
    dst = torch.empty_like(src)
    copy = 2 * src.numel() * 4 / _best_seconds(lambda: dst.copy_(src), repeats)
    return {"read": read, "copy": copy}


def decoder_linear_shapes(config) -> list[tuple[int, int]]:
    """(out, in) features of the linear layers of one Llama-family decoder layer: q, k, v, o, gate, up, down."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) * head_dim
    h, i = config.hidden_size, config.intermediate_size
    return [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)]


def gemm_only_seconds(config, tokens: int, head_rows: int, dtype: torch.dtype, repeats: int = 3) -> float:
    """Seconds of the matrix products alone of one forward + backward of a Llama-family decoder over `tokens`
    packed tokens, its LM head over `head_rows` of them: per linear layer X W^T, dY W and dY^T X at the model's
    own shapes, in `dtype`, best of `repeats` after a warm-up. Everything else a training step does (attention,
    norms, activations, the loss, casts, the optimizer) is left out, so 6 x N x tokens / this time is the highest
    MFU a step of that shape can reach on this machine: the matmul ceiling (square GEMMs of up to 2048) is not
    reachable at a small model's widths and a short step's row counts."""
    layer = decoder_linear_shapes(config)
    shapes = [(s, tokens) for s in layer] * config.num_hidden_layers + [((config.vocab_size, config.hidden_size),
                                                                         head_rows)]
    weights = [torch.randn(out_features, in_features).to(dtype) for (out_features, in_features), _ in shapes]
    # activations per distinct shape (a step reads the ones it has just written); weights per layer, as in a step
    activations = {(o, i, rows): (torch.randn(rows, i).to(dtype), torch.randn(rows, o).to(dtype))
                   for (o, i), rows in shapes}

    def step():
        for w, ((o, i), rows) in zip(weights, shapes):
            x, dy = activations[(o, i, rows)]
            torch.mm(x, w.t()), torch.mm(dy, w), torch.mm(dy.t(), x)

    return _best_seconds(step, repeats)


def peak_rss_mib() -> float:
    """This process's peak RSS since it started (`VmHWM`). Not `ru_maxrss`: Linux carries the parent's peak
    across fork + exec into the child, and a benchmark's parent has just filled ~1 GiB measuring bandwidth."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def weight_bytes(model) -> int:
    """Bytes of the weights one decoding step reads: every parameter once (`parameters()` yields tied tensors
    once), minus an untied input embedding table (a step gathers only B of its rows)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    return total if embed is head else total - embed.numel() * embed.element_size()


def kv_bytes_per_token(model) -> int:
    """KV-cache bytes of one position of one row, over all layers (keys and values)."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return 2 * c.num_hidden_layers * kv_heads * head_dim * next(model.parameters()).element_size()


def decode_bound_tokens_per_s(model, rows: int, prompt_len: float, new_tokens: float, read_bandwidth: float) -> float:
    """Memory-bandwidth bound of batched decoding: each step reads the weights once plus every row's KV cache
    so far (mean over the steps), and yields `rows` tokens."""
    mean_context = prompt_len + (new_tokens - 1) / 2
    bytes_per_step = weight_bytes(model) + rows * mean_context * kv_bytes_per_token(model)
    return rows * read_bandwidth / bytes_per_step


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f in {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx2", "fma"})


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_ceilings(threads: int | None = None) -> dict:
    """fp32 / bf16 GEMM FLOP/s and memory bandwidth with `threads` torch threads (default: torch's)."""
    if threads:
        torch.set_num_threads(threads)
    fp32 = matmul_flops(torch.float32)
    bf16 = matmul_flops(torch.bfloat16)
    bandwidth = memory_bandwidth()
    return {
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "logical_cpus": __import__("os").cpu_count(),
        "flags": cpu_flags(),
        "matmul_fp32_flops": fp32["flops"],
        "matmul_fp32_per_size": fp32["per_size"],
        "matmul_bf16_flops": bf16["flops"],
        "matmul_bf16_per_size": bf16["per_size"],
        "read_bandwidth": bandwidth["read"],
        "copy_bandwidth": bandwidth["copy"],
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def matmul_ceiling(c: dict, precision: str) -> float:
    """The matmul FLOP/s a run in `precision` ("fp32" or "bf16-mixed", rlft's `model.precision`) is measured
    against: bf16-mixed runs its GEMMs in bf16 under autocast."""
    keys = {"fp32": "matmul_fp32_flops", "bf16-mixed": "matmul_bf16_flops"}
    if precision not in keys:
        raise ValueError(f"precision {precision!r}: one of {', '.join(keys)}")
    return c[keys[precision]]


def ceilings_markdown(c: dict) -> str:
    sizes = lambda per: ", ".join(f"{n}: {f / 1e9:.0f}" for n, f in per.items())
    return "\n".join([
        (f"Ceilings ({c['cpu']}, {c['logical_cpus']} logical CPUs, torch {c['torch']}, {c['threads']} threads, "
         f"{c['date']}; CPU flags: {' '.join(c['flags']) or 'unknown'}):"),
        "",
        "| ceiling | value | per GEMM size (GFLOP/s) |",
        "|---|---|---|",
        f"| matmul fp32 | {c['matmul_fp32_flops'] / 1e9:.1f} GFLOP/s | {sizes(c['matmul_fp32_per_size'])} |",
        f"| matmul bf16 | {c['matmul_bf16_flops'] / 1e9:.1f} GFLOP/s | {sizes(c['matmul_bf16_per_size'])} |",
        f"| memory read (sum of 512 MiB) | {c['read_bandwidth'] / 1e9:.1f} GB/s | |",
        f"| memory copy (read + write, 2 x 256 MiB) | {c['copy_bandwidth'] / 1e9:.1f} GB/s | |",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="runs/bench_ceilings.json")
    parser.add_argument("--md", default=str(Path(__file__).resolve().parent.parent / "docs/benchmarks_ceilings.md"))
    args = parser.parse_args()
    c = measure_ceilings(args.threads)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(c, indent=2))
    text = f"## Ceilings of this machine\n\n- command: `python benchmarks/ceilings.py {' '.join(sys.argv[1:])}`\n\n"
    Path(args.md).write_text(text + ceilings_markdown(c))
    print(ceilings_markdown(c))


if __name__ == "__main__":
    main()
