from loyalty.main import cli

cli()
