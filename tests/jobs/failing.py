"""The processor raises on one item (index 3): the run must fail with the remote traceback."""

input_data = ["ok0", "ok1", "ok2", "boom", "ok4", "ok5"]


class Exploded(ValueError):
    pass


def explode(item):
    raise Exploded("cannot handle %s here" % item)


def processor(item):
    if item == "boom":
        explode(item)
    return item
