from inpctl.cli import main

main()
