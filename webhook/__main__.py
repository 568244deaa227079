"""Entry point of the admission webhook (not implemented yet)."""

import sys


def main() -> int:
    print("pcidevices-webhook: not implemented yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
