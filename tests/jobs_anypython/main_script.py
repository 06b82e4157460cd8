"""A __main__ script: its functions and classes reach the hosts as __antnest_main__."""
import json
import sys

import antnest


class Pair:
    def __init__(self, a, b):
        self.a, self.b = a, b


def pair(x):
    return Pair(x, x * x)


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    hosts = [antnest.Host(**dict(h, identity_files=tuple(h["identity_files"])))
             for h in spec["hosts"]]
    with antnest.Cluster(hosts=hosts, known_hosts=[spec["known_hosts"]]) as cluster:
        out = list(cluster.map(pair, range(20)))
    assert all(type(p) is Pair for p in out), [type(p) for p in out]
    print(json.dumps([[p.a, p.b] for p in out]))
