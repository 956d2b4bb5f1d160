"""Conversions between capreg agents and the documents other ecosystems publish (A2A Agent Cards, MCP
server.json). Pure functions with no I/O, so that the service, the CLI and the tests share one reading
of each format and every refusal names the JSON path at fault."""
