"""Chat-template prompts (`data.prompt_format=chat`): the tokenizer's own chat template in place of the ReFT
reference's raw prompt, applied alike in SFT, sampling and evaluation (`rlft.tasks.encoding`).

- The conversation: the record's own prompt turns (conversational datasets, `Record.prompt_messages`), else
  one user turn holding the question. `data.system_prompt` goes first unless the record has a system turn
  (None leaves the template's default, e.g. SmolLM2's own system line).
- The prompt: the template rendered with `add_generation_prompt=True`. With `data.style=program` the P-CoT
  generation prefix (`def solution():` and the docstring) follows it, opening the assistant turn, so the
  model writes only the body, as with the raw prompt.
- The SFT target: the assistant turn, i.e. the target text, then the template's end of turn up to and
  including the tokenizer's EOS (SmolLM2: `<|im_end|>`; the newline after it is never sampled, since
  sampling stops at EOS, so it is not trained). An end of turn without EOS gets EOS appended. Labels cover
  only these tokens: system, user and template tokens are masked.
- Prompt, target and end of turn are tokenised separately with add_special_tokens=False, as in the raw
  format: SFT trains on the same token boundary that sampling starts from. A template that writes BOS into
  its text keeps it (once). A template that does not render "generation prompt + reply" as the generation
  prompt followed by the reply verbatim (e.g. one that trims or rewrites the reply) is an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlft.tasks.base import Record
from rlft.tasks.prompts import program_prefix, prompt_text

FORMATS = ("reft", "chat")


class ChatTemplateError(ValueError):
    """`data.prompt_format=chat` cannot be applied with this tokenizer."""


@dataclass(frozen=True)
class PromptFormat:
    """How records become prompts: `data.prompt_format` and `data.system_prompt`.

    Attributes:
        kind: ``"reft"`` (the ReFT reference's raw prompt) or ``"chat"`` (the tokenizer's chat template).
        system_prompt: ``chat`` only: the system turn put before every conversation that has none.
    """

    kind: str = "reft"
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FORMATS:
            raise ValueError(f"prompt format must be one of {FORMATS}, got {self.kind!r}")

    @classmethod
    def of(cls, data) -> PromptFormat:
        """The format a `DataConfig` (or anything with `prompt_format` and `system_prompt`) asks for."""
        return cls(data.prompt_format, data.system_prompt)


REFT = PromptFormat()


def chat_messages(record: Record, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The conversation whose generation prompt the model answers: TRL's `prompt` for this record."""
    if record.prompt_messages:
        turns = [{"role": role, "content": content} for role, content in record.prompt_messages]
    else:
        turns = [{"role": "user", "content": record.question}]
    if system_prompt is not None and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": system_prompt})
    return turns


def _template_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def require_template(tokenizer) -> None:
    """Raise a one-line `ChatTemplateError` if `tokenizer` has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(f"data.prompt_format=chat needs a tokenizer with a chat template; "
                                f"{_template_name(tokenizer)} has none (use data.prompt_format=reft)")


def chat_prompt(tokenizer, record: Record, style: str, system_prompt: str | None = None) -> str:
    """The prompt text: the template with the generation prompt (+ the P-CoT prefix for `program`)."""
    require_template(tokenizer)
    text = tokenizer.apply_chat_template(chat_messages(record, system_prompt), add_generation_prompt=True,
                                         tokenize=False)
    return text + program_prefix(record.question) if style == "program" else text


def end_of_turn(tokenizer, record: Record, style: str, target: str, system_prompt: str | None = None) -> str:
    """The template's text after the reply `target` (SmolLM2: ``<|im_end|>\\n``).

    Raises:
        ChatTemplateError: the template does not render the whole conversation as the generation prompt
            followed by the reply verbatim.
    """
    prompt = chat_prompt(tokenizer, record, style, system_prompt)
    reply = (program_prefix(record.question) if style == "program" else "") + target
    messages = chat_messages(record, system_prompt) + [{"role": "assistant", "content": reply}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt + target):
        raise ChatTemplateError(
            f"record {record.id}: the chat template of {_template_name(tokenizer)} does not render the conversation "
            "as its generation prompt followed by the reply verbatim, so the reply's tokens cannot be told from "
            "the template's; use data.prompt_format=reft or a template that keeps the reply as written")
    return full[len(prompt) + len(target):]


def end_of_turn_ids(tokenizer, end: str) -> list[int]:
    """Token ids of the end of turn that SFT labels: up to and including EOS, or + EOS if it has none."""
    ids = tokenizer(end, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos in ids:
        return ids[:ids.index(eos) + 1]
    return (tokenizer(end.rstrip(), add_special_tokens=False)["input_ids"] if end.strip() else []) + [eos]


def prompt_string(tokenizer, record: Record, style: str, fmt: PromptFormat = REFT) -> str:
    """The prompt the model is conditioned on, in format `fmt`."""
    if fmt.kind == "chat":
        return chat_prompt(tokenizer, record, style, fmt.system_prompt)
    return prompt_text(record, style)


def reward_prompt(record: Record, style: str, fmt: PromptFormat = REFT) -> str | list[dict[str, str]]:
    """TRL's `prompts` entry for a record: the raw prompt text, or the conversation (message list) for `chat`."""
    if fmt.kind == "chat":
        return chat_messages(record, fmt.system_prompt)
    return prompt_text(record, style)
