"""stepforge's orchestration cost on a GPU: MC labeling vs raw batched ``model.generate``.

A ~100M-parameter Llama built from a config (random weights: throughput only) over a
word-level tokenizer built in code. 256 trajectories of 4 steps are labeled with MC rollouts
(k = 8 from every prefix: 1,024 prefixes × 8 continuations of ``--max-new-tokens`` tokens)
through ``label_mc`` (prompt rendering, batching, prefix KV reuse, answer checks, records).
The baseline generates the same number of continuations of the same prefixes with plain HF
``model.generate(num_return_sequences=k)``, in the same batch sizes. Both sample at T = 1;
the random model almost never emits EOS, so lengths are fixed by ``--max-new-tokens``.
Prints one JSON line with tokens/s of each and their ratio (goal: ≥ 0.8 on a GPU).

    python bench/gpu_labeling.py --device cuda            # the issue's setting
    python bench/gpu_labeling.py --device cpu --hidden 64 --layers 2 --trajectories 32   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch
from _common import quiet_cpu

from stepforge.backends.device import resolve_device, resolve_dtype
from stepforge.backends.transformers_backend import TransformersPolicy
from stepforge.label.methods import label_mc
from stepforge.label.rollouts import RolloutEstimator
from stepforge.schema import Problem, Trajectory
from stepforge.tasks import Task


def build(vocab: int, hidden: int, layers: int, device, dtype):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>", "\n", *[f"w{i}" for i in range(vocab - 5)]]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 64), max_position_embeddings=2048,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    return model, fast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--trajectories", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--batch-rows", type=int, default=1024, help="prompts × k per forward batch (both paths)")
    args = ap.parse_args()
    quiet_cpu(1)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model, tok = build(args.vocab, args.hidden, args.layers, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    rng = random.Random(0)

    def words(n: int) -> str:
        return " ".join(f"w{rng.randrange(args.vocab - 5)}" for _ in range(n))

    task = Task(name="bench", build_prompt=lambda p: p.question + "\n", extract_answer=lambda text: None,
                answer_mode="exact")
    problems = [Problem(id=f"p{i}", question=words(24), answer="w0") for i in range(args.trajectories)]
    trajs = [Trajectory(id=f"{p.id}/s", problem_id=p.id, question=p.question,
                        steps=[words(12) for _ in range(args.steps)]) for p in problems]
    policy = TransformersPolicy(model, tok, max_batch_rows=args.batch_rows)
    est = RolloutEstimator(policy, task, args.k, max_new_tokens=args.max_new_tokens, seed=0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    label_mc(trajs[:2], problems[:2], RolloutEstimator(policy, task, args.k, max_new_tokens=4))  # warm-up
    sync()
    start = time.perf_counter()
    labeled = label_mc(trajs, problems, est)
    sync()
    t_label = time.perf_counter() - start
    label_tokens = sum(t.cost.generated_tokens for t in labeled)

    prompts = [task.prefix_prompt(p, t.steps[:i + 1]) for t, p in zip(trajs, problems, strict=True)
               for i in range(len(t.steps))]
    per_chunk = max(1, args.batch_rows // args.k)
    tok.padding_side = "left"
    start = time.perf_counter()
    raw_tokens = 0
    with torch.inference_mode():
        for i in range(0, len(prompts), per_chunk):
            enc = tok(prompts[i:i + per_chunk], return_tensors="pt", padding=True).to(device)
            out = model.generate(**enc, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                                 num_return_sequences=args.k, max_new_tokens=args.max_new_tokens,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            raw_tokens += int((out[:, enc.input_ids.shape[1]:] != tok.pad_token_id).sum())
    sync()
    t_raw = time.perf_counter() - start
    label_tps, raw_tps = label_tokens / t_label, raw_tokens / t_raw
    print(json.dumps({"bench": "gpu_labeling", "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                      else "cpu", "dtype": str(dtype).removeprefix("torch."), "parameters": params,
                      "trajectories": len(trajs), "prefixes": len(prompts), "k": args.k,
                      "label_tokens": label_tokens, "raw_tokens": raw_tokens,
                      "label_tokens_per_s": round(label_tps, 1), "raw_tokens_per_s": round(raw_tps, 1),
                      "ratio": round(label_tps / raw_tps, 3)}))


if __name__ == "__main__":
    main()
