"""Reverse each line: the smallest complete antnest job (split and combine are the defaults:
one taskunit per line, one result printed per line).

    antnest run jobs/reverse.py                            # local worker processes
    antnest run -i inventory/hosts.yaml jobs/reverse.py    # over SSH
    antnest run --input words.txt jobs/reverse.py          # a file, read lazily
"""


def processor(line):
    return line[::-1]


input_data = "hello\nworld"
