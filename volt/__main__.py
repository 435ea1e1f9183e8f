from volt.cli import main

main()
