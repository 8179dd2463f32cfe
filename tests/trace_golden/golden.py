"""Small programs traced by tests/it/trace.rs; their expected frames are written by hand there."""


def total(n):
    s = 0
    for i in range(n):
        s += i
    return s


def fact(n):
    if n <= 1:
        return 1
    return n * fact(n - 1)


def count_up(n):
    i = 0
    while i < n:
        yield i
        i += 1


def use_gen():
    out = []
    for v in count_up(2):
        out.append(v)
    return out


def parse(s):
    try:
        return int(s)
    except ValueError:
        return -1


def check(x):
    if x < 0:
        raise ValueError("negative")
    return x


def guarded():
    try:
        check(-1)
    except ValueError:
        return "caught"


class Counter:
    def __init__(self, start):
        self.value = start

    def bump(self, by):
        self.value += by
        return self.value


def use_counter():
    c = Counter(1)
    return c.bump(2)


def double(x):
    return x * 2


def doubled(xs):
    return [double(x) for x in xs]


def apply_all(xs):
    f = lambda v: v + 1
    return list(map(f, xs))


def main():
    total(2)
    fact(2)
    use_gen()
    parse("x")
    guarded()
    use_counter()
    doubled([1, 2])
    apply_all([5])
