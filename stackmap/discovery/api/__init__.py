"""Reading the OpenStack APIs: connection, HTTP transport (recording / replay) and fetchers."""
