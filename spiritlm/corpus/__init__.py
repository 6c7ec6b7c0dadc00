"""The embedded aligned speech-text corpus and the manifest format.

* :mod:`spiritlm.corpus.manifest` -- :class:`Utterance`, :class:`Word`, :class:`Phone`,
  :func:`read_manifest`, :func:`write_manifest`, :func:`iter_manifest`, :func:`check_manifest`:
  the JSONL manifest every stage reads (times in seconds, sample rates in Hz).
* :mod:`spiritlm.corpus.synth` -- ``spiritlm corpus synth``: a synthetic corpus made with
  libespeak-ng, with exact word and phone alignments, speakers, expressive styles, sentiment and
  intent labels.
* :mod:`spiritlm.corpus.espeak` -- the ctypes binding to libespeak-ng.
* :mod:`spiritlm.corpus.text_sources` / :mod:`spiritlm.corpus.lexicon` -- the sentence generators.
* :mod:`spiritlm.corpus.importers` -- ``spiritlm corpus import`` / ``export``: LibriSpeech (with the
  public alignments or MFA TextGrids), folders of recordings, lhotse manifests, Hugging Face
  ``datasets`` (save_to_disk folders or parquet with an ``Audio`` column).
* :mod:`spiritlm.corpus.align` -- ``spiritlm corpus align``: CTC forced alignment (word times, scores).
* :mod:`spiritlm.corpus.segment` -- ``spiritlm corpus segment``: long recordings cut at pauses.

Only the manifest API is imported here (it is light); the synthesiser is imported on use.
"""

from spiritlm.corpus.manifest import (
    CheckReport,
    ManifestError,
    Phone,
    Problem,
    Utterance,
    Word,
    check_manifest,
    iter_manifest,
    read_manifest,
    write_manifest,
)

__all__ = [
    "CheckReport",
    "ManifestError",
    "Phone",
    "Problem",
    "Utterance",
    "Word",
    "check_manifest",
    "iter_manifest",
    "read_manifest",
    "write_manifest",
]
