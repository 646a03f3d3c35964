"""UniBind encoder: ImageBind keys under UniBind's `bind.` prefix, per-modality heads (in the
checkpoint or a heads file), class centres converted once from a pickle made here; errors."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from helpers.imagebind import require_imagebind, tiny_imagebind
from PIL import Image

from cmcl.encoders import get_encoder

torch = pytest.importorskip("torch")
ib = require_imagebind()
from cmcl.encoders import unibind as ub  # noqa: E402

D = 16


@pytest.fixture(scope="module")
def files(tmp_path_factory, one_thread):
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("unibind")
    plain = tiny_imagebind(d / "imagebind.pth", D)
    sd = torch.load(plain, weights_only=True)
    g = torch.Generator().manual_seed(1)
    heads = {f"mlp_for_{m}.{p}": torch.randn((D, D) if p == "weight" else (D,), generator=g)
             for m in ("image", "audio") for p in ("weight", "bias")}
    unibind = {f"bind.{k}": v for k, v in sd.items()}
    unibind["point_encoder.proj.weight"] = torch.zeros(3, 3)  # Point-Bind's own keys: ignored
    unibind |= {f"head.{k}": v for k, v in heads.items() if "image" in k}
    torch.save(unibind, d / "pretrained_weights.pt")
    save_file({k: v for k, v in heads.items() if "audio" in k}, d / "audio_heads.safetensors")
    rng = np.random.default_rng(0)
    with open(d / "centres.pkl", "wb") as f:
        pickle.dump({"Cat": torch.randn(3, D, generator=g),
                     "big_dog": rng.standard_normal((3, D)).astype(np.float32)}, f)
    return d, heads


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    arr = np.random.default_rng(seed).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def wav() -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    t = np.arange(24000) / 16000
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 440 * t), 16000, format="WAV")
    return buf.getvalue()


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_heads_apply_to_imagebind_outputs(files):
    d, heads = files
    imgs = [png(0), png(1)]
    base = get_encoder(f"imagebind:{d / 'imagebind.pth'}", "image").encode(imgs, "ab")
    enc = get_encoder(f"unibind:{d / 'pretrained_weights.pt'}", "image")  # its own head
    w, b = heads["mlp_for_image.weight"].numpy(), heads["mlp_for_image.bias"].numpy()
    np.testing.assert_allclose(enc.encode(imgs, "ab"), unit(base @ w.T + b), atol=1e-5)
    text = get_encoder(f"unibind:{d / 'pretrained_weights.pt'}", "text")  # no text head
    plain = get_encoder(f"imagebind:{d / 'imagebind.pth'}", "text")
    np.testing.assert_allclose(text.encode(["a cat"], "a"), plain.encode(["a cat"], "a"),
                               atol=1e-5)
    # a heads file for audio: the head sees ImageBind's own (logit-scaled) audio output
    spec = f"unibind:{d / 'pretrained_weights.pt'},heads={d / 'audio_heads.safetensors'}"
    got = get_encoder(spec, "audio").encode([wav()], "a")
    model = ib.load("x", d / "imagebind.pth")
    raw = model.forward("audio", torch.from_numpy(ib.audio_input(wav())[None]), False)
    w, b = heads["mlp_for_audio.weight"].numpy(), heads["mlp_for_audio.bias"].numpy()
    np.testing.assert_allclose(got, unit(raw @ w.T + b), atol=1e-5)


def test_centres_converted_once_then_replace_the_prompts(files, tmp_path):
    from cmcl.embed import _class_prompts

    d, _ = files
    out = tmp_path / "centres.safetensors"
    assert ub.convert_centres(d / "centres.pkl", out) == 2  # `python -m cmcl convert-...`
    text = get_encoder(f"unibind:{d / 'pretrained_weights.pt'},centres={out}", "text")
    prompts = _class_prompts(["big dog", "cat"], ["a {}"], text)["prompts"].numpy()
    assert prompts.shape == (2, 3, D)
    np.testing.assert_allclose(np.linalg.norm(prompts, axis=-1), 1.0, atol=1e-5)
    with open(d / "centres.pkl", "rb") as f:
        want = np.asarray(pickle.load(f)["big_dog"])
    np.testing.assert_allclose(prompts[0], want / np.linalg.norm(want, axis=1, keepdims=True),
                               atol=1e-6)
    with pytest.raises(ValueError, match=r"no class \['horse'\]"):
        text.class_features(["horse"])


def test_bad_unibind_specs_are_named(files, tmp_path):
    d, _ = files
    ck = d / "pretrained_weights.pt"
    with pytest.raises(ValueError, match="options are ',heads=<file>'"):
        get_encoder(f"unibind:{ck},head=x", "image")
    with pytest.raises(ValueError, match="convert the released pickle once"):
        get_encoder(f"unibind:{ck},centres={d / 'centres.pkl'}", "text")
    with pytest.raises(ValueError, match="no head for 'image'.*mlp_for_audio"):
        get_encoder(f"unibind:{ck},heads={d / 'audio_heads.safetensors'}", "image")
    with pytest.raises(ValueError, match="name them on the text encoder"):
        get_encoder(f"unibind:{ck},centres={tmp_path / 'c.safetensors'}", "image")
    with pytest.raises(ValueError, match="holds 0 ImageBind models"):
        torch.save({"w": torch.zeros(1)}, tmp_path / "other.pt")
        get_encoder(f"unibind:{tmp_path / 'other.pt'}", "image")
    with pytest.raises(ValueError, match="expected a dict of class name"):
        pickle.dump([1, 2], open(tmp_path / "list.pkl", "wb"))
        ub.convert_centres(tmp_path / "list.pkl", tmp_path / "x.safetensors")
