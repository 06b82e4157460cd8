"""Count primes below a limit, in ranges: CPU-bound, so more hosts finish sooner.

    antnest run jobs/primes.py                       # 10 million, local processes
    antnest run -i inventory/hosts.yaml jobs/primes.py
"""
LIMIT = 10_000_000
STEP = 100_000


def split(input_data):
    limit = int(str(input_data).strip() or LIMIT) if not isinstance(input_data, int) else input_data
    for start in range(0, limit, STEP):
        yield (start, min(start + STEP, limit))


def processor(bounds):
    start, stop = bounds
    count = 0
    for n in range(max(start, 2), stop):
        if n % 2 == 0:
            count += n == 2
            continue
        f = 3
        while f * f <= n:
            if n % f == 0:
                break
            f += 2
        else:
            count += 1
    return count


def combine(results):
    print(sum(results))


input_data = 1_000_000
