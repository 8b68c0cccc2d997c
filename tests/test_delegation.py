"""Delegation as a checked fact: the manifest says how the runtime placed the graph (TFLite: the
XNNPACK partitions and the ops left outside them; onnxruntime: its optimised graph's nodes and
those left in float between Q/DQ), and a build warns, naming the ops, when the graph is split.
A padded max-pool after a ReLU stays inside XNNPACK (zero padding); elsewhere its edge padding
becomes MIRROR_PAD, which XNNPACK has not, and the manifest says so."""
from __future__ import annotations

import logging
import textwrap

import numpy as np
import pytest

import edge
from edge.targets.tflite import xnnpack_partitions

POOL = '''
import torch
import torch.nn as nn


def relu_pool():  # ResNet's stem: conv, ReLU, then a padded max-pool
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


def signed_pool():  # the max-pool's input can be negative
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.MaxPool2d(3, 2, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def example_inputs():
    return (torch.rand(1, 3, 32, 32),)
'''


def op(index, name, inputs, outputs):
    return {"index": index, "op_name": name, "inputs": np.array(inputs), "outputs": np.array(outputs)}


def test_partitions_from_a_hand_made_node_list():
    # t0 -> CONV -> t1 -> MIRROR_PAD -> t2 -> MAX_POOL -> t3 -> FC -> t4; two DELEGATE nodes
    # replace CONV and MAX_POOL + FC; MIRROR_PAD runs on its own
    ops = [op(0, "CONV_2D", [0, 10, 11], [1]), op(1, "MIRROR_PAD", [1, 12], [2]), op(2, "MAX_POOL_2D", [2], [3]),
           op(3, "FULLY_CONNECTED", [3, 13, -1], [4]), op(4, "DELEGATE", [0, 10, 11], [1]),
           op(5, "DELEGATE", [2, 13], [4])]
    d = xnnpack_partitions(ops)
    assert (d["partitions"], d["ops"], d["delegated"], d["outside"]) == (2, 4, 3, {"MIRROR_PAD": 1})
    assert list(d["split"]) == ["MIRROR_PAD"] and "ReLU" in d["split"]["MIRROR_PAD"]
    whole = xnnpack_partitions([op(0, "CONV_2D", [0, 10], [1]), op(1, "DELEGATE", [0, 10], [1])])
    assert (whole["partitions"], whole["outside"], whole["split"]) == (1, {}, {})
    none = xnnpack_partitions([op(0, "CONV_2D", [0, 10], [1])])  # no delegate at all: split
    assert none["partitions"] == 0 and none["outside"] == {"CONV_2D": 1} and "CONV_2D" in none["split"]


def _export_record(m: dict) -> dict:
    [export] = [s for s in m["stages"] if s["stage"] == "export"]
    return export["delegation"]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_max_pool_after_relu_is_one_xnnpack_partition(tmp_path, precision, caplog):
    (tmp_path / "pool.py").write_text(textwrap.dedent(POOL))
    with caplog.at_level(logging.WARNING, logger="edge"):
        m = edge.build(f"{tmp_path / 'pool.py'}:relu_pool", "tflite", precision=precision, weights="random",
                       out=str(tmp_path / "out"))
    d = _export_record(m)
    assert m["parity"]["passed"]
    assert (d["partitions"], d["outside"], d["split"]) == (1, {}, {}), d
    assert d["delegated"] == d["ops"] and not [r for r in caplog.records if "optimised kernels" in r.message]


def test_a_max_pool_on_signed_input_is_split_and_said(tmp_path, caplog):
    (tmp_path / "pool.py").write_text(textwrap.dedent(POOL))
    with caplog.at_level(logging.WARNING, logger="edge"):
        m = edge.build(f"{tmp_path / 'pool.py'}:signed_pool", "tflite", weights="random", out=str(tmp_path / "out"))
    d = _export_record(m)
    assert m["parity"]["passed"]  # edge padding: the same maximum, outside XNNPACK
    assert d["partitions"] == 2 and set(d["outside"]) == {"MIRROR_PAD"} and "MIRROR_PAD" in d["split"]
    [warning] = [r.message for r in caplog.records if "optimised kernels" in r.message]
    assert "tflite" in warning and "MIRROR_PAD x" in warning


def test_onnx_int8_runs_on_int8_kernels(tmp_path):
    (tmp_path / "pool.py").write_text(textwrap.dedent(POOL))
    m = edge.build(f"{tmp_path / 'pool.py'}:relu_pool", "onnx", precision="int8", weights="random",
                   out=str(tmp_path / "out"))
    d = _export_record(m)
    assert d["float_between_qdq"] == {} and d["split"] == {}
    assert d["op_types"].get("QLinearConv") == 2 and "Conv" not in d["op_types"], d["op_types"]
