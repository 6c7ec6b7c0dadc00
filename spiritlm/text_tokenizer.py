"""The LM's tokenizer: a sentencepiece BPE model extended with Spirit LM's speech vocabulary.

Id layout (Meta's release, ``get_forbidden_tokens`` of its inference code): the text pieces of
the base model keep their ids ``0 .. n_text-1``; then come ``[Text]``, ``[Speech]``,
``[Hu0]..[Hu{h-1}]``, ``[Pi0]..[Pi{p-1}]``, ``[St0]..[St{s-1}]``
(:func:`spiritlm.formats.speech_vocabulary`), then filler pieces up to a multiple of
``pad_to_multiple`` (256 by default). On LLaMA-2's 32000 pieces that gives ``[Text]`` = 32000,
``[Speech]`` = 32001, ``[Hu0]`` = 32002, ``[Pi0]`` = 32503, ``[St0]`` = 32567 and a vocabulary of
32512 (base: 32000 + 2 + 501 = 32503 -> 32512) or 32768 (expressive: 32503 + 64 + 100 = 32667 ->
32768).

The speech pieces are written into the sentencepiece ``ModelProto`` itself as ``USER_DEFINED``
pieces (filler pieces as ``UNUSED``), so the saved ``.model`` file loads with plain
``sentencepiece.SentencePieceProcessor`` and with transformers' ``LlamaTokenizer`` /
``LlamaTokenizerFast``, and sentencepiece maps each speech token to exactly one id.

Encoding. :meth:`SpiritTextTokenizer.encode` splits a string at speech tokens and markers, maps
those directly to their ids, and encodes each text span between them with sentencepiece, which
prefixes the span with its dummy ``▁``::

    "[Text]the cat[Speech][Hu12][Hu7]"  ->  [Text] ▁the ▁cat [Speech] [Hu12] [Hu7]

so no stray ``▁`` piece appears before speech tokens or markers, and a text span is tokenized
exactly as the same text at the start of a document. transformers' slow ``LlamaTokenizer`` (legacy
mode) and ``LlamaTokenizerFast`` (``add_prefix_space=True``) give exactly this encoding
when the speech pieces are registered as added tokens (:meth:`SpiritTextTokenizer.to_transformers`;
the tests check the equality). Meta's inference code tokenizes its prompts (``"[Text]The largest
country"``, ``"[Speech][Hu99][Hu49]..."``) with the ``LlamaTokenizer`` of its checkpoint folder;
whether that folder registers the speech pieces as added tokens (this encoding) or only holds them
in ``tokenizer.model`` (then plain sentencepiece runs over the whole string and gives
``▁ [Text] The ▁largest``: a lone ``▁`` before the first marker, no ``▁`` on the word after it)
is decided by files that are not available offline here; only the first keeps text spans
tokenized as in text-only training, which is why it is the choice made here.
:meth:`decode` inverts :meth:`encode` (identity normalization keeps spaces as they are; the
tests check round trips of random mixes of text, markers and speech tokens).
"""

from __future__ import annotations

import io
import os
import re
import weakref
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from spiritlm.formats import PREFIX_STREAM, SPEECH_MARKER, STREAM_PREFIX, TEXT_MARKER, speech_vocabulary

#: pieces added by the extension that are neither text nor speech units
FILLER_FORMAT = "<unused_{}>"

#: default padding multiple: 32503 -> 32512 (base) and 32667 -> 32768 (expressive) on LLaMA-2
DEFAULT_PAD_MULTIPLE = 256

_SPECIAL_RE = re.compile(r"\[(?:Hu|Pi|St)\d+\]|\[Text\]|\[Speech\]")

_Type = sp_pb2.ModelProto.SentencePiece.Type


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int = 1000,
    *,
    model_type: str = "bpe",
    byte_fallback: bool = True,
    character_coverage: float = 1.0,
    num_threads: int = 1,
) -> bytes:
    """Trains a LLaMA-style sentencepiece model on ``texts`` and returns the serialized proto.

    Settings follow LLaMA-2's tokenizer: BPE, ``<unk>``=0, ``<s>``=1, ``</s>``=2, no pad piece,
    byte fallback, identity normalization, a dummy ``▁`` prefix, whitespace kept as is.
    ``vocab_size`` is an upper bound (``hard_vocab_limit=False``) so small corpora still train.
    Training is deterministic for a given input (single thread by default).

    Args:
        texts: training sentences (e.g. the manifest's ``text`` fields).
        vocab_size: number of pieces, special and byte pieces included.
        model_type: sentencepiece model type (``bpe`` or ``unigram``).
        byte_fallback: add the 256 ``<0xNN>`` byte pieces so that any text encodes.
        character_coverage: fraction of characters covered by character pieces.
        num_threads: trainer threads.
    """
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("train_sentencepiece: no non-empty training text")
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=writer,
        vocab_size=vocab_size,
        model_type=model_type,
        byte_fallback=byte_fallback,
        hard_vocab_limit=False,
        character_coverage=character_coverage,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=num_threads,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return writer.getvalue()


def extend_model_proto(
    model: bytes,
    num_hubert: int = 501,
    num_pitch: int = 0,
    num_style: int = 0,
    pad_to_multiple: int = DEFAULT_PAD_MULTIPLE,
) -> bytes:
    """Appends the speech vocabulary to a serialized sentencepiece model.

    The existing pieces (and so every text id) are unchanged; ``[Text]``, ``[Speech]`` and the
    unit pieces are appended as ``USER_DEFINED`` pieces with score 0, then ``UNUSED`` filler
    pieces ``<unused_0>``, ... until the size is a multiple of ``pad_to_multiple``.

    Args:
        model: serialized ``ModelProto`` (contents of a ``.model`` file).
        num_hubert: HuBERT units (501 in Spirit LM).
        num_pitch: pitch tokens (64 for Expressive, else 0).
        num_style: style tokens (100 for Expressive, else 0).
        pad_to_multiple: pad the vocabulary to a multiple of this (1 = no padding).

    Raises:
        ValueError: the model already holds one of the pieces to add.
    """
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(model)
    existing = {p.piece for p in proto.pieces}
    new = speech_vocabulary(num_hubert, num_pitch, num_style)
    clash = [p for p in new if p in existing]
    if clash:
        raise ValueError(f"extend_model_proto: the model already has the pieces {clash[:5]} (extended twice?)")
    for piece in new:
        proto.pieces.add(piece=piece, score=0.0, type=_Type.USER_DEFINED)
    if pad_to_multiple < 1:
        raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}")
    n = len(proto.pieces)
    for i in range(padded_size(n, pad_to_multiple) - n):
        name = FILLER_FORMAT.format(i)
        if name in existing:
            raise ValueError(f"extend_model_proto: filler piece {name} already in the model")
        proto.pieces.add(piece=name, score=0.0, type=_Type.UNUSED)
    return proto.SerializeToString()


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def padded_size(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n``: ``padded_size(32503, 256) == 32512``."""
    return -(-n // multiple) * multiple


class SpiritTextTokenizer:
    """A sentencepiece model extended with the speech vocabulary (see the module docstring).

    Build one with :meth:`train` (on corpus text), :meth:`from_base_model` (e.g. LLaMA-2's
    ``tokenizer.model``) or :meth:`load` (an already extended ``.model`` file).
    """

    def __init__(self, model: bytes, path: str | os.PathLike | None = None):
        """Wraps a serialized, already extended sentencepiece model.

        Args:
            model: serialized ``ModelProto``; it must hold ``[Text]`` and ``[Speech]``.
            path: the file it came from (for error messages only).
        """
        self._model = model
        self.path = None if path is None else str(path)
        self.sp = spm.SentencePieceProcessor(model_proto=model)
        proto = sp_pb2.ModelProto()
        proto.ParseFromString(model)
        self._pieces = [p.piece for p in proto.pieces]
        self._types = np.array([p.type for p in proto.pieces], dtype=np.int8)
        self._piece_to_id = {p: i for i, p in enumerate(self._pieces)}
        where = f" ({self.path})" if self.path else ""
        for marker in (TEXT_MARKER, SPEECH_MARKER):
            if marker not in self._piece_to_id:
                raise ValueError(f"sentencepiece model{where} has no {marker} piece: extend it first (extend_model_proto)")
        self.text_marker_id = self._piece_to_id[TEXT_MARKER]
        self.speech_marker_id = self._piece_to_id[SPEECH_MARKER]
        #: number of text pieces of the base model (ids below this are text)
        self.num_text_pieces = self.text_marker_id
        # speech units per stream, in id order
        self._stream_ids: dict[str, list[int]] = {s: [] for s in STREAM_PREFIX}
        unit_re = re.compile(r"\[(Hu|Pi|St)(\d+)\]")
        for i, piece in enumerate(self._pieces):
            m = unit_re.fullmatch(piece)
            if m and self._types[i] == _Type.USER_DEFINED:
                ids = self._stream_ids[PREFIX_STREAM[m.group(1)]]
                if int(m.group(2)) != len(ids):
                    raise ValueError(f"sentencepiece model{where}: piece {piece} at id {i} is out of order")
                ids.append(i)
        self._special_ids = {p: i for p, i in self._piece_to_id.items() if _SPECIAL_RE.fullmatch(p)}

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 1000,
        num_hubert: int = 501,
        num_pitch: int = 0,
        num_style: int = 0,
        pad_to_multiple: int = DEFAULT_PAD_MULTIPLE,
    ) -> SpiritTextTokenizer:
        """Trains a BPE model on ``texts`` (:func:`train_sentencepiece`) and extends it."""
        base = train_sentencepiece(texts, vocab_size)
        return cls(extend_model_proto(base, num_hubert, num_pitch, num_style, pad_to_multiple))

    @classmethod
    def from_base_model(
        cls,
        path: str | os.PathLike,
        num_hubert: int = 501,
        num_pitch: int = 0,
        num_style: int = 0,
        pad_to_multiple: int = DEFAULT_PAD_MULTIPLE,
    ) -> SpiritTextTokenizer:
        """Extends a text-only sentencepiece model file (e.g. LLaMA-2's ``tokenizer.model``)."""
        model = Path(path).read_bytes()
        return cls(extend_model_proto(model, num_hubert, num_pitch, num_style, pad_to_multiple), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SpiritTextTokenizer:
        """Loads an extended ``.model`` file (one written by :meth:`save`, or Meta's)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"text tokenizer model not found: {path}")
        return cls(path.read_bytes(), path)

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the extended model as a sentencepiece ``.model`` file; returns its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self._model)
        return path

    @property
    def model_proto(self) -> bytes:
        """The serialized sentencepiece ``ModelProto``."""
        return self._model

    # -- vocabulary -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, filler pieces included (the LM's embedding size)."""
        return len(self._pieces)

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def pad_id(self) -> int:
        """The model's pad piece, or ``eos_id`` when it has none (LLaMA-2 has none).

        Positions padded with it always carry the label -100 in this project's batches.
        """
        pad = self.sp.pad_id()
        return pad if pad >= 0 else self.eos_id

    @property
    def num_units(self) -> dict[str, int]:
        """Units per stream: ``{"hubert": 501, "pitch": 0, "style": 0}`` for Base."""
        return {s: len(ids) for s, ids in self._stream_ids.items()}

    @property
    def expressive(self) -> bool:
        """Whether the vocabulary has pitch and style tokens."""
        return bool(self._stream_ids["pitch"]) and bool(self._stream_ids["style"])

    def id_of(self, piece: str) -> int:
        """The id of a piece (e.g. ``"[Hu12]"``); ``KeyError`` if it is not in the vocabulary."""
        try:
            return self._piece_to_id[piece]
        except KeyError:
            raise KeyError(f"piece {piece!r} is not in the vocabulary") from None

    def piece_of(self, idx: int) -> str:
        """The piece of an id."""
        return self._pieces[idx]

    def speech_token_ids(self, stream: str = "hubert") -> list[int]:
        """Ids of a stream's unit tokens in unit order: ``speech_token_ids("hubert")[12]`` is ``[Hu12]``."""
        if stream not in self._stream_ids:
            raise KeyError(f"unknown stream {stream!r} (choose from {list(self._stream_ids)})")
        return list(self._stream_ids[stream])

    def is_speech_id(self, idx: int) -> bool:
        """Whether ``idx`` is a unit token (``[Hu..]``, ``[Pi..]``, ``[St..]``); markers are not."""
        return bool(self.speech_token_mask()[idx])

    @cached_property
    def _speech_mask(self) -> np.ndarray:
        mask = np.zeros(self.vocab_size, dtype=bool)
        for ids in self._stream_ids.values():
            mask[ids] = True
        return mask

    @cached_property
    def _text_mask(self) -> np.ndarray:
        mask = np.zeros(self.vocab_size, dtype=bool)
        mask[: self.num_text_pieces] = True
        for special in (self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id()):
            if special >= 0:
                mask[special] = False
        return mask

    def speech_token_mask(self) -> np.ndarray:
        """Bool array ``[vocab_size]``: True on the unit tokens of every stream (not markers)."""
        return self._speech_mask.copy()

    def text_token_mask(self) -> np.ndarray:
        """Bool array ``[vocab_size]``: True on the base model's text pieces.

        ``<unk>``, ``<s>``, ``</s>`` (and a pad piece), the markers, the unit tokens and the
        filler pieces are False: forbid ``~text_token_mask()`` (plus what must stay allowed,
        e.g. ``eos_id``) to keep generation in text.
        """
        return self._text_mask.copy()

    # -- encode / decode ------------------------------------------------------------------

    def encode(self, s: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``s``: speech tokens and markers map directly to their ids, text spans
        between them go through sentencepiece (with its dummy ``▁`` prefix, see the module
        docstring).

        A bracketed token not in the vocabulary (``[Hu999]`` with 501 units) raises ``KeyError``.
        """
        ids: list[int] = [self.bos_id] if bos else []
        pos = 0
        special = self._special_ids
        for m in _SPECIAL_RE.finditer(s):
            if m.start() > pos:
                ids.extend(self.sp.encode(s[pos : m.start()]))
            tok = m.group(0)
            try:
                ids.append(special[tok])
            except KeyError:
                raise KeyError(f"speech token {tok} (at character {m.start()}) is not in the vocabulary") from None
            pos = m.end()
        if pos < len(s):
            ids.extend(self.sp.encode(s[pos:]))
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Inverse of :meth:`encode`: text runs are decoded by sentencepiece (which drops the
        dummy ``▁`` of each run), markers and speech tokens are written as their pieces.
        ``<s>``, ``</s>``, pad and filler ids are dropped."""
        out: list[str] = []
        run: list[int] = []
        n_text = self.num_text_pieces
        drop = {self.bos_id, self.eos_id, self.sp.pad_id()}
        for i in (int(x) for x in ids):
            if i < n_text:
                if i not in drop:
                    run.append(i)
                continue
            if run:
                out.append(self.sp.decode(run))
                run = []
            if i >= self.vocab_size:
                raise IndexError(f"id {i} out of the vocabulary (size {self.vocab_size})")
            if self._types[i] == _Type.USER_DEFINED:
                out.append(self._pieces[i])
        if run:
            out.append(self.sp.decode(run))
        return "".join(out)

    def to_transformers(self, fast: bool = False, add_bos_token: bool = True):
        """A transformers ``LlamaTokenizer`` (or ``LlamaTokenizerFast``) on this model whose
        ``encode(s, add_special_tokens=False)`` equals :meth:`encode` (the tests check it).

        The slow tokenizer runs in legacy mode with the speech pieces registered as added
        tokens; the fast one is converted from it with ``add_prefix_space=True``. With
        ``add_bos_token`` (as Meta loads its checkpoints) ``encode(s)`` starts with ``<s>``.
        """
        import tempfile

        from transformers import LlamaTokenizer, LlamaTokenizerFast

        path = self.path
        if path is None or not Path(path).is_file() or Path(path).read_bytes() != self._model:
            # transformers reads the model from a file: write one once per tokenizer
            path = getattr(self, "_hf_model_file", None)
            if path is None:
                fd, path = tempfile.mkstemp(prefix="spiritlm_tokenizer_", suffix=".model")
                with os.fdopen(fd, "wb") as f:
                    f.write(self._model)
                self._hf_model_file = path
                # transformers keeps only the path; the file goes with this tokenizer (or at exit)
                weakref.finalize(self, _remove_quietly, path)
        if fast:
            return LlamaTokenizerFast(
                vocab_file=path, legacy=True, add_prefix_space=True, add_bos_token=add_bos_token, from_slow=True
            )
        tok = LlamaTokenizer(vocab_file=path, legacy=True, add_bos_token=add_bos_token)
        tok.add_tokens([p for p in self._special_ids])
        return tok

    def __repr__(self) -> str:
        return (
            f"SpiritTextTokenizer(vocab_size={self.vocab_size}, text_pieces={self.num_text_pieces}, "
            f"units={self.num_units}, path={self.path!r})"
        )
