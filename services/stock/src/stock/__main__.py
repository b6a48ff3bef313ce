from stock.main import cli

cli()
