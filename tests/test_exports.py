"""The public API is exactly antnest.__all__, sorted, and every name in it exists."""
import antnest


def test_all_is_sorted_and_complete() -> None:
    assert antnest.__all__ == sorted(antnest.__all__)
    for name in antnest.__all__:
        assert hasattr(antnest, name), name


def test_public_names_are_the_documented_ones() -> None:
    public = {name for name in vars(antnest) if not name.startswith("_")}
    submodules = {name for name in public if type(getattr(antnest, name)).__name__ == "module"}
    assert public - (submodules - {"errors"}) == set(antnest.__all__) - {"__version__"}


def test_cluster_is_an_executor() -> None:
    from concurrent.futures import Executor

    assert issubclass(antnest.Cluster, Executor)
