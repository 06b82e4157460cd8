"""Reverse each line of the input: the smallest complete antnest job.

    antnest run jobs/reverse.py                  # local worker processes
    antnest run -i inventory/hosts.yaml jobs/reverse.py
    antnest run --input words.txt jobs/reverse.py
"""


def split(input_data):
    """One taskunit per line (a file given with --input is read lazily, line by line)."""
    for line in input_data.splitlines() if isinstance(input_data, str) else input_data:
        yield line.rstrip("\n")


def processor(line):
    return line[::-1]


def combine(results):
    for reversed_line in results:
        print(reversed_line)


input_data = "hello\nworld"
