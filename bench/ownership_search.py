"""A long search for the ownership invariant (issue 22), for nightly runs: the state machine of
tests/unit/policy/test_ownership_invariant.py with many more and longer random sequences than the unit tier runs.

    .venv/bin/python bench/ownership_search.py [--examples 2000] [--steps 60] [--seed N]

Prints how many sequences and steps ran, what the policy admitted by kind (so a run that admits nothing is seen as
vacuous), and exits 1 with the shrunk counterexample when an admitted object does not trace back to someone allowed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, seed, settings  # noqa: E402
from hypothesis.stateful import run_state_machine_as_test  # noqa: E402

from tests.unit.policy import test_ownership_invariant as machine  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    totals: Counter[str] = Counter()
    runs = {"sequences": 0}

    class Counted(machine.OwnershipMachine):
        def teardown(self) -> None:
            totals.update(self.c.admitted)
            runs["sequences"] += 1

    run = settings(max_examples=args.examples, stateful_step_count=args.steps, deadline=None,
                   suppress_health_check=list(HealthCheck), database=None)  # fmt: skip
    started = time.perf_counter()
    try:
        if args.seed is not None:
            seed(args.seed)(lambda: run_state_machine_as_test(Counted, settings=run))()
        else:
            run_state_machine_as_test(Counted, settings=run)
    except AssertionError as e:
        steps = "\n".join(getattr(e, "__notes__", []))  # hypothesis notes the shrunk sequence of steps
        print(f"INVARIANT BROKEN after {runs['sequences']} sequences:\n{e}\n{steps}")
        return 1
    took = time.perf_counter() - started
    print(f"ownership invariant held: {runs['sequences']} sequences of up to {args.steps} steps in {took:.0f} s")
    print("admitted by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(totals.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
