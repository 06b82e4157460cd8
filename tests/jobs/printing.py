"""A processor that print()s (to stdout and stderr) while it works: the results must stay clean."""
import sys

input_data = "alpha\nbeta\ngamma"


def processor(item):
    print("print-out", item)
    print("print-err", item, file=sys.stderr)
    return item.upper()
