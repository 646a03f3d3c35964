"""ImageBind encoder: a tiny random-weight ImageBind saved as .pth and .safetensors, reloaded
through get_encoder; each modality's preprocessing on files written here, checked against the
published transforms; the bad-checkpoint and bad-modality errors."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pytest
import yaml
from helpers.imagebind import require_imagebind, tiny_model
from PIL import Image

from cmcl.encoders import get_encoder

torch = pytest.importorskip("torch")
ib = require_imagebind()

av = pytest.importorskip("av")
sf = pytest.importorskip("soundfile")
MODALITIES = ["image", "video", "text", "audio", "depth", "thermal"]
PAD = -ib.AUDIO_MEAN / ib.AUDIO_STD  # a zero-padded fbank column after normalisation


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread):
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("imagebind")
    model = tiny_model()
    sd = model.state_dict()
    torch.save(sd, d / "tiny.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, d / "tiny.safetensors")
    return model, d


# ----------------------------------------------------------------------------- files


def image_bytes(arr: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def wav_bytes(wave: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    """A sine with a little white noise (every mel bin then holds signal, not rounding)."""
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    x += 0.01 * np.random.default_rng(int(freq)).standard_normal(len(t))
    return np.stack([x * (c + 1) / channels for c in range(channels)], 1).astype(np.float32)


def mp4_bytes(n_frames: int, fps: int = 10, size: tuple[int, int] = (64, 48)) -> bytes:
    """Frame i is a flat grey of level 8 * i, so a decoded frame tells its index."""
    buf = io.BytesIO()
    w, h = size
    with av.open(buf, mode="w", format="mp4") as c:
        vs = c.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt, vs.bit_rate = w, h, "yuv420p", 8_000_000
        for i in range(n_frames):
            img = np.full((h, w, 3), 8 * i, np.uint8)
            c.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(vs.encode())
    return buf.getvalue()


def depth_png(mm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mm.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def payloads():
    rng = np.random.default_rng(0)
    thermal = rng.integers(0, 255, (97, 131), dtype=np.uint8)
    depth = rng.integers(400, 9000, (61, 83)).astype(np.uint16)
    depth[:5] = 0  # missing depth
    return {
        "image": [image_bytes(rng.integers(0, 255, (57, 91, 3), dtype=np.uint8)),
                  image_bytes(rng.integers(0, 255, (301, 225, 3), dtype=np.uint8), "JPEG")],
        "video": [mp4_bytes(30), mp4_bytes(7, size=(48, 64))],
        "text": ["a dog", b"a photo of a digit three", "\u00e9t\u00e9 \u00e0 Paris"],
        "audio": [wav_bytes(tone(3, 16000), 16000), wav_bytes(tone(1.3, 44100, 220), 44100),
                  wav_bytes(tone(2.5, 22050, channels=2), 22050, "FLAC")],
        "depth": [depth_png(depth), depth_png(np.full((40, 30), 2000))],
        "thermal": [image_bytes(thermal, "JPEG", quality=90), image_bytes(thermal[:50])],
    }


# ----------------------------------------------------------------------------- the model


def reference(model, modality: str, payloads) -> np.ndarray:
    """The wheel's own ImageBindModel.forward on the inputs, rows L2-normalised."""
    tower = ib.TOWERS[modality]
    if modality == "text":
        x = torch.from_numpy(ib.text_input(payloads))
    else:
        x = torch.from_numpy(np.stack([ib.PREPROCESS[modality](p) for p in payloads]))
    with torch.inference_mode():
        y = model({tower: x})[tower]
    return torch.nn.functional.normalize(y, dim=-1).numpy()


@pytest.mark.parametrize("modality", MODALITIES)
def test_tiny_checkpoint_reloads_equal_as_pth_and_safetensors(tiny, payloads, modality):
    model, d = tiny
    want = reference(model, modality, payloads[modality])
    where = [f"s{i}" for i in range(len(payloads[modality]))]
    for name in ("tiny.pth", "tiny.safetensors"):
        enc = get_encoder(f"imagebind:{d / name}", modality)
        assert enc.dim == 32 and enc.modality == modality
        got = enc.encode(payloads[modality], where)
        assert got.shape == (len(where), 32) and got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_one_load_serves_every_tower_and_reads_widths_from_shapes(tiny):
    _, d = tiny
    a = get_encoder(f"imagebind:{d / 'tiny.pth'}", "image")
    b = get_encoder(f"imagebind:{d / 'tiny.pth'}", "audio")
    assert a.model is b.model and {"vision", "audio"} <= a.model.loaded
    cfg = a.model.config
    assert cfg["vision_embed_dim"] == cfg["text_embed_dim"] == 32
    assert cfg["vision_num_blocks"] == 1 and cfg["kernel_size"] == (2, 14, 14)
    assert cfg["audio_num_heads"] == 1  # width 32: not Huge's, no metadata -> max(1, 32 // 64)


def test_batches_larger_than_a_forward_pass_split_and_match(tiny, payloads):
    _, d = tiny
    enc = get_encoder(f"imagebind:{d / 'tiny.pth'}", "audio")
    many = payloads["audio"][:1] * 12  # 12 clip sets = 36 model inputs > batch 32
    got = enc.encode(many, ["x"] * 12)
    np.testing.assert_allclose(got, np.repeat(got[:1], 12, 0), atol=1e-6)


def test_bfloat16_and_float16_towers_stay_close_to_float32(tiny, payloads):
    _, d = tiny
    f32 = get_encoder(f"imagebind:{d / 'tiny.pth'}", "image").encode(payloads["image"], "ab")
    for dtype in ("bfloat16", "float16"):
        enc = ib.ImageBind(f"imagebind:{d / 'tiny.pth'}", str(d / "tiny.pth"), "image",
                           dtype=dtype)
        got = enc.encode(payloads["image"], "ab")  # the tower materialises on first use
        assert next(enc.model.net.modality_trunks["vision"].parameters()).dtype == \
            getattr(torch, dtype)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, f32, atol=0.05)
    with pytest.raises(ValueError, match="dtype 'int8'"):
        ib.ImageBind("imagebind:x", str(d / "tiny.pth"), "image", dtype="int8")


def test_embed_stage_runs_imagebind_for_text_and_image(tiny, corpus, tmp_path):
    from cmcl.embed import embed_split
    from cmcl.shards import read_features, shard_task

    _, d = tiny
    task = {"name": "ti", "corpus": "c", "modalities": ["text", "image"]}
    shard_task(task, {"path": str(corpus)}, "train", tmp_path / "s", samples_per_shard=8)
    spec = f"imagebind:{d / 'tiny.safetensors'}"
    n = embed_split(tmp_path / "s", tmp_path / "f", {"text": spec, "image": spec}, batch_size=5)
    feats = read_features(tmp_path / "f")
    assert n == 16 and feats["image"].shape == (16, 32) and feats["text"].shape == (16, 32)
    np.testing.assert_allclose(np.linalg.norm(feats["image"], axis=1), 1.0, atol=1e-5)


def test_params_schema_accepts_imagebind_specs():
    from cmcl.config import SCHEMA

    schema = yaml.safe_load(open(SCHEMA))
    enc = schema["properties"]["embed"]["properties"]["encoders"]["additionalProperties"]
    assert re.match(enc["pattern"], "imagebind:/models/imagebind_huge.pth")
    assert not re.match(enc["pattern"], "imagebind:")


# ----------------------------------------------------------------------------- preprocessing


def test_image_transform_resizes_the_short_side_and_centre_crops():
    # left half black, right white; short side 224 already: the centre crop is columns 112..335
    arr = np.zeros((224, 448, 3), np.uint8)
    arr[:, 224:] = 255
    x = ib.image_input(image_bytes(arr))
    lo, hi = -ib.CLIP_MEAN / ib.CLIP_STD, (1 - ib.CLIP_MEAN) / ib.CLIP_STD
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, :, :110], np.broadcast_to(lo[:, None, None], (3, 224, 110)),
                               atol=1e-5)
    np.testing.assert_allclose(x[:, :, 114:], np.broadcast_to(hi[:, None, None], (3, 224, 110)),
                               atol=1e-5)
    # odd sizes, JPEG and grey/RGBA inputs: 3 x 224 x 224 within the normalised [0, 1] range
    for arr, fmt in ((np.full((57, 91, 3), 128, np.uint8), "PNG"),
                     (np.full((301, 225), 200, np.uint8), "JPEG"),
                     (np.full((30, 500, 4), 60, np.uint8), "PNG")):
        x = ib.image_input(image_bytes(arr, fmt))
        assert x.shape == (3, 224, 224)
        assert (x >= lo[:, None, None] - 1e-4).all() and (x <= hi[:, None, None] + 1e-4).all()
        level = arr.reshape(-1, arr.shape[-1] if arr.ndim == 3 else 1)[0, 0] / 255.0
        np.testing.assert_allclose(x, np.broadcast_to(((level - ib.CLIP_MEAN) / ib.CLIP_STD)
                                                      [:, None, None], x.shape), atol=0.01)


def test_resize_and_crop_follow_torchvision_rounding():
    img = Image.new("RGB", (225, 301))
    assert ib.resize_short_side(img).size == (224, int(224 * 301 / 225))  # 224 x 299
    assert ib.resize_short_side(Image.new("RGB", (91, 57))).size == (int(224 * 91 / 57), 224)
    x = np.arange(299)[:, None] * np.ones((1, 224))
    assert ib.center_crop(x)[0, 0] == round((299 - 224) / 2.0) == 38  # round half to even


def test_video_clips_sample_imagebinds_frames_and_crops(payloads):
    # 30 frames at 10 fps = 3 s: 5 clips of 2 s starting every (3 - 2) / 5 s, 2 frames each
    assert ib.video_frame_indices(30, 10.0) == [[0, 19], [2, 21], [4, 23], [6, 25], [8, 27]]
    assert ib.video_frame_indices(7, 10.0) == [[0, 6]] * 5  # shorter than a clip: all from 0
    frames, idx = ib.decode_frames(payloads["video"][0])
    assert idx[1] == [2, 21] and sorted(frames) == [0, 2, 4, 6, 8, 19, 21, 23, 25, 27]
    assert abs(float(frames[21].mean()) - 8 * 21) < 3  # the frame PyAV decoded is frame 21
    x = ib.video_input(payloads["video"][0])
    assert x.shape == (15, 3, 2, 224, 224) and x.dtype == np.float32
    # 64x48 -> 298x224 bilinear, then left/centre/right crops; clip 1, frame 2 is frame 21
    level = (8 * 21 / 255.0 - ib.CLIP_MEAN) / ib.CLIP_STD
    for crop in range(3):
        np.testing.assert_allclose(x[3 + crop, :, 1].mean((1, 2)), level, atol=0.05)
    portrait = ib.video_input(payloads["video"][1])  # 48x64: top/centre/bottom crops
    assert portrait.shape == (15, 3, 2, 224, 224)
    with pytest.raises(ValueError, match="unreadable video|no video"):
        ib.video_input(b"not a video")


def test_spatial_crops_are_left_centre_right_for_landscape():
    x = np.arange(298, dtype=np.float32)[None, None, None, :] * np.ones((3, 2, 224, 1))
    left, centre, right = ib.spatial_crops(x)
    assert left[0, 0, 0, 0] == 0 and centre[0, 0, 0, 0] == math.ceil(74 / 2)
    assert right[0, 0, 0, -1] == 297
    y = np.swapaxes(x, -1, -2)  # portrait: top/centre/bottom
    top, _, bottom = ib.spatial_crops(y)
    assert top[0, 0, 0, 0] == 0 and bottom[0, 0, -1, 0] == 297


def test_audio_clips_and_kaldi_fbank(payloads):
    x = ib.audio_input(payloads["audio"][0])  # 3 s at 16 kHz
    assert x.shape == (3, 1, 128, 204) and x.dtype == np.float32
    # a 2 s clip gives 1 + (32000 - 400) // 160 = 198 frames, zero-padded to 204
    np.testing.assert_allclose(x[:, :, :, 198:], PAD, atol=1e-6)
    assert np.abs(x[:, :, :, :198] - PAD).min() > 1e-3
    assert [float(s) for s in ib.clip_starts(3.0, 2, 3)] == [0, 1 / 3, 2 / 3]
    # 1.3 s at 44.1 kHz: resampled to 16 kHz, all three clips start at 0 (shorter than 2 s)
    short = ib.audio_input(payloads["audio"][1])
    np.testing.assert_array_equal(short[0], short[2])
    frames = 1 + (int(1.3 * 16000) - 400) // 160
    np.testing.assert_allclose(short[:, :, :, frames:], PAD, atol=1e-6)
    # stereo at 22.05 kHz: kaldi reads channel 0
    wave = tone(2.5, 22050, channels=2)
    stereo = ib.audio_input(wav_bytes(wave, 22050))
    np.testing.assert_allclose(stereo, ib.audio_input(wav_bytes(wave[:, :1], 22050)), atol=1e-4)
    # the same as FLAC: libsndfile rounds a few samples 1 LSB apart, nothing more
    flac = ib.audio_input(payloads["audio"][2])
    assert flac.shape == (3, 1, 128, 204) and np.abs(flac - stereo).mean() < 1e-3
    with pytest.raises(ValueError, match="unreadable audio"):
        ib.audio_input(b"RIFF....WAVEjunk")


@pytest.mark.filterwarnings("ignore:At least one mel filter")
def test_fbank_matches_transformers_kaldi_spectrogram():
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    rng = np.random.default_rng(1)
    x = (0.1 * rng.standard_normal(16000) + tone(1, 16000)[:, 0]).astype(np.float32)
    mel = mel_filter_bank(num_frequency_bins=257, num_mel_filters=128, min_frequency=20,
                          max_frequency=8000, sampling_rate=16000, norm=None,
                          mel_scale="kaldi", triangularize_in_mel_space=True)
    np.testing.assert_allclose(ib.kaldi_mel_banks().T, mel, atol=1e-6)
    want = spectrogram(x, window_function(400, "hann", periodic=False), frame_length=400,
                       hop_length=160, fft_length=512, power=2.0, center=False,
                       preemphasis=0.97, mel_filters=mel, log_mel="log",
                       mel_floor=1.192092955078125e-07, remove_dc_offset=True).T
    np.testing.assert_allclose(ib.kaldi_fbank(x), want, atol=1e-3)


def test_resampler_is_bandlimited_and_keeps_length():
    def sine(freq):
        return (0.3 * np.sin(2 * np.pi * freq * np.arange(44100) / 44100))[None].astype(
            np.float32)

    y = ib.resample(sine(1000), 44100, 16000)
    assert y.shape == (1, 16000)
    t = np.arange(16000) / 16000
    np.testing.assert_allclose(y[0, 200:-200], 0.3 * np.sin(2 * np.pi * 1000 * t[200:-200]),
                               atol=2e-3)
    # above the new Nyquist: filtered out
    assert np.abs(ib.resample(sine(12000), 44100, 16000)[0, 200:-200]).max() < 0.01


def test_depth_becomes_normalised_disparity():
    x = ib.depth_input(depth_png(np.full((40, 30), 2000)))  # 2 m everywhere
    disparity = ib.DEPTH_BASELINE_M * ib.DEPTH_FOCAL_PX / 2.0 / ib.DISPARITY_MAX
    assert x.shape == (1, 224, 224) and x.dtype == np.float32
    np.testing.assert_allclose(x, (disparity - ib.DEPTH_MEAN) / ib.DEPTH_STD, rtol=1e-4)
    mm = np.full((300, 400), 1000)
    mm[:, :200] = 0  # missing depth -> disparity 0, not the clip's maximum
    y = ib.depth_input(depth_png(mm))
    np.testing.assert_allclose(y[0, :, 0], -ib.DEPTH_MEAN / ib.DEPTH_STD, atol=1e-4)
    near = ib.depth_input(depth_png(np.full((20, 20), 1)))  # 1 mm: disparity clamped to 75
    np.testing.assert_allclose(near, (1 - ib.DEPTH_MEAN) / ib.DEPTH_STD, rtol=1e-5)
    with pytest.raises(ValueError, match="16-bit"):
        ib.depth_input(image_bytes(np.zeros((8, 8), np.uint8)))


def test_thermal_is_one_channel_in_unit_range():
    rng = np.random.default_rng(2)
    jpg = image_bytes(rng.integers(0, 255, (97, 131), dtype=np.uint8), "JPEG")
    x = ib.thermal_input(jpg)
    assert x.shape == (1, 224, 224) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() <= 1
    flat = ib.thermal_input(image_bytes(np.full((50, 70, 3), 153, np.uint8), "JPEG"))
    np.testing.assert_allclose(flat, 0.6, atol=0.01)


def test_text_uses_the_wheels_clip_bpe():
    assert ib.bpe_path().is_file() and "site-packages" in str(ib.bpe_path())
    tok = ib.text_input(["a dog", b"A  DOG"])
    assert tok.shape == (2, 77) and tok.dtype == np.int64
    assert tok[0, :5].tolist() == [49406, 320, 1929, 49407, 0]  # <sot> a</w> dog</w> <eot>
    np.testing.assert_array_equal(tok[0], tok[1])  # lower-cased, whitespace cleaned


# ----------------------------------------------------------------------------- errors


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*imagebind_huge\.pth"):
        get_encoder(f"imagebind:{tmp_path / 'nope.pth'}", "image")
    with pytest.raises(ValueError, match="give the checkpoint"):
        get_encoder("imagebind:", "image")


def test_pickled_checkpoint_is_refused(tiny, tmp_path):
    model, _ = tiny
    torch.save(model, tmp_path / "whole_model.pth")  # a pickled nn.Module, not a state dict
    with pytest.raises(ValueError, match="pickled Python objects.*weights_only"):
        get_encoder(f"imagebind:{tmp_path / 'whole_model.pth'}", "image")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        get_encoder(f"imagebind:{tmp_path / 'junk.pth'}", "image")
    cut = (tiny[1] / "tiny.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(cut[:len(cut) // 2])
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        get_encoder(f"imagebind:{tmp_path / 'cut.pth'}", "image")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        get_encoder(f"imagebind:{tmp_path / 'junk.safetensors'}", "image")


def test_wrong_architecture_names_the_key(tiny, tmp_path):
    model, _ = tiny
    sd = model.state_dict()

    def save(name, d):
        torch.save(d, tmp_path / name)
        return f"imagebind:{tmp_path / name}"

    key = "modality_trunks.depth.blocks.0.norm_1.weight"
    with pytest.raises(ValueError, match=re.escape(f"key '{key}' is missing")):
        get_encoder(save("missing.pth", {k: v for k, v in sd.items() if k != key}), "image")
    bad = dict(sd)
    bad["modality_heads.audio.2.weight"] = torch.zeros(32, 16)
    with pytest.raises(ValueError, match=r"'modality_heads\.audio\.2\.weight' has shape "
                                         r"\[32, 16\].*expects \[32, 32\]"):
        get_encoder(save("shape.pth", bad), "audio")
    with pytest.raises(ValueError, match="unexpected key 'extra.weight'"):
        get_encoder(save("extra.pth", {**sd, "extra.weight": torch.zeros(1)}), "text")
    with pytest.raises(ValueError, match="not an ImageBind checkpoint.*'modality_heads"):
        get_encoder(save("other.pth", {"weight": torch.zeros(2, 2)}), "text")
    with pytest.raises(ValueError, match="not a state dict"):
        get_encoder(save("list.pth", [torch.zeros(1)]), "text")


def test_modality_without_a_tower_fails_before_anything_is_read(tmp_path):
    for modality in ("tactile", "imu", None):
        with pytest.raises(ValueError, match=f"not '{modality}'"):  # not 'does not exist'
            get_encoder(f"imagebind:{tmp_path / 'never_read.pth'}", modality)


def test_unreadable_payloads_name_the_sample(tiny):
    _, d = tiny
    for modality, what in (("image", "image"), ("thermal", "thermal image"),
                           ("depth", "depth image"), ("audio", "audio"), ("video", "video")):
        enc = get_encoder(f"imagebind:{d / 'tiny.pth'}", modality)
        with pytest.raises(ValueError, match=f"shard:k1.x: unreadable {what}"):
            enc.encode([b"garbage"], ["shard:k1.x"])


# ----------------------------------------------------------------------------- full size


@pytest.mark.slow
def test_imagebind_huge_builds_loads_and_encodes(tmp_path, payloads):
    """Random weights at the ImageBind-Huge size: the inferred config is Huge's, 1024-d."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = ib.model_module().imagebind_huge(pretrained=False).eval()
    path = tmp_path / "imagebind_huge.safetensors"
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, path)
    del model
    for modality in MODALITIES:
        enc = get_encoder(f"imagebind:{path}", modality)
        got = enc.encode(payloads[modality][:1], ["x"])
        assert got.shape == (1, 1024)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    cfg = enc.model.config
    assert all((cfg[f"{t}_embed_dim"], cfg[f"{t}_num_blocks"], cfg[f"{t}_num_heads"]) == v
               for t, v in ib.HUGE.items())
