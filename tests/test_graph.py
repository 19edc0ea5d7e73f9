"""Tests for the Keras adapter (pattern_keras.graph): node order, keys, slots, replay."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import PASS, assert_close

from pattern_keras import graph
from pattern_keras.graph import trace_model


def replay(g: graph.ModelGraph, inputs):
    """Run every node's ``call`` over the slots, in the graph's order; return the outputs."""
    values = dict(zip(g.inputs, inputs))
    for node in g.nodes:
        missing = [s for s in node.inputs if s not in values]
        assert not missing, f"node {node.key} runs before its inputs {missing} exist"
        outs = node.call([values[s] for s in node.inputs])
        assert len(outs) == len(node.outputs)
        for s, o in zip(node.outputs, outs):
            assert s not in values, f"slot {s} written twice"
            values[s] = o
    return [np.asarray(values[s]) for s in g.outputs]


def check_slots(g: graph.ModelGraph):
    """Every slot is produced once (by an input or a node) and consumed after being produced."""
    produced = set(g.inputs)
    assert len(produced) == len(g.inputs)
    for node in g.nodes:
        assert set(node.inputs) <= produced
        assert not set(node.outputs) & produced
        produced.update(node.outputs)
        assert len(node.input_shapes) == len(node.inputs)
        assert len(node.output_shapes) == len(node.outputs)
    assert set(g.outputs) <= produced


def data(shape, n=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n,) + tuple(shape)).astype("float32")


def test_functional_order_keys_slots_and_replay():
    keras.utils.set_random_seed(0)
    x = keras.Input((6,), name="x")
    h = keras.layers.Dense(5, activation="relu", name="d1")(x)
    h = keras.layers.Dense(4, name="d2")(h)
    out = keras.layers.Activation("tanh", name="act")(h)
    model = keras.Model(x, out)
    g = trace_model(model)
    assert [n.key for n in g.nodes] == ["d1", "d2", "act"]
    assert [type(n.layer).__name__ for n in g.nodes] == ["Dense", "Dense", "Activation"]
    assert g.nodes[0].layer is model.get_layer("d1")
    # A chain: each node consumes the previous node's output slot.
    assert g.nodes[0].inputs == (g.inputs[0],)
    assert g.nodes[1].inputs == g.nodes[0].outputs
    assert g.nodes[2].inputs == g.nodes[1].outputs
    assert g.outputs == list(g.nodes[2].outputs)
    assert g.nodes[0].input_shapes == ((None, 6),)
    assert g.nodes[0].output_shapes == ((None, 5),)
    assert g.nodes[1].output_shapes == ((None, 4),)
    assert g.input_specs == [((None, 6), "float32")]
    check_slots(g)
    xv = data((6,))
    assert_close(replay(g, [xv])[0], model(xv), PASS)


def test_sequential():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras.layers.Conv2D(3, 3, name="c"),
            keras.layers.MaxPooling2D(name="p"),
            keras.layers.Flatten(name="f"),
            keras.layers.Dense(4, name="d"),
        ],
        name="seq",
    )
    g = trace_model(model)
    assert [n.key for n in g.nodes] == ["c", "p", "f", "d"]
    assert g.input_specs == [((None, 8, 8, 2), "float32")]
    assert g.nodes[1].output_shapes == ((None, 3, 3, 3),)
    check_slots(g)
    xv = data((8, 8, 2))
    assert_close(replay(g, [xv])[0], model(xv), PASS)


def test_sequential_built_without_input():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.layers.Dense(3, name="a"), keras.layers.Dense(2, name="b")])
    with pytest.raises(ValueError, match="not built"):
        trace_model(model)
    model.build((None, 4))
    g = trace_model(model)
    assert [n.key for n in g.nodes] == ["a", "b"]
    xv = data((4,))
    assert_close(replay(g, [xv])[0], model(xv), PASS)


def make_inner(name="inner"):
    i = keras.Input((4,))
    h = keras.layers.Dense(5, activation="relu", name="a")(i)
    o = keras.layers.Dense(3, name="b")(h)
    return keras.Model(i, o, name=name)


def test_nested_functional_in_functional():
    keras.utils.set_random_seed(3)
    inner = make_inner()
    x = keras.Input((6,))
    h = keras.layers.Dense(4, name="pre")(x)
    h = inner(h)
    out = keras.layers.Dense(2, name="post")(h)
    model = keras.Model(x, out)
    g = trace_model(model)
    assert [n.key for n in g.nodes] == ["pre", "inner/a", "inner/b", "post"]
    assert g.nodes[1].layer is inner.get_layer("a")
    assert g.nodes[1].inputs == g.nodes[0].outputs
    assert g.nodes[3].inputs == g.nodes[2].outputs
    check_slots(g)
    xv = data((6,))
    assert_close(replay(g, [xv])[0], model(xv), PASS)


def test_nested_in_sequential_two_levels():
    keras.utils.set_random_seed(4)
    inner_seq = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="z")], name="deep")
    middle = keras.Sequential(
        [
            keras.Input((4,)),
            make_inner("fn"),
            keras.layers.Dense(4, name="m"),
        ],
        name="middle",
    )
    model = keras.Sequential(
        [keras.Input((4,)), middle, inner_seq, keras.layers.Dense(2, name="last")], name="outer"
    )
    g = trace_model(model)
    assert [n.key for n in g.nodes] == ["middle/fn/a", "middle/fn/b", "middle/m", "deep/z", "last"]
    check_slots(g)
    xv = data((4,))
    assert_close(replay(g, [xv])[0], model(xv), PASS)


def test_layer_called_twice_two_nodes_same_key():
    keras.utils.set_random_seed(5)
    x = keras.Input((4,))
    shared = keras.layers.Dense(4, activation="relu", name="shared")
    h1 = shared(x)
    h2 = shared(h1)
    out = keras.layers.Dense(2, name="out")(h2)
    model = keras.Model(x, out)
    g = trace_model(model)
    assert [n.key for n in g.nodes] == ["shared", "shared", "out"]
    first, second = g.nodes[0], g.nodes[1]
    assert first.layer is second.layer is shared
    assert first.inputs == (g.inputs[0],)
    assert second.inputs == first.outputs  # the second call reads the first call's output
    assert first.outputs != second.outputs
    check_slots(g)
    xv = data((4,))
    assert_close(replay(g, [xv])[0], model(xv), PASS)


def test_shared_layer_on_two_inputs_and_operator_add():
    keras.utils.set_random_seed(6)
    a = keras.Input((4,), name="a")
    b = keras.Input((3,), name="b")
    shared = keras.layers.Dense(5, name="shared")
    pb = keras.layers.Dense(4, name="proj")(b)
    h = shared(a) + shared(pb)  # an operator: a keras.ops Add node, not a layer
    out = keras.layers.Dense(2, name="out")(h)
    model = keras.Model([a, b], out)
    g = trace_model(model)
    assert len(g.inputs) == 2 and len(g.outputs) == 1
    assert g.input_specs == [((None, 4), "float32"), ((None, 3), "float32")]
    keys = [n.key for n in g.nodes]
    assert keys.count("shared") == 2
    add = [n for n in g.nodes if not isinstance(n.layer, keras.layers.Layer)]
    assert len(add) == 1
    add = add[0]
    assert type(add.layer).__name__ == "Add"
    assert len(add.inputs) == 2
    shared_nodes = [n for n in g.nodes if n.key == "shared"]
    assert set(add.inputs) == {n.outputs[0] for n in shared_nodes}
    # Which shared call reads which tensor: one reads input a, the other the projection of b.
    proj = next(n for n in g.nodes if n.key == "proj")
    assert proj.inputs == (g.inputs[1],)
    assert {n.inputs for n in shared_nodes} == {(g.inputs[0],), proj.outputs}
    # Topological: every node after its producers (check_slots), out last.
    assert keys[-1] == "out"
    check_slots(g)
    av, bv = data((4,), seed=1), data((3,), seed=2)
    assert_close(replay(g, [av, bv])[0], model([av, bv]), PASS)
    # Input order follows model.inputs, not creation order.
    model2 = keras.Model([b, a], out)
    g2 = trace_model(model2)
    assert g2.input_specs == [((None, 3), "float32"), ((None, 4), "float32")]
    assert_close(replay(g2, [bv, av])[0], model([av, bv]), PASS)


def test_branches_concatenate_and_call_arguments():
    keras.utils.set_random_seed(7)
    x = keras.Input((6, 6, 2))
    a = keras.layers.Conv2D(3, 3, padding="same", name="ca")(x)
    b = keras.layers.Conv2D(2, 1, name="cb")(x)
    b = keras.layers.BatchNormalization(name="bn")(b)
    b = keras.layers.Dropout(0.5, name="drop")(b)  # must run in inference mode
    h = keras.layers.Concatenate(axis=-1, name="cat")([a, b])
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(x, h)
    bn = model.get_layer("bn")
    bn.moving_mean.assign([0.5, -1.0])
    bn.moving_variance.assign([2.0, 0.25])
    g = trace_model(model)
    keys = [n.key for n in g.nodes]
    assert sorted(keys) == sorted(["ca", "cb", "bn", "drop", "cat", "gap"])
    assert keys.index("cb") < keys.index("bn") < keys.index("drop") < keys.index("cat")
    assert keys.index("ca") < keys.index("cat") < keys.index("gap")
    cat = g.nodes[keys.index("cat")]
    assert cat.inputs == (
        g.nodes[keys.index("ca")].outputs[0],
        g.nodes[keys.index("drop")].outputs[0],
    )
    check_slots(g)
    xv = data((6, 6, 2))
    # Inference mode: BN uses its moving statistics and dropout is off, run after run.
    first = replay(g, [xv])[0]
    assert_close(first, model(xv, training=False), PASS)
    np.testing.assert_array_equal(replay(g, [xv])[0], first)


def test_multiple_outputs_listed():
    keras.utils.set_random_seed(8)
    x = keras.Input((3,))
    h = keras.layers.Dense(4, name="h")(x)
    o1 = keras.layers.Dense(2, name="o1")(h)
    o2 = keras.layers.Dense(1, name="o2")(h)
    model = keras.Model(x, [o1, o2])
    g = trace_model(model)
    assert len(g.outputs) == 2
    xv = data((3,))
    got = replay(g, [xv])
    want = model(xv)
    for a, b in zip(got, want):
        assert_close(a, b, PASS)


def test_subclassed_model_is_looked_into():
    """A subclassed model has no Functional graph; its ``call`` traced on a symbolic input
    gives one (issue 20): at the top (keys without a prefix) and nested (``outer/inner``)."""

    class Sub(keras.Model):
        def __init__(self):
            super().__init__(name="mysub")
            self.d = keras.layers.Dense(2, name="d")

        def call(self, x):
            return self.d(x) * 2.0

    keras.utils.set_random_seed(1)
    model = Sub()
    x = data((3,))
    model(x)

    def no_rule_for_sub(layer):
        return not isinstance(layer, Sub)

    g = trace_model(model, has_rule=no_rule_for_sub)
    check_slots(g)
    assert [n.key for n in g.nodes][0] == "d"
    assert_close(replay(g, [x])[0], model(x).numpy(), PASS)
    inp = keras.Input((3,))
    outer = keras.Model(inp, keras.layers.Dense(1, name="head")(model(inp)))
    g = trace_model(outer, has_rule=no_rule_for_sub)
    check_slots(g)
    assert [n.key for n in g.nodes][0] == "mysub/d"
    assert_close(replay(g, [x])[0], outer(x).numpy(), PASS)
    # Without a rule predicate nothing is looked into: the model stays one node.
    assert [n.key for n in trace_model(outer).nodes] == ["mysub", "head"]


def test_unbuilt_subclassed_model_refused():
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match=r"(?s)subclassed.*not been built"):
        trace_model(Sub(name="never_called"))


def test_plain_layer_refused():
    with pytest.raises(ValueError, match="Dense"):
        trace_model(keras.layers.Dense(2))
