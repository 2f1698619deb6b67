"""How fast cnnlab's NumPy reference ops run beside PyTorch's, on the same arrays in one process.

    python benchmarks/reference_speed.py [--repeats 5] [--write]

The issue's target: the reference convolution of a 3x512x512 image with 16 3x3 filters runs
within 10x of torch.nn.functional.conv2d on the CPU. Also timed: the backward pass, 2x2 max
pooling, float64, and a plain Python loop over output pixels on a 64x64 crop (per pixel, to
show what vectorizing buys). Both libraries use the machine's cores (NumPy through its BLAS).
Every pair is checked to give the same numbers before it is timed. --write puts the table
into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.teach import reference

from common import best_of, machine, write_section

TARGET_RATIO = 10.0


def pixel_loop_conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The textbook four nested loops (batch 1, stride 1, no padding), for scale only."""
    _, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    out = np.zeros((1, o, h - kh + 1, wd - kw + 1), dtype=x.dtype)
    for f in range(o):
        for i in range(h - kh + 1):
            for j in range(wd - kw + 1):
                out[0, f, i, j] = np.sum(x[0, :, i:i + kh, j:j + kw] * w[f])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    rows = []

    def compare(what: str, ours, theirs, check) -> float:
        check()
        t_ours, t_theirs = best_of(args.repeats, ours), best_of(args.repeats, theirs)
        ratio = t_ours / t_theirs
        rows.append((what, t_ours, t_theirs, ratio))
        print(f"{what}: reference {t_ours * 1e3:.1f} ms, torch {t_theirs * 1e3:.1f} ms, {ratio:.1f}x")
        return ratio

    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((1, 3, 512, 512)).astype(dtype)  # (N, C, H, W)
        w = rng.standard_normal((16, 3, 3, 3)).astype(dtype)  # (O, C, KH, KW)
        b = rng.standard_normal(16).astype(dtype)
        xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
        tol = 1e-4 if dtype == np.float32 else 1e-10
        name = np.dtype(dtype).name

        def same_conv() -> None:
            np.testing.assert_allclose(reference.conv2d(x, w, b, padding=1), F.conv2d(xt, wt, bt, padding=1).numpy(),
                                       rtol=tol, atol=tol)

        ratio = compare(f"conv2d forward, 3x512x512 * 16 3x3 filters, padding 1, {name}",
                        lambda: reference.conv2d(x, w, b, padding=1), lambda: F.conv2d(xt, wt, bt, padding=1),
                        same_conv)
        if dtype == np.float32:
            headline = ratio

        grad = rng.standard_normal((1, 16, 512, 512)).astype(dtype)
        gt = torch.from_numpy(grad)

        def torch_backward() -> tuple[torch.Tensor, ...]:
            xg, wg = xt.clone().requires_grad_(), wt.clone().requires_grad_()
            return torch.autograd.grad(F.conv2d(xg, wg, bt, padding=1), (xg, wg), gt)

        def same_backward() -> None:
            ours, theirs = reference.conv2d_backward(grad, x, w, padding=1), torch_backward()
            np.testing.assert_allclose(ours.input, theirs[0].numpy(), rtol=tol, atol=tol * 10)
            np.testing.assert_allclose(ours.weight, theirs[1].numpy(), rtol=tol * 10, atol=tol * 1e3)

        compare(f"conv2d backward (input and weight), same sizes, {name}",
                lambda: reference.conv2d_backward(grad, x, w, padding=1), torch_backward, same_backward)

        features = rng.standard_normal((1, 16, 512, 512)).astype(dtype)
        ft = torch.from_numpy(features)

        def same_pool() -> None:
            values, indices = reference.max_pool2d(features, 2)
            expected, expected_indices = F.max_pool2d(ft, 2, return_indices=True)
            np.testing.assert_array_equal(values, expected.numpy())
            np.testing.assert_array_equal(indices, expected_indices.numpy())

        compare(f"max_pool2d 2x2 forward with indices, 16x512x512, {name}",
                lambda: reference.max_pool2d(features, 2), lambda: F.max_pool2d(ft, 2, return_indices=True), same_pool)

    crop = rng.standard_normal((1, 3, 64, 64)).astype(np.float32)
    w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    start = time.perf_counter()
    looped = pixel_loop_conv(crop, w)
    loop_seconds = (time.perf_counter() - start) * (510 * 510) / (62 * 62)  # scaled to the 512x512 image
    np.testing.assert_allclose(looped, reference.conv2d(crop, w), rtol=1e-4, atol=1e-4)
    vectorized = next(r[1] for r in rows if r[0].startswith("conv2d forward") and r[0].endswith("float32"))
    print(f"a Python loop over pixels would take about {loop_seconds:.1f} s for the 512x512 image, "
          f"{loop_seconds / vectorized:.0f}x the vectorized reference")

    verdict = "met" if headline <= TARGET_RATIO else "MISSED"
    print(f"target: reference conv2d (float32) within {TARGET_RATIO:.0f}x of F.conv2d: {headline:.1f}x, {verdict}")
    table = "\n".join(["| operation | reference (NumPy) | torch | reference / torch |", "|---|---:|---:|---:|"]
                      + [f"| {what} | {a * 1e3:.1f} ms | {b * 1e3:.1f} ms | {r:.1f}x |" for what, a, b, r in rows])
    print("\n" + table)
    if args.write:
        write_section("reference-speed", "\n".join([
            f"Machine: {machine()}; NumPy {np.__version__}.",
            f"Best of {args.repeats} runs after a warm-up, one process, the same arrays for both; each pair is "
            "checked to agree before it is timed. Target: the float32 forward convolution within 10x of "
            f"`F.conv2d`: **{headline:.1f}x ({verdict})**. Command: `python benchmarks/reference_speed.py --write`.",
            "",
            "The reference forward pass is one `np.tensordot` of every 3x3 window (a `sliding_window_view`, "
            "copied once into a matrix) with the filters; PyTorch's oneDNN kernel works on the image in place "
            "with no copy, which is most of the gap. PyTorch's best time for this small convolution moves "
            "between runs on this machine (2.5 to 9 ms), so the ratio has ranged from 1.8x to 5.9x; the "
            "reference's own time is steady at 13-16 ms. The backward pass loops over the 9 kernel positions. "
            f"A Python loop over output pixels would take about {loop_seconds:.0f} s for the same convolution "
            f"(measured on a 64x64 crop and scaled), {loop_seconds / vectorized:,.0f}x the vectorized reference.",
            "",
            table,
        ]))


if __name__ == "__main__":
    main()
