"""GGUF facts read from the headers of the real test models (no weights are loaded)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tightwad.engine.facts_wire import model_facts_from_proto, model_facts_to_proto
from tightwad.engine.model_facts import (
    ModelFacts,
    read_model_facts,
    scan_model_dirs,
    sha256_file,
)
from tightwad.errors import ModelLoadError
from tightwad.fetch_models import MODELS, ensure_model


@pytest.fixture(scope="module")
def facts() -> dict[str, ModelFacts]:
    names = ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
    return {name: read_model_facts(ensure_model(name)) for name in names}


@pytest.mark.parametrize(
    ("name", "arch", "layers", "vocab", "quant"),
    [
        ("smollm2-135m", "llama", 30, 49152, "Q4_1"),
        ("qwen2.5-coder-0.5b", "qwen2", 24, 151936, "Q4_K_M"),
        ("qwen2.5-coder-1.5b", "qwen2", 28, 151936, "Q4_K_M"),
    ],
)
def test_header_facts(
    facts: dict[str, ModelFacts], name: str, arch: str, layers: int, vocab: int, quant: str
) -> None:
    f = facts[name]
    assert (f.architecture, f.n_layers, f.n_vocab, f.quantization) == (arch, layers, vocab, quant)
    assert len(f.layer_bytes) == layers and all(b > 0 for b in f.layer_bytes)
    assert f.size_bytes == ensure_model(name).stat().st_size


def test_qwen_shapes_and_kv_cache_per_token(facts: dict[str, ModelFacts]) -> None:
    f = facts["qwen2.5-coder-1.5b"]
    assert (f.embedding_length, f.n_head, f.n_head_kv, f.context_length) == (1536, 12, 2, 32768)
    # 2 (K and V) * 28 layers * (128 head dim * 2 kv heads) * 2 bytes (f16)
    assert f.kv_bytes_per_token == 2 * 28 * 128 * 2 * 2
    smol = facts["smollm2-135m"]
    assert smol.kv_bytes_per_token == 2 * 30 * (576 // 9) * 3 * 2


@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
def test_tensor_bytes_add_up_to_the_file(facts: dict[str, ModelFacts], name: str) -> None:
    f = facts[name]
    assert f.tensor_bytes == pytest.approx(f.size_bytes, rel=0.03)
    assert f.tensor_bytes < f.size_bytes  # the header and padding are not tensors


def test_tied_embeddings_count_the_embedding_for_the_output(
    facts: dict[str, ModelFacts],
) -> None:
    smol, qwen = facts["smollm2-135m"], facts["qwen2.5-coder-1.5b"]
    assert smol.tied_embeddings and not qwen.tied_embeddings
    assert smol.output_bytes > smol.embedding_bytes  # token_embd copy + output_norm
    untied_sum = sum(qwen.layer_bytes) + qwen.embedding_bytes + qwen.output_bytes
    assert untied_sum == pytest.approx(qwen.size_bytes, rel=0.03)


def test_vocab_fingerprint_pairs_the_qwen_models_only(facts: dict[str, ModelFacts]) -> None:
    draft, target = facts["qwen2.5-coder-0.5b"], facts["qwen2.5-coder-1.5b"]
    assert draft.vocab_fingerprint == target.vocab_fingerprint
    assert facts["smollm2-135m"].vocab_fingerprint != target.vocab_fingerprint
    assert len(target.vocab_fingerprint) == 64


def test_reading_a_header_is_fast() -> None:
    path = ensure_model("qwen2.5-coder-1.5b")
    started = time.perf_counter()
    read_model_facts(path)
    assert time.perf_counter() - started < 2.0


def test_sha256_file_matches_the_published_hash() -> None:
    path = ensure_model("smollm2-135m")
    assert sha256_file(path) == MODELS["smollm2-135m"].sha256


def test_missing_file_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        read_model_facts(tmp_path / "nope.gguf")


def test_text_file_is_not_a_gguf(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_text("this is not a model, just some text that is long enough\n")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        read_model_facts(path)


def test_truncated_copy_is_a_model_load_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(ensure_model("smollm2-135m").read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="truncated"):
        read_model_facts(path)


def test_copy_missing_its_last_tensor_bytes_is_truncated(tmp_path: Path) -> None:
    source = ensure_model("smollm2-135m")
    path = tmp_path / "short.gguf"
    with source.open("rb") as fh:
        path.write_bytes(fh.read(source.stat().st_size - 4096))
    with pytest.raises(ModelLoadError, match="truncated"):
        read_model_facts(path)


def test_scan_reports_good_files_and_errors_without_raising(tmp_path: Path) -> None:
    good = tmp_path / "models" / "smol.gguf"
    good.parent.mkdir()
    good.symlink_to(ensure_model("smollm2-135m"))
    (tmp_path / "models" / "x.gguf").write_text("not a model")
    (tmp_path / "models" / "cut.gguf").write_bytes(good.read_bytes()[:1000])
    (tmp_path / "models" / "notes.txt").write_text("ignored")
    models, errors = scan_model_dirs([tmp_path / "models", tmp_path / "absent"])
    assert [m.n_layers for m in models] == [30]
    reasons = {Path(e.path).name: e.reason for e in errors}
    assert set(reasons) == {"x.gguf", "cut.gguf", "absent"}
    assert "not a GGUF file" in reasons["x.gguf"] and "truncated" in reasons["cut.gguf"]


def test_split_model_is_read_from_its_first_shard(tmp_path: Path) -> None:
    """A split GGUF written with the gguf package reads as one model; later shards fold in."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    for no in range(2):
        writer = gguf.GGUFWriter(tmp_path / f"tiny-{no + 1:05d}-of-00002.gguf", arch="llama")
        writer.add_uint16("split.no", no)
        writer.add_uint16("split.count", 2)
        if no == 0:
            writer.add_block_count(2)
            writer.add_embedding_length(8)
            writer.add_head_count(2)
            writer.add_token_list(["a", "b", "c"])
            writer.add_tensor("token_embd.weight", np.zeros((3, 8), dtype=np.float32))
        writer.add_tensor(f"blk.{no}.attn_q.weight", np.zeros((8, 8), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    models, errors = scan_model_dirs([tmp_path])
    assert errors == []
    (model,) = models
    assert model.layer_bytes == (8 * 8 * 4, 8 * 8 * 4) and model.n_vocab == 3
    assert model.tied_embeddings and model.embedding_bytes == 3 * 8 * 4
    with pytest.raises(ModelLoadError, match="first shard"):
        read_model_facts(tmp_path / "tiny-00002-of-00002.gguf")


def test_model_facts_survive_the_wire(facts: dict[str, ModelFacts]) -> None:
    f = facts["qwen2.5-coder-0.5b"]
    back = model_facts_from_proto(model_facts_to_proto(f))
    assert back == f  # untied and no other tensors: nothing the wire lacks
