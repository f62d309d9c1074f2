"""The Flax BERT encoder (jax_cer.text): strict checkpoint loading, parity against transformers and
sentence-transformers on real MELD sentences, the attention_fn hook with kv_lengths, LoRA."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from safetensors.numpy import save_file
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers, pre_tokenizers, processors

from jax_cer.kernels.loader import interpreting
from jax_cer.parity.tolerances import TOLERANCES
from jax_cer.statedict import StateDictError
from jax_cer.text import (
    BertConfig,
    BertModel,
    SentenceEncoder,
    TextClassifier,
    Tokenizer,
    bert_entries,
    check_right_padded,
    default_checkpoint,
    flash_attention_fn,
    hf_key,
    load_bert,
    state_dict,
)
from jax_cer.text.lora import LoRALinear, LoRAParam, apply_lora, lora_trainable, matches, merge_lora
from jax_cer.training.text import make_text_step

MELD = Path(__file__).resolve().parents[2] / "shared" / "data" / "meld"
TINY = BertConfig(
    vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
    max_position_embeddings=12,
)  # fmt: skip


def _checkpoint_or_skip() -> Path:
    try:
        return default_checkpoint()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def _meld_sentences(n: int) -> list[str]:
    path = MELD / "test_sent_emo.csv"
    if not path.is_file():
        pytest.skip(f"MELD data not found at {path} (../shared/data/meld)")
    with path.open(encoding="utf8") as f:
        rows = list(csv.DictReader(f))
    # a spread of lengths, and lines with the U+0092 control character the tokenizer drops
    picked = rows[: n - 2] + [r for r in rows if "\x92" in r["Utterance"]][:2]
    return [r["Utterance"] for r in picked]


TINY_WORDS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "oh", "my", "god", "you", "got", "the", "job", "!", ",", "?")


def _tiny_tokenizer(path: Path, words=TINY_WORDS) -> None:
    """A BERT-style WordPiece tokenizer.json whose ids fit TINY's vocabulary."""
    tok = HFTokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.save(str(path))


def _tiny_dir(tmp_path: Path, mutate=None, config=None) -> Path:
    _tiny_tokenizer(tmp_path / "tokenizer.json")
    model = BertModel(TINY, rngs=nnx.Rngs(0))
    tensors = state_dict(model)
    tensors["embeddings.position_ids"] = np.arange(TINY.max_position_embeddings, dtype=np.int64)[None]
    if mutate:
        mutate(tensors)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    cfg = {"model_type": "bert", **{k: getattr(TINY, k) for k in TINY.__dataclass_fields__}, **(config or {})}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


# -- strict loading -------------------------------------------------------------------------------
def test_load_round_trip(tmp_path: Path) -> None:
    d = _tiny_dir(tmp_path)
    model = load_bert(d)
    ref = BertModel(TINY, rngs=nnx.Rngs(0))
    for k, v in state_dict(ref).items():
        np.testing.assert_array_equal(state_dict(model)[k], v, err_msg=k)
    ids = jnp.array([[2, 5, 7, 0], [2, 3, 4, 5]])
    mask = jnp.array([[1, 1, 1, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(model(ids, mask), ref(ids, mask))


@pytest.mark.parametrize(
    ("mutate", "config", "error", "match"),
    [
        (
            lambda t: t.pop("encoder.layer.1.output.dense.bias"),
            None,
            StateDictError,
            r"missing keys \(1\): \['encoder.layer.1.output.dense.bias'\]",
        ),
        (
            lambda t: t.update(extra=np.zeros(3, np.float32)),
            None,
            StateDictError,
            r"unexpected keys \(1\): \['extra'\]",
        ),
        (
            lambda t: t.update({"encoder.layer.0.attention.self.query.weight": np.zeros((16, 8), np.float32)}),
            None,
            StateDictError,
            r"encoder.layer.0.attention.self.query.weight: shape \[16, 8\], expected \[16, 16\]",
        ),
        (
            lambda t: t.update({"embeddings.LayerNorm.weight": np.zeros(16, np.int32)}),
            None,
            StateDictError,
            r"embeddings.LayerNorm.weight: dtype int32, expected floating point",
        ),
        (
            lambda t: t.update({"embeddings.position_ids": np.arange(12, dtype=np.int64)[None, ::-1].copy()}),
            None,
            StateDictError,
            r"embeddings.position_ids: is not 0..n-1",
        ),
        (None, {"model_type": "roberta"}, ValueError, r"model_type is 'roberta'"),
        (None, {"hidden_act": "swish"}, ValueError, r"hidden_act 'swish'"),
    ],
)
def test_load_is_strict(tmp_path: Path, mutate, config, error, match) -> None:
    d = _tiny_dir(tmp_path, mutate, config)
    with pytest.raises(error, match=match) as err:
        load_bert(d)
    if error is StateDictError:  # the message names the file
        assert str(err.value).startswith(f"{d / 'model.safetensors'} does not match BertModel:")


def test_load_names_every_problem_at_once(tmp_path: Path) -> None:
    """One StateDictError (a ValueError) lists every offending key, with found vs expected shapes and dtypes."""

    def mutate(t):
        t.pop("pooler.dense.bias")
        t["encoder.layer.0.output.dense.weight"] = np.zeros((16, 23), np.float32)
        t["embeddings.word_embeddings.weight"] = np.zeros((40, 16), np.float16).astype(np.int8)
        t["encoder.layer.1.attention.output.LayerNorm.bias"] = np.full(16, np.nan, np.float32)
        t["cls.predictions.bias"] = np.zeros(40, np.float32)

    with pytest.raises(StateDictError) as err:
        load_bert(_tiny_dir(tmp_path, mutate))
    assert isinstance(err.value, ValueError)
    msg = str(err.value)
    for needle in (
        "missing keys (1): ['pooler.dense.bias']",
        "unexpected keys (1): ['cls.predictions.bias']",
        "encoder.layer.0.output.dense.weight: shape [16, 23], expected [16, 24]",
        "embeddings.word_embeddings.weight: dtype int8, expected floating point",
        "encoder.layer.1.attention.output.LayerNorm.bias: holds 16 NaN/inf values",
    ):
        assert needle in msg, f"{needle!r} not in:\n{msg}"


def test_bert_prefixed_checkpoint_and_optional_pooler(tmp_path: Path) -> None:
    """A ``BertFor...`` save (keys ``bert.*``) loads; the pooler is built exactly when the file has it."""
    ref = BertModel(TINY, rngs=nnx.Rngs(0))
    for sub in ("prefixed", "no_pooler"):
        (tmp_path / sub).mkdir()
    prefixed = _tiny_dir(tmp_path / "prefixed", lambda t: t.update({f"bert.{k}": t.pop(k) for k in list(t)}))
    model = load_bert(prefixed)
    assert model.pooler is not None
    for k, v in state_dict(ref).items():
        np.testing.assert_array_equal(state_dict(model)[k], v, err_msg=k)
    no_pooler = _tiny_dir(tmp_path / "no_pooler", lambda t: [t.pop(k) for k in list(t) if k.startswith("pooler.")])
    model = load_bert(no_pooler)
    assert model.pooler is None and not any(k.startswith("pooler.") for k in state_dict(model))
    with pytest.raises(StateDictError, match=r"missing keys \(2\)") as err:
        load_bert(no_pooler, add_pooling_layer=True)
    assert "'pooler.dense.weight'" in str(err.value) and "'pooler.dense.bias'" in str(err.value)


def test_bert_naming_table() -> None:
    """Every BERT parameter is named by BERT_NAMES; Linear weights are exported transposed to [out, in]."""
    model = BertModel(TINY, rngs=nnx.Rngs(0))
    entries = bert_entries(model)
    keys = [e.key for e in entries]
    assert len(keys) == len(set(keys)) == len(state_dict(model))
    assert hf_key(("encoder", "layer", 0, "attention", "self", "query", "kernel")) == (
        "encoder.layer.0.attention.self.query.weight"
    )
    kernel = np.asarray(model.encoder.layer[0].intermediate.dense.kernel[...])
    np.testing.assert_array_equal(state_dict(model)["encoder.layer.0.intermediate.dense.weight"], kernel.T)
    with pytest.raises(StateDictError, match="no original name for parameter a.b.lora_a"):
        hf_key(("a", "b", "lora_a"))


def test_load_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_bert(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", **TINY.__dict__}))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_bert(tmp_path)


@pytest.mark.parametrize("loader", [load_bert, SentenceEncoder.from_pretrained], ids=["load_bert", "SentenceEncoder"])
@pytest.mark.parametrize(
    ("value", "dtype", "problem"),
    [
        (np.nan, np.float32, "holds 1 NaN/inf values"),
        (np.inf, np.float32, "holds 1 NaN/inf values"),
        (-np.inf, np.float32, "holds 1 NaN/inf values"),
        (1e300, np.float64, "holds values up to 1e+300, beyond float32's range (3.4e+38): they would become inf"),
    ],
)
def test_non_finite_weights_are_refused(tmp_path: Path, loader, value, dtype, problem) -> None:
    """Both loaders go through the fusion models' check: the file and the key are named."""
    key = "encoder.layer.1.attention.self.value.weight"

    def mutate(t):
        t[key] = t[key].astype(dtype)
        t[key][3, 5] = value

    d = _tiny_dir(tmp_path, mutate)
    with pytest.raises(StateDictError) as err:
        loader(d)
    assert str(err.value) == f"{d / 'model.safetensors'} does not match BertModel:\n  {key}: {problem}"


def test_sentence_encoder_loads_tiny_checkpoint(tmp_path: Path) -> None:
    enc = SentenceEncoder.from_pretrained(_tiny_dir(tmp_path))
    assert enc.max_seq_length == TINY.max_position_embeddings and enc.normalize
    emb = enc.embed(["Oh my God, you got the job!", "the job?"])
    assert emb.shape == (2, TINY.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("hidden_size", "16", "hidden_size must be an integer >= 1, got '16' (str)"),
        ("hidden_size", True, "hidden_size must be an integer >= 1, got True (bool)"),
        ("hidden_size", 16.0, "hidden_size must be an integer >= 1, got 16.0 (float)"),
        ("hidden_size", 18, "hidden_size 18 is not a multiple of num_attention_heads 4"),
        ("num_attention_heads", 0, "num_attention_heads must be an integer >= 1, got 0 (int)"),
        ("num_hidden_layers", -1, "num_hidden_layers must be an integer >= 1, got -1 (int)"),
        ("vocab_size", "40", "vocab_size must be an integer >= 1, got '40' (str)"),
        ("intermediate_size", [24], "intermediate_size must be an integer >= 1, got [24] (list)"),
        ("max_position_embeddings", 0, "max_position_embeddings must be an integer >= 1, got 0 (int)"),
        ("type_vocab_size", 2.5, "type_vocab_size must be an integer >= 1, got 2.5 (float)"),
        ("layer_norm_eps", "1e-12", "layer_norm_eps must be a finite number > 0, got '1e-12' (str)"),
        ("layer_norm_eps", float("nan"), "layer_norm_eps must be a finite number > 0, got nan (float)"),
        ("layer_norm_eps", 0, "layer_norm_eps must be a finite number > 0, got 0 (int)"),
        ("hidden_dropout_prob", 1.5, "hidden_dropout_prob must be a number in [0, 1), got 1.5 (float)"),
        (
            "attention_probs_dropout_prob",
            False,
            "attention_probs_dropout_prob must be a number in [0, 1), got False (bool)",
        ),
        ("pad_token_id", 40, "pad_token_id must be an integer in [0, vocab_size 40), got 40 (int)"),
        ("hidden_act", 5, "hidden_act 5 is not supported (one of ['gelu', 'gelu_new', 'gelu_pytorch_tanh', 'relu'])"),
        ("position_embedding_type", "relative_key", "position_embedding_type 'relative_key' is not supported"),
        ("is_decoder", True, "is_decoder is True; decoder/cross-attention BERT is not supported"),
        ("model_type", None, "model_type is None; only 'bert' checkpoints are supported"),
    ],
)
def test_config_json_fields_are_validated(tmp_path: Path, key, value, message) -> None:
    d = _tiny_dir(tmp_path, config={key: value})
    for loader in (load_bert, SentenceEncoder.from_pretrained):
        with pytest.raises(ValueError) as err:
            loader(d)
        assert str(err.value) == f"{d / 'config.json'}: {message}"


def test_config_json_malformed(tmp_path: Path) -> None:
    d = _tiny_dir(tmp_path)
    cfg = d / "config.json"
    good = json.loads(cfg.read_text())
    cases = [
        ('{"model_type": "bert",\n}', "is not valid JSON: Expecting property name enclosed in double quotes: "
         "line 2 column 1 (char 23)"),
        ("", "is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        ("[1, 2]", "must hold a JSON object, got a list"),
        (json.dumps({k: v for k, v in good.items() if k != "num_attention_heads"}),
         "lacks the required key(s) ['num_attention_heads'] (absent or null)"),
        (json.dumps({**good, "vocab_size": None}), "lacks the required key(s) ['vocab_size'] (absent or null)"),
    ]  # fmt: skip
    for text, message in cases:
        cfg.write_text(text)
        with pytest.raises(ValueError) as err:
            load_bert(d)
        assert str(err.value) == f"{cfg} {message}"
    cfg.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match=re.escape(f"{cfg} is not UTF-8 text: 'utf-8' codec can't decode byte 0xff")):
        SentenceEncoder.from_pretrained(d)


def test_config_disagreeing_with_weights_fails_before_allocating(tmp_path: Path) -> None:
    """The file is checked against the abstract model: a huge consistent config allocates nothing."""
    d = _tiny_dir(tmp_path, config={"vocab_size": 2**20, "hidden_size": 2**20})
    with pytest.raises(StateDictError, match=re.escape("embeddings.word_embeddings.weight: shape [40, 16], expected ")):
        load_bert(d)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"version": "1.0",\n  "model": }', "is not valid JSON: Expecting value: line 2 column 12 (char 30)"),
        ("", "is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        ("[1]", "must hold a JSON object, got a list"),
        ("{}", "is not a tokenizers tokenizer.json: Model missing. at line 1 column 2"),
    ],
)
def test_tokenizer_json_malformed(tmp_path: Path, text, message) -> None:
    d = _tiny_dir(tmp_path)
    (d / "tokenizer.json").write_text(text)
    with pytest.raises(ValueError) as err:
        SentenceEncoder.from_pretrained(d)
    assert str(err.value) == f"{d / 'tokenizer.json'} {message}"


def test_tokenizer_json_checks(tmp_path: Path) -> None:
    d = _tiny_dir(tmp_path)
    path = d / "tokenizer.json"
    raw = json.loads(path.read_text())
    padding = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None, "pad_id": 99}
    path.write_text(json.dumps({**raw, "padding": {**padding, "pad_type_id": 0, "pad_token": "[PAD]"}}))
    with pytest.raises(ValueError) as err:
        Tokenizer(path)
    assert str(err.value) == f"{path}: padding.pad_id must be an integer in [0, 14), got 99"
    _tiny_tokenizer(path, TINY_WORDS + tuple(f"w{i}" for i in range(40)))  # 54 tokens, the model has 40
    with pytest.raises(ValueError) as err:
        SentenceEncoder.from_pretrained(d)
    assert str(err.value) == (
        f"{path} has token ids up to 53 but the model's vocab_size is 40: the tokenizer does not belong to this model"
    )
    path.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{path} is missing: the checkpoint directory needs")):
        SentenceEncoder.from_pretrained(d)


def test_empty_or_missing_checkpoint_folder(tmp_path: Path) -> None:
    for loader in (load_bert, SentenceEncoder.from_pretrained):
        with pytest.raises(FileNotFoundError) as err:
            loader(tmp_path)
        assert str(err.value) == (
            f"{tmp_path} is empty: a Hugging Face checkpoint directory holds config.json, model.safetensors and "
            "tokenizer.json"
        )
        with pytest.raises(NotADirectoryError, match="is not a checkpoint directory"):
            loader(tmp_path / "absent")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("sentence_bert_config.json", '{"max_seq_length": "8"}',
         ": max_seq_length must be an integer in [1, max_position_embeddings 12], got '8'"),
        ("sentence_bert_config.json", '{"max_seq_length": 13}',
         ": max_seq_length must be an integer in [1, max_position_embeddings 12], got 13"),
        ("sentence_bert_config.json", "{max_seq_length: 8}",
         " is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        ("modules.json", "[1]", " must hold a JSON list of module objects, got [1]"),
        ("modules.json", '[{"type": 5}]', ": a module's type must be a string, got 5"),
        ("1_Pooling/config.json", '{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}',
         ": pooling modes ['pooling_mode_cls_token']; only mean pooling (pooling_mode_mean_tokens) is implemented"),
        ("1_Pooling/config.json", '{"pooling_mode_mean_tokens": "true"}',
         ": pooling modes must be true or false, got {'pooling_mode_mean_tokens': 'true'}"),
        ("1_Pooling/config.json", "[]", " must hold a JSON object, got a list"),
    ],
)  # fmt: skip
def test_sentence_transformers_files_are_validated(tmp_path: Path, name, text, message) -> None:
    d = _tiny_dir(tmp_path)
    (d / name).parent.mkdir(exist_ok=True)
    (d / name).write_text(text)
    with pytest.raises(ValueError) as err:
        SentenceEncoder.from_pretrained(d)
    assert str(err.value) == f"{d / name}{message}"


def test_tokenizer_and_encoder_arguments(tmp_path: Path) -> None:
    d = _tiny_dir(tmp_path)
    tok = Tokenizer(d / "tokenizer.json")
    assert tok(["oh my god", "job"], pad_to_multiple_of=4)["input_ids"].tolist() == [
        [2, 4, 5, 6, 3, 0, 0, 0],
        [2, 10, 3, 0, 0, 0, 0, 0],
    ]
    assert tok([])["input_ids"].shape == (0, 0)
    for call, message in [
        (lambda: Tokenizer(d / "tokenizer.json", max_length=0), "max_length must be an integer >= 1 or None, got 0"),
        (lambda: tok(["oh"], max_length=1), f"max_length 1 is less than the 2 special tokens {tok.path} adds"),
        (lambda: tok(["oh"], pad_to_multiple_of=0), "pad_to_multiple_of must be an integer >= 1, got 0"),
        (lambda: tok(None), "texts must be a list of strings, got NoneType"),
        (lambda: tok("oh my"), "texts must be a list of strings, got a single str (wrap it in a list)"),
        (lambda: tok(["oh", 5]), "texts[1] is int, not str"),
    ]:  # fmt: skip
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == message
    model = BertModel(TINY, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"^max_seq_length 13 exceeds the model's max_position_embeddings 12$"):
        SentenceEncoder(model, tok, max_seq_length=13)
    with pytest.raises(ValueError, match=r"^max_seq_length must be an integer >= 1 or None, got 0$"):
        SentenceEncoder(model, tok, max_seq_length=0)
    enc = SentenceEncoder(model, tok)
    assert enc.embed([]).shape == (0, TINY.hidden_size)
    with pytest.raises(ValueError, match=r"^batch_size must be an integer >= 1, got 0$"):
        enc.embed(["oh"], batch_size=0)
    with pytest.raises(ValueError, match=r"^texts is empty: hidden_states needs at least one text$"):
        enc.hidden_states([])


def _damaged_minilm(tmp_path: Path) -> Path:
    """A copy of the real checkpoint's small files (the weights linked, never written) to damage."""
    src = _checkpoint_or_skip()
    d = tmp_path / "minilm"
    shutil.copytree(src, d, ignore=shutil.ignore_patterns("model.safetensors"))
    (d / "model.safetensors").symlink_to(src / "model.safetensors")
    return d


def test_real_checkpoint_damaged_config_and_tokenizer(tmp_path: Path) -> None:
    """Damaged config.json / tokenizer.json of all-MiniLM-L6-v2 fail, naming the file, before the weights load."""
    d = _damaged_minilm(tmp_path)
    cfg = d / "config.json"
    good = cfg.read_text()
    cfg.write_text(good.replace('"hidden_size": 384', '"hidden_size": "384"'))
    with pytest.raises(ValueError) as err:
        SentenceEncoder.from_pretrained(d)
    assert str(err.value) == f"{cfg}: hidden_size must be an integer >= 1, got '384' (str)"
    cfg.write_text(good)
    tok = d / "tokenizer.json"
    text = tok.read_text()
    tok.write_text(text[: len(text) // 2])
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(tok))} is not valid JSON: .* line \d+ column \d+ \(char \d+\)$"
    ):
        SentenceEncoder.from_pretrained(d)
    tok.write_text(text.replace('"vocab":{"[PAD]":0', '"vocab":{"[PAD]":"zero"', 1))
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(tok))} is not a tokenizers tokenizer.json: .* line \d+ column \d+$"
    ):
        SentenceEncoder.from_pretrained(d)


def test_right_padding_is_required() -> None:
    with pytest.raises(ValueError, match="right-padded"):
        check_right_padded(np.array([[1, 0, 1]]))
    with pytest.raises(ValueError, match="without any real token"):
        check_right_padded(np.array([[1, 1], [0, 0]]))
    check_right_padded(np.array([[1, 1, 0], [1, 1, 1]]))


# -- parity with the PyTorch model on the real checkpoint -----------------------------------------
@pytest.mark.torch
def test_parity_transformers_and_sentence_transformers() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    st = pytest.importorskip("sentence_transformers")
    path = _checkpoint_or_skip()
    texts = _meld_sentences(12)
    enc = SentenceEncoder.from_pretrained(path)
    assert enc.max_seq_length == 256 and enc.normalize
    states, tok = enc.hidden_states(texts)

    ref_tok = transformers.AutoTokenizer.from_pretrained(str(path))
    batch = ref_tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    np.testing.assert_array_equal(tok["input_ids"], batch["input_ids"].numpy())
    np.testing.assert_array_equal(tok["attention_mask"], batch["attention_mask"].numpy())
    ref = transformers.BertModel.from_pretrained(str(path), attn_implementation="eager").eval()
    with torch.no_grad():
        out = ref(**batch, output_hidden_states=True)
    real = tok["attention_mask"][..., None].astype(bool)
    assert len(states) == len(out.hidden_states) == 7
    for i, (a, r) in enumerate(zip(states, out.hidden_states, strict=True)):
        err = np.abs(np.where(real, a - r.numpy(), 0.0)).max()
        assert err <= TOLERANCES["text_layer"], f"hidden state {i}: max error {err:.2e}"

    emb = enc.embed(texts, batch_size=5)  # several batches, sorted by length, padded to 8
    ref_emb = st.SentenceTransformer(str(path), device="cpu").encode(texts, convert_to_numpy=True)
    assert emb.shape == (len(texts), 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-6)
    assert np.abs(emb - ref_emb).max() <= TOLERANCES["text_end_to_end"]


def test_flash_attention_fn_matches_default(tmp_path: Path) -> None:
    """The Triton kernel's XLA path with kv_lengths gives the default attention's states."""
    d = _tiny_dir(tmp_path)
    base = load_bert(d)
    flash = load_bert(d, attention_fn=flash_attention_fn("xla"))
    ids = jnp.array([[2, 5, 7, 9, 0, 0], [2, 3, 4, 5, 6, 7], [2, 8, 0, 0, 0, 0]])
    mask = (jnp.arange(6) < jnp.array([[4], [6], [2]])).astype(jnp.int32)
    a, b = base(ids, mask), flash(ids, mask)
    real = np.asarray(mask, bool)[..., None]
    # an equivalence of two JAX attention paths, not parity against a reference: a local bound
    assert np.abs(np.where(real, a - b, 0)).max() <= 1e-6
    # padding never reaches the real tokens: changing pad ids changes nothing
    c = base(jnp.where(mask == 1, ids, 17), mask)
    assert np.abs(np.where(real, a - c, 0)).max() <= 1e-6


@pytest.mark.torch
def test_flash_attention_interpreted_kernel(tmp_path: Path) -> None:
    """The Triton kernel itself (CPU interpreter) inside the encoder, padding as kv_lengths."""
    if not interpreting():
        pytest.skip("TRITON_INTERPRET is not 1 in this process")
    d = _tiny_dir(tmp_path)
    base, flash = load_bert(d), load_bert(d, attention_fn=flash_attention_fn("interpret"))
    ids = jnp.array([[2, 5, 7, 9, 0, 0], [2, 3, 4, 5, 6, 7]])
    mask = (jnp.arange(6) < jnp.array([[4], [6]])).astype(jnp.int32)
    real = np.asarray(mask, bool)[..., None]
    assert np.abs(np.where(real, base(ids, mask) - flash(ids, mask), 0)).max() <= 1e-5


# -- LoRA -----------------------------------------------------------------------------------------
def _tiny_classifier() -> TextClassifier:
    return TextClassifier(BertModel(TINY, rngs=nnx.Rngs(0)), 3, rngs=nnx.Rngs(1))


def test_lora_targets_init_and_scaling() -> None:
    model = _tiny_classifier()
    wrapped = apply_lora(model, ["query", "output.dense"], rank=4, alpha=8, rslora=True, rngs=nnx.Rngs(2))
    # PEFT's suffix rule: "output.dense" hits both the attention output and the FFN output
    assert len(wrapped) == 2 * 3
    assert "encoder.encoder.layer.0.attention.output.dense" in wrapped
    assert "encoder.encoder.layer.1.output.dense" in wrapped
    assert matches(("a", "attention", "output", "dense"), "output.dense")
    assert not matches(("a", "xoutput", "dense"), "output.dense")
    layer = model.encoder.encoder.layer[0].attention.self.query
    assert isinstance(layer, LoRALinear)
    assert layer.scaling == pytest.approx(8 / 2)  # alpha / sqrt(r)
    a = np.asarray(layer.lora_a[...])
    assert a.shape == (16, 4) and np.abs(a).max() <= 1 / np.sqrt(16) and np.abs(a).max() > 0
    assert not np.asarray(layer.lora_b[...]).any()
    plain = apply_lora(_tiny_classifier(), "value", rank=4, alpha=8, rngs=nnx.Rngs(2))
    assert len(plain) == 2
    with pytest.raises(ValueError, match="no nnx.Linear matches"):
        apply_lora(_tiny_classifier(), ["q_proj"], rngs=nnx.Rngs(0))


def test_lora_merged_equals_unmerged_and_only_lora_trains() -> None:
    model = _tiny_classifier()
    apply_lora(model, ["query", "value"], rank=4, alpha=8, dropout=0.05, rslora=True, rngs=nnx.Rngs(2))
    ids = jnp.array([[2, 5, 7, 9, 0, 0], [2, 3, 4, 5, 6, 7]])
    mask = (jnp.arange(6) < jnp.array([[4], [6]])).astype(jnp.int32)
    before = nnx.state(model, nnx.All(nnx.Param, nnx.Not(lora_trainable("classifier"))))
    tx = optax.chain(optax.clip_by_global_norm(0.3), optax.sgd(0.5))
    step, params, frozen = make_text_step(model, lora_trainable("classifier"), tx)
    names = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}
    assert all("lora_" in n or n.startswith("classifier/") for n in names), names
    assert len(names) == 2 * 2 * 2 + 2  # 2 layers x (q, v) x (A, B) + head kernel and bias
    opt = tx.init(params)
    for i in range(3):
        params, opt, _ = step(params, opt, frozen, ids, mask, jnp.array([0, 2]), jnp.ones(2), jax.random.key(i))
    nnx.update(model, params)
    after = nnx.state(model, nnx.All(nnx.Param, nnx.Not(lora_trainable("classifier"))))
    for (p, x), (_, y) in zip(jax.tree.leaves_with_path(before), jax.tree.leaves_with_path(after), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=str(p))  # the base is untouched
    b = np.asarray(model.encoder.encoder.layer[0].attention.self.query.lora_b[...])
    assert np.abs(b).max() > 0  # B moved away from 0
    model.eval()
    unmerged = model(ids, mask)
    merge_lora(model)
    assert not jax.tree.leaves(nnx.state(model, LoRAParam))
    assert isinstance(model.encoder.encoder.layer[0].attention.self.query, nnx.Linear)
    np.testing.assert_allclose(model(ids, mask), unmerged, atol=1e-6)


def test_classifier_pooling_options() -> None:
    ids = jnp.array([[2, 5, 7, 0], [2, 3, 4, 5]])
    mask = jnp.array([[1, 1, 1, 0], [1, 1, 1, 1]])
    enc = BertModel(TINY, rngs=nnx.Rngs(0))
    mean = TextClassifier(enc, 5, rngs=nnx.Rngs(1))
    cls = TextClassifier(enc, 5, pooling="cls", rngs=nnx.Rngs(1))
    assert mean(ids, mask).shape == cls(ids, mask).shape == (2, 5)
    # the classifier sees mean(h over real tokens) / tanh(pooler(h[CLS])): recompute both by hand
    h = enc(ids, mask)
    m = np.asarray(mask, np.float32)[..., None]
    pooled = (np.asarray(h) * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(mean(ids, mask), mean.classifier(jnp.asarray(pooled)), atol=1e-6)
    np.testing.assert_allclose(cls(ids, mask), cls.classifier(enc.pooler(h)), atol=1e-6)
    with pytest.raises(ValueError, match="pooling='cls' needs the encoder's pooler"):
        TextClassifier(BertModel(TINY, add_pooling_layer=False, rngs=nnx.Rngs(0)), 5, pooling="cls", rngs=nnx.Rngs(1))


@pytest.mark.parametrize(
    ("dtype", "value", "problem"),
    [
        (jnp.float16, 1e5, "holds values up to 1e+05, beyond float16's range (6.55e+04): they would become inf"),
        (jnp.bfloat16, 1e300, "holds values up to 1e+300, beyond bfloat16's range (3.39e+38): they would become inf"),
    ],
)
def test_weights_beyond_a_16_bit_models_range_are_refused(tmp_path: Path, dtype, value, problem) -> None:
    """A model loaded in 16 bits checks the weights against its own dtype's range, not float32's."""
    key = "encoder.layer.0.output.dense.weight"

    def mutate(t):
        t[key] = t[key].astype(np.float64)
        t[key][1, 2] = value

    d = _tiny_dir(tmp_path, mutate)
    with pytest.raises(StateDictError) as err:
        load_bert(d, dtype=dtype)
    assert str(err.value) == f"{d / 'model.safetensors'} does not match BertModel:\n  {key}: {problem}"
