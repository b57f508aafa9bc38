from compress._entry import main

main()
