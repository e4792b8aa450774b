import sys

try:
    from optstate._entry import main

    main()
except KeyboardInterrupt:  # before main() routes SIGINT (its first few bytecodes)
    print("Interrupted.", file=sys.stderr)
    exec("")  # noqa: S102 - clears CPython's unhandled-interrupt note (see _entry.main)
    sys.exit(130)
