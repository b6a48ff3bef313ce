from checkout.main import cli

cli()
