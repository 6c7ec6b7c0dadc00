"""Word lists for the synthetic corpus, written for this project.

Every entry is lowercase alphabetic English that espeak-ng reads as one word per space-separated
token: no digits (numbers are spelled out), no abbreviations, no apostrophes or hyphens. Nouns and
verbs are grouped by meaning so that the generated sentences have learnable regularities (people
eat food, read books, drive vehicles, ...), not just grammar.

Plural nouns and verb forms are derived by the English spelling rules below, with explicit tables
for the irregular ones.
"""

from __future__ import annotations


def _words(block: str) -> tuple[str, ...]:
    return tuple(block.split())


# --------------------------------------------------------------------------------------------
# Names and places
# --------------------------------------------------------------------------------------------
NAMES = _words(
    """
    anna ben clara daniel emma felix grace henry isabel jack julia kevin laura martin nina oliver
    paula peter rachel samuel sarah thomas victor wendy adam alice amy andrew bella carl chloe david
    diana edward ella frank george hannah harry helen ivan james jane jenny john kate leo lily lucy
    mark mary max mia michael molly nathan nora oscar owen patrick rose ruby ryan sam sophie steven
    susan tom tony william zoe albert arthur beth bruce charles charlotte colin daisy dennis eric
    fiona gordon harold iris jacob joseph karen lisa louis luke megan nancy neil paul philip robert
    sally simon teresa walter
    """
)

CITIES = _words(
    """
    paris london tokyo berlin madrid rome chicago boston seattle denver dallas miami sydney toronto
    dublin vienna prague lisbon oslo cairo moscow athens seoul houston phoenix atlanta portland
    austin nashville montreal vancouver edinburgh glasgow manchester liverpool amsterdam brussels
    geneva zurich munich hamburg milan venice florence naples barcelona stockholm helsinki
    copenhagen warsaw budapest
    """
)

#: Places a person can be in or go to, used as "the <place>".
PLACES = _words(
    """
    park garden kitchen library market station museum school hospital office bakery beach forest
    river lake village city harbor bridge church castle farm field hill mountain valley island
    airport hotel restaurant theater cinema stadium gym shop bank factory studio cafe square
    street road corner tower palace zoo barn cottage cabin desert meadow shore pier attic basement
    hallway bedroom bathroom classroom playground camp clinic laboratory warehouse garage
    """
)

#: Rooms of a house (smart-home commands).
ROOMS = _words("kitchen bedroom bathroom hallway garage basement attic office nursery porch garden") + (
    "living room",
    "dining room",
)

DAYS = _words("monday tuesday wednesday thursday friday saturday sunday")
MONTHS = _words("january february march april may june july august september october november december")

# --------------------------------------------------------------------------------------------
# Nouns by kind
# --------------------------------------------------------------------------------------------
ANIMALS = _words(
    """
    cat dog horse cow pig sheep goat rabbit mouse bird duck chicken owl eagle fox wolf bear deer
    lion tiger elephant monkey zebra giraffe snake frog turtle fish whale dolphin shark squirrel
    bee butterfly spider camel donkey parrot penguin swan goose crow pony kitten puppy hamster
    beaver otter badger raccoon lizard crab
    """
)

FOODS = _words(
    """
    apple banana orange pear peach plum cherry grape lemon melon strawberry bread cake cookie pie
    soup salad sandwich pizza pasta rice noodle potato tomato carrot onion cabbage pepper bean
    cheese butter egg chicken fish steak burger sausage pancake muffin donut cereal yogurt honey
    jam chocolate candy popcorn pumpkin mushroom cucumber lettuce corn biscuit waffle
    """
)

DRINKS = _words("coffee tea milk juice water lemonade cocoa soda")

#: Things that can be found, carried, bought, cleaned, broken ...
OBJECTS = _words(
    """
    box bag basket bottle cup mug glass plate bowl spoon fork knife pan pot kettle jar lamp candle
    clock watch mirror chair table bed sofa desk shelf cupboard drawer door window curtain carpet
    pillow blanket towel brush comb key lock wallet purse umbrella hat scarf glove coat jacket
    shirt sweater dress skirt shoe boot sock ring necklace camera phone computer radio television
    ticket map letter envelope stamp pencil pen crayon notebook paper ribbon rope ladder bucket
    hammer saw shovel broom toy doll ball kite balloon puzzle present flag bell basket candle
    """
)

READABLES = _words("book letter newspaper magazine story poem note recipe report diary novel message postcard menu")

INSTRUMENTS = _words("piano guitar violin drum flute trumpet harp cello banjo saxophone")

GAMES = _words("chess football tennis cards soccer hockey basketball baseball golf volleyball")

VEHICLES = _words("car bus truck bicycle train boat ship van tractor scooter motorcycle taxi canoe")

NATURE = _words(
    """
    tree flower rose tulip leaf grass stone rock sand cloud star moon sun rain snow wind storm
    rainbow sky ocean wave seed branch root pond stream puddle
    """
)

#: People by role ("the teacher").
ROLES = _words(
    """
    teacher doctor nurse farmer baker driver pilot sailor painter singer dancer writer student
    child boy girl man woman king queen prince princess soldier captain chef waiter gardener
    neighbor friend stranger grandmother grandfather mother father sister brother uncle aunt
    cousin baby lawyer judge scientist artist musician engineer fisherman shepherd hunter
    """
)

ABSTRACT = _words(
    """
    idea plan dream secret question answer problem reason promise song joke game lesson journey
    adventure holiday party meeting concert festival birthday wedding picnic dinner breakfast lunch
    surprise mistake memory
    """
)

# --------------------------------------------------------------------------------------------
# Adjectives and adverbs
# --------------------------------------------------------------------------------------------
SIZE_ADJ = _words("big small tiny huge tall short long wide narrow heavy light thick thin round flat")
COLOR_ADJ = _words("red blue green yellow black white brown gray pink purple golden silver orange")
AGE_ADJ = _words("old new young ancient modern fresh")
QUALITY_ADJ = _words(
    """
    clean dirty soft hard smooth rough warm cold hot cool wet dry bright dark quiet loud empty
    full broken shiny dusty strange simple plain famous expensive cheap rare useful heavy sharp
    """
)
MOOD_ADJ = _words(
    """
    happy sad tired hungry thirsty angry calm busy brave shy proud curious nervous sleepy bored
    lonely cheerful friendly gentle clever kind lazy polite quiet worried excited surprised
    """
)
FOOD_ADJ = _words("sweet sour salty spicy fresh warm delicious crunchy juicy ripe tasty hot cold")

ADVERBS = _words(
    """
    quickly slowly quietly loudly carefully happily sadly gently softly suddenly finally slowly
    early late often never always sometimes usually rarely together alone again soon today
    yesterday tomorrow everywhere outside inside upstairs downstairs nearby politely patiently
    """
)

TIME_PHRASES = (
    "yesterday",
    "today",
    "last night",
    "this morning",
    "this afternoon",
    "in the evening",
    "every morning",
    "every evening",
    "after lunch",
    "before dinner",
    "at midnight",
    "at dawn",
    "at noon",
    "last week",
    "last summer",
    "in the winter",
    "in the spring",
    "one day",
    "long ago",
    "later that day",
)

PREPOSITIONS = _words("in near behind under beside inside across along above below between around past")

# --------------------------------------------------------------------------------------------
# Verbs: (base, past). Third person singular and present participle follow spelling rules.
# --------------------------------------------------------------------------------------------
#: Intransitive verbs that go with "<subject> <verb> [adverb] [in the <place>]".
INTRANSITIVE = (
    ("sleep", "slept"), ("run", "ran"), ("walk", "walked"), ("sing", "sang"), ("dance", "danced"),
    ("laugh", "laughed"), ("smile", "smiled"), ("wait", "waited"), ("rest", "rested"),
    ("swim", "swam"), ("jump", "jumped"), ("play", "played"), ("work", "worked"),
    ("travel", "traveled"), ("sit", "sat"), ("stand", "stood"), ("shout", "shouted"),
    ("whisper", "whispered"), ("cry", "cried"), ("arrive", "arrived"), ("leave", "left"),
    ("hide", "hid"), ("climb", "climbed"), ("wander", "wandered"), ("study", "studied"),
    ("listen", "listened"), ("dream", "dreamed"), ("relax", "relaxed"), ("hurry", "hurried"),
    ("fall", "fell"), ("sneeze", "sneezed"), ("yawn", "yawned"), ("shiver", "shivered"),
    ("paint", "painted"), ("read", "read"), ("cook", "cooked"), ("write", "wrote"),
    ("return", "returned"), ("stay", "stayed"), ("begin", "began"),
)

#: Transitive verbs grouped by the kind of object they take.
VERBS_FOOD = (
    ("eat", "ate"), ("cook", "cooked"), ("buy", "bought"), ("bake", "baked"), ("taste", "tasted"),
    ("share", "shared"), ("order", "ordered"), ("cut", "cut"), ("wash", "washed"), ("sell", "sold"),
    ("pick", "picked"), ("slice", "sliced"),
)
VERBS_DRINK = (("drink", "drank"), ("pour", "poured"), ("make", "made"), ("spill", "spilled"))
VERBS_READABLE = (
    ("read", "read"), ("write", "wrote"), ("open", "opened"), ("find", "found"), ("send", "sent"),
    ("tear", "tore"), ("finish", "finished"), ("copy", "copied"), ("print", "printed"),
)
VERBS_OBJECT = (
    ("find", "found"), ("lose", "lost"), ("carry", "carried"), ("hold", "held"), ("paint", "painted"),
    ("clean", "cleaned"), ("break", "broke"), ("fix", "fixed"), ("buy", "bought"), ("sell", "sold"),
    ("drop", "dropped"), ("hide", "hid"), ("bring", "brought"), ("move", "moved"), ("wrap", "wrapped"),
    ("borrow", "borrowed"), ("keep", "kept"), ("throw", "threw"), ("polish", "polished"),
    ("push", "pushed"), ("pull", "pulled"), ("lift", "lifted"), ("fold", "folded"), ("steal", "stole"),
)
VERBS_INSTRUMENT = (("play", "played"), ("tune", "tuned"), ("practice", "practiced"), ("carry", "carried"))
VERBS_GAME = (("play", "played"), ("watch", "watched"), ("win", "won"), ("lose", "lost"), ("enjoy", "enjoyed"))
VERBS_VEHICLE = (
    ("drive", "drove"), ("ride", "rode"), ("repair", "repaired"), ("wash", "washed"), ("park", "parked"),
    ("sell", "sold"), ("paint", "painted"), ("stop", "stopped"), ("follow", "followed"),
)
VERBS_ANIMAL = (
    ("feed", "fed"), ("chase", "chased"), ("watch", "watched"), ("follow", "followed"), ("catch", "caught"),
    ("pet", "petted"), ("draw", "drew"), ("scare", "scared"), ("rescue", "rescued"), ("hear", "heard"),
)
VERBS_PERSON = (
    ("meet", "met"), ("visit", "visited"), ("help", "helped"), ("call", "called"), ("thank", "thanked"),
    ("greet", "greeted"), ("invite", "invited"), ("teach", "taught"), ("remember", "remembered"),
    ("hug", "hugged"), ("trust", "trusted"), ("surprise", "surprised"), ("wake", "woke"), ("ask", "asked"),
)
VERBS_NATURE = (
    ("see", "saw"), ("watch", "watched"), ("photograph", "photographed"), ("touch", "touched"),
    ("admire", "admired"), ("notice", "noticed"),
)
VERBS_ABSTRACT = (
    ("share", "shared"), ("forget", "forgot"), ("remember", "remembered"), ("explain", "explained"),
    ("plan", "planned"), ("enjoy", "enjoyed"), ("describe", "described"), ("imagine", "imagined"),
)

#: (verb table, object nouns, object adjectives) triples for transitive clauses.
TRANSITIVE_FRAMES = (
    (VERBS_FOOD, FOODS, FOOD_ADJ + SIZE_ADJ),
    (VERBS_DRINK, DRINKS, ("hot", "cold", "warm", "sweet", "fresh")),
    (VERBS_READABLE, READABLES, AGE_ADJ + ("long", "short", "strange", "famous", "secret", "funny")),
    (VERBS_OBJECT, OBJECTS, SIZE_ADJ + COLOR_ADJ + AGE_ADJ + QUALITY_ADJ),
    (VERBS_INSTRUMENT, INSTRUMENTS, AGE_ADJ + ("loud", "quiet", "golden", "heavy", "expensive", "beautiful")),
    (VERBS_GAME, GAMES, ("long", "short", "exciting", "boring", "difficult", "easy", "important")),
    (VERBS_VEHICLE, VEHICLES, SIZE_ADJ + COLOR_ADJ + AGE_ADJ + ("fast", "slow", "noisy", "shiny")),
    (VERBS_ANIMAL, ANIMALS, SIZE_ADJ + COLOR_ADJ + AGE_ADJ + MOOD_ADJ),
    (VERBS_PERSON, ROLES, AGE_ADJ + MOOD_ADJ),
    (VERBS_NATURE, NATURE, SIZE_ADJ + COLOR_ADJ + ("beautiful", "strange", "distant", "bright", "dark")),
    (VERBS_ABSTRACT, ABSTRACT, ("good", "bad", "strange", "wonderful", "simple", "secret", "long", "funny")),
)

# --------------------------------------------------------------------------------------------
# Numbers, spelled out
# --------------------------------------------------------------------------------------------
ONES = _words("zero one two three four five six seven eight nine ten eleven twelve")
TEENS = _words("thirteen fourteen fifteen sixteen seventeen eighteen nineteen")
TENS = _words("twenty thirty forty fifty sixty seventy eighty ninety")


def number_words(n: int) -> str:
    """Spells 0 <= n < 1000 in words ("forty five", "one hundred and two")."""
    if not 0 <= n < 1000:
        raise ValueError(f"number_words handles 0..999, got {n}")
    if n < 13:
        return ONES[n]
    if n < 20:
        return TEENS[n - 13]
    if n < 100:
        tens, ones = divmod(n, 10)
        return TENS[tens - 2] + (f" {ONES[ones]}" if ones else "")
    hundreds, rest = divmod(n, 100)
    return f"{ONES[hundreds]} hundred" + (f" and {number_words(rest)}" if rest else "")


# --------------------------------------------------------------------------------------------
# Morphology
# --------------------------------------------------------------------------------------------
_IRREGULAR_PLURALS = {
    "mouse": "mice", "goose": "geese", "sheep": "sheep", "deer": "deer", "fish": "fish",
    "child": "children", "man": "men", "woman": "women", "knife": "knives", "leaf": "leaves",
    "wolf": "wolves", "shelf": "shelves", "loaf": "loaves", "person": "people", "tooth": "teeth",
    "foot": "feet", "scarf": "scarves", "fisherman": "fishermen", "potato": "potatoes",
    "tomato": "tomatoes", "hero": "heroes", "corn": "corn", "rice": "rice", "bread": "bread",
    "water": "water", "milk": "milk", "honey": "honey", "butter": "butter", "cheese": "cheese",
    "jam": "jam", "juice": "juice", "tea": "tea", "coffee": "coffee", "cocoa": "cocoa",
    "soup": "soup", "cereal": "cereal", "yogurt": "yogurt", "lemonade": "lemonade", "soda": "soda",
    "popcorn": "popcorn", "chocolate": "chocolate", "candy": "candy", "grass": "grass",
    "sand": "sand", "rain": "rain", "snow": "snow", "wind": "wind", "chess": "chess",
    "football": "football", "tennis": "tennis", "soccer": "soccer", "hockey": "hockey",
    "basketball": "basketball", "baseball": "baseball", "golf": "golf", "volleyball": "volleyball",
    "cards": "cards", "paper": "paper", "steak": "steaks", "news": "news",
}

#: Nouns that are not counted ("some rice", never "a rice").
MASS_NOUNS = frozenset(k for k, v in _IRREGULAR_PLURALS.items() if k == v and k not in {"sheep", "deer", "fish", "cards"})


def plural(noun: str) -> str:
    """English plural of a noun ("box" -> "boxes", "city" -> "cities", "mouse" -> "mice")."""
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def third_person(verb: str) -> str:
    """Third person singular present ("watch" -> "watches", "carry" -> "carries")."""
    if verb in ("have",):
        return "has"
    if verb in ("do", "go"):
        return verb + "es"
    if verb.endswith(("s", "x", "z", "ch", "sh")):
        return verb + "es"
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


_AN_EXCEPTIONS = ("uni", "use", "usu", "eu", "one", "once")
_AN_SILENT_H = ("hour", "honest", "honor", "heir")


def article(word: str) -> str:
    """Indefinite article for the following word ("an apple", "a unicorn", "an hour")."""
    w = word.lower()
    if w.startswith(_AN_SILENT_H):
        return "an"
    if w[:1] in "aeiou" and not w.startswith(_AN_EXCEPTIONS):
        return "an"
    return "a"

