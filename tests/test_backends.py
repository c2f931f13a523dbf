import json
import socket

import pytest
import torch
from scripted import flaky_server
from transformers import GPT2Config, GPT2LMHeadModel

from stepforge.backends import BackendError, make_policy
from stepforge.backends.openai_backend import OpenAIPolicy
from stepforge.backends.server import PolicyServer, serve_in_thread
from stepforge.backends.transformers_backend import TransformersPolicy
from stepforge.worlds.arith.tokenizer import build_tokenizer

PROMPTS = ["40 a-6 b*2 c-4 d+3\n", "7 a+2 b*3\n", "12 a-3 b+4 c*2\na-3=9\n"]


def naive(policy: TransformersPolicy) -> TransformersPolicy:
    return TransformersPolicy(policy.model, policy.tokenizer, reuse_prefix=False)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_prefix_reuse_gives_the_same_samples_as_reencoding(world_policy, temperature):
    a = world_policy.generate(PROMPTS, n=5, temperature=temperature, seed=7, max_new_tokens=60)
    b = naive(world_policy).generate(PROMPTS, n=5, temperature=temperature, seed=7, max_new_tokens=60)
    assert a.texts() == b.texts()
    assert a.cost.generated_tokens == b.cost.generated_tokens
    # the prefix is encoded once instead of n times
    assert b.cost.prompt_tokens == 5 * a.cost.prompt_tokens


def test_prefix_reuse_on_another_architecture():
    tok = build_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    policy = TransformersPolicy(model, tok)
    a = policy.generate(PROMPTS, n=3, seed=1, max_new_tokens=12)
    b = naive(policy).generate(PROMPTS, n=3, seed=1, max_new_tokens=12)
    assert a.texts() == b.texts()


def test_shapes_seed_and_caller_rng(world_policy):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    r1 = world_policy.generate(PROMPTS, n=4, seed=3, max_new_tokens=40)
    after = torch.rand(1)
    assert torch.equal(before, after), "seeded generation must not move the caller's RNG"
    r2 = world_policy.generate(PROMPTS, n=4, seed=3, max_new_tokens=40)
    r3 = world_policy.generate(PROMPTS, n=4, seed=4, max_new_tokens=40)
    assert [len(row) for row in r1.completions] == [4, 4, 4]
    assert r1.texts() == r2.texts() != r3.texts()


def test_stop_at_step_boundary(world_policy):
    res = world_policy.generate(PROMPTS, n=3, stop=["\n"], seed=0, max_new_tokens=30)
    for row in res.completions:
        for c in row:
            assert "\n" not in c.text and c.stop_reason == "\n" and c.finish_reason == "stop"
            assert c.text[0] == "a" or c.text.startswith("b")  # the next tagged step
    assert res.cost.generated_tokens == sum(c.tokens for row in res.completions for c in row)


def test_length_limit_and_chunking(world_policy):
    small = TransformersPolicy(world_policy.model, world_policy.tokenizer, max_batch_rows=4)
    res = small.generate(PROMPTS, n=3, max_new_tokens=3, seed=0)
    assert all(c.finish_reason == "length" and c.tokens == 3 for row in res.completions for c in row)
    full = world_policy.generate(PROMPTS, n=3, max_new_tokens=3, seed=0)
    assert len(res.completions) == 3 and res.cost.forward_passes > full.cost.forward_passes


def test_bad_requests(world_policy):
    with pytest.raises(TypeError):
        world_policy.generate("one string", n=1)
    with pytest.raises(ValueError, match="n must be"):
        world_policy.generate(PROMPTS, n=0)
    with pytest.raises(ValueError, match="unknown backend"):
        make_policy("tgi")


# --- OpenAI-compatible backend against a real HTTP server on 127.0.0.1 -------------------------

@pytest.fixture
def server(world_policy):
    srv = PolicyServer(world_policy)
    serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


def test_openai_backend_matches_local_policy(server, world_policy):
    remote = OpenAIPolicy(server.base_url, "stepforge", prompts_per_request=8)
    res = remote.generate(PROMPTS, n=4, stop=["\n"], max_new_tokens=30, temperature=1.0, seed=11)
    local = world_policy.generate(PROMPTS, n=4, stop=["\n"], max_new_tokens=30, temperature=1.0, seed=11)
    assert res.texts() == local.texts()
    assert res.cost.generated_tokens == local.cost.generated_tokens > 0
    assert res.cost.prompt_tokens == local.cost.prompt_tokens
    assert all(c.stop_reason == "\n" for row in res.completions for c in row)


def test_openai_backend_splits_requests_and_keeps_order(server, world_policy):
    remote = OpenAIPolicy(server.base_url, "stepforge", prompts_per_request=1, concurrency=3)
    res = remote.generate(PROMPTS, n=2, max_new_tokens=40, temperature=0.0)
    local = world_policy.generate(PROMPTS, n=2, max_new_tokens=40, temperature=0.0)
    assert res.texts() == local.texts()


def test_retries_5xx_then_succeeds(world_policy):
    srv, attempts = flaky_server(world_policy, failures=2)
    try:
        remote = OpenAIPolicy(srv.base_url, "stepforge", max_retries=3)
        res = remote.generate(PROMPTS[:1], n=2, max_new_tokens=20, seed=0)
        assert attempts["n"] == 3 and len(res.completions[0]) == 2
    finally:
        srv.shutdown()
        srv.server_close()


def test_persistent_5xx_gives_clear_error(world_policy):
    srv, attempts = flaky_server(world_policy, failures=100, status=500)
    try:
        with pytest.raises(BackendError, match=r"HTTP 500 after 2 attempts"):
            OpenAIPolicy(srv.base_url, "stepforge", max_retries=1).generate(PROMPTS[:1], max_new_tokens=5)
        assert attempts["n"] == 2
    finally:
        srv.shutdown()
        srv.server_close()


def test_garbage_reply_gives_clear_error(world_policy):
    srv, _ = flaky_server(world_policy, failures=100, body=b'{"choices": "not a list"}')
    try:
        with pytest.raises(BackendError, match="choices"):
            OpenAIPolicy(srv.base_url, "stepforge", max_retries=0).generate(PROMPTS[:1], max_new_tokens=5)
    finally:
        srv.shutdown()
        srv.server_close()


def test_unreachable_server_after_retries():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    policy = OpenAIPolicy(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, timeout=2)
    with pytest.raises(BackendError, match=r"127\.0\.0\.1:\d+/v1: server unreachable after 2 attempts"):
        policy.generate(["x"], max_new_tokens=2)


def test_server_rejects_bad_request(server):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(server.base_url + "/completions", data=b'{"prompt": 3}', method="POST",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 400
    assert "prompt" in json.loads(info.value.read())["error"]["message"]


def test_vllm_backend_when_installed(world_policy, tmp_path):
    pytest.importorskip("vllm", reason="vllm is an optional GPU extra")
    from stepforge.backends.vllm_backend import VLLMPolicy

    world_policy.model.save_pretrained(tmp_path)
    world_policy.tokenizer.save_pretrained(tmp_path)
    policy = VLLMPolicy(str(tmp_path), enforce_eager=True)
    res = policy.generate(PROMPTS, n=2, stop=["\n"], max_new_tokens=20, temperature=0.0)
    local = world_policy.generate(PROMPTS, n=2, stop=["\n"], max_new_tokens=20, temperature=0.0)
    assert res.texts() == local.texts()

