"""A deterministic stand-in policy for the arithmetic world, for pinning label values exactly.

From a prefix whose steps are all right, the first ``good`` of every n samples finish the
chain correctly and the rest finish it with a wrong last operation; from a prefix with a
wrong step every sample continues consistently from the wrong value (so it ends wrong).
"""

import json

from stepforge.backends.base import Completion, GenerationCost, GenerationResult
from stepforge.backends.server import CompletionsHandler, PolicyServer, serve_in_thread
from stepforge.worlds.arith.problems import TAGS, apply_op, first_error, parse_question


class ScriptedArithPolicy:
    name = "scripted"

    def __init__(self, good: int) -> None:
        self.good = good
        self.calls = 0
        self.rollouts = 0

    def generate(self, prompts, *, n=1, stop=None, max_new_tokens=256, temperature=1.0, seed=None):
        self.calls += 1
        rows = []
        for prompt in prompts:
            question, *done = prompt[:-1].split("\n") if prompt.endswith("\n") else prompt.split("\n")
            done = [d for d in done if d]
            problem = parse_question(question)
            ok_prefix = first_error(question, done) is None
            value = problem.values[len(done) - 1] if done else problem.start
            if not ok_prefix:
                value = int(done[-1].split("=")[1])  # continue from the wrong running value
            row = []
            for j in range(n):
                v, lines = value, []
                for i in range(len(done), len(problem.ops)):
                    op, k = problem.ops[i]
                    v = apply_op(v, op, k)
                    if ok_prefix and j >= self.good and i == len(problem.ops) - 1:
                        v += 1  # a wrong last step
                    lines.append(f"{TAGS[i]}{op}{k}={v}")
                text = "\n".join([*lines, f"Answer: {v}"])
                hit = min((s for s in stop or [] if s in text), key=text.index, default=None)
                if hit is not None:
                    text = text[:text.index(hit)]
                row.append(Completion(text, len(text), "stop", hit))
            self.rollouts += n
            rows.append(row)
        return GenerationResult(rows, GenerationCost(0, sum(c.tokens for r in rows for c in r), len(prompts)))


def flaky_server(policy, failures: int, status: int = 503, body: bytes | None = None):
    """A real PolicyServer on 127.0.0.1 whose first ``failures`` POSTs answer ``status`` (or 200
    with ``body``); returns the server and a dict counting POST attempts."""
    attempts = {"n": 0}

    class Flaky(CompletionsHandler):
        def do_POST(self):
            attempts["n"] += 1
            if attempts["n"] <= failures:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                data = body if body is not None else json.dumps({"error": {"message": "overloaded"}}).encode()
                self.send_response(status if body is None else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            super().do_POST()

    srv = PolicyServer(policy, handler=Flaky)
    serve_in_thread(srv)
    return srv, attempts


class CheckerScorer:
    """A perfect PRM for the world: 1 while the prefix is on the correct path, else 0."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, trajectories):
        self.calls += 1
        out = []
        for t in trajectories:
            fe = first_error(t.question, t.steps)
            out.append([1.0 if fe is None or i < fe else 0.0 for i in range(len(t.steps))])
        return out


class FixingPolicy:
    """The world's prompts: a first draft whose second line is off by one and whose later lines
    follow from it (so the answer is wrong too); a continuation (a prompt that already has
    steps) is always right (with ``fix=False``: as wrong as a draft)."""

    name = "fixing"

    def __init__(self, fix: bool = True) -> None:
        self.fix = fix
        self.prompts: list[str] = []

    def generate(self, prompts, *, n=1, stop=None, max_new_tokens=256, temperature=1.0, seed=None):
        self.prompts.extend(prompts)
        rows = []
        for prompt in prompts:
            question, *done = [x for x in prompt.split("\n") if x]
            p = parse_question(question)
            steps = p.steps
            if not done or not self.fix:  # a draft: the second line is off by one, the rest follows
                v = p.values[1] + 1
                lines = [p.steps[0], f"{TAGS[1]}{p.ops[1][0]}{p.ops[1][1]}={v}"]
                for i in range(2, len(p.ops)):
                    v = apply_op(v, *p.ops[i])
                    lines.append(f"{TAGS[i]}{p.ops[i][0]}{p.ops[i][1]}={v}")
                steps = [*lines, f"Answer: {v}"]
            rows.append([Completion("\n".join(steps[len(done):]), 7, "stop", None)])
        return GenerationResult(rows, GenerationCost(0, 7 * len(prompts), len(prompts)))
