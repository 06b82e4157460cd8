"""A processor that raises: the remote traceback must show this file, the line and its text."""


def processor(item):
    if item == "boom":
        raise ValueError("no boom allowed: " + item)  # the line the traceback shows
    return item


input_data = "a\nboom\nb"
