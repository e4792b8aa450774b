from optstate.cli import main

main()
