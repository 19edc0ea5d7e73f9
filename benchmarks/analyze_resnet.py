"""ResNet50 (or EfficientNetB0, ConvNeXtTiny, ViT-B/16, BERT-base) at 224×224 (BERT: 128
tokens): each analyzer's cost relative to a plain gradient.

``keras.applications.ResNet50(weights=None, classifier_activation=None)`` (``--model`` picks
another family), 8 images, BatchNorm statistics randomized (as a trained network's would be, so
that folding is not trivial). Times
``analyzer.analyze(x, batch_size=8)`` against a compiled ``tf.GradientTape`` gradient of the max
logit on the same 8 images, alternately after a warm-up, and gives the median of the per-repeat
ratios (wall clock and process CPU time), with the timing helpers of ``benchmarks/analyze.py``.

IntegratedGradients and SmoothGrad evaluate the gradient at ``steps`` (``samples``) points per
image: their ratio is given per step, i.e. divided by that number. With ``inner_batch_size=32``
one engine pass takes the 4 points of each of the 8 images (32 network inputs).

Usage::

    python benchmarks/analyze_resnet.py                  # every analyzer, 2 repeats
    python benchmarks/analyze_resnet.py --only Gradient LRPZPlus --repeats 3
    python benchmarks/analyze_resnet.py --size 64        # a quick run at 64×64
    python benchmarks/analyze_resnet.py --model EfficientNetB0
    python benchmarks/analyze_resnet.py --model ConvNeXtTiny
    python benchmarks/analyze_resnet.py --model ViTB16 --repeats 3
    python benchmarks/analyze_resnet.py --model BertBase --repeats 3
    python benchmarks/analyze_resnet.py --memory         # peak memory, one process each
    python benchmarks/analyze_resnet.py --model ViTB16 --fit --repeats 2   # fit vs an epoch

EfficientNetB0 and ConvNeXtTiny rescale their input inside the model (Rescaling /
Normalization): they get pixels in [0, 255].

The transformers (:func:`vit_b16`, :func:`bert_base`) are keras-hub backbones at their base
sizes (12 layers, 12 heads, width 768, feed-forward 3072) with random weights, each with a
classification head: ``--model ViTB16`` (patches of 16×16, 1000 logits on the class token) and
``--model BertBase`` (2 logits on the pooled class token). BERT is explained from its token ids,
as users have them (``--size`` sets the length, default 128 tokens; random sentence pairs, no
padding): the analyzers take the backbone's three integer inputs and explain at the embedding
sum, and the tape gradient they are compared with is the gradient at that sum (the lookups
computed in the same compiled function, :func:`tape_gradient`). For these two the script also
prints the arithmetic floor of the rule-based analyzers (:func:`multiply_adds`).

``--fit`` times the pattern fit instead: ``PatternComputer(model).compute`` on ``--fit-batches``
batches of ``--images`` samples against one training epoch (``model.fit``, Adam) on the same
batches, alternating (:func:`time_fit`).

``--memory`` measures peak memory instead of time: each analyzer (and the tape gradient, and a
baseline that only builds the model, the images and runs one forward pass) in a fresh
subprocess, reading its peak resident set size (``ru_maxrss``) after one ``analyze`` call
(trace included). The pattern analyzers get patterns shaped like their kernels (zeros) instead
of a fit, whose own peak would hide analyze's. Printed: each one's peak and its ratio to the tape
gradient's, and its increase over the baseline and that increase over the tape gradient's (the
baseline's own peak includes a forward pass, so the increase is what a backward pass adds).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def _helpers():
    """``benchmarks/analyze.py`` as a module (the folder is not a package)."""
    path = Path(__file__).with_name("analyze.py")
    spec = importlib.util.spec_from_file_location("_bench_analyze", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bench = _helpers()
Spec = bench.Spec

#: The analyzers timed, in table order, and the number of gradient evaluations per image that
#: the ratio is divided by (1: one backward pass).
ANALYZERS: list[tuple[Spec, int]] = [(spec, 1) for spec in bench.ANALYZERS] + [
    (
        Spec(
            "IntegratedGradients (per step, 4 steps)",
            "IntegratedGradients",
            {"steps": 4, "inner_batch_size": 32},
        ),
        4,
    ),
    (
        Spec(
            "SmoothGrad (per sample, 4 samples)",
            "SmoothGrad",
            {"samples": 4, "inner_batch_size": 32},
        ),
        4,
    ),
]


MODELS = ("ResNet50", "EfficientNetB0", "ConvNeXtTiny", "ViTB16", "BertBase")


def application(name: str, size: int, seed: int = 0):
    """``keras.applications.<name>`` with random weights and randomized BatchNorm statistics."""
    import keras

    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(size, size, 3), classifier_activation=None
    )
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.gamma.assign(rng.uniform(0.7, 1.3, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.1, n).astype("float32"))
    return model


def resnet50(size: int, seed: int = 0):
    return application("ResNet50", size, seed)


#: keras-hub's base configuration (ViT-B, BERT-base): 12 layers of 12 heads, width 768.
BASE = {"num_layers": 12, "num_heads": 12, "hidden_dim": 768}


def vit_b16(size: int = 224, seed: int = 0, classes: int = 1000, **config):
    """ViT-B/16 (``keras_hub.models.ViTBackbone``) with random weights and a dense head of
    ``classes`` logits on the class token; ``config`` overrides :data:`BASE` (and
    ``mlp_dim``, ``patch_size``) for a smaller model."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    config = {**BASE, "mlp_dim": 3072, "patch_size": 16, **config}
    backbone = keras_hub.models.ViTBackbone(image_shape=(size, size, 3), **config)
    images = keras.Input((size, size, 3), name="images")
    tokens = backbone(images)
    logits = keras.layers.Dense(classes, name="logits")(tokens[:, 0, :])
    return keras.Model(images, logits, name="vit_b16")


def bert_base(seed: int = 0, classes: int = 2, **config):
    """BERT-base (``keras_hub.models.BertBackbone``, vocabulary 30522, 512 positions) with
    random weights and a dense head of ``classes`` logits on its pooled output (the tanh dense on
    the class token): a model of the token ids, as users have it, with the backbone's inputs
    ``padding_mask``, ``segment_ids``, ``token_ids`` (``model.inputs`` order) and layers (not
    nested). ``config`` overrides :data:`BASE` (and ``intermediate_dim``)."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    config = {**BASE, "intermediate_dim": 3072, **config}
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=30522, max_sequence_length=512, **config
    )
    logits = keras.layers.Dense(classes, name="logits")(backbone.output["pooled_output"])
    return keras.Model(backbone.inputs, logits, name="bert_base")


def bert_inputs(model, n: int, length: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` random sentence pairs of ``length`` tokens for :func:`bert_base`, in
    ``model.inputs`` order: ``[CLS]`` (id 101) then random ids of the vocabulary, segment 0 for
    the first half and 1 for the second, every position attended (no padding)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30522, (n, length)).astype("int32")
    ids[:, 0] = 101
    segments = np.zeros((n, length), "int32")
    segments[:, length // 2 :] = 1
    byname = {"token_ids": ids, "segment_ids": segments, "padding_mask": np.ones_like(ids)}
    return [byname[t.name] for t in model.inputs]


def workload(name: str, size: int, n: int, seed: int = 0):
    """``(model, inputs)`` of the model ``name`` (see :data:`MODELS`) and ``n`` inputs: images
    of ``size``×``size`` (pixels in [0, 255] for the models that rescale them), or for BERT a
    list of ``n`` sequences of ``size`` token ids (:func:`bert_inputs`)."""
    if name == "BertBase":
        model = bert_base(seed)
        return model, bert_inputs(model, n, size, seed)
    x = bench.images(n, size, seed)
    if name == "ViTB16":
        return vit_b16(size, seed), x
    if name != "ResNet50":
        x = (x + 1.0) * 127.5  # these models rescale pixels in [0, 255] themselves
    return application(name, size, seed), x


def samples(x) -> int:
    """The number of samples of an input array or a list of them."""
    return len(x[0]) if isinstance(x, list) else len(x)


def describe(name: str, size: int, n: int) -> str:
    """The workload as the tables name it."""
    if name == "BertBase":
        return f"{name} {size} tokens, {n} sequences"
    return f"{name} {size}×{size}, {n} images"


def bert_embedding_split(model):
    """BERT (:func:`bert_base`) as two models sharing its layers: ``embed([token_ids,
    segment_ids])``, the sum of the token, position and segment embeddings ``(n, T, d)``, and
    ``encoder([embeddings, padding_mask])``, the logits from that sum."""
    import keras

    layer = model.get_layer
    ids, segments = keras.Input((None,), dtype="int32"), keras.Input((None,), dtype="int32")
    mask = keras.Input((None,), dtype="int32")
    tokens = layer("token_embedding")(ids)
    positions = layer("position_embedding")(tokens)
    summed = layer("embeddings_add")((tokens, positions, layer("segment_embedding")(segments)))
    embeddings = keras.Input(tuple(summed.shape[1:]))
    h = layer("embeddings_dropout")(layer("embeddings_layer_norm")(embeddings))
    blocks = [lay for lay in model.layers if lay.name.startswith("transformer_layer_")]
    for block in blocks:
        h = block(h, padding_mask=mask)
    logits = layer("logits")(layer("pooled_dense")(h[:, 0, :]))
    return keras.Model([ids, segments], summed), keras.Model([embeddings, mask], logits)


def tape_gradient(model, x):
    """A zero-argument function: the compiled ``tf.GradientTape`` gradient of the max logit
    (summed over the batch) on ``x``, as a numpy array. For images, with respect to the images;
    for BERT's token ids, with respect to the embedding sum (the explained point of every
    analyzer), the lookups computed in the same compiled function, outside the tape."""
    import tensorflow as tf

    if not isinstance(x, list):
        grad, xt = bench.gradient_baseline(model), tf.constant(x)
        return lambda: grad(xt).numpy()
    embed, encoder = bert_embedding_split(model)
    names = [t.name for t in model.inputs]
    inputs = {name: tf.constant(value) for name, value in zip(names, x)}
    split = encoder([embed([inputs["token_ids"], inputs["segment_ids"]]), inputs["padding_mask"]])
    whole = model([inputs[name] for name in names], training=False)
    np.testing.assert_allclose(split, whole, rtol=1e-4, atol=1e-4)  # the split is the model

    @tf.function(autograph=False)
    def grad(token_ids, segment_ids, padding_mask):
        embeddings = embed([token_ids, segment_ids], training=False)
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            y = encoder([embeddings, padding_mask], training=False)
            score = tf.reduce_sum(tf.reduce_max(y, axis=1))
        return tape.gradient(score, embeddings)

    return lambda: grad(**inputs).numpy()


MEMORY_RESULT = "MAXRSS_MB "


def set_zero_patterns(analyzer) -> None:
    """Give a pattern analyzer zero patterns shaped like its kernels (both regimes where a layer
    keeps both) instead of a fit: the arithmetic of ``analyze`` does not depend on their values,
    and a fit's own time and memory would hide it."""
    from pattern_keras import Patterns

    plans = analyzer._computer.plans
    zeros = {key: np.zeros(plan.part.kernel_shape, "float32") for key, plan in plans.items()}
    negative = {
        key: zeros[key]
        for key, plan in plans.items()
        if plan.pattern_type == "relu" and not plan.rectified
    }
    types = {key: plan.pattern_type for key, plan in plans.items()}
    analyzer.set_patterns(Patterns(zeros, negative=negative, pattern_types=types))


def memory_child(args) -> None:
    """Runs in a fresh process: one pass of ``args.child`` ("baseline", "tape" or an analyzer
    label), then prints the process's peak resident set size."""
    import resource

    import tensorflow as tf

    model, x = workload(args.model, args.size, args.images)
    # the TensorFlow runtime and the weights, warm
    model([tf.constant(a) for a in x] if isinstance(x, list) else tf.constant(x), training=False)
    if args.child == "tape":
        tape_gradient(model, x)()
    elif args.child != "baseline":
        spec = next(spec for spec, _ in ANALYZERS if spec.label == args.child)
        analyzer = bench.load_analyzer(spec)(model, **spec.kwargs)
        if spec.fit:
            set_zero_patterns(analyzer)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zero patterns give zero explanations
            analyzer.analyze(x, batch_size=samples(x), verbose=0)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(MEMORY_RESULT + json.dumps(maxrss), flush=True)


def measure_memory(args) -> None:
    """Each pass in its own process; a markdown table of the peaks over the baseline's."""

    def run(child: str) -> float:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", child]
        cmd += ["--model", args.model, "--size", str(args.size), "--images", str(args.images)]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        repo = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
        for line in out.stdout.splitlines():
            if line.startswith(MEMORY_RESULT):
                return float(json.loads(line[len(MEMORY_RESULT) :]))
        raise RuntimeError(f"{child} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")

    base = run("baseline")
    tape = run("tape") - base
    total_tape = base + tape
    print(f"baseline (model, images, one forward pass): {base:.0f} MB", file=sys.stderr)
    print(
        f"| {describe(args.model, args.size, args.images)} | peak (MB) | over the "
        "tape gradient's | peak over baseline (MB) | over the tape gradient's |"
    )
    print("|---|---:|---:|---:|---:|")
    print(f"| tape gradient | {total_tape:.0f} | 1.00 | {tape:.0f} | 1.00 |")
    for spec, _ in ANALYZERS:
        if args.only and spec.label not in args.only and spec.name not in args.only:
            continue
        peak = run(spec.label)
        extra = peak - base
        print(
            f"| {spec.label} | {peak:.0f} | {peak / total_tape:.2f} | {extra:.0f} | "
            f"{extra / tape:.2f} |",
            flush=True,
        )


def time_analyzers(args) -> None:
    """Each analyzer against the tape gradient, alternating; a markdown table."""
    model, x = workload(args.model, args.size, args.images)
    baseline = tape_gradient(model, x)
    baseline()
    label = describe(args.model, args.size, args.images)
    rows, patterns = [], None
    for spec, points in ANALYZERS:
        if args.only and spec.label not in args.only and spec.name not in args.only:
            continue
        cls = bench.load_analyzer(spec)
        if cls is None:
            rows.append((label, spec.label, "–", "–", "–", "–"))
            continue
        start = time.perf_counter()
        try:
            analyzer = cls(model, **spec.kwargs)
            if spec.fit and patterns is not None:
                analyzer.set_patterns(patterns)  # PatternNet's fit serves PatternAttribution
            elif spec.fit:
                analyzer.fit(x, batch_size=samples(x), verbose=0)
                patterns = analyzer.patterns
                print(
                    f"[{label}] {spec.label}: fit {time.perf_counter() - start:.1f} s (not timed)",
                    file=sys.stderr,
                    flush=True,
                )
            t, base, ratio, cpu_ratio = bench.compare(
                lambda a=analyzer: a.analyze(x, batch_size=samples(x), verbose=0),
                baseline,
                args.repeats,
            )
        except Exception as err:  # one failing analyzer must not hide the others' figures
            message = f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:160]}"
            rows.append((label, spec.label, "–", "–", "–", f"failed: {message}"))
            print(f"[{label}] {spec.label}: failed: {err}", file=sys.stderr, flush=True)
            continue
        rows.append(
            (
                label,
                spec.label,
                f"{t:.2f}",
                f"{base:.2f}",
                f"{ratio / points:.2f}",
                f"{cpu_ratio / points:.2f}",
            )
        )
        print(
            f"[{label}] {spec.label}: {t:.2f} s, gradient {base:.2f} s, ratio "
            f"{ratio / points:.2f} (CPU {cpu_ratio / points:.2f}); "
            f"{time.perf_counter() - start:.0f} s with the trace",
            file=sys.stderr,
            flush=True,
        )
        del analyzer
    bench.print_table(rows)


def time_fit(args) -> None:
    """The pattern fit against one training epoch on the same ``--fit-batches`` batches of
    ``--images`` samples: ``PatternComputer(model).compute`` against ``model.fit`` (Adam, sparse
    categorical cross-entropy on random labels), each once untimed, then alternating
    ``--repeats`` times; medians of the per-repeat ratios (CPU, wall)."""
    import keras

    from pattern_keras.patterns import PatternComputer

    n = args.images * args.fit_batches
    model, x = workload(args.model, args.size, n, seed=1)
    classes = model.outputs[0].shape[-1]
    y = np.random.default_rng(2).integers(0, classes, n)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    computer = PatternComputer(model)

    def fit():
        computer.compute(x, batch_size=args.images, verbose=0)

    def epoch():
        model.fit(x, y, batch_size=args.images, epochs=1, verbose=0, shuffle=False)

    first_fit, first_epoch = bench.timed(fit), bench.timed(epoch)
    cpu_ratios, wall_ratios, cpus = [], [], []
    for _ in range(args.repeats):
        e_wall, e_cpu = bench.timed(epoch)
        f_wall, f_cpu = bench.timed(fit)
        cpu_ratios.append(f_cpu / e_cpu)
        wall_ratios.append(f_wall / e_wall)
        cpus.append((f_cpu, e_cpu))
    med = statistics.median
    print(
        f"| {describe(args.model, args.size, args.images)} | fit / training epoch, CPU (wall) | "
        "fit, epoch (CPU s) | first fit / first epoch, CPU |"
    )
    print("|---|---:|---:|---:|")
    fit_cpu, epoch_cpu = (med(c[i] for c in cpus) for i in (0, 1))
    print(
        f"| {args.fit_batches} batches | {med(cpu_ratios):.2f} ({med(wall_ratios):.2f}) | "
        f"{fit_cpu:.1f}, {epoch_cpu:.1f} | {first_fit[1] / first_epoch[1]:.2f} |"
    )


def multiply_adds(name: str, size: int) -> dict[str, float] | None:
    """Multiply-adds per sample (matrix products only) of the forward pass and of the backward
    passes of the tape gradient, LRP-z and the two-regime pattern analyzers, for the
    transformers at their base size (None for the others); see the README's "Cost" of
    "Attention models"."""
    if name not in ("ViTB16", "BertBase"):
        return None
    d, f, layers = 768, 3072, 12
    if name == "ViTB16":
        patches = (size // 16) ** 2
        t, stem, head = patches + 1, patches * 16 * 16 * 3 * d, d * 1000  # stem: the patch conv
    else:
        t, stem, head = size, 0, d * d + d * 2  # BERT starts at its embedding sum; pooler, head
    projections, scores, mlp = t * d * d, t * t * d, t * d * f
    forward = layers * (4 * projections + 2 * scores + 2 * mlp) + stem + head
    # the gradient: every product's operand on the path to the input (q, k, v and the weights)
    gradient = layers * (4 * projections + 4 * scores + 2 * mlp) + stem + head
    # held attention weights: q and k get nothing, the weights-times-values product passes to v
    lrp = layers * (2 * projections + scores + 2 * mlp) + stem + head
    pattern = layers * (2 * 2 * projections + scores + 2 * 2 * mlp) + 2 * (stem + head)
    return {"forward": forward, "gradient": gradient, "lrp": lrp, "pattern": pattern}


def print_floor(name: str, size: int) -> None:
    counts = multiply_adds(name, size)
    if counts is None:
        return
    base = counts["forward"] + counts["gradient"]
    print(
        f"\nArithmetic floor (multiply-adds of forward + backward over the tape gradient's, "
        f"{base / 1e9:.1f} G per sample): LRP-z/ε {(counts['forward'] + counts['lrp']) / base:.2f}, "
        f"PatternNet/PatternAttribution (both regimes) "
        f"{(counts['forward'] + counts['pattern']) / base:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", choices=MODELS, default="ResNet50", help="the model (default ResNet50)"
    )
    parser.add_argument(
        "--size", type=int, default=None, help="image size (default 224; BERT: tokens, 128)"
    )
    parser.add_argument("--images", type=int, default=8, help="samples per pass (default 8)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (default 2)")
    parser.add_argument(
        "--only", nargs="*", default=None, help="analyzer labels (or class names) to run"
    )
    parser.add_argument(
        "--memory", action="store_true", help="peak memory (one process per analyzer) instead"
    )
    parser.add_argument(
        "--fit", action="store_true", help="the pattern fit against a training epoch instead"
    )
    parser.add_argument(
        "--fit-batches", type=int, default=4, help="batches of --images for --fit (default 4)"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.size is None:
        args.size = 128 if args.model == "BertBase" else 224
    if args.child is not None:
        memory_child(args)
    elif args.memory:
        measure_memory(args)
    else:
        import tensorflow as tf

        print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs", file=sys.stderr)
        if args.fit:
            time_fit(args)
        else:
            time_analyzers(args)
        print_floor(args.model, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
