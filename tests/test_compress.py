"""Fine-tuning to your own classes, structured pruning and distillation, as stages of one build, on
the digits CNN (trained here in seconds on scikit-learn's digits, so accuracy is real):

- fine-tuning to five of the classes replaces the classifier, maps --train's and --eval's labels,
  carries the class names in labels.txt and the TFLite metadata, and every target passes parity;
- pruning removes the channels its record says (read back from the saved reference), keeps the
  stem and the classifier whole, meets a MACs target, and exports to every target with parity;
- distillation lowers the divergence from the unpruned network;
- `edge verify --eval` and `edge explain` rebuild the changed network from the saved reference,
  and a tampered reference fails;
- bad input: one line and exit 2.
The Lite0-on-imagenette figures are benchmarks/compress_lite0.py's."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import edge
from edge import network, pruning
from edge.errors import ParityError, UserError
from edge.models import MODELS
from edge.targets import TARGETS

from test_errors import fail


def _stage(m: dict, name: str) -> dict:
    return next(s for s in m["stages"] if s["stage"] == name)


def _saved(folder: Path):
    spec = MODELS.get("digits_cnn")
    return network.load_reference(spec.build(), folder / network.REFERENCE_FILE)


def test_finetune_to_five_classes_every_target(digits, tmp_path):
    ms = edge.build("digits_cnn", "all", precision="int8", weights=digits["weights"], train=digits["train5"],
                    eval=digits["eval5"], calib=digits["calib"], finetune=True, finetune_epochs=2, out=str(tmp_path))
    assert sorted(m["target"] for m in ms) == sorted(t.name for t in TARGETS if "int8" in t.precisions)
    for m in ms:
        ft = _stage(m, "finetune")
        assert ft["classes"] == ["5", "6", "7", "8", "9"] and ft["class_map"] == {str(d): d - 5 for d in range(5, 10)}
        assert ft["replaced"] == "fc" and ft["after"]["params"] < ft["before"]["params"]
        assert m["outputs"][0]["model_shape"] == [1, 5]
        p = m["parity"]
        assert p["passed"] and p["reference_top1"] > 90.0 and p["top1_drop_pp"] <= 1.0, p
        folder = tmp_path / m["target"]
        assert (folder / "labels.txt").read_text().split() == ["5", "6", "7", "8", "9"]
        assert m["reference_state"]["made_by"] == ["finetune"]
    net, classes = _saved(tmp_path / "onnx")
    assert classes == ["5", "6", "7", "8", "9"] and net.fc.out_features == 5
    tfl = next(m for m in ms if m["target"] == "tflite")
    if tfl["target_details"]["metadata"].get("written"):  # image classifiers only; Lite0's: the benchmark
        from edge.targets.tflite_metadata import read_metadata

        assert read_metadata(tmp_path / "tflite" / tfl["artifact"])["labels"] == ["5", "6", "7", "8", "9"]
    # verify --eval rebuilds the fine-tuned network from reference.pt and maps the labels as the build did
    reports = edge.verify(str(tmp_path), eval=digits["eval5"])
    assert all(r["passed"] for r in reports) and all(r["reference_top1"] > 90.0 for r in reports)


def test_prune_removes_the_channels_it_says_and_every_target_exports(digits, tmp_path):
    before = MODELS.get("digits_cnn").build()
    before.load_state_dict(torch.load(digits["weights"], weights_only=True))
    ms = edge.build("digits_cnn", "all", precision="int8", weights=digits["weights"], train=digits["train"],
                    eval=digits["eval"], calib=digits["calib"], prune=0.5, out=str(tmp_path))
    assert len(ms) == len([t for t in TARGETS if "int8" in t.precisions])
    for m in ms:
        assert m["parity"]["passed"], m["parity"]
        assert m["reference_state"]["made_by"] == ["prune", "distill"]
    m = ms[0]
    pr, di = _stage(m, "prune"), _stage(m, "distill")
    net, classes = _saved(tmp_path / m["target"])
    assert classes is None  # not fine-tuned: the registry's labels
    was, now = pruning.channels(before), pruning.channels(net)
    assert now["features.0"] == was["features.0"] == 16  # the stem is kept whole
    assert now["fc"] == was["fc"] == 10  # so is the classifier
    # a chain: the inner channels go; the layer reading them keeps its outputs and is re-fitted
    assert now["features.3"] == was["features.3"] // 2 and now["features.6"] == was["features.6"]
    assert net.features[6].in_channels == now["features.3"]
    assert len(pr["steps"]) == 1 and pr["steps"][0]["refitted"] == 1 and pr["reconstruction"]["samples"] > 0
    head = pr["steps"][0]["classifier"]  # its inputs are features.6's outputs, kept whole; re-fitted on them,
    assert head["inputs_cut"] is False and head["kept"] in ("old", "re-fitted")  # kept only if the loss fell
    assert (head["kept"] == "re-fitted") == (head["held_out_loss"] < head["loss_before"])
    x = (torch.zeros(1, 1, 8, 8),)
    assert network.measure(net, x) == pr["after"] == di["after"]
    assert pr["after"]["macs"] < 0.6 * pr["before"]["macs"] and pr["after"]["params"] < pr["before"]["params"]
    # distillation brought the pruned network closer to the unpruned one
    kl = di["kl_to_teacher"]
    assert kl["after"] < kl["before"], kl
    # accuracy is measured, not assumed: the pruned, distilled network still knows its digits
    assert m["parity"]["reference_top1"] > 80.0, m["parity"]
    reports = edge.verify(str(tmp_path), eval=digits["eval"])
    assert all(r["passed"] for r in reports)
    from edge.explaining import explain

    [r] = explain(str(tmp_path / "onnx"), samples=4)
    assert r["layers"] and r["output_sqnr_db"] > 10.0
    # a reference that is not the one the build saved fails verify
    ref = tmp_path / "onnx" / network.REFERENCE_FILE
    ref.write_bytes(ref.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ParityError, match="reference.pt"):
        edge.verify(str(tmp_path / "onnx"), eval=digits["eval"])


def test_prune_macs_meets_the_target_gradually(digits, tmp_path):
    m = edge.build("digits_cnn", "onnx", weights=digits["weights"], train=digits["train"], eval=digits["eval"],
                   prune_macs="0.55", prune_steps=2, distill_epochs=1, out=str(tmp_path))
    pr = _stage(m, "prune")
    assert pr["after"]["macs"] <= 0.55 * pr["before"]["macs"] and pr["macs_target"] == int(0.55 * pr["before"]["macs"])
    al = pr["allocation"]  # by default the sensitivity scan's
    assert al["policy"] == "sensitivity" and set(al["ratios"]) == set(al["scan"]) and any(al["ratios"].values())
    assert pr["ratio"] is None
    assert [s["step"] for s in pr["steps"]] == [1, 2]
    assert pr["steps"][0]["macs"] >= pr["steps"][1]["macs"]  # gradual (a network this small is at 16 channels at once)
    assert "recovery" in pr["steps"][0] and "recovery" not in pr["steps"][1]  # the last one's is distill's
    assert m["parity"]["passed"]


def test_allocation_is_the_cheapest_that_meets_the_target():
    """allocate: the per-group ratios with the least summed loss whose MACs saved reach the need,
    the same as trying every combination."""
    import itertools

    rng = np.random.default_rng(0)
    scan = {g: {r: {"loss": float(rng.uniform(0, 1) * r ** 2), "saved": int(rng.integers(1, 50) * 1000 * r * 4)}
                for r in (0.25, 0.5, 0.75)} for g in "abcde"}
    for needed in (30_000, 120_000, 300_000):
        got = pruning.allocate(scan, needed)
        options = [[(0.0, 0, 0.0)] + [(r, v["saved"], v["loss"]) for r, v in rows.items()] for rows in scan.values()]
        best = min((c for c in itertools.product(*options) if sum(o[1] for o in c) >= needed),
                   key=lambda c: sum(o[2] for o in c))
        assert sum(scan[g][r]["loss"] for g, r in got.items() if r) == pytest.approx(sum(o[2] for o in best))
        assert sum(scan[g][r]["saved"] for g, r in got.items() if r) >= needed
    with pytest.raises(UserError, match="short of"):
        pruning.allocate(scan, 10 ** 9)


def test_sensitivity_spares_the_group_that_pruning_hurts():
    """Of three blocks, two have half their inner channels at 0 (free to prune) and one has none
    to spare: the scan finds the first two cheap and the allocation cuts there, not the third."""
    net, x = _residual_net(), torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        for b in (net[2], net[3]):  # channels whose expansion rows are 0 output a constant: free to cut
            b.expand[0].weight[::2] = 0
            b.expand[1].weight[::2] = 0
    fit, score = [(x[i:i + 16],) for i in range(0, 32, 16)], [(x[i:i + 16],) for i in range(32, 64, 16)]
    scan = pruning.sensitivity(net, (x[:2],), 10, fit, score, ["classification"], ratios=(0.5,))
    assert set(scan) == {"1.expand.0", "2.expand.0", "3.expand.0"}
    assert scan["1.expand.0"][0.5]["loss"] > 10 * max(scan["2.expand.0"][0.5]["loss"], scan["3.expand.0"][0.5]["loss"])
    need = scan["2.expand.0"][0.5]["saved"] + scan["3.expand.0"][0.5]["saved"]
    assert pruning.allocate(scan, need) == {"1.expand.0": 0.0, "2.expand.0": 0.5, "3.expand.0": 0.5}


def test_distill_on_unlabelled_samples(digits, tmp_path):
    """No --train: the pruned network distils on the --calib samples, labels optional (10 passes: after the
    classifier re-fit on the same samples, 1 pass of 11 steps no longer moves the KL)."""
    m = edge.build("digits_cnn", "onnx", weights=digits["weights"], calib=digits["calib"],
                   eval=digits["eval"], prune=0.5, prune_steps=1, distill_epochs=10, out=str(tmp_path))
    di = _stage(m, "distill")
    assert di["labelled"] is False and di["kl_to_teacher"]["after"] < di["kl_to_teacher"]["before"]


def test_parse_macs():
    from edge.errors import UserError
    from edge.stages.prune import parse_macs

    assert parse_macs("0.6") == ("fraction", 0.6) and parse_macs(0.6) == ("fraction", 0.6)
    assert parse_macs("230M") == ("macs", 230e6) and parse_macs("0.23G") == ("macs", 0.23e9)
    assert parse_macs("230000000") == ("macs", 230e6)
    for bad in ("-1", "0", "lots", "5", "nan", True):
        with pytest.raises(UserError):
            parse_macs(bad)


def _one_class(tmp_path, digits) -> str:
    d = np.load(digits["train"])
    keep = d["labels"] == 3
    path = tmp_path / "one.npz"
    np.savez(path, pixels=d["pixels"][keep], labels=d["labels"][keep])
    return str(path)


@pytest.mark.parametrize("args, words", [
    (["--prune", "1.5"], ("--prune", "between 0 and 1")),
    (["--prune", "0"], ("--prune", "between 0 and 1")),
    (["--prune-macs", "50M"], ("--prune-macs", "already")),
    (["--prune", "0.3", "--prune-macs", "0.5"], ("not both",)),
    (["--prune", "0.8", "--prune-steps", "1"], ("--prune 0.8", "removed no channel")),
    (["--prune-macs", "0.2", "--prune-allocation", "uniform"], ("--prune-macs", "cannot be reached",
                                                                 "least is 0.12 M")),
    (["--prune-macs", "0.05"], ("--prune-macs", "cannot be reached", "--prune-allocation uniform")),
    (["--prune", "0.3", "--prune-allocation", "sensitivity"], ("--prune R", "--prune-macs")),
    (["--prune-allocation", "uniform"], ("--prune-allocation", "--prune")),
    (["--distill-epochs", "2"], ("--distill-epochs", "--prune")),
    (["--prune-steps", "2"], ("--prune-steps", "--prune")),
    (["--finetune"], ("--finetune", "--train")),
    (["--finetune-epochs", "1"], ("--finetune-epochs", "--finetune")),
    (["--num-classes", "1", "--train", "TRAIN"], ("--num-classes", "at least 2")),
    (["--finetune", "--train", "ONE"], ("one class", "at least two")),
    (["--finetune", "--num-classes", "3", "--train", "TRAIN5"], ("--num-classes 3", "5 distinct")),
    (["--finetune", "--train", "TRAIN5", "--eval", "EVAL"], ("--eval", "class index 0", "fine-tuned to")),
])
def test_bad_compression_input(args, words, digits, tmp_path, capsys):
    swap = {"TRAIN": digits["train"], "TRAIN5": digits["train5"], "EVAL": digits["eval"],
            "ONE": _one_class(tmp_path, digits)}
    out = tmp_path / "out"
    argv = ["build", "--model", "digits_cnn", "--weights", digits["weights"], "--target", "onnx",
            "--calib", digits["calib"], "--out", str(out), *[swap.get(a, a) for a in args]]
    fail(argv, capsys, 2, *words)
    assert not any(out.glob("*/manifest.json"))


def test_class_map_of_an_image_folder_tree():
    """An ImageFolder tree's folders are its classes, by name; --num-classes must agree."""
    from edge.errors import UserError
    from edge.stages.finetune import class_map
    from edge.training import TrainSet

    spec = MODELS.get("efficientnet_lite0")
    tree = TrainSet({"input": np.zeros((3, 1))}, np.array([0, 1, 2]), "tree", None, ("cat", "dog", "owl"))
    assert class_map(tree, None, spec) == ({0: 0, 1: 1, 2: 2}, ["cat", "dog", "owl"])
    with pytest.raises(UserError, match="--num-classes 4, but --train tree has 3 class folders"):
        class_map(tree, 4, spec)
    sparse = TrainSet({"input": np.zeros((3, 1))}, np.array([0, 217, 0]), "csv", None)  # ImageNet indices
    assert class_map(sparse, None, spec) == ({0: 0, 217: 1}, ["tench", "English springer"])
    assert class_map(sparse, 300, spec)[0] == {i: i for i in range(300)}  # indices below N are the classes


def test_target_given_twice_builds_both(digits, tmp_path):
    """`--target onnx --target tflite` and `--target onnx,tflite` build both (it used to keep the last)."""
    from edge.cli import _targets

    assert _targets(["onnx", "tflite"]) == ("onnx", "tflite") == _targets(["onnx,tflite"])
    assert _targets(None) == ("tflite",) and _targets(["onnx", "onnx"]) == ("onnx",)


class _Inverted(torch.nn.Module):
    """An inverted residual (1x1 expand, depthwise 3x3, 1x1 project), with a skip when shapes allow."""

    def __init__(self, cin: int, cout: int, expand: int = 4):
        super().__init__()
        nn, mid = torch.nn, cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False), nn.BatchNorm2d(mid),
                                       nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = cin == cout

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.skip else y


def _residual_net() -> torch.nn.Module:
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), _Inverted(16, 32), _Inverted(32, 32), _Inverted(32, 32),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


@pytest.mark.parametrize("keep", [True, False])
def test_residual_streams_kept_whole_or_pruned(keep):
    """The three blocks writing the 32-channel stream are found as one stream; kept whole, only the
    channels inside each block go (all of them by half); otherwise the stream shrinks too."""
    net, x = _residual_net(), (torch.randn(2, 3, 8, 8),)
    [found] = pruning.residual_streams(net, x)
    assert found in {net[1].project[0], net[2].project[0], net[3].project[0]}
    was = pruning.channels(net)
    pruning.make_pruner(net, x, 0.5, 1, 10, round_to=8, keep_residual=keep).step()
    now = pruning.channels(net)
    assert now["0"] == 16 and now["6"] == 10  # stem and classifier
    for b in ("1", "2", "3"):
        assert now[f"{b}.expand.0"] == was[f"{b}.expand.0"] // 2 == now[f"{b}.depthwise.0"]
        assert now[f"{b}.project.0"] == (32 if keep else 16)
    assert net(*x).shape == (2, 10)


def test_batch_norm_statistics_follow_a_pruned_network():
    """After pruning, the running statistics no longer describe the layer's inputs: reestimate_bn
    recomputes them as the plain mean and variance over the samples, and batch_statistics trains
    with batch statistics and puts every module's mode and momentum back after."""
    from edge.training import TrainSet, batch_statistics, reestimate_bn

    net = _residual_net()
    bn = net[1].expand[1]
    x = torch.randn(64, 3, 8, 8) * 3 + 1
    data = TrainSet({"x": x.numpy()}, None, "random")
    assert reestimate_bn(net, data, batch_size=16) == 64
    with torch.no_grad():
        h = net[1].expand[0](net[0](x))
    assert torch.allclose(bn.running_mean, h.mean((0, 2, 3)), atol=1e-4)
    # var: the unbiased variance per batch averaged over the batches (momentum None)
    var = torch.stack([h[i:i + 16].var((0, 2, 3), unbiased=True) for i in range(0, 64, 16)]).mean(0)
    assert torch.allclose(bn.running_var, var, rtol=1e-3)
    assert not net.training and bn.momentum == 0.1
    with batch_statistics(net, momentum=0.5), torch.no_grad():
        assert bn.training and bn.momentum == 0.5 and not net[1].expand[0].training
        out = net[1].expand[1](h[:4])  # normalised by the batch's own statistics
        assert abs(float(out.mean())) < 1e-4
    assert not bn.training and bn.momentum == 0.1


def test_reconstruction_sample_is_drawn_across_the_classes():
    """The training samples come in label order; the re-fit's sample is a random draw, not the first
    n (which, on imagenette, were all one class and re-fitted to 38% top-1 instead of 83%)."""
    from edge.stages.prune import reconstruction_sample

    labels = np.repeat(np.arange(10), 100)  # label order, as training_set returns them
    pick = reconstruction_sample(len(labels), 128, np.random.default_rng(0))
    assert len(pick) == 128 == len(set(pick.tolist())) and list(pick) == sorted(pick)
    assert len(set(labels[pick].tolist())) == 10
    assert len(reconstruction_sample(50, 128, np.random.default_rng(0))) == 50  # all of a small set


def test_least_squares_reconstruction_brings_the_pruned_network_back():
    """With the residual streams kept whole, re-fitting each block's projection (and the
    classifier) by least squares against the unpruned network cuts the output error."""
    import copy

    net, x = _residual_net(), torch.randn(64, 3, 8, 8)
    from edge.training import TrainSet, reestimate_bn

    reestimate_bn(net, TrainSet({"x": x.numpy()}, None, "random"))  # statistics that fit the inputs
    teacher = copy.deepcopy(net)
    student = copy.deepcopy(net)
    pruning.make_pruner(student, (x[:2],), 0.5, 1, 10, round_to=8, keep_residual=True).step()
    refit = copy.deepcopy(student)
    done = pruning.reconstruct(refit, teacher, [(x[i:i + 16],) for i in range(0, 64, 16)])
    assert set(done) == {"1.project.0", "2.project.0", "3.project.0"}  # the classifier's inputs are the stream
    with torch.no_grad():
        want = teacher(x)
        err = [float(((m(x) - want) ** 2).mean() / (want ** 2).mean()) for m in (student, refit)]
    assert err[1] < 0.5 * err[0], err


def test_dead_channels_silenced_without_changing_the_outputs():
    """A batch-norm channel whose input never varied (running variance 0, its convolution's row 0)
    gets scale 0: the outputs stay, and training on running statistics no longer multiplies that
    row's gradient by scale / sqrt(eps)."""
    from edge.training import silence_dead_channels

    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 3)).eval()
    with torch.no_grad():
        net[0].weight[1] = 0
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].running_var[1], net[1].running_mean[1] = 0.0, 0.0
        net[1].weight.fill_(1.5)
        net[1].bias.fill_(0.5)  # above the ReLU's kink, so gradients pass
    x = torch.randn(8, 3, 8, 8)

    def row_grad():
        net.zero_grad()
        net(x).square().sum().backward()
        return float(net[0].weight.grad[1].abs().max())

    before, g_before = net(x).detach(), row_grad()
    assert silence_dead_channels(net) == 1
    assert float(net[1].weight[1]) == 0.0 and torch.equal(net[1].weight[[0, 2, 3]], torch.full((3,), 1.5))
    assert torch.allclose(net(x), before) and g_before > 0 and row_grad() == 0.0


@pytest.mark.parametrize("labelled", [True, False])
def test_fit_head_after_its_inputs_were_cut(labelled):
    """Pruning cut the classifier's inputs: fit_head trains it again on the pruned network's
    features, against the labels or, unlabelled, the teacher's softmax, and lowers that loss."""
    import copy

    from edge.training import TrainSet, fit_head

    teacher = _residual_net()
    x = torch.randn(96, 3, 8, 8)
    with torch.no_grad():
        labels = teacher(x).argmax(1).numpy()
    student = copy.deepcopy(teacher)
    pruning.make_pruner(student, (x[:2],), 0.5, 1, 10, round_to=8, keep_residual=False).step()
    assert student[6].in_features == 16  # the stream, and the classifier's inputs, were cut
    train = TrainSet({"x": x[:64].numpy()}, labels[:64] if labelled else None, "random")
    val = TrainSet({"x": x[64:].numpy()}, labels[64:] if labelled else None, "random")
    r = fit_head(student, "6", train, val, teacher=teacher)
    assert r["held_out_loss"] < r["loss_before"], r
    assert r["objective"] == ("cross-entropy on the labels" if labelled else "KL divergence to the teacher")


def test_distillation_hints_pull_the_layers_they_name_towards_the_teacher():
    """distill(hints=...) adds the relative squared error between the named layers' outputs to the
    loss (FitNets' hints): those outputs come much closer to the teacher's than the softmax alone
    brings them, from the same start with the same steps."""
    import copy

    from edge.training import TrainSet, distill

    teacher = _residual_net()
    x = torch.randn(64, 3, 8, 8)
    start = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in start[1].parameters():
            p.add_(0.3 * torch.randn_like(p))
    data = TrainSet({"x": x.numpy()}, None, "random", image=None)

    def error(student) -> float:
        got = {}
        hs = [m[3].project[0].register_forward_hook(lambda mod, i, o, k=k: got.__setitem__(k, o))
              for k, m in (("s", student), ("t", teacher))]
        with torch.no_grad():
            student(x), teacher(x)
        for h in hs:
            h.remove()
        return float(((got["s"] - got["t"]) ** 2).mean() / (got["t"] ** 2).mean())

    errors = {}
    for hinted in (False, True):
        student = copy.deepcopy(start)
        pair = [(student[3].project[0], teacher[3].project[0])] if hinted else []
        distill(student, teacher, data, None, steps=60, check_every=60, lr=1e-2, batch_size=16,
                rng=np.random.default_rng(0), optimizer="adamw", hints=pair)
        errors[hinted] = error(student)
        assert not student[3].project[0]._forward_hooks  # the hooks are gone after training
    assert errors[True] < 0.5 * errors[False] < 0.5 * error(start), errors
