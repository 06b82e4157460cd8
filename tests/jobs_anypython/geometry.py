"""A sibling module of points_job.py: the hosts get it as source, imported under this name."""


class Point:
    """Results are instances of this class: they must unpickle on the master."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __repr__(self) -> str:
        return f"Point({self.x}, {self.y})"


def mirror(x: int) -> "Point":
    return Point(x, -x)
