"""Write the English clips the real-weight tests transcribe: espeak-ng speech, 16 kHz mono FLAC, metadata.jsonl.

From the repository root: `python -m tests.data.real_weights.make_clips`. The clips are committed so the tests do not
depend on the installed espeak-ng version.
"""

import json
import os

from tests.helpers.speech import synthesize

CLIPS = [
    ("the quick brown fox jumps over the lazy dog", "en-us"),
    ("please bring me a cup of tea and some bread", "en-us"),
    ("the weather is nice today so we will walk to the park", "en-us"),
    ("she reads a book every evening before she goes to sleep", "en-gb"),
    ("we will meet at the station at noon tomorrow", "en-us"),
    ("the children are playing football in the garden", "en-gb"),
]


def main() -> None:
    directory = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(directory, "metadata.jsonl"), "w") as metadata:
        for index, (text, voice) in enumerate(CLIPS):
            file_name = f"clip_{index}.flac"
            synthesize(text, os.path.join(directory, file_name), voice=voice, speed=150)
            metadata.write(json.dumps({"file_name": file_name, "text": text, "voice": voice}) + "\n")


if __name__ == "__main__":
    main()
