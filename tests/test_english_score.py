"""The English scoring's choices (`english.score`): which rows of a split are scored, and how long a transcript may
grow; every system gets the same."""

from english.score import PROMPTS, evenly_spaced, transcription_tokens


def test_a_subset_spreads_over_the_split_and_keeps_every_question():
    rows = [{"text": f"row {index}"} for index in range(20)]
    for index in (1, 2, 3):
        rows[index]["question"] = "Which number is mentioned?"
    chosen = [int(row["text"].split()[1]) for row in evenly_spaced(rows, 5)]
    assert chosen == [0, 1, 2, 3, 4, 8, 12, 16]  # every 4th row, and the three with a question, in order
    assert evenly_spaced(rows, None) == rows and evenly_spaced(rows, 50) == rows


def test_transcripts_get_room_for_the_longest_clip_and_no_more_than_160_tokens():
    assert transcription_tokens([2.0, 6.0]) == 38
    assert transcription_tokens([28.0]) == 148 and transcription_tokens([60.0]) == 160
    assert set(PROMPTS) == {"transcribe", "question", "continue"}
    assert "{question}" in PROMPTS["question"][0]
