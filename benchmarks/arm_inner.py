"""Runs inside the emulated aarch64 chroot (numpy + onnxruntime only): every ``*.onnx`` / ``*.ort`` model of a folder
on its ``inputs.npy``, outputs saved beside them as ``<model>.arm.npy``, and one JSON line of facts on stdout.

    python arm_inner.py FOLDER      # FOLDER holds the models, inputs.npy (and inputs_ids.npy ... for text models)
"""

import ctypes
import json
import os
import platform
import sys

import numpy as np
import onnxruntime as ort

AT_HWCAP, HWCAP_ASIMDDP, HWCAP_ASIMDHP = 16, 1 << 20, 1 << 10  # <asm/hwcap.h> on arm64


def hwcaps() -> dict:
    """What the (emulated) CPU offers, from the auxiliary vector qemu fills for QEMU_CPU (not /proc/cpuinfo,
    which is the host's here)."""
    caps = ctypes.CDLL(None).getauxval
    caps.restype = ctypes.c_ulong
    value = caps(AT_HWCAP)
    return {"hwcap": hex(value), "dotprod": bool(value & HWCAP_ASIMDDP), "fp16_arith": bool(value & HWCAP_ASIMDHP)}


def main(folder: str) -> None:
    inputs = dict(np.load(os.path.join(folder, "inputs.npz")))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    done = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith((".onnx", ".ort")):
            continue
        sess = ort.InferenceSession(os.path.join(folder, name), opts, providers=["CPUExecutionProvider"])
        feed = {i.name: inputs[i.name] for i in sess.get_inputs()}
        np.save(os.path.join(folder, name + ".arm.npy"), sess.run(None, feed)[0])
        done.append(name)
    print(json.dumps({"machine": platform.machine(), "onnxruntime": ort.__version__, "numpy": np.__version__,
                      "python": platform.python_version(), "qemu_cpu": os.environ.get("QEMU_CPU"), **hwcaps(),
                      "models": done}))


if __name__ == "__main__":
    main(sys.argv[1])
