"""Count words: each taskunit counts one line, combine merges the per-taskunit counts.

    antnest run --input book.txt jobs/wordcount.py
"""
from collections import Counter


def split(input_data):
    for line in input_data.splitlines() if isinstance(input_data, str) else input_data:
        yield line


def processor(line):
    return Counter(word.strip(".,;:!?\"'()[]").lower() for word in line.split())


def combine(results):
    total = Counter()
    for counts in results:
        total.update(counts)
    total.pop("", None)
    for word, count in sorted(total.items(), key=lambda item: (-item[1], item[0])):
        print(f"{count}\t{word}")


input_data = """the quick brown fox
jumps over the lazy dog
the dog sleeps"""
