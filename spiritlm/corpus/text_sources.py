"""Labelled sentence generators for the synthetic corpus.

Three sources, each a function of a seeded :class:`random.Random` only (same RNG state, same
output):

* ``sentiment``: one or two sentences with a ``positive`` / ``negative`` / ``neutral`` label
  (for the speech-text sentiment preservation benchmark and for expressive training).
* ``intent``: a spoken command for one of :data:`INTENTS` with its slot values (for few-shot
  intent classification).
* ``narrative``: one to three sentences from a small grammar over a vocabulary of well over a
  thousand words (:mod:`spiritlm.corpus.lexicon`) with agreement, tense and selectional
  restrictions, so a small language model has structure to learn.

All words are lowercase alphabetic tokens (numbers spelled out) that espeak reads one by one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from spiritlm.corpus import lexicon as L

SOURCES = ("sentiment", "intent", "narrative")
SENTIMENTS = ("positive", "negative", "neutral")
INTENTS = (
    "set_alarm",
    "set_timer",
    "play_music",
    "weather_query",
    "turn_on_lights",
    "turn_off_lights",
    "call_contact",
    "add_to_list",
    "send_message",
    "volume_up",
    "volume_down",
)

Sentence = tuple[tuple[str, ...], str]  # (words, terminator: "." "?" or "!")


@dataclass(frozen=True)
class TextItem:
    """One utterance's text and labels.

    Attributes:
        source: ``"sentiment"``, ``"intent"`` or ``"narrative"``.
        sentences: (words, terminator) per sentence; espeak renders each sentence separately.
        sentiment: label of sentiment items, else None.
        intent: label of intent items, else None.
        slots: slot name -> value (words joined by spaces) of intent items.
    """

    source: str
    sentences: tuple[Sentence, ...]
    sentiment: str | None = None
    intent: str | None = None
    slots: dict[str, str] = field(default_factory=dict)

    @property
    def words(self) -> list[str]:
        """All words, in order."""
        return [w for words, _ in self.sentences for w in words]

    @property
    def text(self) -> str:
        """The words joined by single spaces (the manifest's ``text``)."""
        return " ".join(self.words)


# ------------------------------------------------------------------------------------------------
# Template machinery
# ------------------------------------------------------------------------------------------------
Fill = Callable[[random.Random], str]
_SLOT = re.compile(r"\{(\w+)\}")
_SENTENCE = re.compile(r"([^.?!]+)([.?!])")


def _pick(options: Sequence[str]) -> Fill:
    options = tuple(options)
    return lambda rng: rng.choice(options)


def _fix_articles(words: list[str]) -> list[str]:
    out = list(words)
    for i in range(len(out) - 1):
        if out[i] in ("a", "an"):
            out[i] = L.article(out[i + 1])
    return out


def _sentences(text: str) -> tuple[Sentence, ...]:
    out = []
    for body, term in _SENTENCE.findall(text):
        words = body.split()
        if words:
            out.append((tuple(_fix_articles(words)), term))
    if not out:
        raise ValueError(f"template produced no sentence: {text!r}")
    return tuple(out)


def _expand(template: str, fills: dict[str, Fill], rng: random.Random) -> tuple[tuple[Sentence, ...], dict[str, str]]:
    """Fills ``{slot}`` placeholders (each slot drawn once, left to right); returns sentences and values."""
    values: dict[str, str] = {}

    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name not in values:
            values[name] = " ".join(fills[name](rng).split())
        return values[name]

    return _sentences(_SLOT.sub(sub, template)), values


def _template_words(templates: Sequence[str]) -> set[str]:
    words: set[str] = set()
    for t in templates:
        words.update(w for w in re.split(r"[\s.?!]+", _SLOT.sub(" ", t)) if w)
    return words


# ------------------------------------------------------------------------------------------------
# Shared fillers
# ------------------------------------------------------------------------------------------------
SURNAMES = L._words(
    """
    smith brown miller wilson taylor clark walker hall young king wright green baker adams nelson
    carter mitchell roberts turner phillips parker evans edwards collins stewart morris cooper
    reed cook bell murphy bailey
    """
)
GENRES = L._words("jazz rock classical pop blues country folk soul reggae disco piano dance opera")
PLAYLISTS = ("workout", "morning", "party", "dinner", "study", "relaxing", "sleep", "summer", "running", "favorite")
FAMILY = ("mother", "father", "sister", "brother", "aunt", "uncle", "grandmother", "grandfather", "dentist", "boss", "doctor", "neighbor")
DEVICES = ("speaker", "television", "radio", "phone", "computer")
LISTS = ("shopping", "grocery", "party", "holiday", "packing", "birthday")
HOURS = tuple(L.number_words(h) for h in range(1, 13))
MINUTES = ("fifteen", "twenty", "thirty", "forty five", "ten", "fifty")
PARTS_OF_DAY = ("in the morning", "in the afternoon", "in the evening", "at night")
WEATHER_DAYS = ("today", "tomorrow", "tonight", "this weekend", "this afternoon") + tuple(f"on {d}" for d in L.DAYS)

POS_ADJ = L._words(
    """
    wonderful amazing excellent fantastic lovely beautiful delicious brilliant perfect great
    delightful charming pleasant superb marvelous fabulous terrific awesome incredible splendid
    cozy helpful comfortable gorgeous magnificent
    """
)
NEG_ADJ = L._words(
    """
    terrible awful horrible disgusting boring dreadful rude dirty disappointing annoying useless
    ugly miserable noisy uncomfortable stale bland unpleasant nasty painful pathetic shabby
    """
)
NEU_ADJ = L._words("ordinary average normal regular standard typical usual plain")
POS_MOOD = L._words("happy cheerful grateful relaxed wonderful great excited delighted proud lucky")
NEG_MOOD = L._words("sad miserable angry lonely upset terrible awful worried hopeless exhausted")
INTENSIFIERS = L._words("really truly absolutely so very incredibly extremely")
EVAL_NOUNS = L._words(
    """
    movie film book meal dinner hotel room phone concert show service trip holiday song album
    restaurant coffee cake game weekend party lesson class car bicycle apartment garden weather
    present jacket hike flight journey museum breakfast festival
    """
)
POS_VERBS = (("love", "loved"), ("adore", "adored"), ("enjoy", "enjoyed"), ("like", "liked"), ("admire", "admired"))
NEG_VERBS = (("hate", "hated"), ("dislike", "disliked"), ("regret", "regretted"), ("despise", "despised"))


def _clock(rng: random.Random) -> str:
    hour = rng.choice(HOURS)
    form = rng.randrange(5)
    if form == 0:
        t = hour
    elif form == 1:
        t = f"{hour} {rng.choice(MINUTES)}"
    elif form == 2:
        t = f"half past {hour}"
    elif form == 3:
        t = f"a quarter past {hour}"
    else:
        t = f"a quarter to {hour}"
    if rng.random() < 0.5:
        t += " " + rng.choice(PARTS_OF_DAY)
    return t


def _duration(rng: random.Random) -> str:
    form = rng.randrange(7)
    n = L.number_words(rng.randrange(2, 60))
    if form == 0:
        return f"{n} minutes"
    if form == 1:
        return f"{n} seconds"
    if form == 2:
        return "one minute"
    if form == 3:
        return rng.choice(("an hour", "half an hour", "a quarter of an hour"))
    if form == 4:
        return f"{L.number_words(rng.randrange(2, 6))} hours"
    if form == 5:
        return f"{L.number_words(rng.randrange(1, 30))} minutes and {L.number_words(rng.randrange(5, 60, 5))} seconds"
    return f"{n} minutes"


def _contact(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.55:
        return rng.choice(L.NAMES)
    if r < 0.75:
        return f"{rng.choice(L.NAMES)} {rng.choice(SURNAMES)}"
    return f"my {rng.choice(FAMILY)}"


def _artist(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return f"{rng.choice(L.NAMES)} {rng.choice(SURNAMES)}"
    return f"the {rng.choice(L.COLOR_ADJ + L.SIZE_ADJ)} {L.plural(rng.choice(L.ANIMALS))}"


def _list_item(rng: random.Random) -> str:
    noun = rng.choice(L.FOODS + L.DRINKS + L.OBJECTS[:40])
    if noun in L.MASS_NOUNS:
        return noun
    return L.plural(noun) if rng.random() < 0.7 else f"a {noun}"


def _thing(rng: random.Random) -> str:
    return rng.choice(L.OBJECTS + L.VEHICLES + L.INSTRUMENTS)


def _count_plural(rng: random.Random) -> str:
    noun = rng.choice([n for n in L.OBJECTS + L.ANIMALS if n not in L.MASS_NOUNS])
    return f"{L.number_words(rng.randrange(2, 21))} {L.plural(noun)}"


# ------------------------------------------------------------------------------------------------
# Sentiment
# ------------------------------------------------------------------------------------------------
_SENTIMENT_FILLS: dict[str, Fill] = {
    "pos": _pick(POS_ADJ),
    "pos2": _pick(POS_ADJ),
    "neg": _pick(NEG_ADJ),
    "neg2": _pick(NEG_ADJ),
    "neu": _pick(NEU_ADJ),
    "noun": _pick(EVAL_NOUNS),
    "noun2": _pick(EVAL_NOUNS),
    "intens": _pick(INTENSIFIERS),
    "pos_verb": _pick([b for b, _ in POS_VERBS]),
    "pos_verb_past": _pick([p for _, p in POS_VERBS]),
    "neg_verb": _pick([b for b, _ in NEG_VERBS]),
    "neg_verb_past": _pick([p for _, p in NEG_VERBS]),
    "pos_mood": _pick(POS_MOOD),
    "neg_mood": _pick(NEG_MOOD),
    "time": _pick(L.TIME_PHRASES),
    "place": _pick(L.PLACES),
    "place2": _pick(L.PLACES),
    "city": _pick(L.CITIES),
    "city2": _pick(L.CITIES),
    "thing": _thing,
    "food": _pick(L.FOODS),
    "name": _pick(L.NAMES),
    "name2": _pick(L.NAMES),
    "role": _pick(L.ROLES),
    "clock": _clock,
    "day": _pick(L.DAYS),
    "month": _pick(L.MONTHS),
    "room": _pick(L.ROOMS),
    "count": _count_plural,
}

SENTIMENT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "positive": (
        "the {noun} was {intens} {pos}.",
        "i {pos_verb_past} the {noun} {time}.",
        "what a {pos} {noun}!",
        "this is the best {noun} i have ever had.",
        "we had a {pos} time at the {place}.",
        "thank you so much for the {pos} {thing}.",
        "i am so happy with my new {thing}.",
        "everything about the {noun} was {pos}.",
        "i {intens} {pos_verb} this {noun}.",
        "the {noun} was {pos} and the {noun2} was {pos2}.",
        "{name} gave me a {pos} {thing} and i love it.",
        "i cannot wait to go back to the {place}.",
        "what a {pos} day in {city}!",
        "i feel {pos_mood} today.",
        "the {food} at the {place} was {intens} {pos}. i would go again.",
        "my {role} was {intens} {pos} to me {time}.",
        "i {pos_verb_past} every minute of the {noun}!",
        "the view from the {place} was {pos}.",
    ),
    "negative": (
        "the {noun} was {intens} {neg}.",
        "i {neg_verb_past} the {noun} {time}.",
        "what a {neg} {noun}!",
        "this is the worst {noun} i have ever had.",
        "we had a {neg} time at the {place}.",
        "the {noun} was {neg} and the {noun2} was {neg2}.",
        "i am so disappointed with my new {thing}.",
        "nothing about the {noun} was good.",
        "i {intens} {neg_verb} this {noun}.",
        "my {thing} is broken again and nobody can fix it.",
        "i never want to go back to the {place}.",
        "what a {neg} day in {city}!",
        "i feel {neg_mood} today.",
        "{name} lost my {thing} and did not even say sorry.",
        "the {noun} was a complete waste of time and money.",
        "the {food} at the {place} was {intens} {neg}. i will never go again.",
        "my {role} was {intens} {neg} to me {time}.",
        "everything went wrong at the {noun} and i want my money back.",
    ),
    "neutral": (
        "the {noun} starts at {clock}.",
        "i bought a {thing} {time}.",
        "the {place} is next to the {place2}.",
        "{name} lives in {city}.",
        "the {thing} is on the table.",
        "we are meeting at the {place} on {day}.",
        "the train to {city} leaves at {clock}.",
        "my {role} works at the {place}.",
        "the {noun} was {neu}.",
        "there are {count} in the {room}.",
        "{name} moved to {city} in {month}.",
        "the {place} opens at {clock} on {day}.",
        "{name} and {name2} took the bus to the {place}.",
        "the {noun} is scheduled for {day}.",
        "it takes about an hour to drive from {city} to {city2}.",
        "the {thing} is in the {room}.",
    ),
}


def sentiment_item(rng: random.Random, label: str | None = None) -> TextItem:
    """A sentence with a sentiment label (``label`` drawn uniformly when None)."""
    label = label or rng.choice(SENTIMENTS)
    if label not in SENTIMENT_TEMPLATES:
        raise ValueError(f"unknown sentiment {label!r}; choose from {SENTIMENTS}")
    template = rng.choice(SENTIMENT_TEMPLATES[label])
    sentences, _ = _expand(template, _SENTIMENT_FILLS, rng)
    return TextItem("sentiment", sentences, sentiment=label)


# ------------------------------------------------------------------------------------------------
# Intents
# ------------------------------------------------------------------------------------------------
_INTENT_FILLS: dict[str, Fill] = {
    "time": _clock,
    "day": _pick(("tomorrow", "today", "tonight") + tuple(f"on {d}" for d in L.DAYS) + tuple(f"every {d}" for d in L.DAYS)),
    "duration": _duration,
    "food": _pick(L.FOODS),
    "genre": _pick(GENRES),
    "artist": _artist,
    "playlist": _pick(PLAYLISTS),
    "city": _pick(L.CITIES),
    "when": _pick(WEATHER_DAYS),
    "room": _pick(L.ROOMS),
    "contact": _contact,
    "item": _list_item,
    "list": _pick(LISTS),
    "place": _pick(L.PLACES),
    "thing": _pick(L.OBJECTS),
    "device": _pick(DEVICES),
    # "message" is added below: it expands templates with these same fillers.
}
_MESSAGES = (
    "i am running late",
    "i will be home soon",
    "dinner is ready",
    "the meeting is cancelled",
    "i love you",
    "see you at the {place}",
    "i am at the {place}",
    "call me back",
    "happy birthday",
    "i will call you later",
    "the {thing} is in the {room}",
    "do not forget the {thing}",
    "we need to leave at {time}",
)

INTENT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "set_alarm": (
        "set an alarm for {time}.",
        "wake me up at {time}.",
        "set my alarm for {time} {day}.",
        "please set an alarm for {time}.",
        "i need an alarm at {time} {day}.",
        "can you wake me up at {time} {day}?",
    ),
    "set_timer": (
        "set a timer for {duration}.",
        "start a timer for {duration}.",
        "remind me in {duration}.",
        "set a {food} timer for {duration}.",
        "please count down {duration}.",
        "can you time {duration} for me?",
    ),
    "play_music": (
        "play some {genre} music.",
        "put on some {genre}.",
        "play music by {artist}.",
        "i want to listen to {genre} music.",
        "play the latest album by {artist}.",
        "play my {playlist} playlist.",
        "can you play something by {artist}?",
    ),
    "weather_query": (
        "what is the weather in {city} {when}?",
        "will it rain in {city} {when}?",
        "how hot will it be in {city} {when}?",
        "is it going to snow {when}?",
        "do i need an umbrella {when}?",
        "what is the forecast for {city}?",
        "how cold is it in {city} {when}?",
    ),
    "turn_on_lights": (
        "turn on the lights in the {room}.",
        "switch on the {room} light.",
        "turn the {room} lights on.",
        "lights on in the {room} please.",
        "can you turn on the lamp in the {room}?",
        "it is too dark in the {room}.",
    ),
    "turn_off_lights": (
        "turn off the lights in the {room}.",
        "switch off the {room} light.",
        "turn the {room} lights off.",
        "lights off in the {room} please.",
        "can you turn off the lamp in the {room}?",
        "it is too bright in the {room}.",
    ),
    "call_contact": (
        "call {contact}.",
        "phone {contact}.",
        "give {contact} a call.",
        "please call {contact} now.",
        "i want to talk to {contact}.",
        "can you ring {contact} for me?",
    ),
    "add_to_list": (
        "add {item} to my shopping list.",
        "put {item} on the {list} list.",
        "remember to buy {item}.",
        "add {item} to the {list} list.",
        "please add {item} to my list.",
        "we need {item} for the {list} list.",
    ),
    "send_message": (
        "send a message to {contact} saying {message}.",
        "text {contact} that {message}.",
        "tell {contact} that {message}.",
        "send {contact} a message that {message}.",
        "write to {contact} that {message}.",
    ),
    "volume_up": (
        "turn the volume up.",
        "make it louder.",
        "increase the volume on the {device}.",
        "turn up the {device} a little.",
        "louder please.",
        "i cannot hear the {device}.",
        "can you turn it up?",
    ),
    "volume_down": (
        "turn the volume down.",
        "make it quieter.",
        "lower the volume on the {device}.",
        "turn down the {device} a little.",
        "quieter please.",
        "the {device} is too loud.",
        "can you turn it down?",
    ),
}


def _message(rng: random.Random) -> str:
    sentences, _ = _expand(rng.choice(_MESSAGES) + ".", _INTENT_FILLS, rng)
    return " ".join(sentences[0][0])


_INTENT_FILLS["message"] = _message


def intent_item(rng: random.Random, intent: str | None = None) -> TextItem:
    """A spoken command with its intent and slot values (``intent`` drawn uniformly when None)."""
    intent = intent or rng.choice(INTENTS)
    if intent not in INTENT_TEMPLATES:
        raise ValueError(f"unknown intent {intent!r}; choose from {INTENTS}")
    template = rng.choice(INTENT_TEMPLATES[intent])
    sentences, slots = _expand(template, _INTENT_FILLS, rng)
    return TextItem("intent", sentences, intent=intent, slots=slots)


# ------------------------------------------------------------------------------------------------
# Narrative grammar
# ------------------------------------------------------------------------------------------------
#: Function words and fixed phrases the narrative grammar uses (besides the lexicon).
NARRATIVE_WORDS = L._words(
    """
    the a an some his her their my our was were is are had has went goes to with and but then
    later after that because when there said says wanted wants too very so it they she he we
    at of for from on by about while before into everyone nobody something everything
    gave gives for together looked looks felt feels seemed seems like not did does could would
    again also still always found lived lives near than quite
    """
)
_CONNECTORS = ("then", "later", "after that", "suddenly", "meanwhile", "the next day", "soon")
_PERSON_ADJ = L.AGE_ADJ + L.MOOD_ADJ


@dataclass
class _NP:
    words: list[str]
    plural: bool


def _person(rng: random.Random, allow_plural: bool = True) -> _NP:
    r = rng.random()
    if r < 0.35:
        return _NP([rng.choice(L.NAMES)], False)
    if r < 0.5 and allow_plural:
        a, b = rng.sample(L.NAMES, 2)
        return _NP([a, "and", b], True)
    det = rng.choice(("the", "the", "my", "our", "their", "a"))
    noun = rng.choice(L.ROLES)
    adj = [rng.choice(_PERSON_ADJ)] if rng.random() < 0.4 else []
    if allow_plural and det != "a" and rng.random() < 0.25:
        return _NP([det, *adj, L.plural(noun)], True)
    return _NP([det, *adj, noun], False)


def _animal(rng: random.Random) -> _NP:
    adj = [rng.choice(L.SIZE_ADJ + L.COLOR_ADJ + L.MOOD_ADJ)] if rng.random() < 0.5 else []
    noun = rng.choice(L.ANIMALS)
    if rng.random() < 0.3:
        return _NP(["the", *adj, L.plural(noun)], True)
    return _NP([rng.choice(("the", "a", "her", "his")), *adj, noun], False)


def _subject(rng: random.Random) -> _NP:
    return _person(rng) if rng.random() < 0.75 else _animal(rng)


def _object(rng: random.Random, nouns: Sequence[str], adjs: Sequence[str]) -> list[str]:
    noun = rng.choice(nouns)
    adj = [rng.choice(adjs)] if adjs and rng.random() < 0.5 else []
    if noun in L.MASS_NOUNS:
        return [rng.choice(("some", "the", "their", "her")), *adj, noun]
    r = rng.random()
    if r < 0.15:
        return [L.number_words(rng.randrange(2, 13)), *adj, L.plural(noun)]
    if r < 0.25:
        return ["some", *adj, L.plural(noun)]
    return [rng.choice(("the", "a", "a", "his", "her", "their", "an")), *adj, noun]


def _verb(pair: tuple[str, str], tense: str, subj: _NP) -> str:
    base, past = pair
    if tense == "past":
        return past
    return base if subj.plural else L.third_person(base)


def _be(tense: str, subj: _NP) -> str:
    if tense == "past":
        return "were" if subj.plural else "was"
    return "are" if subj.plural else "is"


def _place_phrase(rng: random.Random) -> list[str]:
    return [rng.choice(L.PREPOSITIONS), "the", rng.choice(L.PLACES)]


# long: twelve clause shapes of one grammar, each a few lines read top to bottom; their rng draws, in this order, are the corpus a seed gives
def _clause(rng: random.Random, tense: str) -> list[str]:
    """One clause; the dispatcher picks among a dozen shapes."""
    kind = rng.randrange(12)
    if kind in (0, 1, 2):  # transitive with a selectional frame
        subj = _person(rng)
        verbs, nouns, adjs = rng.choice(L.TRANSITIVE_FRAMES)
        out = [*subj.words, _verb(rng.choice(verbs), tense, subj), *_object(rng, nouns, adjs)]
        if rng.random() < 0.5:
            out += _place_phrase(rng)
        if rng.random() < 0.3:
            out.append(rng.choice(L.ADVERBS))
        return out
    if kind == 3:  # intransitive
        subj = _subject(rng)
        out = [*subj.words, _verb(rng.choice(L.INTRANSITIVE), tense, subj)]
        if rng.random() < 0.5:
            out.append(rng.choice(L.ADVERBS))
        if rng.random() < 0.6:
            out += _place_phrase(rng)
        return out
    if kind == 4:  # copula with a mood
        subj = _subject(rng)
        out = [*subj.words, _be(tense, subj), rng.choice(("very", "so", "quite", "")) or "", rng.choice(L.MOOD_ADJ)]
        out = [w for w in out if w]
        if rng.random() < 0.5:
            noun = rng.choice(L.OBJECTS + L.FOODS)
            obj_adj = rng.choice(L.QUALITY_ADJ + L.SIZE_ADJ)
            out += ["because", "the", noun, "was" if tense == "past" else "is", obj_adj]
        return out
    if kind == 5:  # existential
        noun = rng.choice(L.OBJECTS + L.ANIMALS + L.NATURE)
        adj = rng.choice(L.SIZE_ADJ + L.COLOR_ADJ + L.AGE_ADJ)
        if rng.random() < 0.4 and noun not in L.MASS_NOUNS:
            n = L.number_words(rng.randrange(2, 12))
            return ["there", "were" if tense == "past" else "are", n, adj, L.plural(noun), *_place_phrase(rng)]
        det = "some" if noun in L.MASS_NOUNS else "a"
        return ["there", "was" if tense == "past" else "is", det, adj, noun, *_place_phrase(rng)]
    if kind == 6:  # motion to a place or city
        subj = _person(rng)
        go = _verb(("go", "went"), tense, subj)
        if rng.random() < 0.4:
            out = [*subj.words, rng.choice((go, _verb(("travel", "traveled"), tense, subj))), "to", rng.choice(L.CITIES)]
            if rng.random() < 0.5:
                out += ["in", rng.choice(L.MONTHS)]
            return out
        out = [*subj.words, go, "to", "the", rng.choice(L.PLACES)]
        if rng.random() < 0.5:
            out += ["with", rng.choice(L.NAMES)]
        return out
    if kind == 7:  # giving
        subj = _person(rng)
        gift = rng.choice(L.OBJECTS + L.FOODS + L.INSTRUMENTS + L.READABLES)
        adj = rng.choice(L.SIZE_ADJ + L.COLOR_ADJ + L.AGE_ADJ)
        if gift in L.MASS_NOUNS:
            return [*subj.words, _verb(("give", "gave"), tense, subj), rng.choice(L.NAMES), "some", adj, gift]
        return [*subj.words, _verb(("give", "gave"), tense, subj), rng.choice(L.NAMES), "a", adj, gift]
    if kind == 8:  # desire and obstacle
        subj = _person(rng)
        verbs, nouns, adjs = rng.choice(L.TRANSITIVE_FRAMES)
        base = rng.choice(verbs)[0]
        noun = rng.choice(nouns)
        out = [*subj.words, _verb(("want", "wanted"), tense, subj), "to", base, "the", noun]
        if rng.random() < 0.6:
            out += ["but", "it", "was" if tense == "past" else "is", "too", rng.choice(L.QUALITY_ADJ + L.SIZE_ADJ)]
        return out
    if kind == 9:  # reported speech
        subj = _person(rng, allow_plural=False)
        nouns, adjs = rng.choice(
            ((L.PLACES, L.QUALITY_ADJ + L.SIZE_ADJ), (L.OBJECTS, L.QUALITY_ADJ + L.COLOR_ADJ), (L.ANIMALS, L.MOOD_ADJ + L.SIZE_ADJ))
        )
        noun, adj = rng.choice(nouns), rng.choice(adjs)
        said = "said" if tense == "past" else "says"
        return [*subj.words, said, "that", "the", noun, "was" if tense == "past" else "is", adj]
    if kind == 10:  # when-clause
        subj = _person(rng)
        group = _person(rng)
        arrive = _verb(("arrive", "arrived"), tense, subj)
        return ["when", *subj.words, arrive, "at", "the", rng.choice(L.PLACES), *group.words, _be(tense, group), rng.choice(L.MOOD_ADJ)]
    # kind == 11: a person and an animal
    subj = _person(rng)
    verbs = L.VERBS_ANIMAL
    animal = _animal(rng)
    out = [*subj.words, _verb(rng.choice(verbs), tense, subj), *animal.words]
    if rng.random() < 0.5:
        out += _place_phrase(rng)
    return out


def _narrative_sentence(rng: random.Random, tense: str, first: bool) -> list[str]:
    words: list[str] = []
    if not first and rng.random() < 0.5:
        words += rng.choice(_CONNECTORS).split()
    elif rng.random() < 0.2 and tense == "past":
        words += rng.choice(L.TIME_PHRASES).split()
    words += _clause(rng, tense)
    if rng.random() < 0.15:  # coordination
        words += ["and", *_clause(rng, tense)]
    return _fix_articles(words)


def narrative_item(rng: random.Random, max_sentences: int = 3) -> TextItem:
    """One to ``max_sentences`` sentences of plain narrative (mostly past tense)."""
    tense = "past" if rng.random() < 0.7 else "present"
    n = rng.choices(range(1, max_sentences + 1), weights=[0.55, 0.3, 0.15][:max_sentences])[0]
    sentences = tuple((tuple(_narrative_sentence(rng, tense, i == 0)), ".") for i in range(n))
    return TextItem("narrative", sentences)


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------
GENERATORS: dict[str, Callable[[random.Random], TextItem]] = {
    "sentiment": sentiment_item,
    "intent": intent_item,
    "narrative": narrative_item,
}


def generate(source: str, rng: random.Random) -> TextItem:
    """One :class:`TextItem` of the given source, drawn with ``rng``."""
    try:
        gen = GENERATORS[source]
    except KeyError:
        raise ValueError(f"unknown text source {source!r}; choose from {SOURCES}") from None
    return gen(rng)


def vocabulary() -> set[str]:
    """Every word the generators can produce (a superset: derived forms of every lexicon entry)."""
    words: set[str] = set()
    noun_lists = (L.ANIMALS, L.FOODS, L.DRINKS, L.OBJECTS, L.READABLES, L.INSTRUMENTS, L.GAMES, L.VEHICLES, L.NATURE, L.ROLES, L.ABSTRACT, L.PLACES, L.ROOMS)
    for nouns in noun_lists:
        for n in nouns:
            words.update(n.split())
            words.add(L.plural(n.split()[-1]))
    verb_tables = (L.INTRANSITIVE, VERBS_EXTRA) + tuple(frame[0] for frame in L.TRANSITIVE_FRAMES) + (POS_VERBS, NEG_VERBS)
    for table in verb_tables:
        for base, past in table:
            words.update((base, past, L.third_person(base)))
    for lst in (
        L.NAMES, L.CITIES, L.DAYS, L.MONTHS, L.SIZE_ADJ, L.COLOR_ADJ, L.AGE_ADJ, L.QUALITY_ADJ, L.MOOD_ADJ,
        L.FOOD_ADJ, L.ADVERBS, L.PREPOSITIONS, L.ONES, L.TEENS, L.TENS, SURNAMES, GENRES, PLAYLISTS, FAMILY,
        DEVICES, LISTS, POS_ADJ, NEG_ADJ, NEU_ADJ, POS_MOOD, NEG_MOOD, INTENSIFIERS, EVAL_NOUNS, NARRATIVE_WORDS,
    ):
        words.update(lst)
    for frame in L.TRANSITIVE_FRAMES:
        words.update(frame[2])
    for phrase in L.TIME_PHRASES + _CONNECTORS + PARTS_OF_DAY + WEATHER_DAYS + MINUTES + HOURS:
        words.update(phrase.split())
    words.update(["hundred", "an", "a", "hour", "half", "quarter", "past", "minute", "minutes", "seconds", "hours"])
    for templates in list(SENTIMENT_TEMPLATES.values()) + list(INTENT_TEMPLATES.values()) + [_MESSAGES]:
        words |= _template_words(templates)
    return words


#: Verbs used by the grammar outside the lexicon tables.
VERBS_EXTRA = (("go", "went"), ("give", "gave"), ("want", "wanted"), ("arrive", "arrived"), ("travel", "traveled"), ("say", "said"))


def text_corpus(num_sentences: int, seed: int, mix: dict[str, float] | None = None) -> list[str]:
    """Text-only documents from the same generators as the spoken corpus, one string each.

    The stand-in for the text data a real run inherits from LLaMA-2's pretraining: cheap to make
    in any amount, with the spoken corpus' vocabulary and grammar. Item ``i`` is drawn from its
    own generator seeded with ``(seed, i)``, so a longer corpus extends a shorter one.

    Args:
        num_sentences: number of documents (each holds one to a few sentences).
        seed: random seed.
        mix: text source -> weight (default: narrative 0.6, sentiment 0.2, intent 0.2).
    """
    mix = mix or {"narrative": 0.6, "sentiment": 0.2, "intent": 0.2}
    unknown = set(mix) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown text sources {sorted(unknown)}; choose from {SOURCES}")
    names, weights = zip(*sorted(mix.items()))
    docs = []
    for i in range(num_sentences):
        rng = random.Random(f"text-corpus/{seed}/{i}")
        docs.append(generate(rng.choices(names, weights)[0], rng).text)
    return docs
