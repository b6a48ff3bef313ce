"""`python -m stock`: the stock service's command line."""

from stock.main import cli

cli()
