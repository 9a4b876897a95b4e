from tokenbank.cli import main

main()
