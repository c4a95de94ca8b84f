"""The model card (`README.md`) written into every checkpoint's `model/` folder.

A checkpoint's `model/` is what leaves rlft: a plain HF folder (full finetuning) that `from_pretrained`, vLLM
and the hub take as it is, or adapter-only files. Its card, in the hub's format (YAML front matter, then
markdown), says what the weights are: the base model, the data, the method and its key settings, the
checkpoint's held-out accuracy when it was measured, how to prompt and load it, and the rlft version.

`base_model` in the front matter must be a hub id, so it is given only when one is known: `model.path` is a
hub name, `smollm2-135m`, or an rlft checkpoint whose own card names one (an RL run from a warm-up inherits
the warm-up's base). Upload a folder with `hf upload USER/NAME RUN/checkpoints/ckpt-N/model .` (README
"Hand-off"; `huggingface-cli upload` before huggingface_hub 0.34).
"""

from __future__ import annotations

from pathlib import Path

import yaml

import rlft
from rlft.config import Config, adapter_config
from rlft.trainers import algorithms

CARD_FILE = "README.md"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what `model.path: smollm2-135m` converts
METHODS = {
    "sft": "supervised fine-tuning (SFT) on the annotated chains of thought",
    "offline_st": "offline self-training: SFT on the annotated chains of thought plus the warm-up's own correct samples",
    "nlft": "Natural Language Fine-Tuning (NLFT): token-weighted likelihood / unlikelihood on the starting model's own "
            "judged responses",
}
# methods trained by `rlft train` though not RL (the others in METHODS are `rlft sft`)
TRAIN_COMMAND = ("offline_st", "nlft")


def base_model_id(model_path: str) -> str | None:
    """The hub id of the model `model.path` starts from, or None when there is none (a local or tiny model)."""
    if model_path == "smollm2-135m":
        return SMOLLM2_HUB_ID
    path = Path(model_path)
    for folder in (path, path / "model"):  # an HF folder, or an rlft checkpoint: its card names the base
        card = folder / CARD_FILE
        if card.is_file():
            return read_front_matter(card).get("base_model")
    parts = model_path.split("/")
    is_hub_name = len(parts) == 2 and all(parts) and not path.exists() and not model_path.startswith((".", "~"))
    return model_path if is_hub_name else None


def read_front_matter(card: str | Path) -> dict:
    """The YAML metadata block at the top of a model card ({} when there is none)."""
    text = Path(card).read_text()
    if not text.startswith("---\n"):
        return {}
    block = text[4:].split("\n---", 1)[0]
    return yaml.safe_load(block) or {}


def model_card(cfg: Config, *, method: str, step: int, accuracy: float | None) -> str:
    """The card of a checkpoint of this run.

    Args:
        cfg: the run's resolved config.
        method: "sft", "offline_st", "nlft" or the RL algo (`cfg.algo`).
        step: the checkpoint's step (SFT optimizer steps, RL iterations).
        accuracy: held-out greedy accuracy at this checkpoint in [0, 1], or None when it was not measured.
    Returns:
        the markdown text, YAML front matter first.
    """
    kind = adapter_config(cfg).kind
    rl = method not in METHODS
    base = base_model_id(cfg.model.path)
    # adapter-only folders are rlft's own layout (peft's files sit in `lora/`): no library claims them
    meta: dict = {"library_name": "transformers"} if kind == "full" else {}
    if base:
        meta["base_model"] = base
    meta["tags"] = ["rlft", method.replace("_", "-"), *(["reinforcement-learning"] if rl else []), "math-reasoning",
                    *([f"adapter-{kind}"] if kind != "full" else [])]
    if cfg.data.train.startswith("hf:"):
        meta["datasets"] = [cfg.data.train[3:]]
    meta["pipeline_tag"] = "text-generation"
    what = f"RL with `{method}`: {_rl_summary(cfg)}" if rl else METHODS[method]
    measured = f"{100 * accuracy:.1f} % greedy on `{cfg.data.test}`" if accuracy is not None else "not measured"
    start = "a tiny Llama rlft built from random init" if cfg.model.path == "tiny" else f"`{cfg.model.path}`"
    rows = [
        ("base model", f"`{base}`" if base else "– (not a hub model)"),
        ("started from", start),
        ("training data", f"`{cfg.data.train}` ({'N-CoT' if cfg.data.style == 'nl' else 'P-CoT'}, style `{cfg.data.style}`)"),
        ("method", what),
        ("what trains", "every weight" if kind == "full" else f"a `{kind}` adapter on the frozen base"),
        ("checkpoint", f"{'iteration' if rl else 'step'} {step}"),
        ("held-out accuracy", measured),
        ("rlft version", rlft.__version__),
    ]
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
             f"# {Path(cfg.run.dir).name} ({'iteration' if rl else 'step'} {step})", "",
             "Trained with rlft (RL fine-tuning of language models for math reasoning).", "",
             "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "",
             "## Key settings", "", *(f"- `{k}`: {v}" for k, v in _key_settings(cfg, rl, method)), "",
             "## Prompt", "", _prompt_doc(cfg), "", "## Load it", "", load_doc(kind), "",
             "## How it was trained", "",
             f"`rlft {'train' if rl or method in TRAIN_COMMAND else 'sft'}` with the config stored beside this folder "
             "(`../trainer_state.pt`, key `config`) and in the run directory (`config.yaml`); run the same command "
             "with that file to train it again. rlft resumes an interrupted run exactly from its last checkpoint.", ""]
    return "\n".join(lines)


def write_model_card(folder: str | Path, cfg: Config, *, method: str, step: int, accuracy: float | None) -> None:
    """Write `model_card(...)` as `folder/README.md` (a checkpoint's `model/`)."""
    (Path(folder) / CARD_FILE).write_text(model_card(cfg, method=method, step=step, accuracy=accuracy))


def _rl_summary(cfg: Config) -> str:
    run = algorithms.plan(cfg)
    kl = f"KL beta {run.kl_coef} ({run.kl_estimator}, in the {run.kl_placement})" if run.algorithm.reference else "no KL"
    return f"reward `{cfg.reward.fn}`, {kl}, loss aggregation `{run.loss_agg}`"


def _key_settings(cfg: Config, rl: bool, method: str) -> list[tuple[str, object]]:
    if not rl:
        s = cfg.sft
        keys = [("sft.lr", s.lr), ("sft.epochs", s.epochs), ("sft.sequences_per_step", s.sequences_per_step),
                ("sft.max_seq_tokens", s.max_seq_tokens)]
        if method == "nlft":
            keys += [("nlft.judge", cfg.nlft.judge), ("nlft.samples_per_question", cfg.nlft.samples_per_question),
                     ("rollout.temperature", cfg.rollout.temperature)]
    else:
        p, r = cfg.ppo, cfg.rollout
        keys = [("ppo.lr", p.lr), ("ppo.iterations", p.iterations), ("rollout.prompts_per_step", r.prompts_per_step),
                ("rollout.samples_per_prompt", r.samples_per_prompt), ("rollout.temperature", r.temperature),
                ("rollout.max_new_tokens", r.max_new_tokens), ("ppo.ppo_epochs", p.ppo_epochs),
                ("ppo.clip_eps", p.clip_eps)]
    return [*keys, ("data.style", cfg.data.style), ("model.dtype", cfg.model.dtype),
            ("model.precision", cfg.model.precision), ("run.seed", cfg.run.seed)]


def _prompt_doc(cfg: Config) -> str:
    prefix = '\ndef solution():\n    """{question}"""' if cfg.data.style == "program" else ""
    ending = "the body of `solution()`, which returns the answer" if cfg.data.style == "program" else \
        "a chain of thought ending in `Therefore, the answer is: <answer>`"
    return (f"No chat template, no BOS (tokenize with `add_special_tokens=False`):\n\n```\nQuestion:\n{{question}}\n"
            f"Answer reasoning:{prefix}\n```\n\nThe model continues with {ending}, then EOS.")


def load_doc(kind: str) -> str:
    """How to load a `model/` folder of this adapter kind ("full": with transformers)."""
    if kind == "full":
        return ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                "tokenizer = AutoTokenizer.from_pretrained(PATH)\nmodel = AutoModelForCausalLM.from_pretrained(PATH)\n"
                "ids = tokenizer(\"Question:\\n...\\nAnswer reasoning:\\n\", return_tensors=\"pt\", add_special_tokens=False)\n"
                "out = model.generate(**ids, max_new_tokens=256, do_sample=False)\n```\n\n"
                "vLLM loads the folder as it is (`vllm.LLM(PATH)`). `value_head.safetensors`, when present, is rlft's "
                "value head (the PPO critic); `model.safetensors.index.json` lists the model's own tensors, so "
                "loaders skip it.")
    if kind == "lora":
        return ("A peft LoRA (folder `lora/`) on the base model named in `adapter.json`. Fold it into a plain "
                "transformers model with `rlft model merge CHECKPOINT --out DIR`, or load it with peft.")
    return (f"An rlft `{kind}` adapter (hooks on hidden states, not weights): only rlft runs it, e.g. "
            "`rlft eval CONFIG --model CHECKPOINT`. It cannot be merged into the weights.")
