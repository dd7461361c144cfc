from cellnet._launch import main

main()
