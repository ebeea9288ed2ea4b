"""An example Tradewind extension package (see docs/extensions.md)."""
