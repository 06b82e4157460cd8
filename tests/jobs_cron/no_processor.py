"""A job file without a processor: `antnest run` must exit 2 (bad input)."""


def split(input_data):
    return []
