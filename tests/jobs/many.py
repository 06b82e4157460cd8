"""Many tiny taskunits: every result must arrive exactly once and in split order."""

COUNT = 20000


def split(input_data):
    return range(int(input_data))


def processor(n):
    return n * 3 + 1


input_data = str(COUNT)
