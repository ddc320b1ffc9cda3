"""Speed of the Phi-4 reward (answer check included) against calling math-verify directly, in one run.

    .venv/bin/python benchmarks/verify_speed.py [--n 10000] [--seed 0]

Builds N completions of a few hundred characters (``<think>`` reasoning, then ``\\boxed{answer}``): half
with integer answers (the embedded demo's case), half with LaTeX answers (fractions, decimals,
polynomials, intervals), about 70% correct, with few repeated (gold, answer) pairs so that caches do
not flatter us. Each is scored one at a time in the calling thread (no thread or process fan-out):

    thinktune bounded   ``score(..., RewardConfig())``: integers in-process, math-verify in one worker
                        process under the hard time limit (the default)
    thinktune in-proc   the same with ``verify_timeout_s=0`` (math-verify in this process)
    peer                ``math_verify.verify(parse(gold), parse(completion))``, as TRL/open-r1 rewards do,
                        in the main thread with math-verify's default signal timeouts

and prints microseconds per completion and the ratio peer/thinktune (> 1: thinktune is faster), overall
and per answer kind, plus how often the two disagree on correctness. The three take turns, one
block of 500 rows at a time in a rotating order, so that a pause of the machine costs them alike.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections.abc import Callable

from math_verify import parse, verify
from math_verify import parser as mv_parser

from thinktune.rewards import RewardConfig, score
from thinktune.rewards import verify as verify_module
from thinktune.rewards.pool import get_pool

WORDS = "first we compute the sum then check each term carefully and simplify the result so that".split()


def _reasoning(rng: random.Random) -> str:
    steps = [f"{rng.randint(2, 99)}*{rng.randint(2, 99)}={rng.randint(100, 9999)}" for _ in range(4)]
    prose = " ".join(rng.choice(WORDS) for _ in range(25))
    return f"{prose}. {' '.join(steps)}. {' '.join(rng.choice(WORDS) for _ in range(10))}."


def _latex_pair(rng: random.Random) -> tuple[str, str]:
    """(gold, prediction) of one of four LaTeX kinds; about 70% equivalent."""
    kind, right = rng.randrange(4), rng.random() < 0.7
    a, b, c = rng.randint(1, 999), rng.randint(2, 999), rng.randint(1, 99)
    if kind == 0:
        return f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}" if right else f"\\frac{{{a + 1}}}{{{b}}}"
    if kind == 1:
        return f"\\frac{{{a}}}{{4}}", f"{a / 4}" if right else f"{a / 4 + 0.5}"
    if kind == 2:
        return f"{a}x^2+{b}x+{c}", f"{c}+{b}x+{a}x^2" if right else f"{c}+{b}x-{a}x^2"
    return f"({a}, {a + b}]", f"({a},{a + b}]" if right else f"[{a},{a + b}]"


def build(n: int, seed: int) -> list[tuple[str, str, str]]:
    """[n] (kind, completion, gold)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 2 == 0:
            gold = str(rng.randint(0, 99_999))
            pred = gold if rng.random() < 0.7 else str(int(gold) + rng.randint(1, 9))
            kind = "integer"
        else:
            gold, pred = _latex_pair(rng)
            kind = "latex"
        rows.append((kind, f"<think>{_reasoning(rng)}</think>\nSo the final answer is $\\boxed{{{pred}}}$.", gold))
    return rows


def _time(runners: dict[str, Callable[[str, str], bool]], rows: list[tuple[str, str, str]],
          block: int = 500) -> dict[str, tuple[float, list[bool]]]:
    """Run the runners block by block, each over the whole block, in a rotating order: a pause of the
    machine costs them alike, and no runner finds the strings it parses in math-verify's small parse
    caches (20 entries, cleared anyway) because another runner parsed them just before."""
    seconds = dict.fromkeys(runners, 0.0)
    verdicts: dict[str, list[bool]] = {name: [] for name in runners}
    names = list(runners)
    for b, lo in enumerate(range(0, len(rows), block)):
        for name in names[b % len(names):] + names[:b % len(names)]:
            mv_parser.parse_latex_cached.cache_clear()
            mv_parser.parse_expr_cached.cache_clear()
            start = time.perf_counter()
            verdicts[name] += [runners[name](completion, gold) for _, completion, gold in rows[lo:lo + block]]
            seconds[name] += time.perf_counter() - start
    return {name: (seconds[name], verdicts[name]) for name in runners}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    rows = build(args.n, args.seed)
    chars = sum(len(c) for _, c, _ in rows) / len(rows)
    start = time.perf_counter()
    get_pool().warm_up(1)
    print(f"{len(rows)} completions, {chars:.0f} characters on average; worker start-up {time.perf_counter() - start:.2f} s "
          "(once, not timed below)")

    bounded, in_proc = RewardConfig(), RewardConfig(verify_timeout_s=0)

    def ours(cfg: RewardConfig) -> Callable[[str, str], bool]:
        return lambda completion, gold: score(completion, gold, 120, True, cfg).correct

    def peer(completion: str, gold: str) -> bool:
        return verify(parse(f"${gold}$"), parse(completion))

    runners = {"thinktune bounded": ours(bounded), "thinktune in-proc": ours(in_proc), "peer (math-verify)": peer}
    results: dict[str, dict[str, tuple[float, list[bool]]]] = {name: {} for name in runners}
    for kind in ("integer", "latex"):
        for name, timed in _time(runners, [r for r in rows if r[0] == kind]).items():
            results[name][kind] = timed

    peer = results["peer (math-verify)"]
    print(f"\n{'us per completion':20} {'all':>9} {'integer':>9} {'latex':>9}   ratio peer/ours: all, integer, latex")
    for name, by_kind in results.items():
        times = {"all": sum(t for t, _ in by_kind.values()), **{k: t for k, (t, _) in by_kind.items()}}
        counts = {"all": len(rows), **{k: len(v) for k, (_, v) in by_kind.items()}}
        peer_times = {"all": sum(t for t, _ in peer.values()), **{k: t for k, (t, _) in peer.items()}}
        ratios = "" if name.startswith("peer") else ", ".join(f"{peer_times[k] / times[k]:.2f}x" for k in times)
        cells = " ".join(f"{1e6 * times[k] / counts[k]:9.1f}" for k in times)
        print(f"{name:20} {cells}   {ratios}")
    for kind in ("integer", "latex"):
        ours_v, peer_v = results["thinktune bounded"][kind][1], results["peer (math-verify)"][kind][1]
        agree = sum(a == b for a, b in zip(ours_v, peer_v, strict=True))
        print(f"{kind}: thinktune and math-verify agree on {agree}/{len(ours_v)}; "
              f"correct: thinktune {sum(ours_v)}, math-verify {sum(peer_v)}")
    print("verify stats:", verify_module.verify_stats())


if __name__ == "__main__":
    main()
