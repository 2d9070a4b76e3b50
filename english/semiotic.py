"""Spoken numbers, dates, times, phone numbers, amounts and spelled letters: words WordNet's examples never hold.

The classes are those of text normalisation (Sproat and Jaitly, 2016: CARDINAL, ORDINAL, DATE, TIME, TELEPHONE, MONEY,
LETTERS), written out as they are spoken (`num2words`), alone or in a short carrier phrase. WordNet's example
sentences, the recipe's only other text, contain no month, no weekday and no number word above ten but a few, so an
adapter trained on them alone has never heard "eleven", "forty", "October" or "Friday".
"""

import calendar
import random
import string

from num2words import num2words

ALONE_SHARE = 0.4
CARRIERS = {
    "cardinal": ("there were {} of them", "about {} people came", "the answer is {}", "we counted {}", "{} in all"),
    "ordinal": ("the {} one", "it was the {} time", "on the {} floor", "she came {}", "the {} in line"),
    "date": ("it was {}", "the date is {}", "that was {}", "not until {}", "we talked about {}"),
    "time": ("at {}", "it starts at {}", "the train leaves at {}", "meet me at {}", "it is {} now"),
    "telephone": ("my number is {}", "call {}", "the code is {}", "dial {}", "extension {}"),
    "money": ("it costs {}", "that will be {}", "he paid {}", "a fee of {}", "only {}"),
    "letters": ("spelled {}", "the letters {}", "it starts with {}", "the code {}", "initials {}"),
}


def words(number: int, **kwargs) -> str:
    """`number` as spoken, without the commas num2words puts between groups."""
    return num2words(number, **kwargs).replace(",", "")


def cardinal(rng: random.Random) -> str:
    scale = rng.choice((20, 100, 1000, 10_000, 1_000_000, 1_000_000_000))
    return words(rng.randrange(scale))


def ordinal(rng: random.Random) -> str:
    return words(rng.choice((rng.randint(1, 31), rng.randint(1, 100), rng.randint(100, 1000))), to="ordinal")


def date(rng: random.Random) -> str:
    month, day = calendar.month_name[rng.randint(1, 12)], words(rng.randint(1, 31), to="ordinal")
    weekday, year = calendar.day_name[rng.randrange(7)], words(rng.randint(1900, 2030), to="year")
    return rng.choice(
        (month, weekday, f"{month} {day}", f"the {day} of {month}", f"{weekday} the {day}", f"{month} {year}", year)
    )


def time(rng: random.Random) -> str:
    hour, minute = words(rng.randint(1, 12)), rng.randrange(1, 60)
    return rng.choice(
        (
            f"{hour} o'clock",
            f"{hour} {words(minute) if minute > 9 else 'oh ' + words(minute)}",
            f"half past {hour}",
            f"a quarter to {hour}",
            f"{hour} {rng.choice(('in the morning', 'in the evening', 'at night'))}",
            rng.choice(("noon", "midnight")),
        )
    )


def telephone(rng: random.Random) -> str:
    return " ".join(words(rng.randrange(10)) for _ in range(rng.randint(3, 10)))


def money(rng: random.Random) -> str:
    dollars, cents = rng.choice((rng.randint(1, 20), rng.randint(1, 1000))), rng.randrange(100)
    amount = f"{words(dollars)} dollar{'s' if dollars > 1 else ''}"
    return rng.choice((amount, f"{amount} and {words(cents)} cents" if cents > 1 else amount, f"{words(cents)} cents"))


def letters(rng: random.Random) -> str:
    return " ".join(rng.choice(string.ascii_uppercase) for _ in range(rng.randint(1, 4)))


CLASSES = {
    "cardinal": cardinal,
    "ordinal": ordinal,
    "date": date,
    "time": time,
    "telephone": telephone,
    "money": money,
    "letters": letters,
}


def semiotic_sentences(count: int, seed: int) -> list[dict]:
    """`count` rows {"text", "semiotic_class"}: a drawn class's expression, alone (a share `ALONE_SHARE`) or in one of
    its carrier phrases, the first word capitalised as the corpus's other sentences are."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        name = rng.choice(list(CLASSES))
        text = CLASSES[name](rng)
        if rng.random() >= ALONE_SHARE:
            text = rng.choice(CARRIERS[name]).format(text)
        rows.append({"text": text[0].upper() + text[1:], "semiotic_class": name})
    return rows
