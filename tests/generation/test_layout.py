"""How a decode step reads the linear weights on CPU (``lightning_gpt.generation.layout``): the generation's own
``(in, out)`` copies, whose memory is reused by the model's next generation, and ``MatVecMode`` for the compiled
batch-1 step (no copy)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_gpt import GPT, GPTConfig
from lightning_gpt.generation import generate
from lightning_gpt.generation.layout import MatVecMode, decode_weights, free_decode_weights, release_decode_weights
from lightning_gpt.generation.sampling import DecodeState
from lightning_gpt.generation.step import VERIFY_INDUCTOR_OPTIONS

# Above DECODE_LAYOUT_MIN_BYTES of linear weights (10.5 MB), so an eager generation takes its own weight layout.
STREAMED = GPTConfig(vocab_size=4096, block_size=64, n_layer=2, n_head=4, n_embd=256)


def test_matvec_mode_gives_linear_values_for_up_to_eight_rows_and_leaves_other_calls_alone():
    torch.manual_seed(0)
    w, b = torch.randn(300, 64), torch.randn(300)
    one, few, many = torch.randn(1, 1, 64), torch.randn(1, 5, 64), torch.randn(9, 64)
    with MatVecMode():
        got = F.linear(one, w, b)
        got_no_bias = F.linear(one, w)
        got_few = F.linear(few, w, bias=b)
        got_many = F.linear(many, w, bias=b)
    assert got.shape == (1, 1, 300) and got_few.shape == (1, 5, 300)
    # Against float64 (an independent reference): the reduction differs from MKL's only in the order of the additions.
    torch.testing.assert_close(got.double(), (one.double() @ w.double().T) + b.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_no_bias.double(), one.double() @ w.double().T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_few.double(), (few.double() @ w.double().T) + b.double(), rtol=1e-5, atol=1e-5)
    assert torch.equal(got_many, F.linear(many, w, b))  # more than MATVEC_MAX_ROWS rows: F.linear itself, bit for bit


def test_matvec_mode_compiled_for_five_rows_matches_float64():
    # The verification step's form: compiled (inductor) with VERIFY_INDUCTOR_OPTIONS, five rows through two layers.
    torch.manual_seed(0)
    w1, w2 = torch.randn(96, 64), torch.randn(64, 96)

    def two_layers(x: torch.Tensor) -> torch.Tensor:
        with MatVecMode():
            return F.linear(F.gelu(F.linear(F.layer_norm(x, (64,)), w1)), w2)

    x = torch.randn(1, 5, 64)
    got = torch.compile(two_layers, fullgraph=True, dynamic=False, options=VERIFY_INDUCTOR_OPTIONS)(x)
    want = F.linear(F.gelu(F.linear(F.layer_norm(x.double(), (64,)), w1.double())), w2.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_compiled_batch_one_takes_no_copy_and_gives_the_eager_tokens():
    # Compiled at batch 1 on CPU the step reads the model's own weights through MatVecMode; the graph capture (the
    # "eager" backend: dynamo's full-graph capture without inductor's code generation) gives the eager tokens.
    torch.manual_seed(0)
    model = GPT(STREAMED).eval()
    prompt = torch.randint(0, STREAMED.vocab_size, (1, 5))
    assert DecodeState(model, prompt, None, 32).weights is not None  # eager: the copy
    assert DecodeState(model, prompt, None, 32, compile="eager").weights is None  # compiled, batch 1: none
    assert DecodeState(model, prompt.repeat(2, 1), None, 32, compile="eager").weights is not None  # batch 2: the copy
    eager = generate(model, prompt, max_new_tokens=32)
    assert torch.equal(generate(model, prompt, max_new_tokens=32, compile="eager"), eager)


def test_a_speculative_target_verifies_on_its_own_weights_up_to_eight_tokens():
    # Speculative decoding's target feeds k + 1 tokens per round: compiled at batch 1, passes of up to MATVEC_MAX_ROWS
    # tokens run their own compiled step on the model's own weights (no copy); longer or unknown lengths keep the
    # (in, out) copy. Greedy output stays the target's own.
    torch.manual_seed(0)
    model = GPT(STREAMED).eval()
    draft = GPT(GPTConfig(vocab_size=4096, block_size=64, n_layer=1, n_head=2, n_embd=32)).eval()
    prompt = torch.randint(0, STREAMED.vocab_size, (1, 5))
    state = DecodeState(model, prompt, None, 32, compile="eager", verify=4)
    assert state.weights is None and state._verify_fn is not None
    assert DecodeState(model, prompt, None, 32, compile="eager", verify=9).weights is not None
    assert DecodeState(model, prompt, None, 32, compile="eager", verify=True).weights is not None
    alone = generate(model, prompt, max_new_tokens=32)
    assisted = generate(model, prompt, max_new_tokens=32, draft_model=draft, num_draft_tokens=3, compile="eager")
    assert torch.equal(assisted, alone)


def test_a_released_copy_is_reused_with_the_current_values():
    # The memory of a finished generation's copies is the model's next generation's; the values are copied anew, so a
    # weight change in between is seen (never stale), and two live generations never share one set.
    torch.manual_seed(0)
    model = GPT(STREAMED).eval()
    first = decode_weights(model, batch_size=1)
    second = decode_weights(model, batch_size=1)  # the first is still in use: a set of its own
    assert first is not None and second is not None
    assert all(first[k].data_ptr() != second[k].data_ptr() for k in first)
    release_decode_weights(model, first)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    third = decode_weights(model, batch_size=1)
    assert third is not None and all(third[k].data_ptr() == first[k].data_ptr() for k in first)  # reused memory
    for name, w in third.items():
        assert torch.equal(w, model.get_parameter(name)) and w.t().is_contiguous()  # today's values, (in, out)
    release_decode_weights(model, third)
    free_decode_weights(model)
    fresh = decode_weights(model, batch_size=1)
    assert fresh is not None and all(fresh[k].data_ptr() != third[k].data_ptr() for k in fresh)


def test_generate_reuses_the_copy_and_decodes_with_the_new_weights():
    torch.manual_seed(0)
    model = GPT(STREAMED).eval()
    ids = torch.tensor([[1, 2, 3]])
    generate(model, ids, max_new_tokens=32)  # leaves its copies as the model's spare set
    spare = decode_weights(model, batch_size=1)
    assert spare is not None
    ptrs = {k: w.data_ptr() for k, w in spare.items()}
    release_decode_weights(model, spare)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reference = GPT(STREAMED).eval()
    reference.load_state_dict(model.state_dict())  # a fresh model: nothing of the earlier generations can reach it
    assert torch.equal(generate(model, ids, max_new_tokens=32), generate(reference, ids, max_new_tokens=32))
    again = decode_weights(model, batch_size=1)
    assert again is not None and {k: w.data_ptr() for k, w in again.items()} == ptrs  # the same memory throughout
