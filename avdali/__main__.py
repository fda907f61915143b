from avdali.cli.app import main

main()
