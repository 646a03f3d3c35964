"""Checkpoint encoders from a local folder: a tiny random CLIP and text model built offline."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from cmcl.encoders import get_encoder

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

