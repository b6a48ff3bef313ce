from customer.main import cli

cli()
