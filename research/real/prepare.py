"""`prepare`: packages, the HF model directory, the task splits, rollouts and expert data.

Layout of --out (default runs/real):

    model/                    HF directory (model.safetensors, tokenizer, chat template,
                              flowfield.json, convert.json with the GGUF's sha256)
    problems.json             the splits: shots, dev, eval, expert (lists of [a, b, c])
    rollouts/dev.jsonl        sampled, verified rollouts (flowfield eval --data shape)
    rollouts/eval.jsonl       the same for the held-out eval split
    expert/templated.jsonl    templated worked solutions of every expert problem
    expert/sampled.jsonl      rejection-sampled correct model samples of expert problems
    expert/sampled_all.jsonl  every sample drawn for the rejection sampling
    manifest.json             seeds, counts, accuracies, versions, timings

Each sampling stage is skipped when its file exists and the stage record in manifest.json
shows the same settings (task, sampling, counts and the GGUF's hash); --force redoes them.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from research.real import model as real_model
from research.real.task import Problem, Splits, TaskConfig, chat_messages, make_splits, verify


@dataclass
class PrepareConfig:
    out: Path = Path("runs/real")
    task: TaskConfig = field(default_factory=TaskConfig)
    dev_samples: int = 4  # rollouts per dev problem (a GRPO-style group)
    eval_samples: int = 4  # rollouts per eval problem
    expert_problems: int = 256  # expert problems used for rejection sampling
    expert_samples: int = 2  # samples per such problem
    expert_seed: int = 0  # which expert problems are sampled
    temperature: float = 0.7
    max_new_tokens: int = 64
    batch_size: int = 32
    seed: int = 0  # sampling seed (each split offsets it)
    threads: int = 1
    install: bool = True
    force: bool = False


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    tmp.replace(path)


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def summarize(rows: list[dict]) -> dict:
    """Accuracy and the other per-split statistics recorded in the manifest."""
    n = len(rows)
    wrong = [r for r in rows if r["reward"] < 1.0]
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(r["group_id"], []).append(r["reward"])
    mixed = sum(1 for g in groups.values() if 0 < sum(g) < len(g))
    lengths = sorted(len(r["response_ids"]) for r in rows)
    return {
        "rollouts": n,
        "problems": len(groups),
        "accuracy": round(sum(r["reward"] for r in rows) / max(1, n), 4),
        "correct": n - len(wrong),
        "wrong": len(wrong),
        "wrong_with_first_error": sum(1 for r in wrong if r["first_error"] is not None),
        "correct_with_bad_step": sum(1 for r in rows if r["reward"] == 1.0 and not r["steps_ok"]),
        "mixed_groups": mixed,
        "finished": sum(1 for r in rows if r["finished"]),
        "empty_responses": sum(1 for r in rows if not r["response_ids"]),
        "response_retokenizes": sum(1 for r in rows if r["response_retokenizes"]),
        "response_tokens_median": lengths[n // 2] if n else 0,
        "response_tokens_max": lengths[-1] if n else 0,
    }


class Preparer:
    def __init__(self, cfg: PrepareConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.manifest_path = self.out / "manifest.json"
        self.manifest: dict = {}
        if self.manifest_path.is_file():
            try:
                self.manifest = json.loads(self.manifest_path.read_text())
            except ValueError:
                self.manifest = {}
        self.manifest.setdefault("stages", {})
        self._model = None
        self._tokenizer = None
        self._sampled: set[str] = set()
        self._cached_stages: set[str] = set()

    def log(self, msg: str) -> None:
        print(f"[real] {msg}", flush=True)

    def save_manifest(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.manifest, indent=2) + "\n")
        tmp.replace(self.manifest_path)

    # ------------------------------------------------------------------ model
    def load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            t0 = time.time()
            path = self.out / "model"
            self._tokenizer = AutoTokenizer.from_pretrained(path)
            self._model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            self.manifest["timings"]["model_load_s"] = round(time.time() - t0, 1)
        return self._model, self._tokenizer

    # ---------------------------------------------------------------- stages
    def _stage_key(self, name: str, **settings) -> dict:
        return {
            "gguf_sha256": self.manifest["model"]["gguf_sha256"],
            "task": self.cfg.task.as_dict(),
            **settings,
        }

    def _cached(self, name: str, key: dict, path: Path) -> list[dict] | None:
        stage = self.manifest["stages"].get(name)
        if self.cfg.force or not path.is_file() or stage is None or stage.get("key") != key:
            return None
        self.log(f"{name}: cached ({path})")
        self._cached_stages.add(name)
        return _read_jsonl(path)

    def rollouts(self, name: str, problems, per_problem: int, seed: int, path: Path):
        from research.real.sampling import SamplingConfig, prompt_text, sample_rollouts

        scfg = SamplingConfig(
            temperature=self.cfg.temperature,
            max_new_tokens=self.cfg.max_new_tokens,
            batch_size=self.cfg.batch_size,
            seed=seed,
        )
        key = self._stage_key(
            name, sampling=asdict(scfg), per_problem=per_problem, problems=len(problems),
            threads=self.cfg.threads,
        )
        rows = self._cached(name, key, path)
        if rows is not None:
            return rows
        model, tok = self.load()
        shots = self.splits.shots
        prompts = [prompt_text(tok, chat_messages(p, shots)) for p in problems]
        self.log(f"{name}: sampling {len(problems)} problems x {per_problem} -> {path}")
        rows, timing = sample_rollouts(
            model, tok, problems, prompts, per_problem, scfg, name.split("/")[0], name
        )
        _write_jsonl(path, rows)
        self._sampled.add(name)
        self.manifest["stages"][name] = {"key": key, "path": str(path), "timing": timing}
        self.save_manifest()
        return rows

    def templated(self, path: Path) -> list[dict]:
        from research.real.sampling import prompt_text

        _, tok = self.load_tokenizer()
        rows = []
        for p in self.splits.expert:
            prompt = prompt_text(tok, chat_messages(p, self.splits.shots))
            response = p.solution()
            assert verify(p, response) == 1.0, p
            rows.append(
                {
                    "id": f"expert-{p.id}",
                    "source": "templated",
                    "problem": list(p.numbers),
                    "answer": p.answer,
                    "prompt": prompt,
                    "prompt_ids": tok(prompt, add_special_tokens=False)["input_ids"],
                    "response": response,
                    "response_ids": tok(response, add_special_tokens=False)["input_ids"],
                    "response_excludes_eos": True,
                    "reward": 1.0,
                }
            )
        _write_jsonl(path, rows)
        return rows

    def load_tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.out / "model")
        return None, self._tokenizer

    # ------------------------------------------------------------------- run
    def run(self) -> dict:
        cfg = self.cfg
        t_all = time.time()
        self.manifest["timings"] = {}
        self.manifest["config"] = {
            **{k: v for k, v in asdict(cfg).items() if k not in ("task", "out")},
            "out": str(cfg.out),
        }
        if cfg.install:
            t0 = time.time()
            self.manifest["packages"] = real_model.ensure_packages(self.log)
            self.manifest["timings"]["install_s"] = round(time.time() - t0, 1)

        import torch

        torch.set_num_threads(max(1, cfg.threads))
        record = real_model.convert(self.out / "model", self.log)
        self.manifest["model"] = {k: v for k, v in record.items() if k != "versions"}
        self.manifest["model"]["path"] = str(self.out / "model")
        self.manifest["versions"] = real_model.library_versions()
        self.manifest["timings"]["convert_s"] = record["seconds"]

        self.splits = make_splits(cfg.task)
        self._write_problems(self.splits)

        t0 = time.time()
        dev = self.rollouts(
            "dev", self.splits.dev, cfg.dev_samples, cfg.seed * 10 + 1,
            self.out / "rollouts" / "dev.jsonl",
        )
        ev = self.rollouts(
            "eval", self.splits.eval, cfg.eval_samples, cfg.seed * 10 + 2,
            self.out / "rollouts" / "eval.jsonl",
        )
        templated = self.templated(self.out / "expert" / "templated.jsonl")
        chosen = list(self.splits.expert)
        random.Random(f"expert-sample-{cfg.expert_seed}").shuffle(chosen)
        chosen = chosen[: cfg.expert_problems]
        sampled_all = self.rollouts(
            "expert/sampled", chosen, cfg.expert_samples, cfg.seed * 10 + 3,
            self.out / "expert" / "sampled_all.jsonl",
        )
        accepted = [r for r in sampled_all if r["reward"] == 1.0 and r["steps_ok"]]
        _write_jsonl(self.out / "expert" / "sampled.jsonl", accepted)
        self.manifest["timings"]["data_s"] = round(time.time() - t0, 1)

        self.manifest["splits"] = {
            "dev": summarize(dev),
            "eval": summarize(ev),
            "expert_sampled": {
                **summarize(sampled_all),
                "accepted": len(accepted),
                "accept_rule": "verifier reward 1.0 and every step correct (steps_ok)",
                "rejected_correct_with_bad_step": sum(
                    1 for r in sampled_all if r["reward"] == 1.0 and not r["steps_ok"]
                ),
            },
            "expert_templated": {
                "samples": len(templated),
                "response_tokens": sum(len(r["response_ids"]) for r in templated),
            },
        }
        self.manifest["files"] = {
            "problems": str(self.out / "problems.json"),
            "dev": str(self.out / "rollouts" / "dev.jsonl"),
            "eval": str(self.out / "rollouts" / "eval.jsonl"),
            "expert_templated": str(self.out / "expert" / "templated.jsonl"),
            "expert_sampled": str(self.out / "expert" / "sampled.jsonl"),
            "expert_sampled_all": str(self.out / "expert" / "sampled_all.jsonl"),
        }
        self.manifest["seeds"] = {
            "split_seed": cfg.task.split_seed,
            "sampling_seed": cfg.seed,
            "dev_sampling_seed": cfg.seed * 10 + 1,
            "eval_sampling_seed": cfg.seed * 10 + 2,
            "expert_sampling_seed": cfg.seed * 10 + 3,
            "expert_problem_seed": cfg.expert_seed,
        }
        self.manifest["timings"]["total_s"] = round(time.time() - t_all, 1)
        # timings above are this run's (cached stages cost ~0); every run is kept here, and
        # each stage's own sampling time stays in stages[name]["timing"]
        self.manifest.setdefault("history", []).append(
            {
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "timings": self.manifest["timings"],
                "sampled": sorted(self._sampled),
                "cached": sorted(self._cached_stages),
            }
        )
        self.save_manifest()
        return self.manifest

    def _write_problems(self, s: Splits) -> None:
        def ids(ps: tuple[Problem, ...]) -> list[list[int]]:
            return [list(p.numbers) for p in ps]

        self.out.mkdir(parents=True, exist_ok=True)
        body = {
            "task": self.cfg.task.as_dict(),
            "shots": ids(s.shots),
            "dev": ids(s.dev),
            "eval": ids(s.eval),
            "expert": ids(s.expert),
        }
        (self.out / "problems.json").write_text(json.dumps(body) + "\n")
        self.manifest["task"] = {
            **self.cfg.task.as_dict(),
            "counts": {k: len(v) for k, v in body.items() if k != "task"},
            "disjoint_by": "multiset of the three numbers",
        }
