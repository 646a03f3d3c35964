"""Built-in encoders on real files: `logmel` on WAV/FLAC, `pixels` at own or given size, and
errors that name what a payload of the wrong kind actually is."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from cmcl.encoders import MiniLM, get_encoder


def tone(rate: int, fmt: str, hz: float = 1000.0, seconds: float = 1.0, channels: int = 1,
         subtype: str | None = None) -> bytes:
    """A sine at `hz` (second channel at half amplitude) written by soundfile."""
    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * hz * t)
    if channels == 2:
        x = np.stack([x, 0.5 * x], axis=1)
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def picture(w: int, h: int, fmt: str = "PNG", seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def band_of(hz: float, n_mels: int = 64) -> int:
    """The Slaney mel band whose centre is nearest `hz` (0-8 kHz, as logmel builds them)."""
    from transformers.audio_utils import hertz_to_mel, mel_to_hertz

    edges = mel_to_hertz(np.linspace(hertz_to_mel(0.0, "slaney"), hertz_to_mel(8000.0, "slaney"),
                                     n_mels + 2), "slaney")
    return int(np.argmin(np.abs(edges[1:-1] - hz)))


def test_logmel_reads_wav_and_flac_at_16k_and_44k():
    enc = get_encoder("logmel", "audio")
    assert enc.dim == 128 and enc.modality == "audio"
    files = [tone(16000, "WAV"), tone(16000, "FLAC"), tone(44100, "WAV"), tone(44100, "FLAC"),
             tone(44100, "WAV", channels=2, subtype="FLOAT"), tone(16000, "WAV", 3000.0)]
    x = enc.encode(files, [f"s.tar:k{i}.audio" for i in range(len(files))])
    assert x.shape == (6, 128) and x.dtype == np.float32 and np.isfinite(x).all()
    mean, std = x[:, :64], x[:, 64:]
    peak = band_of(1000.0)
    assert (mean[:5].argmax(1) == peak).all() and mean[5].argmax() == band_of(3000.0)
    # peak power (0.5/2 * sum(hann))^2 = 2500 over ~2 bins x Slaney 2/bandwidth: ~45 (1.65 bels)
    assert 1.2 < mean[0, peak] < 2.1
    assert (std[:5, peak] < 0.15).all()  # a steady tone: flat over frames (edges aside)
    loud = mean[0] > mean[0, peak] - 3  # bands within 30 dB of the peak
    for i in range(1, 4):  # 16-bit FLAC and 44.1 kHz resampled agree where there is energy
        np.testing.assert_allclose(mean[i, loud], mean[0, loud], atol=0.05)
    # stereo (0.5, 0.25 amplitudes) mixes down to 0.375: 0.75x the mono tone, 20*log10(0.75) dB
    np.testing.assert_allclose(mean[4, peak] - mean[0, peak], 2 * np.log10(0.75), atol=0.01)
    silence = enc.encode([tone(16000, "WAV", 0.0, 0.005)], ["q"])  # 80 zeros: under a window
    assert silence.shape == (1, 128) and np.allclose(silence[0, :64], -10.0)  # the floor


def test_logmel_band_option_and_bad_options():
    enc = get_encoder("logmel:32", "audio")
    assert enc.dim == 64 and enc.encode([tone(22050, "FLAC")], ["a"]).shape == (1, 64)
    for bad in ("logmel:4", "logmel:200", "logmel:x"):
        with pytest.raises(ValueError, match=rf"encoder '{bad}': give the number of mel bands, "
                                             r"8\.\.128"):
            get_encoder(bad, "audio")


def old_pixels(payload: bytes) -> np.ndarray:
    """The encoder before it kept the image's size: everything bilinear-resized to 8x8."""
    img = Image.open(io.BytesIO(payload)).convert("L").resize((8, 8), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32).reshape(-1) / 255.0


def test_pixels_on_the_digits_is_bit_identical_to_the_8x8_encoder():
    from sklearn.datasets import load_digits

    pngs = []
    for img in load_digits().images[:400]:  # written as cmcl.corpora.builtin writes them
        buf = io.BytesIO()
        Image.fromarray((img * 15).astype(np.uint8), mode="L").save(buf, format="PNG")
        pngs.append(buf.getvalue())
    got = get_encoder("pixels", "image").encode(pngs, ["x"] * len(pngs))
    assert got.shape == (400, 64) and got.dtype == np.float32
    np.testing.assert_array_equal(got, np.stack([old_pixels(p) for p in pngs]))
    np.testing.assert_array_equal(get_encoder("pixels:8x8").encode(pngs, ["x"] * 400), got)
    # digest of the 8x8-resizing encoder's features (computed with it, before the change)
    assert hashlib.sha256(got.tobytes()).hexdigest() == \
        "931278dd51ce48ded5b6ff2c9ec48b2370af35745d2e923527bb05b1f314f9ed"


def test_pixels_keeps_the_image_size_or_resizes_to_the_spec():
    enc = get_encoder("pixels", "image")
    x = enc.encode([picture(20, 12), picture(20, 12, "JPEG", 1)], ["a", "b"])
    assert x.shape == (2, 240) and enc.dim == 240 and 0 <= x.min() and x.max() <= 1
    want = np.asarray(Image.open(io.BytesIO(picture(20, 12))).convert("L"), np.float32) / 255
    np.testing.assert_array_equal(x[0], want.reshape(-1))  # row-major, no resampling
    with pytest.raises(ValueError, match=r"s1\.tar:k7\.image\.jpg: encoder 'pixels' got a 12x20 "
                                         r"image, expected 20x12 \(the size of a\): .* "
                                         r"resize with 'pixels:20x12'"):
        enc.encode([picture(12, 20, "JPEG")], ["s1.tar:k7.image.jpg"])  # a later batch too
    assert get_encoder("pixels:32x24").encode([picture(20, 12), picture(7, 50, "JPEG")],
                                              ["a", "b"]).shape == (2, 768)
    sq = get_encoder("pixels:16")
    assert sq.dim == 256 and sq.encode([picture(40, 40)], ["a"]).shape == (1, 256)
    for bad in ("pixels:0", "pixels:32x", "pixels:axb", "pixels:1x2x3"):
        with pytest.raises(ValueError, match=rf"encoder '{bad}': give the size as "
                                             r"<width>x<height> or <side>"):
            get_encoder(bad)


WHERE = "data/shards/t/train/000000.tar:c1_s03.{}"


@pytest.mark.parametrize("spec, payload, member, message", [
    ("mfcc_stats", tone(16000, "WAV"), "audio.npy",
     r"encoder 'mfcc_stats' expects a \(frames, 13\) MFCC \.npy; this is a WAV file: use "
     r"`logmel`"),
    ("mfcc_stats", tone(44100, "FLAC"), "audio.npy", r"this is a FLAC file: use `logmel`"),
    ("pixels", tone(16000, "FLAC"), "image.png",
     r"encoder 'pixels' expects an image file \(PNG, JPEG.*\); this is a FLAC file: use "
     r"`logmel`"),
    ("pixels", b"the digit one", "image.png",
     r"encoder 'pixels' expects an image file .*; this is a text file: use `minilm`"),
    ("pixels", b"\x89PNG\r\n\x1a\n" + b"junk" * 8, "image.png", r"unreadable image \("),
    ("logmel", picture(8, 8), "audio.wav",
     r"encoder 'logmel' expects an audio file \(WAV, FLAC.*\); this is a PNG file: use "
     r"`pixels`"),
    ("logmel", b"\x93NUMPY" + b"\0" * 40, "audio.wav",
     r"this is a \.npy array file: use `mfcc_stats` or `precomputed`"),
    ("logmel", b"RIFF\x10\0\0\0WAVEfmt junk", "audio.wav", r"unreadable audio \("),
    ("minilm", picture(8, 8, "JPEG"), "text.txt",
     r"encoder 'minilm' expects UTF-8 text; this is a JPEG file: use `pixels`"),
    ("minilm", b"\xff\xfe\x00caption", "text.txt",
     r"encoder 'minilm' expects UTF-8 text; this file is not UTF-8 \(byte 0xff at offset 0\)"),
])
def test_a_payload_of_the_wrong_kind_is_named(spec, payload, member, message):
    where = WHERE.format(member)
    enc = object.__new__(MiniLM) if spec == "minilm" else get_encoder(spec)  # fails pre-model
    with pytest.raises(ValueError, match=rf"^{WHERE.format(member).replace('.', '[.]')}: "
                                         rf".*{message}"):
        enc.encode([payload], [where])


def test_embed_names_the_shard_member_of_a_wav_fed_to_mfcc_stats(corpus, tmp_path):
    """Audio rows of the test corpus as WAVs: `logmel` embeds them, `mfcc_stats` names one."""
    from cmcl.embed import embed_split
    from cmcl.shards import read_features, shard_task

    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines()]
    for r in rows:
        if "audio" in r:
            r["audio"] = r["audio"].replace(".npy", ".wav")
            (corpus / r["audio"]).write_bytes(tone(44100 if r["label"] % 2 else 16000, "WAV",
                                                   300.0 * (r["label"] + 1), 0.2))
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {"name": "ia", "corpus": "c", "modalities": ["image", "audio"], "pairing": "class"}
    shard_task(task, {"path": str(corpus)}, "test", tmp_path / "s")
    embed_split(tmp_path / "s", tmp_path / "f", {"image": "pixels", "audio": "logmel:16"})
    feats = read_features(tmp_path / "f")
    assert feats["audio"].shape[1] == 32 and feats["image"].shape[1] == 64
    with pytest.raises(ValueError, match=r"s/[^ ]*\.tar:[^ ]*a\d\d[^ ]*\.audio\.wav: encoder "
                                         r"'mfcc_stats' expects a \(frames, 13\) MFCC \.npy; "
                                         r"this is a WAV file: use `logmel`"):
        embed_split(tmp_path / "s", tmp_path / "g", {"image": "pixels", "audio": "mfcc_stats"})
    assert not (tmp_path / "g").exists()


def test_params_schema_accepts_the_encoder_specs():
    import re

    import yaml
    from helpers.data import ROOT

    schema = yaml.safe_load((ROOT / "pipeline/schemas/params.schema.yaml").read_text())
    pattern = schema["properties"]["embed"]["properties"]["encoders"]["additionalProperties"][
        "pattern"]
    for spec in ("pixels", "pixels:32", "pixels:32x24", "logmel", "logmel:40", "mfcc_stats",
                 "hf-siglip:/m/siglip2", "hf-clap:/m/clap", "hf-xclip:/m/x", "hf-clip:/m/c"):
        assert re.match(pattern, spec), spec
    for spec in ("pixels:", "pixels:big", "logmel:", "logmel:x", "hf-clap:", "clap:/m"):
        assert not re.match(pattern, spec), spec


def test_encoder_specs_are_checked_at_startup(tmp_path):
    """Unknown kinds, checkpoint kinds without a path or with a missing file (one line for the
    modalities sharing a spec) are refused before any job runs."""
    import yaml
    from helpers.data import ROOT

    from cmcl.config import ParamsError, check

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    missing = tmp_path / "nowhere.pth"
    p["embed"]["encoders"] = {"text": f"imagebind:{missing}", "image": f"imagebind:{missing}",
                              "audio": "hf-clap:", "video": "x-clip"}
    with pytest.raises(ParamsError) as e:
        check(p)
    msg = str(e.value)
    assert f"embed.encoders.text/image: encoder 'imagebind:{missing}': '{missing}' does not " \
           "exist" in msg
    assert "embed.encoders.audio: encoder 'hf-clap:' names no checkpoint" in msg
    assert "embed.encoders.video: unknown encoder 'x-clip'" in msg
    missing.touch()
    centres = tmp_path / "c.safetensors"
    p["embed"]["encoders"] = {**yaml.safe_load((ROOT / "params.yaml").read_text())["embed"][
        "encoders"], "image": f"unibind:{missing},centres={centres}"}
    with pytest.raises(ParamsError, match=f"'{centres}' does not exist"):
        check(p)
