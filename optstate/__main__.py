from optstate._entry import main

main()
