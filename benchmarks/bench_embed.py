"""Embedding throughput (samples/s) of each frozen encoder on payloads made here, and where an
ImageBind batch spends its time (decode + preprocessing vs the model's forward pass).

    python benchmarks/bench_embed.py [--device cpu|cuda] [--threads 1] [--huge]

Tiny random-weight ImageBind/UniBind (width 16, one block per tower: the preprocessing is the
real one, the model is not) and the built-ins; `--huge` adds ImageBind-Huge at its real size
with random weights (4.5 GB of float32 weights; minutes per batch on a CPU). The GPU idle
fraction (how much of an embed job the GPU waits for decoding) needs a GPU: without one it is
recorded as not measured, and the decode/forward split stands in for it.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
import benchlib  # noqa: E402

N = {"image": 32, "video": 4, "audio": 16, "text": 64, "npy": 256}


def payloads(n: dict) -> dict:
    import av
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(0)

    def png():
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (256, 320, 3), dtype=np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    def wav():  # a 5 s ESC-50-like clip at 44.1 kHz
        buf = io.BytesIO()
        sf.write(buf, 0.1 * rng.standard_normal(5 * 44100), 44100, format="WAV")
        return buf.getvalue()

    def mp4():  # a 10 s VGGSound-like clip, 25 fps, 320x240
        buf = io.BytesIO()
        with av.open(buf, mode="w", format="mp4") as c:
            vs = c.add_stream("mpeg4", rate=25)
            vs.width, vs.height, vs.pix_fmt = 320, 240, "yuv420p"
            for i in range(250):
                img = np.full((240, 320, 3), i % 256, np.uint8)
                c.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            c.mux(vs.encode())
        return buf.getvalue()

    def npy():
        buf = io.BytesIO()
        np.save(buf, rng.standard_normal((40, 13)).astype(np.float32))
        return buf.getvalue()

    return {"image": [png() for _ in range(n["image"])],
            "audio": [wav() for _ in range(n["audio"])],
            "video": [mp4() for _ in range(n["video"])],
            "npy": [npy() for _ in range(n["npy"])],
            "text": [f"a photo of thing number {i}" for i in range(n["text"])]}


def rate(enc, items, clock) -> float:
    enc.encode(items[:1], ["warm"])  # materialise towers, caches
    secs, _ = benchlib.timed(lambda: enc.encode(items, [f"s{i}" for i in range(len(items))]),
                             clock)
    return len(items) / secs


def main() -> None:
    t0 = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__)
    benchlib.add_common_args(ap, "benchmarks/results/embed.json")
    ap.add_argument("--huge", action="store_true", help="also ImageBind-Huge (random weights)")
    args = ap.parse_args()
    device, env = benchlib.setup(ap, args)
    clock = benchlib.CLOCKS[args.clock]
    from helpers.imagebind import tiny_imagebind

    from cmcl.encoders import get_encoder
    from cmcl.encoders import imagebind as ib

    n = {k: max(1, v // 4) for k, v in N.items()} if args.quick else N
    data = payloads(n)
    figs: dict = {}
    builtin = {"pixels:32": ("image", "image"), "logmel": ("audio", "audio"),
               "mfcc_stats": ("audio", "npy"), "minilm": ("text", "text")}
    for spec, (mod, kind) in builtin.items():
        figs[f"embed_{spec.split(':')[0]}_{mod}"] = benchlib.figure(
            round(rate(get_encoder(spec, mod), data[kind], clock), 1), "samples/s", env)
    with tempfile.TemporaryDirectory() as d:
        ck = tiny_imagebind(Path(d) / "tiny.pth")
        split = {}
        for mod in ("image", "video", "audio", "text"):
            for kind in ("imagebind", "unibind"):
                enc = get_encoder(f"{kind}:{ck}", mod)
                figs[f"embed_{kind}_tiny_{mod}"] = benchlib.figure(
                    round(rate(enc, data[mod], clock), 2), "samples/s", env,
                    note="width-16 random ImageBind: real preprocessing, toy model")
            if mod != "text":  # decode + preprocessing share of one batch (tiny model)
                prep = {"image": ib.image_input, "video": ib.video_input,
                        "audio": ib.audio_input}[mod]
                secs, _ = benchlib.timed(lambda p=prep, xs=data[mod]: [p(x) for x in xs], clock)
                split[mod] = round(secs / len(data[mod]), 4)
        figs["decode_seconds_per_sample"] = {"value": split, "unit": "s",
                                             "device": env["device"],
                                             "note": "PIL/PyAV/soundfile decode + ImageBind "
                                                     "transforms, one CPU thread per process"}
    if args.huge:
        import torch
        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory() as d:
            torch.manual_seed(0)
            model = ib.model_module().imagebind_huge(pretrained=False).eval()
            path = Path(d) / "huge.safetensors"
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
            del model
            for mod in ("image", "text", "audio"):
                enc = get_encoder(f"imagebind:{path}", mod)
                figs[f"embed_imagebind_huge_{mod}"] = benchlib.figure(
                    round(rate(enc, data[mod][:4], clock), 3), "samples/s", env)
    gpu = device.type == "cuda"
    figs["embed_gpu_idle_fraction"] = benchlib.figure(
        None, "fraction", env, note="not measured: no GPU on this machine" if not gpu else
        "not measured by this script yet")
    benchlib.save_result({"env": env, "figures": figs}, str(args.out), t0)


if __name__ == "__main__":
    main()
