"""Checkpoint encoders from a local folder (cmcl.encoders.hf): tiny random CLIP, text model,
SigLIP, SigLIP 2, CLAP and X-CLIP checkpoints built offline, saved as safetensors, reloaded
through get_encoder and compared with the in-memory model; the frames X-CLIP is fed."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from cmcl.encoders import get_encoder
from cmcl.encoders.payloads import read_video_frames

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")
WORDS = ["[PAD]", "[UNK]", "<s>", "</s>", "the", "digit", "zero", "one", "two", "three", "a"]


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]",
                                      bos_token="<s>", eos_token="</s>", model_max_length=16)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    small = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 2}
    cfg = tf.CLIPConfig(text_config={**small, "vocab_size": len(WORDS), "max_position_embeddings":
                                     16, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3},
                        vision_config={**small, "image_size": 16, "patch_size": 8},
                        projection_dim=8)
    tf.CLIPModel(cfg).save_pretrained(d)
    tokenizer().save_pretrained(d)
    tf.CLIPImageProcessor(size={"shortest_edge": 16},
                          crop_size={"height": 16, "width": 16}).save_pretrained(d)
    return d


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 24), value, np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def test_clip_towers_encode_text_and_images_like_the_model(clip_dir):
    text = get_encoder(f"hf-clip:{clip_dir}", "text")
    image = get_encoder(f"hf-clip:{clip_dir}", "image")
    assert text.dim == image.dim == 8 and text.model is image.model  # one load, two towers
    texts = [b"the digit one", b"a two", "the digit zero three"] * 30  # > one forward batch
    got = text.encode(texts, ["x"] * len(texts))
    assert got.shape == (90, 8) and got.dtype == np.float32
    model = tf.CLIPModel.from_pretrained(clip_dir).eval()
    tok = tokenizer()(["the digit one", "a two"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        want = model.get_text_features(**tok).pooler_output.numpy()
    np.testing.assert_allclose(got[:2], want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got[0], got[1])
    imgs = image.encode([png(0), png(200)], ["a", "b"])
    assert imgs.shape == (2, 8) and not np.allclose(imgs[0], imgs[1])
    with pytest.raises(ValueError, match=r"b: encoder 'hf-clip:.*' expects an image file .*; "
                                         r"this is a text file: use `minilm`"):
        image.encode([png(0), b"not a png"], ["a", "b"])
    with pytest.raises(ValueError, match="b: unreadable image"):
        image.encode([png(0), png(9)[:40]], ["a", "b"])


def test_embed_with_clip_and_minilm_free_text_encoder(corpus, tmp_path, clip_dir):
    from cmcl.embed import embed_split
    from cmcl.shards import read_features, shard_task

    task = {"name": "ti", "corpus": "c", "modalities": ["text", "image"], "pairing": "sample"}
    shard_task(task, {"path": str(corpus)}, "test", tmp_path / "s")
    spec = f"hf-clip:{clip_dir}"
    embed_split(tmp_path / "s", tmp_path / "f", {"text": spec, "image": spec}, batch_size=3)
    feats = read_features(tmp_path / "f")
    assert feats["text"].shape == feats["image"].shape == (8, 8)
    meta = json.loads((tmp_path / "f/meta.json").read_text())
    assert meta["dims"] == {"text": 8, "image": 8} and meta["encoders"]["text"] == spec
    assert (tmp_path / "f/classes.safetensors").exists()  # class prompts through the text tower


def test_hf_text_encoder_mean_pools(tmp_path):
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=len(WORDS), hidden_size=12, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=24, max_position_embeddings=16)
    tf.BertModel(cfg).save_pretrained(tmp_path)
    tokenizer().save_pretrained(tmp_path)
    enc = get_encoder(f"hf:{tmp_path}", "text")
    got = enc.encode(["the digit one", "a"], ["x", "y"])
    assert got.shape == (2, 12)
    model = tf.BertModel.from_pretrained(tmp_path).eval()
    with torch.inference_mode():
        one = model(**tokenizer()(["a"], return_tensors="pt")).last_hidden_state.mean(1)
    np.testing.assert_allclose(got[1], one[0].numpy(), rtol=1e-5, atol=1e-6)  # padding ignored


def test_missing_or_wrong_folders_are_clear_errors(tmp_path, clip_dir):
    with pytest.raises(FileNotFoundError, match=r"encoder 'hf-clip:/nope/clip': /nope/clip does "
                                                r"not exist; expected a local folder"):
        get_encoder("hf-clip:/nope/clip", "image")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty has no config\.json; expected .*"
                                                r"model\.safetensors"):
        get_encoder(f"hf:{tmp_path / 'empty'}", "text")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/config.json").write_text('{"model_type": "clip"}')
    (tmp_path / "bin/pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors \(found only pickled "
                                                r"\['pytorch_model\.bin'\]"):
        get_encoder(f"hf-clip:{tmp_path / 'bin'}", "text")
    with pytest.raises(ValueError, match="CLIP encodes text and image files .* not 'audio'"):
        get_encoder(f"hf-clip:{clip_dir}", "audio")
    import shutil

    shutil.copytree(clip_dir, tmp_path / "bert")
    cfg = json.loads((tmp_path / "bert/config.json").read_text())
    (tmp_path / "bert/config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(ValueError, match=r"bert holds a 'bert' model, expected \['clip'\]"):
        get_encoder(f"hf-clip:{tmp_path / 'bert'}", "text")
    with pytest.raises(ValueError, match="give the checkpoint's local folder"):
        get_encoder("hf-clip:", "text")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/config.json").write_text('{"model_type": "clip"}')
    (tmp_path / "broken/model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match=r"encoder 'hf-clip:.*broken': cannot load the "
                                         r"checkpoint in"):
        get_encoder(f"hf-clip:{tmp_path / 'broken'}", "text")


SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
         "num_attention_heads": 2}


TEXT = {**SMALL, "vocab_size": len(WORDS), "max_position_embeddings": 16}


TEXTS = ["the digit one", "a two", "the digit zero three"]


def save(model, processor, path):
    """A folder as a user would have it: safetensors weights, tokenizer, preprocessor config."""
    model.save_pretrained(path)  # transformers 5 writes safetensors only
    tokenizer().save_pretrained(path)
    processor.save_pretrained(path)
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    return path


def unit(x):
    x = getattr(x, "pooler_output", x)
    return (x / x.norm(dim=-1, keepdim=True)).numpy()


def picture(seed: int, w: int = 20, h: int = 14, fmt: str = "PNG") -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def wav(rate: int, seconds: float, hz: float, fmt: str = "WAV") -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * hz * t) + 0.05 * np.sin(7 * t), rate, format=fmt)
    return buf.getvalue()


def video(n: int, size: int = 32) -> bytes:
    """An MP4 (MPEG-4 part 2) of n flat grey frames, frame i at grey level 10 * i."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 10 * i, np.uint8),
                                               format="rgb24")
            c.mux(s.encode(frame))
        c.mux(s.encode())
    return buf.getvalue()


def text_inputs(**padding):
    return tokenizer()(TEXTS, truncation=True, return_tensors="pt", **padding)


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tf.SiglipConfig(text_config=TEXT, vision_config={**SMALL, "image_size": 16,
                                                           "patch_size": 8})
    model = tf.SiglipModel(cfg).eval()
    proc = tf.SiglipImageProcessor(size={"height": 16, "width": 16})
    imgs = [Image.open(io.BytesIO(picture(i))).convert("RGB") for i in range(3)]
    with torch.inference_mode():
        want = {"text": unit(model.get_text_features(**text_inputs(padding="max_length",
                                                                   max_length=16))),
                "image": unit(model.get_image_features(**proc(images=imgs,
                                                              return_tensors="pt")))}
    return save(model, proc, tmp_path_factory.mktemp("siglip")), want


@pytest.fixture(scope="module")
def siglip2(tmp_path_factory):
    torch.manual_seed(1)
    cfg = tf.Siglip2Config(text_config=TEXT, vision_config={**SMALL, "num_patches": 16,
                                                            "patch_size": 4})
    model = tf.Siglip2Model(cfg).eval()
    proc = tf.Siglip2ImageProcessor(patch_size=4, max_num_patches=16)
    imgs = [Image.open(io.BytesIO(picture(i, 10 + 9 * i, 30 - 8 * i))).convert("RGB")
            for i in range(3)]
    with torch.inference_mode():
        want = unit(model.get_image_features(**proc(images=imgs, return_tensors="pt")))
    return save(model, proc, tmp_path_factory.mktemp("siglip2")), want


def test_siglip_towers_round_trip_normalised(siglip):
    folder, want = siglip
    text = get_encoder(f"hf-siglip:{folder}", "text")
    image = get_encoder(f"hf-siglip:{folder}", "image")
    assert text.model is image.model and text.dim == image.dim == 32
    got = text.encode([t.encode() for t in TEXTS], ["x"] * 3)
    np.testing.assert_allclose(got, want["text"], rtol=1e-5, atol=1e-6)
    got = image.encode([picture(i) for i in range(3)], ["a", "b", "c"])
    np.testing.assert_allclose(got, want["image"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, rtol=1e-5)
    depth = get_encoder(f"hf-siglip:{folder}", "depth")  # image-file modalities share the tower
    np.testing.assert_allclose(depth.encode([picture(0)], ["d"]), got[:1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"^t: encoder 'hf-siglip:.*' expects UTF-8 text; this "
                                         r"is a JPEG file: use `pixels`"):
        text.encode([picture(0, fmt="JPEG")], ["t"])


def test_siglip2_images_of_any_aspect_round_trip(siglip2):
    folder, want = siglip2
    enc = get_encoder(f"hf-siglip:{folder}", "image")
    assert enc.kind == "siglip2" and enc.dim == 32
    got = enc.encode([picture(i, 10 + 9 * i, 30 - 8 * i) for i in range(3)], ["a", "b", "c"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def clap(tmp_path_factory):
    torch.manual_seed(2)
    audio = {"spec_size": 64, "num_mel_bins": 64, "window_size": 4, "patch_size": 4,
             "patch_stride": [4, 4], "patch_embeds_hidden_size": 16, "hidden_size": 32,
             "depths": [1, 1], "num_attention_heads": [2, 2], "num_hidden_layers": 2,
             "projection_dim": 16, "enable_fusion": False}
    cfg = tf.ClapConfig(text_config={**TEXT, "max_position_embeddings": 20,
                                     "projection_dim": 16},
                        audio_config=audio, projection_dim=16)
    model = tf.ClapModel(cfg).eval()
    # 1 s at 16 kHz, 20 ms hop: 51 frames, within the tiny model's 64-frame input
    proc = tf.ClapFeatureExtractor(feature_size=64, sampling_rate=16000, hop_length=320,
                                   max_length_s=1, fft_window_size=640, frequency_max=8000,
                                   truncation="rand_trunc", padding="repeatpad")
    clips = [np.sin(np.arange(16000 * s) * hz / 16000 * 2 * np.pi).astype(np.float32) * 0.3
             for s, hz in ((0.5, 300.0), (0.8, 2000.0))]
    with torch.inference_mode():
        feats = proc(clips, sampling_rate=16000, return_tensors="pt")
        want = {"audio": unit(model.get_audio_features(**feats)),
                "text": unit(model.get_text_features(**text_inputs(padding=True)))}
    return save(model, proc, tmp_path_factory.mktemp("clap")), want


def test_clap_audio_and_text_round_trip(clap):
    folder, want = clap
    audio = get_encoder(f"hf-clap:{folder}", "audio")
    text = get_encoder(f"hf-clap:{folder}", "text")
    assert audio.dim == text.dim == 16 and audio.model is text.model
    np.testing.assert_allclose(text.encode(TEXTS, ["x"] * 3), want["text"], rtol=1e-5, atol=1e-6)
    short = [wav(16000, 0.5, 300.0), wav(16000, 0.8, 2000.0)]
    got = audio.encode([wav(16000, 0.5, 300.0, "FLAC")], ["f"])
    assert got.shape == (1, 16) and np.isclose(np.linalg.norm(got), 1, rtol=1e-5)
    # the same tones, computed in memory from the exact float samples the WAVs hold
    samples = [sf.read(io.BytesIO(b), dtype="float32")[0] for b in short]
    with torch.inference_mode():
        m = audio.model
        want_wav = unit(m.get_audio_features(**audio.processor(samples, sampling_rate=16000,
                                                               return_tensors="pt")))
    np.testing.assert_allclose(audio.encode(short, ["a", "b"]), want_wav, rtol=1e-5, atol=1e-6)
    # 44.1 kHz -> 16 kHz; a long clip's random crop has a fixed seed per clip (any batch)
    long = wav(44100, 2.5, 700.0)
    one = audio.encode([long], ["l"])
    np.random.seed(123)  # the crop does not follow the global RNG
    np.testing.assert_allclose(audio.encode([short[0], long], ["a", "l"])[1:], one, atol=1e-6)
    with pytest.raises(ValueError, match=r"^p: encoder 'hf-clap:.*' expects an audio file "
                                         r"\(WAV, FLAC.*\); this is a PNG file: use `pixels`"):
        audio.encode([picture(0)], ["p"])


@pytest.fixture(scope="module")
def xclip(tmp_path_factory):
    torch.manual_seed(3)
    vision = {**SMALL, "image_size": 16, "patch_size": 8, "num_frames": 4,
              "mit_hidden_size": 16, "mit_intermediate_size": 32, "mit_num_attention_heads": 2}
    cfg = tf.XCLIPConfig(text_config=TEXT, vision_config=vision, projection_dim=16,
                         prompt_num_attention_heads=2, prompt_layers=1)
    model = tf.XCLIPModel(cfg).eval()
    # what microsoft/xclip-* ship: a VideoMAE image processor
    proc = tf.VideoMAEImageProcessor(size={"shortest_edge": 16},
                                     crop_size={"height": 16, "width": 16})
    with torch.inference_mode():
        want = unit(model.get_text_features(**text_inputs(padding=True)))
    return save(model, proc, tmp_path_factory.mktemp("xclip")), model, want


def test_video_frames_are_spread_over_the_clip():
    frames = read_video_frames(video(20), "v", "hf-xclip:x", 4)  # centres of 4 segments
    grey = [np.asarray(f.convert("L"), np.float32).mean() for f in frames]
    np.testing.assert_allclose(grey, [20, 70, 120, 170], atol=6)
    short = read_video_frames(video(2), "v", "hf-xclip:x", 4)
    assert len(short) == 4 and short[0] is short[1] and short[2] is short[3]
    with pytest.raises(ValueError, match=r"^w: encoder 'hf-xclip:x' expects a video file "
                                         r"\(MP4, .*\); this is a WAV file: use `logmel`"):
        read_video_frames(wav(16000, 0.1, 440.0), "w", "hf-xclip:x", 4)
    with pytest.raises(ValueError, match=r"^c: unreadable video \("):
        read_video_frames(video(5)[:300], "c", "hf-xclip:x", 4)


def test_xclip_video_and_text_round_trip(xclip):
    folder, model, want = xclip
    vid = get_encoder(f"hf-xclip:{folder}", "video")
    text = get_encoder(f"hf-xclip:{folder}", "text")
    np.testing.assert_allclose(text.encode(TEXTS, ["x"] * 3), want, rtol=1e-5, atol=1e-6)
    clips = [video(20), video(9)]
    got = vid.encode(clips, ["a", "b"])
    assert got.shape == (2, 16) and vid.dim == 16
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, rtol=1e-5)
    frames = [read_video_frames(c, "x", "x", 4) for c in clips]
    px = torch.stack([vid.processor(images=f, return_tensors="pt")["pixel_values"].reshape(
        4, 3, 16, 16) for f in frames])
    with torch.inference_mode():
        np.testing.assert_allclose(got, unit(model.get_video_features(pixel_values=px)),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prefix, modality, message", [
    ("hf-clap", "image", r"CLAP encodes text and audio \(\['audio'\]\), not 'image'"),
    ("hf-xclip", "audio", r"X-CLIP encodes text and video \(\['video'\]\), not 'audio'"),
    ("hf-siglip", "video", r"SigLIP encodes text and image files \(\['depth', .*\]\), not "
                           r"'video'"),
])
def test_a_modality_without_a_tower_is_refused_before_loading(prefix, modality, message):
    """Refused from the spec alone: the folder is not even looked at (it does not exist)."""
    with pytest.raises(ValueError, match=rf"encoder '{prefix}:/nope/model': {message}"):
        get_encoder(f"{prefix}:/nope/model", modality)


def test_missing_wrong_or_pickled_folders_are_clear_errors(tmp_path, siglip, clap):
    for prefix, modality in (("hf-siglip", "image"), ("hf-clap", "audio"),
                             ("hf-xclip", "video")):
        with pytest.raises(FileNotFoundError, match=rf"encoder '{prefix}:/nope/m': /nope/m does "
                                                    r"not exist; expected a local folder .*"
                                                    r"preprocessor_config\.json"):
            get_encoder(f"{prefix}:/nope/m", modality)
    with pytest.raises(ValueError, match=r"siglip\d+ holds a 'siglip' model, expected "
                                         r"\['clap'\]"):
        get_encoder(f"hf-clap:{siglip[0]}", "text")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/config.json").write_text(json.dumps({"model_type": "xclip"}))
    (tmp_path / "bin/pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors \(found only pickled "
                                                r"\['pytorch_model\.bin'\]"):
        get_encoder(f"hf-xclip:{tmp_path / 'bin'}", "video")
    shutil.copytree(clap[0], tmp_path / "noproc")
    (tmp_path / "noproc/preprocessor_config.json").unlink()
    assert get_encoder(f"hf-clap:{tmp_path / 'noproc'}", "text").dim == 16  # text needs none
    with pytest.raises(FileNotFoundError, match=r"noproc has no preprocessor_config\.json "
                                                r"\(needed for audio\)"):
        get_encoder(f"hf-clap:{tmp_path / 'noproc'}", "audio")
