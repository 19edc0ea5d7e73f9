"""The PatternNet paper's toy example (Kindermans et al., ICLR 2018, section 2), as a script.

Two-dimensional data ``x = a_s·y + a_d·ε`` with the signal direction ``a_s = (1, 0)``, the
distractor direction ``a_d = (1, 1)``, ``y ~ U[-1, 1]`` and ``ε ~ N(0, σ²)``. The distractor has
zero mean, as the paper assumes (with a mean ``μ ≠ 0`` the linear estimator stays exact but the
two-component one is biased; see the project's MATH.md). The optimal linear "network" is the
filter ``w = (1, -1)``: ``wᵀx = y`` exactly, because ``w`` cancels the distractor.

What each method shows for one sample (up to sampling error):

- Gradient: ``w = (1, -1)``, the filter: it must point away from the distractor, so it is *not*
  the signal direction;
- LRP-z (= input × gradient here): ``w ⊙ x``, which still holds the distractor;
- PatternNet: ``a·y`` with the fitted pattern ``a ≈ a_s = (1, 0)``: the signal;
- PatternAttribution: ``w ⊙ a · y ≈ (y, 0)``: all of the output attributed to the first input.

Run::

    python examples/toy_example.py --output toy_example.png
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

A_SIGNAL = np.array([1.0, 0.0])
A_DISTRACTOR = np.array([1.0, 1.0])
W = np.array([1.0, -1.0])


def toy_data(n: int, sigma: float = 0.3, seed: int = 0):
    """``x = a_s·y + a_d·ε``, ``y ~ U[-1, 1]``, a zero-mean distractor ``ε ~ N(0, σ²)``."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1.0, 1.0, size=n)
    eps = rng.normal(0.0, sigma, size=n)
    x = y[:, None] * A_SIGNAL + eps[:, None] * A_DISTRACTOR
    return x.astype(np.float32), y


def toy_model():
    """The optimal linear model ``y = wᵀx`` with ``w = (1, -1)`` and no bias."""
    import keras

    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(1, use_bias=False, name="w")], name="toy"
    )
    model.get_layer("w").set_weights([W.reshape(2, 1).astype(np.float32)])
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output",
        "-o",
        default="toy_example.png",
        help="where to save the figure (default toy_example.png)",
    )
    parser.add_argument("--n", type=int, default=10_000, help="samples to fit on (10,000)")
    parser.add_argument("--sigma", type=float, default=0.3, help="distractor std (0.3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import pattern_keras as pk

    x, y = toy_data(args.n, args.sigma, args.seed)
    model = toy_model()
    print(
        f"Toy example: x = a_s*y + a_d*eps, a_s = {A_SIGNAL}, a_d = {A_DISTRACTOR}, "
        f"y ~ U[-1, 1], eps ~ N(0, {args.sigma}^2)."
    )
    print("The distractor eps has zero mean, as the paper assumes.")
    print(f"Filter w = {W} (w.x = y exactly); fitting patterns on {args.n} samples.\n")

    pattern_net = pk.PatternNet(model).fit(x, batch_size=1000, verbose=0)
    pattern_attribution = pk.PatternAttribution(model, patterns=pattern_net.patterns)
    patterns = pattern_net.patterns
    a = patterns["w"][:, 0]
    print(f"fitted pattern a+ = {np.round(a, 4)}   (expected a_s = {A_SIGNAL})")
    if patterns.has_negative("w"):
        print(
            f"fitted pattern a- = {np.round(patterns.negative('w')[:, 0], 4)}   "
            "(the output is not rectified, so both regimes are kept)"
        )
    linear = pk.PatternNet(model, pattern_type="linear").fit(x, batch_size=1000, verbose=0)
    print(f"linear pattern a  = {np.round(linear.patterns['w'][:, 0], 4)}\n")

    analyzers = {
        "Gradient": pk.Gradient(model),
        "LRP-Z": pk.LRPZ(model),
        "PatternNet": pattern_net,
        "PatternAttribution": pattern_attribution,
    }
    samples = x[:4]
    results = {name: analyzer.analyze(samples) for name, analyzer in analyzers.items()}
    header = f"{'x':>18} {'y':>7} | " + " | ".join(f"{n:>18}" for n in results)
    print(header)
    print("-" * len(header))
    for i, xi in enumerate(samples):
        cells = " | ".join(f"({r[i, 0]:+.3f}, {r[i, 1]:+.3f})".rjust(18) for r in results.values())
        print(f"({xi[0]:+.3f}, {xi[1]:+.3f}) {y[i]:+7.3f} | {cells}")
    print(
        "\nExpected: Gradient = w = (1, -1); LRP-Z = w*x; PatternNet = a_s*y = (y, 0); "
        "PatternAttribution = w*a_s*y = (y, 0)."
    )

    figure = make_figure(x, y, a, results, samples, y[:4])
    folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    figure.savefig(args.output, dpi=120)
    print(f"\nSaved the figure to {args.output}")
    return 0


def make_figure(x, y, a, results, samples, sample_y):
    """Left: the data with the directions (as the paper's figure 2). Right: the explanations."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 5), layout="constrained")
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    show = slice(0, 1500)
    scatter = left.scatter(x[show, 0], x[show, 1], c=y[show], cmap="coolwarm", s=6, alpha=0.6)
    figure.colorbar(scatter, ax=left, label="signal y", shrink=0.7)

    def arrow(vector, colour, label):
        v = np.asarray(vector, float)
        left.annotate(
            "", xy=v, xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=colour, lw=2.5)
        )
        left.plot([], [], color=colour, lw=2.5, label=label)

    arrow(A_SIGNAL, "black", "signal direction a_s = (1, 0)")
    arrow(A_DISTRACTOR, "tab:gray", "distractor direction a_d = (1, 1)")
    arrow(W / np.linalg.norm(W), "tab:green", "filter w = (1, -1) (normalized)")
    arrow(a, "tab:orange", f"fitted pattern a = ({a[0]:.2f}, {a[1]:.2f})")
    left.set_aspect("equal")
    left.set_xlabel("x1")
    left.set_ylabel("x2")
    left.set_title("toy data: x = a_s y + a_d eps (eps zero-mean)")
    left.legend(loc="upper left", fontsize=7, framealpha=0.9)

    names = list(results)
    width = 0.8 / (2 * len(names))
    positions = np.arange(len(samples))
    colours = ["tab:green", "tab:purple", "tab:orange", "tab:red"]
    for j, name in enumerate(names):
        for k in range(2):
            offset = (2 * j + k) * width - 0.4 + width / 2
            right.bar(
                positions + offset,
                results[name][:, k],
                width,
                color=colours[j % len(colours)],
                alpha=1.0 if k == 0 else 0.45,
                label=f"{name} ({'x1' if k == 0 else 'x2'})",
            )
    right.axhline(0, color="black", lw=0.8)
    right.set_xticks(
        positions,
        [f"x=({s[0]:+.2f},{s[1]:+.2f})\ny={t:+.2f}" for s, t in zip(samples, sample_y)],
        fontsize=8,
    )
    right.set_title("explanations of 4 samples (x1 dark, x2 light)")
    right.legend(fontsize=7, ncol=2)
    return figure


if __name__ == "__main__":
    raise SystemExit(main())
