from cellnet.cli import main

main()
