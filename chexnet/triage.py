"""Triage priority (DESIGN.md "Triage priority and FHIR"): rules that raise a study's priority from its
findings' probabilities, parsed once at start (CHEXNET_PRIORITY_RULES, the CLI's --priority-rules) and
evaluated once per prediction in the core, so the REST API, the CLI and the DICOM node give the same answer.

    RULES  = RULE ("," RULE)*
    RULE   = [MODEL ":"] CODE ">=" PROBABILITY ":" LEVEL        e.g. cxr10:pneumothorax>=0.7:stat

LEVEL is ``urgent`` or ``stat`` (``routine`` is what no rule raises). A rule with MODEL applies to that
bundle only; one without applies to every loaded bundle that has CODE. A prediction's priority is the
highest level of the rules its probabilities meet (probability >= PROBABILITY); each rule that met lists
its finding. Without any rule for the model the priority is ``routine`` with ``rules: false``.
"""

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LEVELS = ("routine", "urgent", "stat")  # ascending
RULE_LEVELS = LEVELS[1:]
RANK = {level: rank for rank, level in enumerate(LEVELS)}
SETTING = "CHEXNET_PRIORITY_RULES"
EXAMPLE = "cxr10:pneumothorax>=0.7:stat"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PriorityRulesError(ValueError):
    """One or more rules cannot be used; the message has one sentence per mistake."""

    def __init__(self, sentences: Sequence[str]):
        self.sentences = list(sentences)
        super().__init__(" ".join(self.sentences))


@dataclass(frozen=True)
class Rule:
    model: str | None  # None: every model that has the code
    code: str
    probability: float
    level: str

    @property
    def text(self) -> str:
        scope = f"{self.model}:" if self.model else ""
        return f"{scope}{self.code}>={self.probability:g}:{self.level}"


@dataclass(frozen=True)
class Raised:
    """A finding that met a rule."""

    code: str
    probability: float
    rule: Rule

    def as_dict(self) -> dict:
        return {
            "code": self.code,
            "probability": self.probability,
            "threshold": self.rule.probability,
            "level": self.rule.level,
            "rule": self.rule.text,
        }


@dataclass(frozen=True)
class Priority:
    level: str = "routine"
    raised: tuple[Raised, ...] = ()
    rules: bool = False  # whether any rule applies to the model that made the prediction
    demo: bool = False  # made by demo weights: not for triage either

    def as_dict(self) -> dict:
        return {
            "level": self.level,
            "rules": self.rules,
            "demo": self.demo,
            "findings": [r.as_dict() for r in self.raised],
        }


def parse_rules(text: str | None, setting: str = SETTING) -> tuple[Rule, ...]:
    """The rules of TEXT; raises PriorityRulesError with one sentence (naming SETTING) per bad rule."""
    rules, mistakes = [], []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            rule = _rule(item, setting)
        except ValueError as exc:
            mistakes.append(str(exc))
            continue
        if rule not in rules:  # the same rule twice would list its finding twice
            rules.append(rule)
    if mistakes:
        raise PriorityRulesError(mistakes)
    return tuple(rules)


def _shown(text: str, limit: int) -> str:
    """TEXT as a sentence may quote it: cut, and without control characters (a terminal would act on them)."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _rule(item: str, setting: str) -> Rule:
    shown = _shown(item, 80)
    condition, colon, level = item.rpartition(":")
    model, _, condition = condition.rpartition(":") if ":" in condition else ("", "", condition)
    code, op, number = condition.partition(">=")
    code, number, level, model = code.strip(), number.strip(), level.strip().lower(), model.strip()
    if not colon or not op or not code or not number or not _NAME.match(code) or (model and not _NAME.match(model)):
        raise ValueError(
            f"{setting} rule '{shown}' is not of the form [model:]code>=probability:level (e.g. {EXAMPLE})."
        )
    try:
        probability = float(number)
    except ValueError:
        raise ValueError(
            f"{setting} rule '{shown}' has '{_shown(number, 20)}' where a probability from 0 to 1 belongs."
        ) from None
    if not math.isfinite(probability) or not 0.0 <= probability <= 1.0:
        raise ValueError(f"{setting} rule '{shown}' has probability {_shown(number, 20)}, outside 0 to 1.")
    if level not in RULE_LEVELS:
        raise ValueError(
            f"{setting} rule '{shown}' has the unknown level '{_shown(level, 20)}'; use urgent or stat "
            "(routine is what no rule raises)."
        )
    return Rule(model or None, code, probability, level)


def unknown(rules: Sequence[Rule], models: Mapping[str, Sequence[str]], setting: str = SETTING) -> list[str]:
    """One sentence per rule that names a model not loaded, or a code none of the models it applies to has
    (models: each loaded model's label codes). Known only once the bundles are loaded."""
    problems = []
    loaded = ", ".join(models) or "none"
    for rule in rules:
        if rule.model is not None and rule.model not in models:
            problems.append(
                f"{setting} rule '{rule.text}' names model {rule.model}, which is not loaded (loaded: {loaded})."
            )
        elif rule.model is not None and rule.code not in models[rule.model]:
            problems.append(
                f"{setting} rule '{rule.text}' names {rule.code}, which is not a label code of model {rule.model}."
            )
        elif rule.model is None and models and not any(rule.code in codes for codes in models.values()):
            problems.append(
                f"{setting} rule '{rule.text}' names {rule.code}, which is not a label code of any loaded model ({loaded})."
            )
    return problems


@dataclass(frozen=True)
class Triage:
    """The rules that apply to one model."""

    rules: tuple[Rule, ...] = ()

    @classmethod
    def for_model(cls, rules: Sequence[Rule], model: str, codes: Sequence[str]) -> "Triage":
        return cls(tuple(r for r in rules if r.model in (None, model) and r.code in codes))

    def evaluate(self, probabilities: Mapping[str, float], demo: bool) -> Priority:
        raised = [
            Raised(r.code, probabilities[r.code], r)
            for r in self.rules
            if r.code in probabilities and probabilities[r.code] >= r.probability
        ]
        raised.sort(key=lambda r: (-RANK[r.rule.level], -r.probability, r.code))
        level = raised[0].rule.level if raised else "routine"
        return Priority(level, tuple(raised), bool(self.rules), demo)
