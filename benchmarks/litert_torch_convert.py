"""Convert the network an edge build was checked against with litert-torch (Google's direct
PyTorch-to-TFLite converter). Runs in .venv-litert-torch (`make venv-litert-torch`), called by
benchmarks/litert_torch_compare.py:

    .venv-litert-torch/bin/python benchmarks/litert_torch_convert.py --manifest out/m/tflite/manifest.json \\
        --precision int8 --calib calibration.npy --out m.int8.tflite

The network: edge.verification.reference_model on the build's manifest (the registry's network
with the build's weights). Its image input is made channel-last (NHWC) with
litert_torch.to_channel_last_io, the layout edge's TFLite artifacts take, so neither graph carries
an input transpose the other lacks. int8: litert-torch's PT2E recipe as its documentation gives it
(PT2EQuantizer with get_symmetric_quantization_config(is_per_channel=True), torch.export,
prepare_pt2e, the calibration samples, convert_pt2e(fold_quantize=False), then
litert_torch.convert with QuantConfig(pt2e_quantizer=...)).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path



def main() -> None:
    import litert_torch
    import numpy as np
    import torch

    from edge.verification import reference_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--precision", choices=("fp32", "int8"), required=True)
    ap.add_argument("--calib", type=Path, help="int8: an .npy of preprocessed samples (NCHW)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    m = json.loads(a.manifest.read_text())
    spec, net = reference_model(m, folder=a.manifest.parent)
    net = net.eval()
    shape = tuple(m["inputs"][0].get("model_shape") or m["inputs"][0]["shape"])  # NCHW, as the network takes it
    args = (torch.randn(shape),)
    if a.precision == "int8":
        from litert_torch.quantize import pt2e_quantizer
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import quantize_pt2e

        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
        q = quantize_pt2e.prepare_pt2e(torch.export.export(net, args).module(), quantizer)
        cal = np.load(a.calib)
        with torch.no_grad():
            for x in cal:  # one at a time: the exported graph has the batch of one it was traced with
                q(torch.from_numpy(x[None]))
        net = quantize_pt2e.convert_pt2e(q, fold_quantize=False)
        kwargs = {"quant_config": QuantConfig(pt2e_quantizer=quantizer)}
    else:
        kwargs = {}
    nhwc = litert_torch.to_channel_last_io(net, args=[0])
    sample = (args[0].permute(0, 2, 3, 1).contiguous(),)
    model = litert_torch.convert(nhwc, sample, **kwargs)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".partial")
    model.export(str(tmp))
    tmp.replace(a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
