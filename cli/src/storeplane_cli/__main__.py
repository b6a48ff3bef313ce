from storeplane_cli.main import main

main()
