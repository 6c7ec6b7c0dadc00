"""Judges of generated text and speech: a CTC ASR and sentiment classifiers (trained here or Hugging Face folders).

Evaluations of speech output need an ASR (TTS: CER of the transcript) and sentiment classifiers
(STSP: is the continuation's sentiment the prompt's?). Judges are trained models, so they live
with training and corpora, before the evaluations that use them (docs/architecture.md):

* :mod:`spiritlm.judges.models`: the judges (ours and Hugging Face folders), their folders and loaders;
* :mod:`spiritlm.judges.train`: :func:`~spiritlm.judges.train.train_judges` (``spiritlm eval judges``)
  trains all of them on a manifest's train split and scores them on its test split;
* :mod:`spiritlm.judges.cli`: the ``spiritlm eval judges`` command.

This module holds what the commands need before any torch import: the folder names of a judges
directory, the sentiment labels, ``judges_metrics.json``'s reader and the recipes' reader
(``recipes/configs/judges-*.yaml``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

LABELS = ("positive", "negative", "neutral")
METRICS_NAME = "judges_metrics.json"

#: judge kind → its sub-folder in a ``spiritlm eval judges`` output folder
JUDGE_DIRS = {"asr": "asr", "text-sentiment": "text_sentiment", "speech-sentiment": "speech_sentiment"}

#: the family of the judges' packaged recipes: ``recipes/configs/judges-NAME.yaml``
RECIPE_FAMILY = "judges"


def read_judges_recipe(where: str) -> tuple[Path, dict]:
    """``(file, values)`` of the judges' recipe ``where`` (``--preset``): a packaged name (``tiny``
    or ``judges-tiny``: ``recipes/configs/judges-tiny.yaml``) or a YAML file; torch is not imported.

    Raises:
        spiritlm.errors.UserError: neither (naming what was typed and the packaged names), or not
            a YAML mapping.
    """
    from spiritlm.errors import UserError
    from spiritlm.trainer import read_recipe

    if not Path(where).is_file() and not Path(where).name.startswith(f"{RECIPE_FAMILY}-"):
        try:
            return read_recipe(f"{RECIPE_FAMILY}-{where}", RECIPE_FAMILY, flag="--preset")
        except UserError:
            pass  # the message below names what was typed
    return read_recipe(where, RECIPE_FAMILY, flag="--preset")

#: How emotion labels of Meta's STSP data and of emotion classifiers map to sentiments
#: (Expresso / EmoV: happy and amused are positive, angry and sad negative, default neutral).
EMOTION_TO_SENTIMENT = {
    "positive": "positive", "negative": "negative", "neutral": "neutral",
    "happy": "positive", "amused": "positive", "joy": "positive",
    "angry": "negative", "anger": "negative", "sad": "negative", "sadness": "negative", "disgusted": "negative",
    "default": "neutral", "calm": "neutral",
}


def to_sentiment(label: str) -> str:
    """Maps an emotion or sentiment label (any case) to ``positive``/``negative``/``neutral`` (others kept, lower-cased).

    >>> to_sentiment("Happy"), to_sentiment("default"), to_sentiment("surprised")
    ('positive', 'neutral', 'surprised')
    """
    key = str(label).strip().lower()
    return EMOTION_TO_SENTIMENT.get(key, key)


def load_judges_metrics(judges_dir: str | os.PathLike) -> dict:
    """``judges_metrics.json`` of a judges directory (``{}`` when absent: e.g. Hugging Face judges)."""
    path = Path(judges_dir) / METRICS_NAME
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)
