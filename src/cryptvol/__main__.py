from cryptvol.cli.main import main

main()
