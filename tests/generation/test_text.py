"""Text helpers (generate_text, stream_text), PromptDataModule and the JSONL prediction writer."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_gpt import GPT, GPTConfig
from lightning_gpt.data.tokenizers import CharTokenizer
from lightning_gpt.generation import encode_prompts, generate_text, stream_text

PROMPTS = ["to be", "or not", "a", "the question\n"]


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer("abcdefghijklmnopqrstuvwxyz \n.,")


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=32, tie_weights=False))
    with torch.no_grad():
        m.lm_head.weight.mul_(10.0)
        m.lm_head.weight[:, tok.eos_id] -= 1.0  # keep EOS rare so the length/stop paths are exercised
    return m.eval()


def test_generate_text_records_and_batch_equals_single(model, tok):
    results = generate_text(model, tok, PROMPTS, max_new_tokens=12)
    assert [r["prompt"] for r in results] == PROMPTS
    for r in results:
        assert set(r) == {"prompt", "completion", "tokens", "finish_reason"}
        assert r["completion"] == tok.decode(r["tokens"])
        assert r["finish_reason"] in ("length", "eos") and all(isinstance(t, int) for t in r["tokens"])
        if r["finish_reason"] == "length":
            assert len(r["tokens"]) == 12
    singles = [generate_text(model, tok, [p], max_new_tokens=12)[0] for p in PROMPTS]
    assert singles == results
    assert generate_text(model, tok, PROMPTS, max_new_tokens=12, batch_size=3) == results


def test_without_max_new_tokens_generation_fills_the_context(model, tok):
    prompts = ["the cat", "a much longer prompt"]
    results = generate_text(model, tok, prompts, eos_token_id=None)
    longest = max(len(tok.encode(p)) for p in prompts)
    assert all(len(r["tokens"]) == 64 - longest for r in results)
    with pytest.raises(ValueError, match="longer than the model's context"):
        generate_text(model, tok, ["x" * 64])


def test_stop_strings_cut_the_completion(model, tok):
    free = generate_text(model, tok, ["to be"], max_new_tokens=20, eos_token_id=None)[0]
    stop = free["completion"][6:8]
    assert len(stop) == 2 and free["completion"].find(stop) >= 1
    out = generate_text(model, tok, ["to be"], max_new_tokens=20, eos_token_id=None, stop=[stop, "zzzz"])[0]
    assert out["finish_reason"] == "stop"
    assert out["completion"] == free["completion"][: free["completion"].find(stop)]
    assert stop in tok.decode(out["tokens"])  # tokens keep everything generated, up to the completing one
    assert tok.decode(out["tokens"]).endswith(stop)


def test_eos_from_the_tokenizer_by_default(model, tok):
    free = generate_text(model, tok, ["or not"], max_new_tokens=10, eos_token_id=None)[0]
    eos = free["tokens"][3]
    out = generate_text(model, tok, ["or not"], max_new_tokens=10, eos_token_id=eos)[0]
    assert out["finish_reason"] == "eos" and out["tokens"][-1] == eos and len(out["tokens"]) <= 4
    # With the tokenizer's default EOS id, a model that emits it stops there.
    with torch.no_grad():
        saved = model.lm_head.weight[tok.eos_id].clone()
        model.lm_head.weight[tok.eos_id] = model.lm_head.weight[eos] * 2
    try:
        out = generate_text(model, tok, ["or not"], max_new_tokens=10)[0]
    finally:
        with torch.no_grad():
            model.lm_head.weight[tok.eos_id] = saved
    assert out["finish_reason"] == "eos" and out["tokens"][-1] == tok.eos_id
    assert out["completion"] == tok.decode(out["tokens"][:-1])  # special EOS not in the text


def test_stream_text_pieces_concatenate_to_the_completion(model, tok):
    for kwargs in (dict(), dict(stop=["e", "xy"])):
        pieces = list(stream_text(model, tok, "to be", max_new_tokens=15, **kwargs))
        full = generate_text(model, tok, ["to be"], max_new_tokens=15, **kwargs)[0]
        assert "".join(pieces) == full["completion"]
        assert len(pieces) >= 1


def test_sampling_returns_num_return_sequences_per_prompt(model, tok):
    g = torch.Generator().manual_seed(0)
    results = generate_text(model, tok, PROMPTS[:2], max_new_tokens=6, do_sample=True, num_return_sequences=3,
                            generator=g)  # fmt: skip
    assert [r["prompt"] for r in results] == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3


def test_empty_prompt_starts_from_bos(model, tok):
    ids, mask = encode_prompts(tok, ["", "ab"])
    assert ids[0, -1] == tok.bos_id and mask.tolist() == [[0, 1], [1, 1]]
    out = generate_text(model, tok, [""], max_new_tokens=4)
    assert len(out) == 1 and len(out[0]["tokens"]) >= 1
    with pytest.raises(ValueError, match="list of strings"):
        generate_text(model, tok, "ab", max_new_tokens=2)


# ---------------------------------------------------------------------------------------------- predict pieces

lightning = pytest.importorskip("lightning")


def test_prompt_datamodule_reads_text_and_jsonl(tmp_path):
    from lightning_gpt.training.prompts import PromptDataModule, read_prompts

    txt = tmp_path / "p.txt"
    txt.write_text("first\n\nsecond line\\nwith newline\n", encoding="utf-8")
    assert read_prompts(txt) == ["first", "second line\nwith newline"]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "a"}\n{"prompt": "b\\nc", "id": 2}\n', encoding="utf-8")
    assert read_prompts(jl) == ["a", "b\nc"]
    dm = PromptDataModule(path=str(jl), batch_size=1)
    dm.setup("predict")
    assert [b for b in dm.predict_dataloader()] == [["a"], ["b\nc"]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r'needs a string "prompt" field'):
        read_prompts(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="exactly one of path"):
        PromptDataModule()


class _Decoder(lightning.LightningModule):
    def __init__(self, model, tok, fail_at=None):
        super().__init__()
        self.model, self.tok, self.fail_at = model, tok, fail_at

    def predict_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise RuntimeError("boom")
        return generate_text(self.model, self.tok, batch, max_new_tokens=5)


def _trainer(writer):
    return lightning.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[writer])  # fmt: skip


def test_jsonl_prediction_writer(tmp_path, model, tok):
    from lightning_gpt.training.callbacks.prediction_writer import JSONLPredictionWriter
    from lightning_gpt.training.prompts import PromptDataModule

    out = tmp_path / "sub" / "preds.jsonl"
    writer = JSONLPredictionWriter(output_path=str(out))
    _trainer(writer).predict(_Decoder(model, tok), datamodule=PromptDataModule(prompts=PROMPTS, batch_size=3),
                             return_predictions=False)  # fmt: skip
    lines = out.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert records == generate_text(model, tok, PROMPTS, max_new_tokens=5)
    assert list(records[0]) == ["prompt", "completion", "tokens", "finish_reason"]
    assert not (tmp_path / "sub" / "preds.jsonl.tmp").exists()


def test_jsonl_prediction_writer_leaves_no_partial_file(tmp_path, model, tok):
    from lightning_gpt.training.callbacks.prediction_writer import JSONLPredictionWriter
    from lightning_gpt.training.prompts import PromptDataModule

    out = tmp_path / "preds.jsonl"
    out.write_text("old results\n", encoding="utf-8")
    writer = JSONLPredictionWriter(output_path=str(out))
    with pytest.raises(RuntimeError, match="boom"):
        _trainer(writer).predict(_Decoder(model, tok, fail_at=1), datamodule=PromptDataModule(prompts=PROMPTS,
                                 batch_size=2), return_predictions=False)  # fmt: skip
    assert out.read_text(encoding="utf-8") == "old results\n"  # untouched
    assert not (tmp_path / "preds.jsonl.tmp").exists()


class Scripted(GPT):
    """A GPT whose next token is always the next id of ``script`` (for exact stop/length checks)."""

    def __init__(self, vocab_size: int, script: list[int], prompt_len: int) -> None:
        super().__init__(GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=8))
        self.script, self.prompt_len = script, prompt_len

    def forward(self, idx, targets=None, *, start_pos=None, logits_to_keep=0, **kwargs):
        B, T = idx.shape
        nxt = (start_pos or 0) + T - self.prompt_len  # index in the script of the token to predict
        logits = torch.zeros(B, 1, self.config.vocab_size)
        logits[:, :, self.script[min(nxt, len(self.script) - 1)]] = 50.0
        return logits


@pytest.fixture(scope="module")
def bpe():
    from lightning_gpt.data.tokenizers import HFTokenizer

    return HFTokenizer.train(["hello world ab cd the quick brown fox jumps over more text "] * 20, "bpe", 300)


EMOJI = "\U0001f600"  # 4 UTF-8 bytes: 4 byte-level tokens for a tokenizer trained on ASCII


def test_stop_string_spanning_several_byte_tokens_ends_generation_at_once(bpe):
    from lightning_gpt.generation import generate

    text = "ab " + EMOJI + " more text and more text"
    script = bpe.encode(text)
    prompt = bpe.encode("hello")
    k = len(bpe.encode("ab " + EMOJI))  # the step that completes the stop string
    assert k - len(bpe.encode("ab ")) == 4
    model = Scripted(bpe.vocab_size, script, len(prompt))
    out = generate(model, torch.tensor([prompt]), max_new_tokens=20, stop=[EMOJI], tokenizer=bpe, return_dict=True)
    assert out.finish_reasons == ["stop"] and out.new_tokens[0] == script[:k]
    beams = generate(model, torch.tensor([prompt]), max_new_tokens=20, num_beams=2, stop=[EMOJI], tokenizer=bpe,
                     return_dict=True)  # fmt: skip
    assert beams.finish_reasons == ["stop"] and beams.new_tokens[0] == script[:k]
    for stops in ([EMOJI], [EMOJI + " mo"], ["zzz", "b " + EMOJI]):
        r = generate_text(model, bpe, ["hello"], max_new_tokens=20, stop=stops, eos_token_id=None)[0]
        assert r["finish_reason"] == "stop"
        # The step that completes the stop string, counted on the script's own tokens (never by re-encoding text).
        n = next(i for i in range(1, len(script) + 1) if any(s in bpe.decode(script[:i]) for s in stops))
        assert r["tokens"] == script[:n], stops  # no token past the one completing the stop string
        assert r["completion"] == text[: min(text.find(s) for s in stops if s in text)]
        assert bpe.decode(r["tokens"]).startswith(r["completion"])  # tokens and text agree
        assert (
            "".join(stream_text(model, bpe, "hello", max_new_tokens=20, stop=stops, eos_token_id=None))
            == (r["completion"])
        )
