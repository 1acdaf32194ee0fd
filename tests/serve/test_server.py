"""``lightning-gpt serve`` as a client meets it: one real server process on a free loopback port (started once for the
module), spoken to with ``urllib``/``http.client`` and with the official ``openai`` client. Every text is checked
against ``generate_text`` on the same checkpoint in this process."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from lightning_gpt.generation import generate_text
from lightning_gpt.io.checkpoint import load_checkpoint
from tests.serve.conftest import BLOCK_SIZE, Server, running_server

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow  # one server start for the module (~10-30 s on a busy 2-core machine)


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    # No --host: the default must be loopback only (test_default_binding_is_loopback).
    with running_server(tiny_ckpt, tmp_path_factory.mktemp("serve_run"), "--max_batch_size", "8") as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(tiny_ckpt):
    model, tokenizer = load_checkpoint(tiny_ckpt)

    def complete(prompts: list[str], **settings: Any) -> list[dict[str, Any]]:
        return generate_text(model, tokenizer, prompts, **settings)

    complete.tokenizer = tokenizer  # type: ignore[attr-defined]
    return complete


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)


def _listening_address(port: int) -> str:
    """The local address a LISTEN socket on ``port`` is bound to, from /proc/net/tcp (IPv4)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, state = fields[1], fields[3]
        host, hex_port = address.split(":")
        if int(hex_port, 16) == port and state == "0A":
            return ".".join(str(int(host[i : i + 2], 16)) for i in (6, 4, 2, 0))
    raise AssertionError(f"nothing listens on port {port}")


def test_default_binding_is_loopback_and_models_lists_the_model(server, client):
    if Path("/proc/net/tcp").exists():
        assert _listening_address(server.port) == "127.0.0.1"
    assert [m["id"] for m in server.get("/v1/models")["data"]] == ["tiny"]
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the bound address from /proc/net/tcp")
def test_host_flag_binds_every_interface_and_sigterm_stops_every_process(tiny_ckpt, tmp_path):
    with running_server(tiny_ckpt, tmp_path, "--host", "0.0.0.0") as other:
        assert _listening_address(other.port) == "0.0.0.0"
        assert other.get("/v1/models")["data"][0]["id"] == "tiny"
        # SIGTERM to the main process alone (as docker stop or kill sends it): the HTTP process and the model worker
        # go too, soon, and the port is free again. (LitServe handles only Ctrl-C: they used to live on.)
        other.proc.send_signal(signal.SIGTERM)
        assert other.proc.wait(60) == 0
        deadline = time.monotonic() + 20
        while _group_alive(other.proc.pid):
            assert time.monotonic() < deadline, "processes of the server outlived it"
            time.sleep(0.1)
        assert "lightning-gpt serve: stopped." in other.log.read_text()
        with socket.socket() as s:  # nothing listens there any more (connections may linger in TIME_WAIT)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", other.port))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_greedy_completion_equals_generate_text(server, client, reference):
    prompt = "the quick brown"
    expected = reference([prompt], max_new_tokens=24)[0]
    status, body = server.post(
        "/v1/completions", {"model": "tiny", "prompt": prompt, "max_tokens": 24, "temperature": 0}
    )
    assert status == 200, body
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    assert body["choices"][0]["text"] == expected["completion"]
    assert body["choices"][0]["finish_reason"] == {"eos": "stop"}.get(
        expected["finish_reason"], expected["finish_reason"]
    )
    assert body["usage"] == {
        "prompt_tokens": len(prompt),  # a character tokenizer
        "completion_tokens": len(expected["tokens"]),
        "total_tokens": len(prompt) + len(expected["tokens"]),
    }
    # The official client, plain and streaming, says the same.
    out = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0)
    assert out.choices[0].text == expected["completion"] and out.usage.completion_tokens == len(expected["tokens"])
    stream = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected["completion"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("length", "stop")
    assert chunks[-1].usage.completion_tokens == len(expected["tokens"])


def test_stop_strings_echo_n_and_token_prompts(server, client, reference):
    expected = reference(["hello", "JULIET"], max_new_tokens=40, stop=["o", "e "])
    out = client.completions.create(
        model="tiny", prompt=["hello", "JULIET"], max_tokens=40, temperature=0, stop=["o", "e "], n=2, echo=True
    )
    assert [c.index for c in out.choices] == [0, 1, 2, 3]  # prompt-major, as OpenAI numbers choices
    for c in out.choices:
        ref = expected[c.index // 2]
        assert c.text == ref["prompt"] + ref["completion"]
    ids = reference.tokenizer.encode("hello")
    body = client.completions.create(model="tiny", prompt=ids, max_tokens=12, temperature=0)
    assert body.choices[0].text == reference(["hello"], max_new_tokens=12)[0]["completion"]


def test_seeded_sampling_equals_generate_text_with_that_seed(client, reference):
    expected = reference(["ROMEO:"], max_new_tokens=20, do_sample=True, temperature=0.9, top_p=0.95, seed=7)[0]
    out = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=20, temperature=0.9, top_p=0.95, seed=7)
    assert out.choices[0].text == expected["completion"]


def test_predict_equals_generate_text_greedy_beams_and_streaming(server, reference):
    prompts = ["hello", "fox"]
    status, body = server.post("/predict", {"prompt": prompts, "max_new_tokens": 16, "stop": ["z"]})
    assert status == 200, body
    assert body["results"] == reference(prompts, max_new_tokens=16, stop=["z"])
    settings = {"max_new_tokens": 10, "num_beams": 3, "num_return_sequences": 2}
    status, body = server.post("/predict", {"prompt": "dog", **settings})
    assert status == 200, body
    assert body["results"] == reference(["dog"], **settings)
    # Streaming: the pieces add up to the completion; the end gives each sequence's tokens and finish reason.
    events = _sse(server, "/predict", {"prompt": "lazy", "max_new_tokens": 30, "stream": True})
    expected = reference(["lazy"], max_new_tokens=30)[0]
    assert "".join(e.get("text", "") for e in events) == expected["completion"]
    assert [e for e in events if "finish_reason" in e] == [
        {"index": 0, "finish_reason": expected["finish_reason"], "tokens": expected["tokens"]}
    ]


def _sse(server: Server, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    lines = [line for line in response.read().decode().split("\n\n") if line]
    conn.close()
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def _wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_concurrent_requests_are_decoded_in_one_batch_and_each_equals_its_solo_result(server, reference):
    # A long request keeps the worker busy; the six sent meanwhile queue up and are decoded together after it.
    busy = threading.Thread(
        target=server.post, args=("/predict", {"prompt": "a", "max_new_tokens": BLOCK_SIZE - 8}), daemon=True
    )
    busy.start()
    _wait_for(lambda: server.stats()["active_rows"] > 0, "the long request to start")
    requests = [
        {"prompt": p, "max_new_tokens": n}
        for p, n in [("hello", 12), ("the lazy dog", 30), ("R", 5), ("0123", 21), ("fox jumps", 17), ("!", 9)]
    ]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda body: server.post("/predict", body), requests))
    busy.join(120)
    for body, (status, answer) in zip(requests, answers):
        assert status == 200, answer
        assert answer["batch_requests"] == len(requests)  # decoded together ...
        assert answer["results"] == reference([body["prompt"]], max_new_tokens=body["max_new_tokens"])  # ... as alone
    assert server.stats()["max_batch_requests"] >= len(requests)


BAD_REQUESTS = [
    ("/v1/completions", b"{not json", 400, None),
    ("/v1/completions", b"[1, 2]", 400, None),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 4, "frobnicate": 1}, 400, "frobnicate"),
    ("/v1/completions", {"max_tokens": 4}, 400, "prompt"),
    ("/v1/completions", {"prompt": 3}, 400, "prompt"),
    ("/v1/completions", {"prompt": [[1, 2, 10**9]]}, 400, "prompt"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "10"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"prompt": "hi", "temperature": 5}, 400, "temperature"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "hi", "n": 0}, 400, "n"),
    ("/v1/completions", {"prompt": "hi", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 3}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x" * BLOCK_SIZE, "max_tokens": 1}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x" * 1000, "max_tokens": 100}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "n": 17}, 400, "n"),
    ("/v1/completions", {"prompt": "hi", "model": "gpt-4"}, 404, "model"),
    ("/predict", {"prompt": "hi", "temperatur": 0.5}, 400, "temperatur"),
    ("/predict", {"prompt": "hi", "top_p": 2}, 400, "top_p"),
    ("/predict", {"prompt": "hi", "num_beams": 2, "stream": True}, 400, "stream"),
    ("/predict", {"prompt": "hi", "max_new_tokens": BLOCK_SIZE}, 400, "max_new_tokens"),
    ("/predict", {"prompt": ["hi", 5]}, 400, "prompt"),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD_REQUESTS)
def test_a_bad_request_is_a_4xx_naming_the_field_and_the_server_goes_on(server, reference, path, body, status, param):
    got, answer = server.post(
        path, None if isinstance(body, bytes) else body, raw=body if isinstance(body, bytes) else None
    )
    assert got == status, answer
    assert answer["error"]["param"] == param and answer["error"]["message"]
    if param is not None:
        assert param in answer["error"]["message"]
    ok, good = server.post("/v1/completions", {"prompt": "hello", "max_tokens": 3, "temperature": 0})
    assert ok == 200 and good["choices"][0]["text"] == reference(["hello"], max_new_tokens=3)[0]["completion"]


def test_a_body_over_the_size_limit_is_refused_and_the_server_goes_on(server):
    status, answer = server.post("/v1/completions", None, raw=b'{"prompt": "' + b"x" * (5 * 1024 * 1024) + b'"}')
    assert status == 413, answer
    assert server.healthy()


def test_the_openai_client_sees_bad_requests_as_its_own_errors(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt="hi", max_tokens=BLOCK_SIZE)
    assert "max_tokens" in str(err.value) and err.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="hi")


def test_a_streaming_client_that_disconnects_stops_its_generation(server):
    before = server.stats()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = {"prompt": "hello", "max_tokens": BLOCK_SIZE - 8, "temperature": 0, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.read(6) == b"data: "  # the generation is under way
    conn.sock.close()  # the client goes away
    conn.close()
    _wait_for(lambda: server.stats()["cancelled"] == before["cancelled"] + 1, "the server to cancel the request")
    _wait_for(lambda: server.stats()["active_rows"] == 0, "the worker to drop the request's row")
    stopped_at = server.stats()["generated_tokens"]
    time.sleep(1.0)
    assert server.stats()["generated_tokens"] == stopped_at  # nothing more is generated for it
    assert stopped_at - before["generated_tokens"] < BLOCK_SIZE - 8  # it stopped before the end
    assert server.healthy()


def test_a_waiting_client_that_disconnects_stops_its_generation(server):
    before = server.stats()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = {"prompt": "hello", "max_new_tokens": BLOCK_SIZE - 8}
    conn.request("POST", "/predict", json.dumps(body), {"Content-Type": "application/json"})
    _wait_for(lambda: server.stats()["active_rows"] > 0, "the request to start")
    conn.sock.close()
    conn.close()
    _wait_for(lambda: server.stats()["cancelled"] == before["cancelled"] + 1, "the server to cancel the request")
    _wait_for(lambda: server.stats()["active_rows"] == 0, "the worker to drop the request's row")
    assert server.stats()["generated_tokens"] - before["generated_tokens"] < BLOCK_SIZE - 8
