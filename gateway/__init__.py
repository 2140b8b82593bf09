"""The network edge: the aiohttp application (HTTP API, static pages), authentication, the
embedded servers for the zero-configuration run, and the ``livecore`` command line."""
