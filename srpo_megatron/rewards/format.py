"""Format term (reasoning in think tags, then an answer) and the language-mixing penalty.

Both are string checks in linear time: rollouts that degenerate into repeated delimiters are common
in RL, so no backtracking regex runs over a whole response by default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from srpo_megatron.rewards.types import RewardResult

# Scripts counted by the language-mixing penalty: CJK ideographs, kana and hangul vs Latin words.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f]{2,}")  # single letters are mostly math variables
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
# Spans whose content is not prose (code, LaTeX), removed before counting; `$` last so `$$` wins.
_NON_PROSE_SPANS = (("```", "```"), ("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))


@dataclass(frozen=True)
class FormatConfig:
    """What a well-formed response looks like."""

    think_open: str = "<think>"
    """Tag that opens the reasoning."""
    think_close: str = "</think>"
    """Tag that closes the reasoning; a non-empty answer must follow it."""
    open_tag_in_prompt: bool = False
    """The chat template already ends the prompt with `think_open` (R1/Qwen3-style templates), so
    the response starts inside the reasoning and must not repeat the tag."""
    pattern: str | None = None
    """A regex the whole response must match (re.DOTALL), replacing the tag rules. It runs over the
    full response in the caller's process: keep it free of nested quantifiers."""

    def __post_init__(self) -> None:
        if not self.think_open or not self.think_close:
            raise ValueError("FormatConfig.think_open and think_close must be non-empty tags")
        if self.pattern is not None:
            re.compile(self.pattern)  # fail at config time, not on the first rollout


def format_reward(response: str, config: FormatConfig = FormatConfig()) -> RewardResult:
    """1.0 for `<think>reasoning</think>answer` (tags from `config`), else 0.0 with the first problem."""
    if config.pattern is not None:
        matched = re.fullmatch(config.pattern, response, re.DOTALL) is not None
        return RewardResult(float(matched), "format ok" if matched else "does not match the format pattern")
    body = response
    if not config.open_tag_in_prompt:
        body = response.lstrip()
        if not body.startswith(config.think_open):
            return RewardResult(0.0, f"does not start with {config.think_open}")
        body = body[len(config.think_open) :]
    if config.think_open in body:
        return RewardResult(0.0, f"{config.think_open} appears more than once")
    closes = body.count(config.think_close)
    if closes != 1:
        return RewardResult(0.0, f"expected one {config.think_close}, found {closes}")
    reasoning, answer = body.split(config.think_close)
    if not reasoning.strip():
        return RewardResult(0.0, "empty reasoning")
    if not answer.strip():
        return RewardResult(0.0, f"no answer after {config.think_close}")
    return RewardResult(1.0, "format ok")


def language_mixing_ratio(text: str) -> float:
    """Share of the minority script among CJK characters and Latin words, outside code and LaTeX.

    0.0 for text in one script, 0.5 for an even mix. A CJK character and a Latin word are counted as
    one unit each, which roughly equalises the information they carry.
    """
    prose = _LATEX_COMMAND.sub(" ", _remove_spans(text))
    cjk = len(_CJK.findall(prose))
    latin = len(_LATIN_WORD.findall(prose))
    total = cjk + latin
    return min(cjk, latin) / total if total else 0.0


def language_mixing_penalty(response: str, threshold: float = 0.1) -> RewardResult:
    """1.0 (penalty applies) when the mixing ratio of `response` exceeds `threshold`, else 0.0."""
    ratio = language_mixing_ratio(response)
    if ratio > threshold:
        return RewardResult(1.0, f"language mixing {ratio:.2f} > {threshold:.2f}")
    return RewardResult(0.0, f"language mixing {ratio:.2f}")


def _remove_spans(text: str) -> str:
    """Drop delimited spans in linear time: once a delimiter has no closer, no later one has either."""
    for open_tag, close_tag in _NON_PROSE_SPANS:
        parts, position = [], 0
        while (start := text.find(open_tag, position)) >= 0:
            end = text.find(close_tag, start + len(open_tag))
            if end < 0:
                break
            parts.append(text[position:start])
            position = end + len(close_tag)
        parts.append(text[position:])
        text = " ".join(parts)
    return text
