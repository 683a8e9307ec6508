from shardc.cli.main import main

main()
