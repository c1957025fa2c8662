"""``--protocol``: named presets for how records are read and how truncation spans are counted and rounded.

- ``default``: this project's rules. The system prompt is rendered; CoT and answer lose surrounding whitespace;
  lengths are exact (⌊r·n⌋ in rationals) over the written sequence; ``--truncation window`` keeps the prompt and a
  window of the response (``--window-scope response``).
- ``paper``: the official pipeline of the paper (``weiruichen01/distilling-the-essence``, ``src/fmchisel/data``)
  reproduced where it is correct. The system prompt is dropped (its data modules "ignore sys msg"); Bespoke-style
  markers are rewritten by its string replacements and CoT/answer are cut as Qwen3's chat template cuts them; spans
  are ``int(L * r)`` in floating point over the sequence it tokenizes, which ends with the generation prompt
  (Qwen3: 3 tokens) that it wrongly appends and we do not write; windows cover the whole sequence. Its lead span
  therefore holds 1-3 more written tokens than ⌊r·n⌋. Deviations that stay are listed in README.md here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from megatron_truncdistill.preprocess.records import RecordSpec
from megatron_truncdistill.preprocess.truncation import POLICIES, TruncationPolicy, make_policy


@dataclass(frozen=True)
class Protocol:
    """What a preset fixes; the manifest records the resulting ``records`` and ``truncation`` settings."""

    drop_system: bool  # RecordSpec.drop_system
    parsing: str  # RecordSpec.parsing
    rounding: str  # TruncationPolicy.rounding
    count_generation_prompt: bool  # TruncationPolicy.count_generation_prompt
    window_scope: str  # --window-scope when not given
    truncations: tuple[str, ...]  # the --truncation kinds the preset defines


PRESETS = {
    "default": Protocol(drop_system=False, parsing="default", rounding="exact", count_generation_prompt=False,
                        window_scope="response", truncations=POLICIES),
    # The official code has a lead span (included_first_x_percent), a window (half_keep_strategy) and no truncation.
    "paper": Protocol(drop_system=True, parsing="official", rounding="float", count_generation_prompt=True,
                      window_scope="sequence", truncations=("lead-span", "window", "none")),
}
PROTOCOLS = tuple(PRESETS)


def apply_protocol(name: str, spec: RecordSpec, *, kind: str, lsp=None, max_tokens: int | None = None,
                   keep: str | None = None, window_scope: str | None = None, system_key: str | None = None
                   ) -> tuple[RecordSpec, TruncationPolicy]:
    """The record spec and truncation policy of preset ``name``; raises ValueError naming conflicting options.

    ``None`` arguments were not given; ``system_key`` is only checked (a paper run renders no system prompt).
    """
    if name not in PRESETS:
        raise ValueError(f"--protocol {name!r}: expected one of {', '.join(PROTOCOLS)}")
    preset = PRESETS[name]
    if kind not in preset.truncations and kind in POLICIES:
        raise ValueError(f"--protocol {name} conflicts with --truncation {kind}: the official pipeline has no such "
                         f"policy (it has {', '.join(preset.truncations)}); use --protocol default")
    if name == "paper" and system_key is not None:
        raise ValueError(f"--protocol paper conflicts with --system-key {system_key}: the paper's pipeline drops "
                         "the system prompt; use --protocol default to render it")
    if name == "paper" and window_scope not in (None, preset.window_scope):
        raise ValueError(f"--protocol paper conflicts with --window-scope {window_scope}: the official windows "
                         "cover the whole sequence; use --protocol default for response windows")
    if kind == "window" and window_scope is None:
        window_scope = preset.window_scope
    policy = make_policy(kind, lsp=lsp, max_tokens=max_tokens, keep=keep, window_scope=window_scope,
                         rounding=preset.rounding, count_generation_prompt=preset.count_generation_prompt)
    return replace(spec, drop_system=preset.drop_system, parsing=preset.parsing), policy
