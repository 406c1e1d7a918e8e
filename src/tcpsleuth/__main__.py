from tcpsleuth.cli.main import main

main()
