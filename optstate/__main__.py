import sys

try:
    from optstate._entry import main

    main()
except KeyboardInterrupt:  # before main() routes SIGINT (its first few bytecodes)
    print("Interrupted.", file=sys.stderr)
    sys.exit(130)
