"""`rlft model merge CKPT --out DIR`: a LoRA checkpoint as a plain transformers model.

A LoRA checkpoint's `model/` holds only the adapter (peft's `lora/` folder and `adapter.json` naming the base
model). Merging loads the base, applies the adapter and folds W + (alpha / r) B A into the weights with
peft's `merge_and_unload`, then saves an HF folder (weights, config, tokenizer, model card) that
`from_pretrained` and vLLM load like any other. Hook-based adapters (LoReFT, BREP, ...; HEFT's second stage)
edit hidden states, not weights, so they cannot be merged; a full-finetuning checkpoint's `model/` is a plain
HF folder already.
"""

from __future__ import annotations

from pathlib import Path

from rlft.config import ConfigError


def merge_checkpoint(checkpoint: str | Path, out: str | Path, *, dtype: str = "float32") -> Path:
    """Merge the LoRA of `checkpoint` (a `ckpt-N` folder or its `model/`) into its base; save it to `out`.

    Args:
        checkpoint: an rlft checkpoint of a run with `adapter.kind=lora`.
        out: the folder to write (created; files in it are overwritten).
        dtype: "float32" or "bfloat16", the dtype the base is loaded, merged and saved in.
    Returns:
        `out`.
    Raises:
        ConfigError: the folder is not an adapter checkpoint, or its adapter is not a LoRA.
    """
    from rlft.adapters import ADAPTER_FILE, load_policy_and_adapter, read_adapter_json

    checkpoint = Path(checkpoint)
    model_dir = checkpoint / "model" if (checkpoint / "model").is_dir() else checkpoint
    if not model_dir.is_dir():
        raise ConfigError(f"rlft model merge: {checkpoint} does not exist")
    info = read_adapter_json(model_dir)
    if info is None:
        if (model_dir / "config.json").exists():
            raise ConfigError(f"{model_dir} is a full-finetuning checkpoint: it is a plain transformers model already "
                              "(AutoModelForCausalLM.from_pretrained reads it as it is); there is nothing to merge")
        raise ConfigError(f"{model_dir} is neither an rlft checkpoint nor a model folder (no {ADAPTER_FILE} or config.json)")
    if info["kind"] != "lora":
        raise ConfigError(f"{model_dir} holds a {info['kind']} adapter, which edits hidden states with hooks at run time "
                          "and cannot be folded into the weights; only adapter.kind=lora merges. Run it with rlft "
                          "(rlft eval --model CKPT)")
    _, tokenizer, adapter = load_policy_and_adapter(model_dir, dtype=dtype)
    merged = adapter.merge()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(merged_card(model_dir, checkpoint))
    return out


def merged_card(model_dir: Path, checkpoint: Path) -> str:
    """The merged model's card: the checkpoint card's metadata as a transformers model, how to load it, and the
    checkpoint's card below."""
    import yaml

    from rlft.models.card import CARD_FILE, load_doc, read_front_matter

    card = model_dir / CARD_FILE
    meta = read_front_matter(card) if card.is_file() else {"tags": ["rlft"]}
    meta = {"library_name": "transformers", **{k: v for k, v in meta.items() if k != "library_name"}}
    meta["tags"] = [t for t in meta.get("tags", []) if not t.startswith("adapter-")] + ["lora-merged"]
    body = card.read_text().split("\n---\n", 1)[-1].replace("\n# ", "\n### ").replace("\n## ", "\n#### ") \
        if card.is_file() else "(none)"
    return "\n".join(["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
                      f"# {checkpoint.resolve().name} (LoRA merged)", "",
                      f"The LoRA of `{checkpoint}` folded into its base weights with `rlft model merge` (peft's "
                      "`merge_and_unload`): a plain transformers model, no peft needed.", "",
                      "## Load it", "", load_doc("full"), "", "## The LoRA checkpoint's card", "", body.strip(), ""])
