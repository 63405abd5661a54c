"""Framework integrations: thin glue from each framework to the cores."""
