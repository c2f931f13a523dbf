"""A minimal OpenAI-compatible server (``/v1/completions``, ``/v1/models``) over any Policy.

Stdlib ``http.server`` only: it exists to serve the built-in world's policy to judge and
labeling pipelines (and to test the OpenAI backend against a real HTTP server), not to
replace vLLM. Requests are served one at a time through the policy.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from stepforge.backends.base import Policy
from stepforge.tasks import Chat


class ModelNotFound(LookupError):
    """The request names a model this server does not serve."""


class CompletionsHandler(BaseHTTPRequestHandler):
    server: PolicyServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet by default
        if self.server.verbose:
            super().log_message(format, *args)

    def send_json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status: int, message: str) -> None:
        self.send_json(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self.send_json(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model"}]})
        else:
            self.error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        route = self.path.rstrip("/")
        if route not in ("/v1/completions", "/v1/chat/completions"):
            self.error(404, f"no route {self.path}")
            return
        try:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            self.server.check_model(body)
            reply = self.server.complete(body) if route == "/v1/completions" else self.server.chat(body)
        except ModelNotFound as err:
            self.send_json(404, {"error": {"message": str(err), "type": "invalid_request_error",
                                           "code": "model_not_found"}})
            return
        except (ValueError, TypeError, KeyError) as err:
            self.error(400, str(err))
            return
        self.send_json(200, reply)


class PolicyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, policy: Policy, host: str = "127.0.0.1", port: int = 0, model_name: str = "stepforge",
                 handler: type[CompletionsHandler] = CompletionsHandler, verbose: bool = False) -> None:
        super().__init__((host, port), handler)
        self.policy = policy
        self.model_name = model_name
        self.verbose = verbose
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def check_model(self, body: dict) -> None:
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise ModelNotFound(f"The model {model!r} does not exist; this server serves {self.model_name!r}")

    def _generate(self, body: dict, prompts: list) -> tuple[Any, int]:
        """Run one request through the policy: its stop, n, token limit, temperature and
        seed. With one prompt the request's seed is that prompt's seed, exactly as a local call
        with per-prompt seeds (stepforge.seeds), so served and local samples agree."""
        stop = body.get("stop")
        stop = [stop] if isinstance(stop, str) else (stop or [])
        n = int(body.get("n", 1))
        seed = body.get("seed")
        if seed is not None and not isinstance(seed, int):
            raise ValueError("'seed' must be an integer")
        seeds = [seed] if seed is not None and len(prompts) == 1 else seed
        with self._lock:
            result = self.policy.generate(prompts, n=n, stop=stop, max_new_tokens=int(body.get("max_tokens", 16)),
                                          temperature=float(body.get("temperature", 1.0)), seed=seeds)
        return result, n

    def _reply(self, kind: str, prefix: str, choices: list[dict], result) -> dict:
        usage = {"prompt_tokens": result.cost.prompt_tokens, "completion_tokens": result.cost.generated_tokens,
                 "total_tokens": result.cost.prompt_tokens + result.cost.generated_tokens}
        return {"id": f"{prefix}-{uuid.uuid4().hex[:12]}", "object": kind, "created": int(time.time()),
                "model": self.model_name, "choices": choices, "usage": usage}

    def chat(self, body: dict) -> dict:
        """``/v1/chat/completions``; with ``continue_final_message`` (vLLM's extension) a final
        assistant message is continued, and the choices hold only the continuation."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise ValueError("'messages' must be a non-empty list of {role, content} objects")
        chat = Chat(tuple({"role": m["role"], "content": m["content"]} for m in messages))
        if chat.continues and not body.get("continue_final_message"):
            raise ValueError("the last message is the assistant's: set continue_final_message to continue it")
        result, _ = self._generate(body, [chat])
        choices = [{"index": j, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
                    "stop_reason": c.stop_reason, "completion_tokens": c.tokens}
                   for j, c in enumerate(result.completions[0])]
        return self._reply("chat.completion", "chatcmpl", choices, result)

    def complete(self, body: dict) -> dict:
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts) or not prompts:
            raise ValueError("'prompt' must be a string or a non-empty list of strings")
        result, n = self._generate(body, prompts)
        choices = [{"index": i * n + j, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None,
                    "stop_reason": c.stop_reason, "completion_tokens": c.tokens}
                   for i, row in enumerate(result.completions) for j, c in enumerate(row)]
        return self._reply("text_completion", "cmpl", choices, result)


def serve_in_thread(server: PolicyServer) -> threading.Thread:
    """Start ``server`` on a daemon thread (tests and notebooks); stop with ``server.shutdown()``."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread
