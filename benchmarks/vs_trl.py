"""Seconds per GRPO step: this project against TRL's `GRPOTrainer` on the same work.

Same SFT-warmed tiny model, same math prompts and reward (this project's math-verify reward), 16
prompts x 16 rollouts per step, 64 new tokens at temperature 1, lr 5e-5, beta 0 (no reference
model), one optimizer update per step over micro-batches of 16 completions, both under torchrun
on `--nproc` ranks (torchrun gives each rank one thread when there are several). The runs
alternate (project, TRL, TRL, project, ...) so that drift of the machine hits both. A run's figure
is the median step time of steps 2..N (step 1 pays one-off warm-ups on both sides); the project's
step is `t_step`, TRL's the wall time from `on_step_begin` to `on_step_end` (its generation, reward
and update). Prints JSON: both medians per run, the ratio of the overall medians (project / TRL:
below 1 means this project is faster) and the project's per-phase medians.

Needs TRL's own virtualenv (its pins differ from vLLM's): `bash tools/setup_trl.sh` once, then

    .venv/bin/python benchmarks/vs_trl.py [--steps 8] [--rounds 2] [--nproc 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_runs import REPO, prepare, train  # noqa: E402

TRL_PYTHON = REPO / ".venv-trl/bin/python"
PHASES = ("t_rollout", "t_reward", "t_record_history", "t_advantages", "t_old_logprobs", "t_update", "t_sync")


def run_project(env: dict[str, str], out: Path, args: argparse.Namespace) -> list[dict]:
    overrides = [f"training.steps={args.steps}", "training.save_every=0", "training.eval_every=0",
                 "data.eval_math=[]", "data.eval_code=[]", "data.prompts_per_step=16",
                 "rollout.n_samples_per_prompt=16", "rollout.max_response_tokens=64", "rollout.temperature=1.0",
                 "optimizer.lr=5.0e-5", "loss.kl_coef=0.0", "training.updates_per_step=1",
                 "training.micro_batch_size=16",
                 # vLLM's compiled model (torch.compile; the tiny demo runs eager to start faster)
                 *([] if args.eager else ["rollout.enforce_eager=false"])]
    return train(env, out, overrides, nproc=args.nproc)


def run_trl(env: dict[str, str], out: Path, args: argparse.Namespace) -> list[dict]:
    cmd = [str(TRL_PYTHON), "-m", "torch.distributed.run", "--nproc-per-node", str(args.nproc),
           str(REPO / "benchmarks/trl_grpo.py"), "--model", env["SRPO_TINY_MODEL"],
           "--data", f"{env['SRPO_TINY_DATA']}/train_math.jsonl", "--out", str(out), "--steps", str(args.steps),
           "--prompts", "16", "--generations", "16", "--max-new-tokens", "64", "--micro-batch", "16",
           "--lr", "5e-5"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise RuntimeError(f"TRL run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in out.read_text().splitlines()]


def steady_median(values: list[float]) -> float:
    return statistics.median(values[1:] or values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="project/TRL pairs, alternating in order")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--eager", action="store_true",
                        help="run vLLM eagerly (rollout.enforce_eager=true): starts 7-17 s sooner, generates slower")
    args = parser.parse_args()
    if not TRL_PYTHON.exists():
        sys.exit(f"{TRL_PYTHON} not found: run `bash tools/setup_trl.sh` first")
    runs: list[dict] = []
    project_phases: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        env = prepare(Path(tmp))
        for round_index in range(args.rounds):
            order = ("project", "trl") if round_index % 2 == 0 else ("trl", "project")
            for name in order:
                out = Path(tmp) / f"{name}-{round_index}"
                if name == "project":
                    metrics = run_project(env, out, args)
                    seconds = [m["t_step"] for m in metrics]
                    project_phases += metrics[1:]
                else:
                    seconds = [r["seconds"] for r in run_trl(env, out.with_suffix(".jsonl"), args)]
                runs.append({"framework": name, "round": round_index, "median_step_s": round(steady_median(seconds), 4),
                             "step_s": [round(s, 3) for s in seconds]})
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    medians = {name: statistics.median(r["median_step_s"] for r in runs if r["framework"] == name)
               for name in ("project", "trl")}
    phases = {k: round(statistics.median(m.get(k, 0.0) for m in project_phases), 4) for k in PHASES}
    print(json.dumps({
        "nproc": args.nproc, "steps": args.steps, "rounds": args.rounds, "vllm_eager": args.eager,
        "project_step_s": round(medians["project"], 4), "trl_step_s": round(medians["trl"], 4),
        "ratio_project_over_trl": round(medians["project"] / medians["trl"], 3),
        "project_phases_s": phases,
        "project_phase_frac": {k: round(v / medians["project"], 3) for k, v in phases.items()},
        "project_pad_frac": round(statistics.median(m["pad_frac"] for m in project_phases), 4),
        "runs": runs,
    }, indent=1))


if __name__ == "__main__":
    main()
