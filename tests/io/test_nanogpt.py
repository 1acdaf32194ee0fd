"""nanoGPT checkpoints: ``ckpt.pt`` (its real layout) loads weights-only, with logits equal to nanoGPT's own model."""

from __future__ import annotations

import math
import pickle
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.nn import functional as F

from lightning_gpt.data.vocab_tokenizer import VocabTokenizer
from lightning_gpt.io.checkpoint import find_checkpoint, load_checkpoint
from lightning_gpt.io.nanogpt import read_meta
from tests.helpers import user_error, write_corpus

# --- nanoGPT's model.py, restated for the test -----------------------------------------------------------------------
# Source: karpathy/nanoGPT, model.py at commit 3adf61e1 ("Update README to mention nanochat and deprecation"). Only
# what the test needs: the module tree (hence the state-dict names), LayerNorm with optional bias (eps 1e-5), attention
# through scaled_dot_product_attention (is_causal) or the masked "slow path" with its `bias` buffer, nn.GELU() (exact),
# the tied head, and `forward(idx, targets)` returning the logits of every position. Init and the optimizer are not
# restated.


class _LayerNorm(nn.Module):
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class _CausalSelfAttention(nn.Module):
    def __init__(self, c, flash):
        super().__init__()
        self.c_attn = nn.Linear(c["n_embd"], 3 * c["n_embd"], bias=c["bias"])
        self.c_proj = nn.Linear(c["n_embd"], c["n_embd"], bias=c["bias"])
        self.n_head, self.n_embd, self.flash = c["n_head"], c["n_embd"], flash
        if not flash:
            mask = torch.tril(torch.ones(c["block_size"], c["block_size"]))
            self.register_buffer("bias", mask.view(1, 1, c["block_size"], c["block_size"]))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            y = F.softmax(att, dim=-1) @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class _MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_fc = nn.Linear(c["n_embd"], 4 * c["n_embd"], bias=c["bias"])
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * c["n_embd"], c["n_embd"], bias=c["bias"])

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class _Block(nn.Module):
    def __init__(self, c, flash):
        super().__init__()
        self.ln_1 = _LayerNorm(c["n_embd"], bias=c["bias"])
        self.attn = _CausalSelfAttention(c, flash)
        self.ln_2 = _LayerNorm(c["n_embd"], bias=c["bias"])
        self.mlp = _MLP(c)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, c, flash=True):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(c["vocab_size"], c["n_embd"]),
                wpe=nn.Embedding(c["block_size"], c["n_embd"]),
                drop=nn.Dropout(c["dropout"]),
                h=nn.ModuleList([_Block(c, flash) for _ in range(c["n_layer"])]),
                ln_f=_LayerNorm(c["n_embd"], bias=c["bias"]),
            )
        )
        self.lm_head = nn.Linear(c["n_embd"], c["vocab_size"], bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))  # the `targets is not None` branch: every position


# ----------------------------------------------------------------------------------------------------------------------


def model_args(**over):
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=24, bias=True, vocab_size=40, dropout=0.1)
    args.update(over)
    return args


def save_nanogpt(folder: Path, args: dict, compiled: bool = True, flash: bool = True, seed: int = 0) -> NanoGPT:
    """Write ``folder/ckpt.pt`` in the layout of nanoGPT's train.py (weights, AdamW state, model_args, iter_num,
    best_val_loss as a tensor, the config dict); random non-trivial weights, biases and LayerNorms included."""
    torch.manual_seed(seed)
    model = NanoGPT(args, flash=flash)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))  # LayerNorm gains
            else:
                p.normal_(0, 0.2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randint(0, args["vocab_size"], (2, 8))).square().mean().backward()
    opt.step()  # an optimizer state with real tensors in it, as after training
    state = model.state_dict()
    if compiled:  # torch.compile'd runs save the OptimizedModule's state dict
        state = {f"_orig_mod.{k}": v for k, v in state.items()}
    config = {"dataset": "shakespeare_char", "batch_size": 12, "learning_rate": 1e-3, "compile": compiled}
    checkpoint = {
        "model": state,
        "optimizer": opt.state_dict(),
        "model_args": args,
        "iter_num": 250,
        "best_val_loss": torch.tensor(1.4697),
        "config": config,
    }
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, folder / "ckpt.pt")
    return model.eval()


def write_meta(folder: Path, chars: str) -> Path:
    """nanoGPT's data/shakespeare_char/prepare.py meta.pkl for these characters."""
    chars = sorted(set(chars))
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}
    (folder / "meta.pkl").write_bytes(pickle.dumps(meta))
    return folder / "meta.pkl"


CHARS = "\n abcdefghijklmnopqrstuvwxyzTHEND.,;:!?'"  # 40 distinct characters


@pytest.mark.parametrize(
    "compiled, flash, bias",
    [(True, True, True), (False, False, True), (True, True, False)],
    ids=["compiled", "mask", "nobias"],
)
def test_logits_equal_nanogpts_own_model(tmp_path, compiled, flash, bias):
    args = model_args(bias=bias, vocab_size=len(set(CHARS)))
    ref = save_nanogpt(tmp_path, args, compiled=compiled, flash=flash)
    write_meta(tmp_path, CHARS)
    model, tokenizer = load_checkpoint(tmp_path / "ckpt.pt")  # weights-only: no trust needed
    assert model.config.activation == "gelu" and model.config.bias is bias
    assert isinstance(tokenizer, VocabTokenizer) and tokenizer.vocab_size == args["vocab_size"]
    idx = torch.randint(0, args["vocab_size"], (3, args["block_size"]))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), ref(idx), rtol=0, atol=1e-5)


def test_the_meta_vocabulary_encodes_as_nanogpt(tmp_path):
    tok = read_meta(write_meta(tmp_path, CHARS))
    chars = sorted(set(CHARS))
    stoi = {c: i for i, c in enumerate(chars)}
    text = "the cat sat. THE END!\n"
    assert tok.encode(text) == [stoi[c] for c in text]  # nanoGPT: encode = lambda s: [stoi[c] for c in s]
    assert tok.decode(tok.encode(text)) == text
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (None, None, None)
    with pytest.raises(ValueError, match="'Z' is not in this model's vocabulary"):
        tok.encode("Zebra")


def test_a_meta_pkl_with_code_is_refused_and_never_runs(tmp_path):
    save_nanogpt(tmp_path, model_args())
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / "meta.pkl").write_bytes(pickle.dumps({"stoi": {"a": 0}, "itos": {0: "a"}, "x": Evil()}))
    with pytest.raises(ValueError, match=r"pathlib\.Path\.touch|pathlib\.\S+touch") as err:
        load_checkpoint(tmp_path / "ckpt.pt")
    assert "meta.pkl" in str(err.value) and "--tokenizer" in str(err.value)
    assert not marker.exists()


def test_oversized_model_args_are_one_paragraph_and_fast(tmp_path):
    save_nanogpt(tmp_path, model_args())
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    ckpt["model_args"]["n_layer"] = 100000
    ckpt["model_args"]["block_size"] = 10**9
    torch.save(ckpt, tmp_path / "ckpt.pt")
    write_meta(tmp_path, CHARS)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"n_layer=100000 but the weights have 2") as err:
        load_checkpoint(tmp_path / "ckpt.pt")
    assert time.perf_counter() - start < 5
    assert "block_size=1000000000 but the weights have 24" in str(err.value)


def test_gpt2_bpe_without_meta_or_a_clear_error(tmp_path):
    save_nanogpt(tmp_path, model_args(vocab_size=50304, n_embd=8, n_head=2, n_layer=1, block_size=8))
    try:
        model, tokenizer = load_checkpoint(tmp_path / "ckpt.pt")
    except ValueError as err:  # tiktoken's gpt2 file is not cached on this machine (no network)
        assert "meta.pkl" in str(err) and "tiktoken:gpt2" in str(err) and "--tokenizer" in str(err)
        return
    assert tokenizer.vocab_size == 50257 and model.config.vocab_size == 50257
    assert model.config.padded_vocab_size == 50304  # nanoGPT's padded table, rows kept


def test_an_explicit_tokenizer_wins_and_pads_the_table(tmp_path):
    save_nanogpt(tmp_path, model_args(vocab_size=64))
    write_meta(tmp_path, CHARS)  # 40 characters: ignored, the given tokenizer wins
    given = VocabTokenizer(sorted(set(CHARS + "ABCFGI")))
    model, tokenizer = load_checkpoint(tmp_path / "ckpt.pt", tokenizer=given)
    assert tokenizer.fingerprint() == given.fingerprint()
    assert (model.config.vocab_size, model.config.padded_vocab_size) == (46, 64)
    with pytest.raises(ValueError, match="has 70 ids but the model"):
        load_checkpoint(tmp_path / "ckpt.pt", tokenizer=VocabTokenizer([chr(0x100 + i) for i in range(70)]))


def test_generate_from_a_nanogpt_out_dir_is_nanogpts_greedy_decode(tmp_path, cli):
    args = model_args(vocab_size=len(set(CHARS)))
    ref = save_nanogpt(tmp_path / "out", args)
    tok = read_meta(write_meta(tmp_path / "out", CHARS))
    assert find_checkpoint(str(tmp_path / "out")) == str(tmp_path / "out" / "ckpt.pt")
    prompt = "the "
    idx = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():  # nanoGPT's generate() at temperature -> 0: argmax of the last position, 10 times
        for _ in range(10):
            idx = torch.cat([idx, ref(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    expected = tok.decode(idx[0].tolist())
    result = cli(
        "generate", "--ckpt_path", tmp_path / "out", "--prompt", prompt, "--max_new_tokens", 10, "--temperature", 0
    )
    assert result.code == 0, result
    assert result.out == expected + "\n"


def test_export_of_a_nanogpt_char_model_loads_in_transformers(tmp_path, cli):
    transformers = pytest.importorskip("transformers")
    args = model_args(vocab_size=len(set(CHARS)))
    ref = save_nanogpt(tmp_path / "out", args)
    write_meta(tmp_path / "out", CHARS)
    result = cli("export", "--ckpt_path", tmp_path / "out" / "ckpt.pt", "--output_dir", tmp_path / "hf")
    assert result.code == 0, result
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "the quick fox, THE END.\n"
    ids = hf_tok(text)["input_ids"]
    assert ids == [sorted(set(CHARS)).index(c) for c in text]
    with torch.no_grad():
        x = torch.tensor([ids])
        torch.testing.assert_close(hf(x).logits, ref(x), rtol=0, atol=1e-5)


def test_fit_init_from_a_nanogpt_checkpoint(tmp_path, cli):
    corpus = write_corpus(tmp_path / "corpus.txt")
    chars = "".join(sorted(set(corpus.read_text())))
    args = model_args(vocab_size=len(chars), block_size=16)
    ref = save_nanogpt(tmp_path / "out", args)
    write_meta(tmp_path / "out", chars)
    root = tmp_path / "run"
    result = cli(
        "fit",
        "--model.init_from", tmp_path / "out" / "ckpt.pt",
        "--data.source", corpus,
        "--data.cache_dir", tmp_path / "cache",
        "--data.batch_size", 2,
        "--trainer.max_steps", 1,
        "--trainer.default_root_dir", root,
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.limit_val_batches", 0,
        "--trainer.accelerator", "cpu",
        "--model.learning_rate", 1e-9,
        "--sampling.every_n_steps", 100000,
    )  # fmt: skip
    assert result.code == 0, result
    model, tokenizer = load_checkpoint(root / "checkpoints" / "last.ckpt")
    assert isinstance(tokenizer, VocabTokenizer) and model.config.activation == "gelu"
    idx = torch.tensor([tokenizer.encode("the quick brown")])
    with torch.no_grad():  # lr 1e-9: the weights are still nanoGPT's
        torch.testing.assert_close(model(idx), ref(idx), rtol=0, atol=1e-5)


def test_a_nanogpt_checkpoint_loads_in_a_fresh_process_without_trust(tmp_path):
    """The real layout needs nothing beyond weights-only loading (no trust flag, no allow-listed globals)."""
    import subprocess

    save_nanogpt(tmp_path, model_args())
    code = f"import torch; c = torch.load({str(tmp_path / 'ckpt.pt')!r}, weights_only=True); print(sorted(c))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(["best_val_loss", "config", "iter_num", "model", "model_args", "optimizer"])


def test_damaged_meta_and_foreign_meta_are_one_paragraph(tmp_path, cli):
    save_nanogpt(tmp_path, model_args())
    (tmp_path / "meta.pkl").write_bytes(b"\x80\x04garbage")
    user_error(
        cli("generate", "--ckpt_path", tmp_path / "ckpt.pt", "--prompt", "a"), "meta.pkl", "not a readable pickle"
    )
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 3, "stoi": {"a": 0}, "itos": {0: "b"}}))
    user_error(cli("generate", "--ckpt_path", tmp_path / "ckpt.pt", "--prompt", "a"), "not inverse mappings")
